//! Upkeep of the state folder: job folders older than `state.keep_jobs` are removed at start
//! and then every hour; folders of jobs the journal holds or that run are kept.

use super::Agent;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often old job folders are looked for after the start.
const PERIOD: Duration = Duration::from_secs(3600);

/// Removes the job folders older than `state.keep_jobs` now.
pub(super) fn prune_now(agent: &Agent) {
    let mut held: HashSet<(i64, i32)> = match agent.outbox.journal() {
        Ok(j) => j.into_iter().map(|e| (e.job, e.attempt)).collect(),
        Err(e) => {
            // Without the journal nothing can be told apart: remove nothing.
            tracing::error!(error = %e, "cannot read the job journal; job folders are kept");
            return;
        }
    };
    let keep = {
        let st = agent.lock();
        held.extend(st.running.keys().copied());
        st.keep_jobs
    };
    let jobs = crate::state::jobs_dir(&agent.cfg.state_dir);
    let removed = crate::state::prune_job_dirs(&jobs, keep, SystemTime::now(), &held);
    if !removed.is_empty() {
        tracing::info!(removed = removed.len(), keep = %humantime::format_duration(keep), "removed old job folders");
    }
}

/// Removes old job folders every [`PERIOD`] until the agent stops.
pub(super) async fn prune_periodically(agent: Arc<Agent>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = agent.stop.cancelled() => return,
        }
        let a = agent.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || prune_now(&a)).await {
            tracing::error!(error = %e, "removing old job folders failed");
        }
    }
}
