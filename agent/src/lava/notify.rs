//! LAVA's notification callbacks to the agent (`lava[].notify`): every job definition asks
//! LAVA to call `GET {base}lava/{instance}/{job}/{attempt}` when the job finishes, and the
//! driver following that job looks at it at once instead of at its next poll.
//!
//! A call is only a wake-up: the driver then reads the job's state and results from LAVA's
//! API as always, so a forged or repeated call makes at most a few extra reads, and a lost
//! call only delays the result to the next poll. LAVA makes the call while it saves the
//! job's end, before that is committed: the driver therefore reads again a few times in
//! quick succession until LAVA shows the job finished ([`FAST_READS`]).
//!
//! The listener binds when the LAVA source starts and stops with it; when the address is
//! taken it says so and tries again (with back-off up to 5 s), and jobs meanwhile go without
//! callbacks. With `listen` on port 0 the port changes when the agent restarts: a job that
//! an earlier run submitted is then followed by polling only; give a fixed port.

use super::config::NotifyConfig;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// After a callback, the intervals of the reads that wait for LAVA to commit the job's end.
/// LAVA commits right after the call returns; a read sent at once would mostly find the job
/// still running, so the first waits a little.
pub(crate) const FAST_READS: [Duration; 7] = [
    Duration::from_millis(15),
    Duration::from_millis(15),
    Duration::from_millis(30),
    Duration::from_millis(60),
    Duration::from_millis(120),
    Duration::from_millis(240),
    Duration::from_millis(480),
];

/// The callbacks of one `lava:` instance: who waits for which job.
pub(crate) struct Notifier {
    instance: String,
    cfg: NotifyConfig,
    /// The base URL once the listener is bound.
    base: Mutex<Option<String>>,
    waiters: Mutex<HashMap<(i64, i32), Arc<Notify>>>,
}

/// A job's registration for its callback; dropping it unregisters.
pub(crate) struct Waiter {
    notifier: Arc<Notifier>,
    key: (i64, i32),
    /// Fires when LAVA calls back for the job.
    pub(crate) notified: Arc<Notify>,
    /// The URL the job definition gives LAVA, if the listener is up.
    pub(crate) url: Option<String>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Ok(mut w) = self.notifier.waiters.lock() {
            w.remove(&self.key);
        }
    }
}

impl Notifier {
    /// The callbacks of `instance`, not listening yet ([`Notifier::serve`]).
    pub(crate) fn new(instance: &str, cfg: NotifyConfig) -> Arc<Self> {
        Arc::new(Notifier {
            instance: instance.to_string(),
            cfg,
            base: Mutex::new(None),
            waiters: Mutex::new(HashMap::new()),
        })
    }

    /// Registers job `job`, attempt `attempt` for its callback.
    pub(crate) fn register(self: &Arc<Self>, job: i64, attempt: i32) -> Waiter {
        let notified = Arc::new(Notify::new());
        if let Ok(mut w) = self.waiters.lock() {
            w.insert((job, attempt), notified.clone());
        }
        let url = self
            .base
            .lock()
            .ok()
            .and_then(|b| b.clone())
            .map(|b| format!("{b}lava/{}/{job}/{attempt}", self.instance));
        Waiter {
            notifier: self.clone(),
            key: (job, attempt),
            notified,
            url,
        }
    }

    fn wake(&self, job: i64, attempt: i32) -> bool {
        let n = self
            .waiters
            .lock()
            .ok()
            .and_then(|w| w.get(&(job, attempt)).cloned());
        match n {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    /// Listens until `stop`: binds `notify.listen` (trying again every few seconds while the
    /// address is taken), then answers LAVA's calls.
    pub(crate) async fn serve(self: Arc<Self>, stop: CancellationToken) {
        let mut failures = 0u32;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.cfg.listen).await {
                Ok(l) => break l,
                Err(e) => {
                    failures += 1;
                    if failures == 10 || failures.is_multiple_of(60) {
                        tracing::error!(instance = %self.instance, listen = %self.cfg.listen, error = %e, "cannot listen for LAVA's callbacks; jobs are followed by polling until it can");
                    }
                    // Soon at first: after a SIGHUP the replaced listener frees the port
                    // within moments.
                    let wait = crate::client::backoff(
                        failures,
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        };
        let bound = listener.local_addr().unwrap_or(self.cfg.listen);
        let base = self.cfg.base_url(bound);
        tracing::info!(instance = %self.instance, listen = %bound, url = %base, "listening for LAVA's callbacks");
        if let Ok(mut b) = self.base.lock() {
            *b = Some(base);
        }
        let app = Router::new()
            .route("/lava/{instance}/{job}/{attempt}", get(callback))
            .with_state(self.clone());
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .await;
        if let Ok(mut b) = self.base.lock() {
            *b = None;
        }
        if let Err(e) = served {
            tracing::error!(instance = %self.instance, error = %e, "LAVA callback listener stopped");
        }
    }
}

async fn callback(
    State(n): State<Arc<Notifier>>,
    Path((instance, job, attempt)): Path<(String, i64, i32)>,
) -> StatusCode {
    if instance != n.instance {
        return StatusCode::NOT_FOUND;
    }
    if n.wake(job, attempt) {
        tracing::debug!(instance = %instance, job, attempt, "LAVA called back");
        StatusCode::OK
    } else {
        // A job this agent no longer follows (it ended, or the agent restarted since).
        StatusCode::NOT_FOUND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_wakes_the_job_it_names_and_only_that_one() {
        let cfg = NotifyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            url: None,
        };
        let n = Notifier::new("lab", cfg);
        let stop = CancellationToken::new();
        let server = tokio::spawn(n.clone().serve(stop.clone()));
        let w = loop {
            let w = n.register(5, 2);
            if w.url.is_some() {
                break w;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let url = w.url.clone().unwrap();
        assert!(url.ends_with("/lava/lab/5/2"), "{url}");
        let other = n.register(6, 1);
        crate::ensure_crypto();
        let http = reqwest::Client::new();
        let get = |u: String| {
            let http = http.clone();
            async move { http.get(u).send().await.unwrap().status().as_u16() }
        };
        assert_eq!(get(url.clone()).await, 200);
        tokio::time::timeout(Duration::from_secs(5), w.notified.notified())
            .await
            .expect("woken");
        let base = url.trim_end_matches("lava/lab/5/2").to_string();
        assert_eq!(get(format!("{base}lava/other/5/2")).await, 404);
        assert_eq!(get(format!("{base}lava/lab/5/9")).await, 404);
        assert_eq!(get(format!("{base}lava/lab/x/2")).await, 400);
        drop(w);
        assert_eq!(get(url).await, 404, "unregistered when dropped");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.notified.notified())
                .await
                .is_err()
        );
        stop.cancel();
        server.await.unwrap();
    }
}
