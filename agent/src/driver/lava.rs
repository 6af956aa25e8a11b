//! The `lava` driver: a job becomes a LAVA job on the lab's own LAVA server. The definition
//! is rendered from the device type's template, submitted, and followed (state with
//! back-off, the log line by line as it grows) until LAVA finishes it; its results become
//! the job's. A job cancelled on the coordinator is cancelled on LAVA. The LAVA job id is
//! kept in the job folder (`lava.json`) as soon as LAVA accepted the job, so that an agent
//! that restarts takes the job back and follows it to its end ([`LavaDriver::resume`]).

use crate::driver::{Driver, JobContext, Outcome};
use crate::lava::client::{LavaClient, LavaError, LogLine};
use crate::lava::config::LavaConfig;
use crate::lava::results;
use crate::lava::templates::{ArtifactVar, JobInfo, JobVars, Templates, Timeouts};
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
            lab,
            device_type,
            boot_method,
        }
    }

    /// The LAVA job definition of a job.
    pub fn definition(&self, ctx: &JobContext) -> Result<String, String> {
        let minutes = ctx.timeout.as_secs().div_ceil(60).max(1);
        let spec = &ctx.spec;
        let vars = JobVars {
            device_type: self.device_type.clone(),
            boot_method: self.boot_method.clone(),
            job: JobInfo {
                id: ctx.job,
                attempt: ctx.attempt,
                name: spec.name.clone(),
            },
            params: spec.params.clone().into_iter().collect(),
            artifacts: spec
                .artifacts
                .iter()
                .map(|(k, a)| {
                    (
                        k.clone(),
                        ArtifactVar {
                            url: a.url.clone(),
                            sha256: Some(a.sha256.clone()).filter(|s| !s.is_empty()),
                        },
                    )
                })
                .collect(),
            commands: spec.commands.clone(),
            timeouts: Timeouts {
                job: minutes,
                action: minutes.min(15),
                test: minutes,
            },
            priority: if spec.priority > 0 {
                spec.priority.min(100) as u8
            } else {
                self.cfg.priority
            },
            visibility: self.cfg.visibility.clone(),
            lab: self.lab.clone(),
        };
        self.templates.render(&vars)
    }

    async fn submit_and_follow(&self, ctx: &mut JobContext) -> Outcome {
        let definition = match self.definition(ctx) {
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
        self.follow(ctx, id).await
    }

    /// Follows LAVA job `id` to its end: state with back-off, the log as it grows, then the
    /// results. The log is rebuilt from LAVA's first line, so following again after a restart
    /// writes the same bytes at the same offsets.
    async fn follow(&self, ctx: &mut JobContext, id: i64) -> Outcome {
        let url = self
            .client
            .api()
            .join(&format!("jobs/{id}/"))
            .map(|u| u.to_string())
            .unwrap_or_default();
        ctx.log.note(&format!("LAVA job {id}: {url}"));
        ctx.log.flush();
        let parse_target = !matches!(ctx.spec.parser.as_str(), "" | "auto" | "none");
        let deadline = Instant::now() + ctx.timeout + self.cfg.queue_timeout;
        let mut line = 0u64;
        let mut wait = self.cfg.poll;
        let mut failures = 0u32;
        let mut cancelled = false;
        let mut cancel_deadline = None;
        loop {
            let status = match self.client.job(id).await {
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
            let state = status.as_ref().map(|s| s.state.as_str()).unwrap_or("");
            let mut progressed = false;
            if matches!(state, "Running" | "Canceling" | "Finished") {
                match self.client.logs(id, line).await {
                    Ok(lines) => {
                        if !lines.is_empty() {
                            progressed = true;
                        }
                        line += lines.len() as u64;
                        write_lines(ctx, &lines, parse_target);
                        ctx.log.flush();
                    }
                    Err(e) => {
                        tracing::warn!(lava_job = id, error = %e, "cannot read the LAVA job's log; trying again")
                    }
                }
            }
            if state == "Finished" {
                return self.finish(ctx, id, line, parse_target, cancelled).await;
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
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
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

    async fn finish(
        &self,
        ctx: &mut JobContext,
        id: i64,
        mut line: u64,
        parse_target: bool,
        cancelled: bool,
    ) -> Outcome {
        // The log may have grown between the last read and the end.
        if let Ok(lines) = self.client.logs(id, line).await {
            line += lines.len() as u64;
            write_lines(ctx, &lines, parse_target);
        }
        ctx.log.flush();
        let status = match self.client.job(id).await {
            Ok(s) => s,
            Err(e) => return Outcome::infra(ErrorCode::Infrastructure, e.to_string()),
        };
        let (suites, tests) = match (self.client.suites(id).await, self.client.tests(id).await) {
            (Ok(s), Ok(t)) => (s, t),
            (Err(e), _) | (_, Err(e)) => {
                return Outcome::infra(
                    ErrorCode::Infrastructure,
                    format!(
                        "LAVA job {id} finished {} but its results could not be read: {e}",
                        status.health
                    ),
                );
            }
        };
        let mut out = results::outcome(&status, &suites, &tests);
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

/// Writes LAVA log lines to the job's log: the device's output (`target`) as it is, the
/// rest marked with its level.
fn write_lines(ctx: &mut JobContext, lines: &[LogLine], parse_target: bool) {
    for l in lines {
        let text = match &l.msg {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if l.lvl == "target" {
            let mut b = text.into_bytes();
            b.push(b'\n');
            if parse_target {
                ctx.log.write(&b);
            } else {
                ctx.log.write_unparsed(&b);
            }
        } else {
            ctx.log
                .write_unparsed(format!("[lava {}] {}\n", l.lvl, text).as_bytes());
        }
    }
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
            self.follow(ctx, id).await
        })
    }
}
