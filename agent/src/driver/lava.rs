//! The `lava` driver: a job becomes a LAVA job on the lab's own LAVA server. The definition
//! is rendered from the device type's template, submitted, and followed (state with
//! back-off or at LAVA's callback, the log line by line as it grows) until LAVA finishes
//! it. The board's output goes to the job's parser as for every driver; LAVA's result sets
//! give the setup steps and each command's exit status. A job cancelled on the coordinator
//! is cancelled on LAVA. The LAVA job id is
//! kept in the job folder (`lava.json`) as soon as LAVA accepted the job, so that an agent
//! that restarts takes the job back and follows it to its end ([`LavaDriver::resume`]).

use crate::driver::{Driver, JobContext, Outcome};
use crate::lava::client::{JobStatus, LavaClient, LavaError, Suite, TestCase};
use crate::lava::config::LavaConfig;
use crate::lava::definition::{self, Target};
use crate::lava::log::{Early, write_lines};
use crate::lava::notify::{FAST_READS, Notifier, Waiter};
use crate::lava::results;
use crate::lava::templates::Templates;
use futures::future::BoxFuture;
use labwire_common::ErrorCode;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The file in a job folder that names the LAVA job.
pub const STATE_FILE: &str = "lava.json";

/// What the job folder remembers of a LAVA job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LavaJobRef {
    /// The `lava:` instance.
    pub instance: String,
    /// The LAVA job id; `None` while the submission is under way.
    pub lava_job: Option<i64>,
    /// The definition's `job_name` (LAVA's `description`), to find a job whose submission
    /// was under way when the agent stopped.
    #[serde(default)]
    pub job_name: String,
}

impl LavaJobRef {
    /// Reads `lava.json` of a job folder, if there is one.
    pub fn load(dir: &Path) -> Option<Self> {
        let text = std::fs::read(dir.join(STATE_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes `lava.json` (to a temporary file first, so it is never half written).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        {
            use std::io::Write;
            let mut f = crate::state::private_create().open(&tmp)?;
            f.write_all(&serde_json::to_vec(self).unwrap_or_default())?;
        }
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(tmp, dir.join(STATE_FILE))
    }
}

/// Runs jobs of one LAVA device type of one LAVA server.
pub struct LavaDriver {
    cfg: Arc<LavaConfig>,
    client: LavaClient,
    templates: Arc<Templates>,
    notifier: Option<Arc<Notifier>>,
    lab: String,
    device_type: String,
    boot_method: String,
}

impl LavaDriver {
    /// A driver for `device_type`, rendered with the `boot_method` template.
    pub fn new(
        cfg: Arc<LavaConfig>,
        client: LavaClient,
        templates: Arc<Templates>,
        lab: String,
        device_type: String,
        boot_method: String,
    ) -> Self {
        LavaDriver {
            cfg,
            client,
            templates,
            notifier: None,
            lab,
            device_type,
            boot_method,
        }
    }

    /// Asks LAVA to call back through `notifier` when a job ends.
    pub(crate) fn with_notifier(mut self, notifier: Option<Arc<Notifier>>) -> Self {
        self.notifier = notifier;
        self
    }

    /// The LAVA job definition of a job (without a callback).
    pub fn definition(&self, ctx: &JobContext) -> Result<String, String> {
        self.render(ctx, None)
    }

    fn render(&self, ctx: &JobContext, notify_url: Option<String>) -> Result<String, String> {
        let target = Target {
            cfg: &self.cfg,
            lab: &self.lab,
            device_type: &self.device_type,
            boot_method: &self.boot_method,
        };
        let vars = definition::vars(&target, ctx, notify_url)?;
        self.templates.render(&vars)
    }

    /// The board's password, to mask where LAVA's log shows it typed.
    fn password(&self) -> Option<&str> {
        self.cfg
            .device_type_settings
            .get(&self.device_type)
            .and_then(|s| s.login.as_ref())
            .and_then(|l| l.password.as_ref())
            .map(|p| p.0.as_str())
            .filter(|p| !p.is_empty())
    }

    async fn submit_and_follow(&self, ctx: &mut JobContext) -> Outcome {
        let waiter = self
            .notifier
            .as_ref()
            .map(|n| n.register(ctx.job, ctx.attempt));
        let notify_url = waiter.as_ref().and_then(|w| w.url.clone());
        let definition = match self.render(ctx, notify_url) {
            Ok(d) => d,
            Err(e) => return Outcome::infra(ErrorCode::InvalidJob, e),
        };
        let kept = crate::state::private_create()
            .open(ctx.dir.join("lava-job.yaml"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, definition.as_bytes()));
        if let Err(e) = kept {
            tracing::warn!(error = %e, "cannot keep the LAVA job definition in the job folder");
        }
        // Recorded before submitting: an agent that stops before LAVA's answer arrives finds
        // the job by its name at the next start.
        let mut r = LavaJobRef {
            instance: self.cfg.name.clone(),
            lava_job: None,
            job_name: job_name(&definition),
        };
        if let Err(e) = r.save(&ctx.dir) {
            tracing::error!(error = %e, "cannot write lava.json; an agent restart would lose the LAVA job");
        }
        let submitted = tokio::select! {
            r = self.client.submit(&definition) => r,
            _ = ctx.cancel.cancelled() => {
                return Outcome::infra(ErrorCode::Cancelled, "the job was cancelled before LAVA took it");
            }
        };
        let id = match submitted {
            Ok(id) => id,
            Err(LavaError::Refused { message }) => {
                ctx.log
                    .note(&format!("LAVA refused the job definition: {message}"));
                return Outcome::infra(
                    ErrorCode::InvalidJob,
                    format!("LAVA refused the job definition: {message}"),
                );
            }
            Err(e) => return Outcome::infra(ErrorCode::Infrastructure, e.to_string()),
        };
        r.lava_job = Some(id);
        if let Err(e) = r.save(&ctx.dir) {
            tracing::error!(error = %e, lava_job = id, "cannot record the LAVA job id; an agent restart would lose it");
        }
        tracing::info!(lava_job = id, "LAVA accepted the job");
        self.follow(ctx, id, waiter.as_ref()).await
    }

    /// Follows LAVA job `id` to its end: state with back-off (read at once and a few times
    /// quickly after LAVA's callback), the log as it grows, then the results. The log is
    /// rebuilt from LAVA's first line, so following again after a restart writes the same
    /// bytes at the same offsets.
    async fn follow(&self, ctx: &mut JobContext, id: i64, waiter: Option<&Waiter>) -> Outcome {
        let url = self
            .client
            .api()
            .join(&format!("jobs/{id}/"))
            .map(|u| u.to_string())
            .unwrap_or_default();
        ctx.log.note(&format!("LAVA job {id}: {url}"));
        ctx.log.flush();
        let deadline = Instant::now() + ctx.timeout + self.cfg.queue_timeout;
        let mut line = 0u64;
        let mut wait = self.cfg.poll;
        let mut failures = 0u32;
        let mut cancelled = false;
        let mut cancel_deadline = None;
        // Reads left in quick succession after a callback (see `notify::FAST_READS`).
        let mut fast: Option<usize> = None;
        // LAVA called back: read everything at once ([`Self::read_at_once`]).
        let mut called_back = false;
        loop {
            let (status, early) = if std::mem::take(&mut called_back) {
                let (s, early) = self.read_at_once(id, line).await;
                (s, Some(early))
            } else {
                (self.client.job(id).await, None)
            };
            let status = match status {
                Ok(s) => {
                    failures = 0;
                    Some(s)
                }
                Err(e) if e.is_not_found() => {
                    return Outcome::infra(
                        ErrorCode::Infrastructure,
                        format!("LAVA job {id} no longer exists on the server"),
                    );
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(lava_job = id, error = %e, failures, "cannot read the LAVA job's state; trying again");
                    None
                }
            };
            let state = status.as_ref().map(|s| s.state.clone()).unwrap_or_default();
            let mut progressed = false;
            match (status.filter(|s| s.state == "Finished"), early) {
                (Some(status), Some(Ok(early))) if early.complete() => {
                    line += early.lines.len() as u64;
                    write_lines(&mut ctx.log, &early.lines, self.password());
                    return self.conclude(
                        ctx,
                        id,
                        line,
                        status,
                        early.suites,
                        early.tests,
                        cancelled,
                    );
                }
                (Some(status), _) => return self.finish(ctx, id, line, status, cancelled).await,
                (None, Some(Ok(early))) => {
                    // Not finished after all: the log read meanwhile still counts.
                    progressed = !early.lines.is_empty();
                    line += early.lines.len() as u64;
                    write_lines(&mut ctx.log, &early.lines, self.password());
                    ctx.log.flush();
                }
                (None, _) => {}
            }
            // Right after a callback only the state is read, until LAVA shows the end.
            if fast.is_none() && matches!(state.as_str(), "Running" | "Canceling") {
                match self.client.logs(id, line).await {
                    Ok(lines) => {
                        if !lines.is_empty() {
                            progressed = true;
                        }
                        line += lines.len() as u64;
                        write_lines(&mut ctx.log, &lines, self.password());
                        ctx.log.flush();
                    }
                    Err(e) => {
                        tracing::warn!(lava_job = id, error = %e, "cannot read the LAVA job's log; trying again")
                    }
                }
            }
            if Instant::now() > deadline && !cancelled {
                tracing::warn!(
                    lava_job = id,
                    "the job ran out of time; cancelling it on LAVA"
                );
                ctx.log
                    .note(&format!("time limit reached: cancelling LAVA job {id}"));
                let _ = self.client.cancel(id).await;
                return Outcome::infra(
                    ErrorCode::TestTimeout,
                    format!(
                        "LAVA job {id} did not finish within the job's time limit plus the queue time limit"
                    ),
                );
            }
            if cancelled && cancel_deadline.is_some_and(|d| Instant::now() > d) {
                return Outcome::infra(
                    ErrorCode::Cancelled,
                    format!("the job was cancelled; LAVA job {id} did not confirm within 60s"),
                );
            }
            wait = if progressed {
                self.cfg.poll
            } else {
                (wait.mul_f32(1.5)).min(self.cfg.poll_max)
            };
            if failures > 0 {
                wait = crate::client::backoff(
                    failures,
                    self.cfg.poll,
                    self.cfg.poll_max.max(Duration::from_secs(5)),
                );
            }
            let sleep = match fast {
                Some(i) if i < FAST_READS.len() => {
                    fast = Some(i + 1);
                    FAST_READS[i]
                }
                _ => {
                    fast = None;
                    wait
                }
            };
            let called = async {
                match waiter {
                    Some(w) => w.notified.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = called => {
                    tracing::debug!(lava_job = id, "LAVA called back: reading the job now");
                    // The first read after the call waits for LAVA's commit.
                    tokio::time::sleep(FAST_READS[0]).await;
                    fast = Some(1);
                    called_back = true;
                }
                _ = ctx.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    cancel_deadline = Some(Instant::now() + Duration::from_secs(60));
                    ctx.log.note(&format!("the job was cancelled: cancelling LAVA job {id}"));
                    if let Err(e) = self.client.cancel(id).await {
                        tracing::warn!(lava_job = id, error = %e, "cannot cancel the LAVA job");
                    }
                    wait = self.cfg.poll;
                }
            }
        }
    }

    /// After LAVA's callback: the job's state, the rest of its log and its results, read at
    /// once (one round of requests instead of two). LAVA calls back while it saves the job's
    /// end, after the worker sent the last of the log and every result; what was read is
    /// used only if LAVA shows the job finished and [`Early::complete`] finds LAVA's last
    /// result in it, so a forged or early call cannot cut the results short (the driver then
    /// reads them again).
    async fn read_at_once(
        &self,
        id: i64,
        line: u64,
    ) -> (Result<JobStatus, LavaError>, Result<Early, LavaError>) {
        let (status, lines, suites, tests) = tokio::join!(
            self.client.job(id),
            self.client.logs(id, line),
            self.client.suites(id),
            self.client.tests(id)
        );
        let early = match (lines, suites, tests) {
            (Ok(lines), Ok(suites), Ok(tests)) => Ok(Early {
                lines,
                suites,
                tests,
            }),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        };
        (status, early)
    }

    /// The end of a finished job: the rest of its log and its results, read at once.
    async fn finish(
        &self,
        ctx: &mut JobContext,
        id: i64,
        mut line: u64,
        status: JobStatus,
        cancelled: bool,
    ) -> Outcome {
        let started = Instant::now();
        let (lines, suites, tests) = tokio::join!(
            self.client.logs(id, line),
            self.client.suites(id),
            self.client.tests(id)
        );
        tracing::debug!(
            lava_job = id,
            read_ms = started.elapsed().as_millis() as u64,
            "LAVA job finished; its log and results read"
        );
        match lines {
            Ok(lines) => {
                line += lines.len() as u64;
                write_lines(&mut ctx.log, &lines, self.password());
            }
            Err(e) => {
                tracing::warn!(lava_job = id, error = %e, "cannot read the end of the LAVA job's log");
                ctx.log.note(&format!(
                    "the end of LAVA job {id}'s log could not be read: {e}"
                ));
            }
        }
        let (suites, tests) = match (suites, tests) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(e), _) | (_, Err(e)) => {
                ctx.log.flush();
                return Outcome::infra(
                    ErrorCode::Infrastructure,
                    format!(
                        "LAVA job {id} finished {} but its results could not be read: {e}",
                        status.health
                    ),
                );
            }
        };
        self.conclude(ctx, id, line, status, suites, tests, cancelled)
    }

    /// The outcome of a finished job from its results.
    #[allow(clippy::too_many_arguments)]
    fn conclude(
        &self,
        ctx: &mut JobContext,
        id: i64,
        line: u64,
        status: JobStatus,
        suites: Vec<Suite>,
        tests: Vec<TestCase>,
        cancelled: bool,
    ) -> Outcome {
        ctx.log.flush();
        let mut out = results::outcome(&status, &suites, &tests, &ctx.spec.commands);
        if cancelled && out.error_code.is_none() {
            out = Outcome::infra(
                ErrorCode::Cancelled,
                format!(
                    "the job was cancelled; LAVA job {id} ended {}",
                    status.health
                ),
            );
        }
        out.data.insert("lava_job".into(), id.into());
        out.data.insert("lava_log_lines".into(), line.into());
        let time = |t: &Option<String>| {
            t.as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        if let (Some(start), Some(end)) = (time(&status.start_time), time(&status.end_time)) {
            // LAVA's own times: the same after an agent restart, and without the queue wait.
            let ms = (end - start).num_milliseconds().max(0);
            out.data.insert("duration_ms".into(), ms.into());
        }
        for (key, t) in [
            ("lava_start_time", &status.start_time),
            ("lava_end_time", &status.end_time),
        ] {
            if let Some(t) = t {
                out.data.insert(key.into(), t.clone().into());
            }
        }
        out
    }
}

/// The `job_name` of a rendered definition.
fn job_name(definition: &str) -> String {
    yaml_serde::from_str::<yaml_serde::Value>(definition)
        .ok()
        .and_then(|v| v["job_name"].as_str().map(String::from))
        .unwrap_or_default()
}

impl Driver for LavaDriver {
    fn kind(&self) -> &'static str {
        "lava"
    }

    fn run<'a>(&'a self, ctx: &'a mut JobContext) -> BoxFuture<'a, Outcome> {
        Box::pin(self.submit_and_follow(ctx))
    }

    fn resume<'a>(&'a self, ctx: &'a mut JobContext) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Some(r) = LavaJobRef::load(&ctx.dir).filter(|r| r.instance == self.cfg.name) else {
                return Outcome::infra(
                    ErrorCode::AgentRestart,
                    "the agent restarted before the job was submitted to LAVA",
                );
            };
            let id = match r.lava_job {
                Some(id) => id,
                // The agent stopped while submitting: did LAVA take the job?
                None => match self.client.find_by_description(&r.job_name).await {
                    Ok(Some(id)) => {
                        let mut r = r.clone();
                        r.lava_job = Some(id);
                        let _ = r.save(&ctx.dir);
                        id
                    }
                    Ok(None) => {
                        return Outcome::infra(
                            ErrorCode::AgentRestart,
                            "the agent restarted while submitting the job; LAVA has no such job",
                        );
                    }
                    Err(e) => {
                        return Outcome::infra(
                            ErrorCode::AgentRestart,
                            format!(
                                "the agent restarted while submitting the job, and LAVA could not be asked whether it took it: {e}"
                            ),
                        );
                    }
                },
            };
            tracing::info!(
                lava_job = id,
                "following the LAVA job again after an agent restart"
            );
            let waiter = self
                .notifier
                .as_ref()
                .map(|n| n.register(ctx.job, ctx.attempt));
            self.follow(ctx, id, waiter.as_ref()).await
        })
    }
}
