//! The outbox sender: delivers the outbox in order (starts, log chunks, results), each item
//! removed only once the coordinator acknowledged it, with back-off while it cannot be
//! reached.

use super::Agent;
use crate::client::{backoff, is_transient};
use crate::outbox::Item;
use std::sync::Arc;
use std::time::Duration;

/// Sends the outbox in order; each item is removed only once the coordinator acknowledged it.
pub(super) async fn send_outbox(agent: Arc<Agent>) {
    let mut failures = 0u32;
    loop {
        let next = match agent.outbox.peek() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                None
            }
        };
        let Some((id, item)) = next else {
            tokio::select! {
                _ = agent.outbox.added.notified() => continue,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = agent.stop.cancelled() => return,
            }
        };
        let co = &agent.coordinator;
        let (job, res) = match &item {
            Item::Start(r) => (
                r.job,
                co.call(|mut c| async move { c.start_job(r.clone()).await.map(|_| ()) })
                    .await,
            ),
            Item::Log(r) => (
                r.job,
                co.call(|mut c| async move { c.append_log(r.clone()).await.map(|_| ()) })
                    .await,
            ),
            Item::Result(r) => (
                r.job,
                co.call(|mut c| async move { c.report_result(r.clone()).await.map(|_| ()) })
                    .await,
            ),
        };
        match res {
            Ok(()) => {
                failures = 0;
                if let Err(e) = agent.outbox.ack(id, &item) {
                    tracing::error!(error = %e, "cannot remove a delivered item from the outbox");
                }
            }
            Err(s) if !is_transient(&s) => {
                let j = job.unwrap_or_default();
                tracing::warn!(job = j.job, attempt = j.attempt, code = ?s.code(), error = %s.message(), "the coordinator refused this job's update; dropping the job's pending updates");
                if let Err(e) = agent.outbox.drop_attempt(j.job, j.attempt) {
                    tracing::error!(error = %e, "cannot drop refused updates");
                }
                if let Some(r) = agent.lock().running.get(&(j.job, j.attempt)) {
                    r.cancel.cancel();
                }
            }
            Err(s) => {
                failures += 1;
                let wait = backoff(
                    failures,
                    Duration::from_millis(200),
                    Duration::from_secs(15),
                );
                tracing::debug!(code = ?s.code(), error = %s.message(), retry_in = ?wait, "outbox delivery failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = agent.stop.cancelled() => return,
                }
            }
        }
    }
}
