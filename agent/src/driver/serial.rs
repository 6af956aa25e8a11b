//! The `serial` driver: the agent is the dispatcher. It downloads the job's artifacts, runs
//! the deploy command, powers the board on, follows the boot on the serial console, logs in,
//! runs the job's commands on the board's shell with their exit status, and powers the board
//! off at the end, whatever happened (success, failure, timeout, cancel, agent shutdown).
//! Every byte the console prints is the job's log. The boot, login and commands are the
//! board engine's ([`super::board`]); this driver adds the power (commands or pdudaemon),
//! the TFTP staging of the job's files ([`crate::tftp`]) and the console.

mod borrow;

use super::board::config::BootPreset;
use super::board::config::{
    BootConfig, LoginConfig, default_command_timeout, default_max_download,
};
use super::board::{Failure, Script, Steps, fail, run_command};
use super::pdudaemon::{PduStart, PowerConfig};
use super::{Driver, JobContext, Outcome};
use crate::config::DeviceConfig;
use crate::device_types::UBootType;
use crate::joblog::JobLog;
use crate::placeholders::{Values, expand_argv};
use crate::serial::Session;
use crate::serial::config::ConsoleConfig;
use crate::tftp::{Staged, TftpConfig};
use futures::future::BoxFuture;
use labwire_common::ErrorCode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
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
    /// Powers the board on (or `power:`).
    #[serde(default)]
    pub power_on_command: Option<Vec<String>>,
    /// Powers the board off (or `power:`). Always run at the end of a job, whatever happened.
    #[serde(default)]
    pub power_off_command: Option<Vec<String>>,
    /// The board's power through a power daemon instead of commands:
    /// `{pdudaemon: {url, hostname, port}}`.
    #[serde(default)]
    pub power: Option<PowerConfig>,
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

/// Checks a serial device's settings; errors name the key. `tftp`: the agent has a `tftp:`
/// section; `u_boot`: the device type's U-Boot settings.
pub(crate) fn validate(
    key: &str,
    s: &SerialConfig,
    d: &DeviceConfig,
    tftp: bool,
    u_boot: Option<&UBootType>,
) -> anyhow::Result<()> {
    crate::serial::config::validate_console(&format!("{key}.console"), &s.console, d)?;
    match (&s.power, &s.power_on_command, &s.power_off_command) {
        (Some(PowerConfig::Pdudaemon(p)), None, None) => {
            if s.hard_reset_command.is_some() {
                anyhow::bail!(
                    "{key}.hard_reset_command: with pdudaemon, set `power.pdudaemon.start: reboot` instead"
                );
            }
            p.validate(&format!("{key}.power.pdudaemon"))?
        }
        (Some(_), _, _) => anyhow::bail!(
            "{key}.power: give either `power` or `power_on_command` and `power_off_command`, not both"
        ),
        (None, Some(on), Some(off)) => {
            crate::config::validate_command(&format!("{key}.power_on_command"), on, d)?;
            crate::config::validate_command(&format!("{key}.power_off_command"), off, d)?;
        }
        (None, _, _) => anyhow::bail!(
            "{key}: the board's power is missing: `power_on_command` and `power_off_command`, or `power: {{pdudaemon: {{url, hostname, port}}}}`"
        ),
    }
    let generated = s.boot.preset == BootPreset::UBoot && s.boot.u_boot.commands.is_empty();
    if generated && tftp && u_boot.is_none() {
        anyhow::bail!(
            "{key}.boot.u_boot.commands: empty, and device type `{}` has no `u_boot` (kernel_format, load addresses) for the TFTP boot the agent types",
            d.device_type
        );
    }
    let uses_tftp = s
        .boot
        .u_boot
        .commands
        .iter()
        .chain(&s.boot.grub.commands)
        .any(|c| c.contains("{tftp."));
    if uses_tftp && !tftp {
        anyhow::bail!("{key}.boot: `{{tftp.…}}` placeholders need a `tftp:` section in agent.yaml");
    }
    for (name, cmd) in [
        ("pre_power_command", &s.pre_power_command),
        ("hard_reset_command", &s.hard_reset_command),
        ("deploy_command", &s.deploy_command),
    ] {
        if let Some(c) = cmd {
            crate::config::validate_command(&format!("{key}.{name}"), c, d)?;
        }
    }
    super::board::config::validate_boot_login(key, &s.boot, &s.login, d, tftp)
}

/// The serial driver of one board.
pub(crate) struct SerialDriver {
    device: DeviceConfig,
    cfg: SerialConfig,
    /// The folders `file://` artifacts may come from (`artifacts.file_dirs`).
    file_dirs: Vec<PathBuf>,
    /// The lab's TFTP server, when the agent stages files for it.
    tftp: Option<TftpConfig>,
    /// The device type's U-Boot settings (kernel format, load addresses).
    u_boot: Option<UBootType>,
}

impl SerialDriver {
    /// A driver for `device` with its serial settings; `file://` artifacts only from
    /// `file_dirs`; job files staged for `tftp`; `u_boot` of the device type.
    pub(crate) fn new(
        device: DeviceConfig,
        cfg: SerialConfig,
        file_dirs: Vec<PathBuf>,
        tftp: Option<TftpConfig>,
        u_boot: Option<UBootType>,
    ) -> Self {
        SerialDriver {
            device,
            cfg,
            file_dirs,
            tftp,
            u_boot,
        }
    }

    fn values<'v>(
        &'v self,
        ctx: &'v JobContext,
        artifacts: &'v BTreeMap<String, PathBuf>,
        tftp: Option<&'v Staged>,
    ) -> Values<'v> {
        Values {
            params: &ctx.spec.params,
            device: &self.device,
            job: ctx.job,
            attempt: ctx.attempt,
            dir: &ctx.dir,
            artifacts,
            tftp,
        }
    }

    /// Whether the board boots through a bootloader that fetches files over TFTP.
    fn stages(&self) -> bool {
        self.tftp.is_some() && self.cfg.boot.preset != BootPreset::Kernel
    }

    /// Asks pdudaemon for `request`; the job log, when there is one, says what was asked and
    /// the answer.
    async fn pdu(&self, request: &str, mut log: Option<&mut JobLog>) -> Result<(), String> {
        let Some(PowerConfig::Pdudaemon(p)) = &self.cfg.power else {
            return Err("the device has no pdudaemon".into());
        };
        if let Some(l) = log.as_deref_mut() {
            l.note(&format!(
                "power {request}: pdudaemon {} PDU `{}` port {}",
                p.url, p.hostname, p.port
            ));
        }
        let r = p.request(request, self.cfg.command_timeout).await;
        if let (Ok(()), Some(l)) = (&r, log) {
            l.note(&format!("power {request}: pdudaemon took the request"));
        }
        r
    }

    /// Powers the board off; errors are logged (the job's outcome is already decided).
    async fn power_off(&self, ctx: &mut JobContext, artifacts: &BTreeMap<String, PathBuf>) {
        let res = match &self.cfg.power_off_command {
            None => self.pdu("off", Some(&mut ctx.log)).await,
            Some(cmd) => match expand_argv(cmd, &self.values(ctx, artifacts, None)) {
                Ok(argv) => {
                    run_command(
                        "power off",
                        &argv,
                        &self.cfg.command_env,
                        self.cfg.command_timeout,
                        &mut ctx.log,
                    )
                    .await
                }
                Err(e) => Err(format!("power off: {e}")),
            },
        };
        if let Err(e) = res {
            tracing::error!(device = %self.device.name, error = %e, "power off failed");
            ctx.log.note(&e);
        }
    }

    /// Powers the board off outside a job (after an agent restart found it journalled).
    pub(crate) async fn power_off_now(&self) -> Result<(), String> {
        let Some(cmd) = &self.cfg.power_off_command else {
            return self.pdu("off", None).await;
        };
        self.run_power("power off", cmd).await
    }

    /// The boot settings of this job: the device's, with the TFTP boot typed by the agent
    /// when `u_boot.commands` is empty and the job's files are staged.
    fn boot_config(&self, staged: Option<&Staged>) -> std::borrow::Cow<'_, BootConfig> {
        let b = &self.cfg.boot;
        match (staged, &self.u_boot) {
            (Some(st), Some(t))
                if b.preset == BootPreset::UBoot && b.u_boot.commands.is_empty() =>
            {
                let mut b = b.clone();
                b.u_boot.commands =
                    super::board::uboot::tftp_boot(&b.u_boot, t, st.has("ramdisk"), st.has("dtb"));
                std::borrow::Cow::Owned(b)
            }
            _ => std::borrow::Cow::Borrowed(b),
        }
    }

    async fn boot_and_test(
        &self,
        ctx: &mut JobContext,
        artifacts: &BTreeMap<String, PathBuf>,
        staged: Option<&Staged>,
        out: &mut Steps,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let cfg = &self.cfg;
        let boot = self.boot_config(staged);
        if boot.preset == BootPreset::UBoot && boot.u_boot.commands.is_empty() {
            return Err(fail(
                ErrorCode::InvalidJob,
                "the TFTP boot needs a `kernel` artifact staged for TFTP",
                None,
            ));
        }
        let values = self.values(ctx, artifacts, staged);
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
        // board was left on; otherwise power on. With pdudaemon: `on`, or `reboot`.
        let power_on = match (&cfg.hard_reset_command, &cfg.power_on_command) {
            (Some(reset), _) => Some((expand(reset)?, "hard reset")),
            (None, Some(on)) => Some((expand(on)?, "power on")),
            (None, None) => None,
        };
        let script = Script::prepare(
            &boot,
            &cfg.login,
            &values,
            &ctx.spec.commands,
            &ctx.spec.params,
            ctx.timeout,
        )?;
        if let Some(st) = staged {
            ctx.log.note(&format!(
                "tftp: the job's files are in {} (as the board asks: {})",
                st.path().display(),
                st.lookup("dir").unwrap_or_default()
            ));
        }

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
        let pdu = match (&power_on, &cfg.power) {
            (Some((argv, what)), _) => {
                run_command(
                    what,
                    argv,
                    &cfg.command_env,
                    cfg.command_timeout,
                    &mut ctx.log,
                )
                .await
                .map_err(|e| fail(ErrorCode::PowerFailed, e, None))?;
                None
            }
            (None, Some(PowerConfig::Pdudaemon(p))) => {
                let request = match p.start {
                    PduStart::On => "on",
                    PduStart::Reboot => "reboot",
                };
                self.pdu(request, Some(&mut ctx.log))
                    .await
                    .map_err(|e| fail(ErrorCode::PowerFailed, e, None))?;
                Some(request)
            }
            (None, None) => {
                return Err(fail(
                    ErrorCode::InvalidConfig,
                    "the board has no power-on",
                    None,
                ));
            }
        };
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
        let res = script.run(&mut s, started, out).await;
        match (res, pdu) {
            // pdudaemon took the request but the board never spoke: its power did not change
            // (a queue, a PDU that failed after the answer, a wrong outlet).
            (Err(f), Some(request)) if f.code == ErrorCode::BootTimeout && s.received() == 0 => {
                Err(fail(
                    ErrorCode::PowerFailed,
                    format!(
                        "pdudaemon took `{request}`, but the board showed nothing on its console within the boot timeout ({}): did the power change? (pdudaemon queues requests; check its log and the PDU outlet)",
                        humantime::format_duration(boot.timeout)
                    ),
                    f.test,
                ))
            }
            (res, _) => res,
        }
    }
}

impl Driver for SerialDriver {
    fn kind(&self) -> &'static str {
        "serial"
    }

    fn recover(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.power_off_now())
    }

    fn open_console(
        &self,
        wait: Duration,
    ) -> BoxFuture<'_, Result<crate::serial::Console, String>> {
        Box::pin(self.borrowed_console(wait))
    }

    fn power(&self, action: super::PowerAction) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match action {
                super::PowerAction::On => self.borrowed_power_on().await,
                super::PowerAction::Off => self.power_off_now().await,
                super::PowerAction::Reset => self.borrowed_reset().await,
            }
        })
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
            // The files the board fetches over TFTP, in the job's own folder under the TFTP
            // root; removed when `staged` is dropped: at the end of this job on every path.
            let staged = match &self.tftp {
                Some(t) if self.stages() => {
                    match Staged::stage(t, ctx.job, ctx.attempt, &artifacts) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            let msg = format!(
                                "tftp: cannot stage the job's files under {}: {e}",
                                t.folder().display()
                            );
                            ctx.log.note(&msg);
                            return Outcome::infra(ErrorCode::DeployFailed, msg);
                        }
                    }
                }
                _ => None,
            };
            let mut steps = Steps::default();
            let res = self
                .boot_and_test(ctx, &artifacts, staged.as_ref(), &mut steps)
                .await;
            let out = steps.outcome(res, &mut ctx.log);
            // The board goes off, whatever happened above; unless the job asks to hold its
            // board on failure and no infrastructure error ended it: then it stays powered
            // and logged in, and the caller decides once the log's results are known.
            if ctx.spec.hold_on_failure_seconds > 0
                && out.error_code.is_none()
                && !ctx.cancel.is_cancelled()
            {
                ctx.left_on = true;
            } else {
                self.power_off(ctx, &artifacts).await;
            }
            drop(staged);
            out
        })
    }
}
