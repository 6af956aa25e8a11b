//! The `shell` driver: runs the device's configured command on the lab host. Job parameters
//! reach it only as whole arguments or as `LABWIRE_PARAM_*` environment variables, never as
//! text for a shell to parse. Standard output and error, in arrival order, are the job's log;
//! exit code 0 is `pass`, any other `fail`; a timeout or a cancel kills the whole process group.

use super::{Driver, JobContext, Outcome};
use crate::config::DeviceConfig;
use crate::placeholders::{Values, expand_argv};
use futures::future::BoxFuture;
use labwire_common::{ErrorCode, NodeResult, TestNode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// The shell driver: runs `command` on the lab host; its output is the job's log, its exit
/// code the job's result.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// The program and its arguments; no shell is involved unless you name one. An argument
    /// that is exactly `{params.NAME}`, `{device.NAME}`, `{job.id}` or `{job.dir}` is
    /// replaced by that value, whole. Job parameters are also in the environment as
    /// `LABWIRE_PARAM_<NAME>`.
    pub command: Vec<String>,
    /// Working directory. Default: the job's own folder.
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How many jobs may run at once on this device. Default 1.
    #[serde(default = "one")]
    pub max_jobs: usize,
}

fn one() -> usize {
    1
}

/// The shell driver of one device.
pub(crate) struct ShellDriver {
    device: DeviceConfig,
    shell: ShellConfig,
}

impl ShellDriver {
    /// A driver for `device` with its shell settings.
    pub(crate) fn new(device: DeviceConfig, shell: ShellConfig) -> Self {
        ShellDriver { device, shell }
    }
}

fn kill_group(pid: Option<u32>, sig: nix::sys::signal::Signal) {
    if let Some(pid) = pid {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig);
    }
}

impl Driver for ShellDriver {
    fn kind(&self) -> &'static str {
        "shell"
    }

    fn run<'a>(&'a self, ctx: &'a mut JobContext) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let values = Values {
                params: &ctx.spec.params,
                device: &self.device,
                job: ctx.job,
                attempt: ctx.attempt,
                dir: &ctx.dir,
                artifacts: &ctx.artifacts,
                tftp: None,
            };
            let argv = match expand_argv(&self.shell.command, &values) {
                Ok(a) => a,
                Err(e) => return Outcome::infra(ErrorCode::InvalidJob, e),
            };
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .current_dir(self.shell.workdir.as_ref().unwrap_or(&ctx.dir))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .env("LABWIRE_JOB_ID", ctx.job.to_string())
                .env("LABWIRE_JOB_ATTEMPT", ctx.attempt.to_string())
                .env("LABWIRE_JOB_DIR", &ctx.dir)
                .env("LABWIRE_DEVICE", &self.device.name);
            for (k, v) in &ctx.spec.params {
                cmd.env(format!("LABWIRE_PARAM_{}", k.to_ascii_uppercase()), v);
            }
            cmd.envs(&self.shell.env);
            ctx.log.note(&format!(
                "running {:?} on the lab host",
                ctx.log.redact_args(&argv)
            ));
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    return Outcome::infra(
                        ErrorCode::Infrastructure,
                        format!("cannot start `{}`: {e}", argv[0]),
                    );
                }
            };
            let pid = child.id();
            let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
                return Outcome::infra(ErrorCode::Infrastructure, "no pipes to the command");
            };
            let deadline = tokio::time::sleep(ctx.timeout);
            tokio::pin!(deadline);
            // Once the command has exited, output still in the pipes is read for at most this
            // long (a background child that escaped the process group could hold them open).
            let drain = tokio::time::sleep(Duration::from_secs(3600 * 24 * 365));
            tokio::pin!(drain);
            let mut flush = tokio::time::interval(Duration::from_millis(250));
            let (mut obuf, mut ebuf) = (vec![0u8; 16384], vec![0u8; 16384]);
            let (mut out_open, mut err_open) = (true, true);
            let mut stopped: Option<Outcome> = None;
            let mut status = None;
            while out_open || err_open || status.is_none() {
                tokio::select! {
                    n = out.read(&mut obuf), if out_open => match n {
                        Ok(0) | Err(_) => out_open = false,
                        Ok(n) => ctx.log.write(&obuf[..n]),
                    },
                    n = err.read(&mut ebuf), if err_open => match n {
                        Ok(0) | Err(_) => err_open = false,
                        Ok(n) => ctx.log.write(&ebuf[..n]),
                    },
                    st = child.wait(), if status.is_none() => {
                        status = Some(st);
                        // Whatever the command left running in its group goes too.
                        kill_group(pid, nix::sys::signal::Signal::SIGKILL);
                        drain.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(5));
                    }
                    _ = &mut drain => break,
                    _ = flush.tick() => ctx.log.flush(),
                    _ = &mut deadline, if stopped.is_none() => {
                        ctx.log.note(&format!("time limit of {} reached: stopping the command", humantime::format_duration(ctx.timeout)));
                        stopped = Some(Outcome::infra(ErrorCode::TestTimeout, format!("the command ran longer than {}", humantime::format_duration(ctx.timeout))));
                        kill_group(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                    _ = ctx.cancel.cancelled(), if stopped.is_none() => {
                        ctx.log.note("job cancelled: stopping the command");
                        stopped = Some(Outcome::infra(ErrorCode::Cancelled, "the job was cancelled while running"));
                        kill_group(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                }
            }
            ctx.log.flush();
            if let Some(o) = stopped {
                return o;
            }
            let Some(status) = status else {
                return Outcome::infra(ErrorCode::Infrastructure, "the command's status was lost");
            };
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    return Outcome::infra(
                        ErrorCode::Infrastructure,
                        format!("cannot wait for the command: {e}"),
                    );
                }
            };
            let (result, what) = match (status.code(), status.signal()) {
                (Some(0), _) => (NodeResult::Pass, "exit code 0".to_string()),
                (Some(c), _) => (NodeResult::Fail, format!("exit code {c}")),
                (None, Some(s)) => (NodeResult::Fail, format!("killed by signal {s}")),
                (None, None) => (NodeResult::Fail, "unknown exit status".to_string()),
            };
            ctx.log.note(&format!("command finished: {what}"));
            let mut o = Outcome::finished(result);
            o.data.insert("exit_code".into(), status.code().into());
            let mut t = TestNode::leaf("exit-status", result);
            if result != NodeResult::Pass {
                t.error = Some(what);
            }
            o.tests.push(t);
            o
        })
    }
}
