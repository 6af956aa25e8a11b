//! The `serial` driver: the agent is the dispatcher. It downloads the job's artifacts, runs
//! the deploy command, powers the board on, follows the boot on the serial console, logs in,
//! runs the job's commands on the board's shell with their exit status, and powers the board
//! off at the end, whatever happened (success, failure, timeout, cancel, agent shutdown).
//! Every byte the console prints is the job's log. The boot, login and commands are the
//! board engine's ([`super::board`]); this driver adds the power commands and the console.

use super::board::config::{
    BootConfig, LoginConfig, default_command_timeout, default_max_download,
};
use super::board::{Failure, Script, Steps, fail, run_command};
use super::{Driver, JobContext, Outcome};
use crate::config::DeviceConfig;
use crate::placeholders::{Values, expand_argv};
use crate::serial::Session;
use crate::serial::config::ConsoleConfig;
use futures::future::BoxFuture;
use labwire_common::ErrorCode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The serial driver: the agent is the dispatcher. Power commands use the vocabulary of
/// LAVA's device dictionaries; every command is an argument list (no shell) whose arguments
/// may be placeholders, each replaced by one whole value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Where the console is.
    #[serde(deserialize_with = "crate::serial::config::console_map_or_tag")]
    pub console: ConsoleConfig,
    /// Run before powering on (e.g. to switch a USB hub port). Optional.
    #[serde(default)]
    pub pre_power_command: Option<Vec<String>>,
    /// Powers the board on.
    pub power_on_command: Vec<String>,
    /// Powers the board off. Always run at the end of a job, whatever happened.
    pub power_off_command: Vec<String>,
    /// Power-cycles the board. Optional; when set, a job starts with it instead of
    /// `power_on_command`, so a board that was left on still boots afresh.
    #[serde(default)]
    pub hard_reset_command: Option<Vec<String>>,
    /// Run after the artifacts are downloaded and before power-on (e.g. copy them to a TFTP
    /// folder). Optional.
    #[serde(default)]
    pub deploy_command: Option<Vec<String>>,
    /// Environment of the power and deploy commands.
    #[serde(default)]
    pub command_env: BTreeMap<String, String>,
    /// How the board boots.
    #[serde(default)]
    pub boot: BootConfig,
    /// How to log in and recognise the shell.
    #[serde(default)]
    pub login: LoginConfig,
    /// Largest artifact the agent downloads for this board. Default 2 GiB.
    #[serde(default = "default_max_download")]
    pub max_download_bytes: u64,
    /// How long a power or deploy command may take. Default `60s`.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
}

/// Checks a serial device's settings; errors name the key.
pub(crate) fn validate(key: &str, s: &SerialConfig, d: &DeviceConfig) -> anyhow::Result<()> {
    crate::serial::config::validate_console(&format!("{key}.console"), &s.console, d)?;
    crate::config::validate_command(&format!("{key}.power_on_command"), &s.power_on_command, d)?;
    crate::config::validate_command(&format!("{key}.power_off_command"), &s.power_off_command, d)?;
    for (name, cmd) in [
        ("pre_power_command", &s.pre_power_command),
        ("hard_reset_command", &s.hard_reset_command),
        ("deploy_command", &s.deploy_command),
    ] {
        if let Some(c) = cmd {
            crate::config::validate_command(&format!("{key}.{name}"), c, d)?;
        }
    }
    super::board::config::validate_boot_login(key, &s.boot, &s.login, d)
}

/// The serial driver of one board.
pub(crate) struct SerialDriver {
    device: DeviceConfig,
    cfg: SerialConfig,
    /// The folders `file://` artifacts may come from (`artifacts.file_dirs`).
    file_dirs: Vec<PathBuf>,
}

impl SerialDriver {
    /// A driver for `device` with its serial settings; `file://` artifacts only from
    /// `file_dirs`.
    pub(crate) fn new(device: DeviceConfig, cfg: SerialConfig, file_dirs: Vec<PathBuf>) -> Self {
        SerialDriver {
            device,
            cfg,
            file_dirs,
        }
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
    pub(crate) async fn power_off_now(&self) -> Result<(), String> {
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
            ConsoleConfig::Command { argv } => Some(expand(argv)?),
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
            ConsoleConfig::Tty { path, .. } if !path.exists() => None,
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
            let artifacts = match super::board::fetch_artifacts(
                ctx,
                self.cfg.max_download_bytes,
                &self.file_dirs,
            )
            .await
            {
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
