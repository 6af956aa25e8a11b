//! The `serial` driver: the agent is the dispatcher. It downloads the job's artifacts, runs
//! the deploy command, powers the board on, follows the boot on the serial console, logs in,
//! runs the job's commands on the board's shell with their exit status, and powers the board
//! off at the end, whatever happened (success, failure, timeout, cancel, agent shutdown).
//! Every byte the console prints is the job's log. The boot, login and commands are the
//! board engine's ([`super::board`]); this driver adds the power commands and the console.

use super::board::{Failure, Script, Steps, fail, run_command};
use super::{Driver, JobContext, Outcome};
use crate::config::{DeviceConfig, SerialConfig};
use crate::placeholders::{Values, expand_argv};
use crate::serial::Session;
use futures::future::BoxFuture;
use labwire_common::ErrorCode;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The serial driver of one board.
pub struct SerialDriver {
    device: DeviceConfig,
    cfg: SerialConfig,
}

impl SerialDriver {
    /// A driver for `device` with its serial settings.
    pub fn new(device: DeviceConfig, cfg: SerialConfig) -> Self {
        SerialDriver { device, cfg }
    }

    fn values<'v>(
        &'v self,
        ctx: &'v JobContext,
        artifacts: &'v BTreeMap<String, PathBuf>,
    ) -> Values<'v> {
        Values {
            params: &ctx.spec.params,
            device: &self.device,
            job: ctx.job,
            attempt: ctx.attempt,
            dir: &ctx.dir,
            artifacts,
        }
    }

    /// Powers the board off; errors are logged (the job's outcome is already decided).
    async fn power_off(&self, ctx: &mut JobContext, artifacts: &BTreeMap<String, PathBuf>) {
        let argv = match expand_argv(&self.cfg.power_off_command, &self.values(ctx, artifacts)) {
            Ok(a) => a,
            Err(e) => {
                ctx.log.note(&format!("power off: {e}"));
                return;
            }
        };
        if let Err(e) = run_command(
            "power off",
            &argv,
            &self.cfg.command_env,
            self.cfg.command_timeout,
            &mut ctx.log,
        )
        .await
        {
            tracing::error!(device = %self.device.name, error = %e, "power off failed");
            ctx.log.note(&e);
        }
    }

    /// Powers the board off outside a job (after an agent restart found it journalled).
    pub async fn power_off_now(&self) -> Result<(), String> {
        let empty = BTreeMap::new();
        let params = Default::default();
        let dir = std::env::temp_dir();
        let v = Values {
            params: &params,
            device: &self.device,
            job: 0,
            attempt: 0,
            dir: &dir,
            artifacts: &empty,
        };
        let argv = expand_argv(&self.cfg.power_off_command, &v)?;
        let out = tokio::time::timeout(
            self.cfg.command_timeout,
            tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .envs(&self.cfg.command_env)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .map_err(|_| "power off timed out".to_string())?
        .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("power off failed ({})", out.status))
        }
    }

    async fn boot_and_test(
        &self,
        ctx: &mut JobContext,
        artifacts: &BTreeMap<String, PathBuf>,
        out: &mut Steps,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let cfg = &self.cfg;
        let values = self.values(ctx, artifacts);
        let expand = |argv: &[String]| {
            expand_argv(argv, &values).map_err(|e| fail(ErrorCode::InvalidJob, e, None))
        };
        let console_argv = match &cfg.console {
            crate::config::ConsoleConfig::Command { argv } => Some(expand(argv)?),
            _ => None,
        };
        let deploy = cfg.deploy_command.as_deref().map(expand).transpose()?;
        let pre = cfg.pre_power_command.as_deref().map(expand).transpose()?;
        // A hard reset, when the board has one, starts the job from a fresh boot even if the
        // board was left on; otherwise power on.
        let (power_on, power_what) = match &cfg.hard_reset_command {
            Some(reset) => (expand(reset)?, "hard reset"),
            None => (expand(&cfg.power_on_command)?, "power on"),
        };
        let script = Script::prepare(
            &cfg.boot,
            &cfg.login,
            &values,
            &ctx.spec.commands,
            &ctx.spec.params,
            ctx.timeout,
        )?;

        if let Some(d) = &deploy {
            run_command(
                "deploy",
                d,
                &cfg.command_env,
                cfg.command_timeout,
                &mut ctx.log,
            )
            .await
            .map_err(|e| fail(ErrorCode::DeployFailed, e, None))?;
        }
        // Open the console before power-on when it exists, so that nothing is missed; a pty
        // that appears at power-on (QEMU) is opened right after.
        let early = match &cfg.console {
            crate::config::ConsoleConfig::Tty { path, .. } if !path.exists() => None,
            c => Some(
                crate::serial::open(c, console_argv.clone(), Duration::from_secs(5))
                    .await
                    .map_err(|e| fail(ErrorCode::ConsoleLost, e.to_string(), None))?,
            ),
        };
        if let Some(p) = &pre {
            run_command(
                "pre-power",
                p,
                &cfg.command_env,
                cfg.command_timeout,
                &mut ctx.log,
            )
            .await
            .map_err(|e| fail(ErrorCode::PowerFailed, e, None))?;
        }
        run_command(
            power_what,
            &power_on,
            &cfg.command_env,
            cfg.command_timeout,
            &mut ctx.log,
        )
        .await
        .map_err(|e| fail(ErrorCode::PowerFailed, e, None))?;
        out.mark("powered_on_ms", started);
        let console = match early {
            Some(c) => c,
            None => crate::serial::open(&cfg.console, console_argv, Duration::from_secs(10))
                .await
                .map_err(|e| fail(ErrorCode::ConsoleLost, e.to_string(), None))?,
        };
        let cancel = ctx.cancel.clone();
        let mut s = Session::new(console, &mut ctx.log, cancel);
        let desc = s.describe().to_string();
        s.log().note(&format!("console: {desc}"));
        script.run(&mut s, started, out).await
    }
}

impl Driver for SerialDriver {
    fn kind(&self) -> &'static str {
        "serial"
    }

    fn recover(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.power_off_now())
    }

    fn run<'a>(&'a self, ctx: &'a mut JobContext) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            // Artifacts first: nothing is powered on for a job whose files cannot be had.
            let artifacts =
                match super::board::fetch_artifacts(ctx, self.cfg.max_download_bytes).await {
                    Ok(a) => a,
                    Err(o) => return o,
                };
            let mut steps = Steps::default();
            let res = self.boot_and_test(ctx, &artifacts, &mut steps).await;
            // Always: the board goes off, whatever happened above.
            self.power_off(ctx, &artifacts).await;
            steps.outcome(res, &mut ctx.log)
        })
    }
}
