//! The `serial` driver: the agent is the dispatcher. It downloads the job's artifacts, runs
//! the deploy command, powers the board on, follows the boot on the serial console, logs in,
//! runs the job's commands on the board's shell with their exit status, and powers the board
//! off at the end, whatever happened (success, failure, timeout, cancel, agent shutdown).
//! Every byte the console prints is the job's log.

use super::{Driver, JobContext, Outcome};
use crate::config::{BootPreset, DeviceConfig, SerialConfig};
use crate::placeholders::{
    Values, expand_argv, expand_board_command, expand_boot_text, shell_quote,
};
use crate::serial::{ExpectError, Session};
use futures::future::BoxFuture;
use labwire_common::{NodeResult, TestNode};
use rand::RngCore;
use regex::bytes::Regex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// The serial driver of one board.
pub struct SerialDriver {
    device: DeviceConfig,
    cfg: SerialConfig,
}

/// A step that failed: the error code, the message, and the setup test that failed with it.
struct Failure {
    code: &'static str,
    msg: String,
    test: Option<&'static str>,
}

fn fail(code: &'static str, msg: impl Into<String>, test: Option<&'static str>) -> Failure {
    Failure {
        code,
        msg: msg.into(),
        test,
    }
}

fn re(pattern: &str, what: &str) -> Result<Regex, Failure> {
    Regex::new(pattern)
        .map_err(|e| fail("invalid_config", format!("{what} `{pattern}`: {e}"), None))
}

fn expect_failure(
    e: ExpectError,
    what: &str,
    timeout_code: &'static str,
    test: &'static str,
    limit: Duration,
) -> Failure {
    match e {
        ExpectError::Timeout => fail(
            timeout_code,
            format!(
                "{what} did not appear within {}",
                humantime::format_duration(limit)
            ),
            Some(test),
        ),
        ExpectError::Closed(why) => fail(
            "console_lost",
            format!("the console closed while waiting for {what}: {why}"),
            Some(test),
        ),
        ExpectError::Cancelled => fail(
            "cancelled",
            format!("the job was cancelled while waiting for {what}"),
            Some(test),
        ),
        ExpectError::Panic(text) => fail(
            "kernel_panic",
            format!("the kernel panicked: {}", first_line(&text)),
            Some(test),
        ),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

/// Runs a configured command (no shell) with a time limit; its output goes to the job log.
async fn run_command(
    what: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
    log: &mut crate::joblog::JobLog,
) -> Result<(), String> {
    log.note(&format!("{what}: {argv:?}"));
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{what}: cannot start `{}`: {e}", argv[0]))?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let collect = async {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut a).await;
        }
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut b).await;
        }
        let st = child.wait().await;
        (a, b, st)
    };
    let (a, b, st) = tokio::time::timeout(timeout, collect).await.map_err(|_| {
        format!(
            "{what}: `{}` did not finish within {}",
            argv[0],
            humantime::format_duration(timeout)
        )
    })?;
    for chunk in [&a, &b] {
        for line in String::from_utf8_lossy(chunk).lines() {
            log.note(&format!("{what}: {line}"));
        }
    }
    match st {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{what}: `{}` failed ({s})", argv[0])),
        Err(e) => Err(format!("{what}: cannot wait for `{}`: {e}", argv[0])),
    }
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
        setup: &mut Vec<TestNode>,
        cmds: &mut Vec<TestNode>,
        data: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let cfg = &self.cfg;
        let values = self.values(ctx, artifacts);
        let expand =
            |argv: &[String]| expand_argv(argv, &values).map_err(|e| fail("invalid_job", e, None));
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
        let boot_texts = |cmds: &[String]| -> Result<Vec<String>, Failure> {
            cmds.iter()
                .map(|c| expand_boot_text(c, &values).map_err(|e| fail("invalid_job", e, None)))
                .collect()
        };
        let uboot_cmds = boot_texts(&cfg.boot.u_boot.commands)?;
        let grub_cmds = boot_texts(&cfg.boot.grub.commands)?;
        let steps: Vec<(Regex, Option<String>, Duration)> = cfg
            .boot
            .steps
            .iter()
            .map(|s| {
                let send = s
                    .send
                    .as_deref()
                    .map(|t| expand_boot_text(t, &values))
                    .transpose()
                    .map_err(|e| fail("invalid_job", e, None))?;
                Ok((re(&s.expect, "boot step")?, send, s.timeout))
            })
            .collect::<Result<_, Failure>>()?;
        let commands: Vec<String> = ctx
            .spec
            .commands
            .iter()
            .map(|c| {
                expand_board_command(c, &ctx.spec.params).map_err(|e| fail("invalid_job", e, None))
            })
            .collect::<Result<_, _>>()?;

        if let Some(d) = &deploy {
            run_command(
                "deploy",
                d,
                &cfg.command_env,
                cfg.command_timeout,
                &mut ctx.log,
            )
            .await
            .map_err(|e| fail("deploy_failed", e, None))?;
        }
        // Open the console before power-on when it exists, so that nothing is missed; a pty
        // that appears at power-on (QEMU) is opened right after.
        let early = match &cfg.console {
            crate::config::ConsoleConfig::Tty { path, .. } if !path.exists() => None,
            c => Some(
                crate::serial::open(c, console_argv.clone(), Duration::from_secs(5))
                    .await
                    .map_err(|e| fail("console_lost", e.to_string(), None))?,
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
            .map_err(|e| fail("power_failed", e, None))?;
        }
        run_command(
            power_what,
            &power_on,
            &cfg.command_env,
            cfg.command_timeout,
            &mut ctx.log,
        )
        .await
        .map_err(|e| fail("power_failed", e, None))?;
        data.insert(
            "powered_on_ms".into(),
            (started.elapsed().as_millis() as u64).into(),
        );
        let console = match early {
            Some(c) => c,
            None => crate::serial::open(&cfg.console, console_argv, Duration::from_secs(10))
                .await
                .map_err(|e| fail("console_lost", e.to_string(), None))?,
        };
        let cancel = ctx.cancel.clone();
        let mut s = Session::new(console, &mut ctx.log, cancel);
        let desc = s.describe().to_string();
        s.log().note(&format!("console: {desc}"));

        // Boot: bootloader steps, then the kernel's first message.
        let boot_deadline = Instant::now() + cfg.boot.timeout;
        let left = |deadline: Instant| deadline.saturating_duration_since(Instant::now());
        let boot_fail = |e, what: &str| {
            expect_failure(e, what, "boot_timeout", "kernel-boot", cfg.boot.timeout)
        };
        match cfg.boot.preset {
            BootPreset::Kernel => {}
            BootPreset::UBoot => {
                let u = &cfg.boot.u_boot;
                let interrupt = re(
                    &regex::escape(&u.interrupt_prompt),
                    "u_boot.interrupt_prompt",
                )?;
                let prompt = re(&regex::escape(&u.prompt), "u_boot.prompt")?;
                s.expect(&[&interrupt], left(boot_deadline))
                    .await
                    .map_err(|e| boot_fail(e, "U-Boot's autoboot prompt"))?;
                s.send(u.interrupt_char.as_bytes())
                    .await
                    .map_err(|e| fail("console_lost", e.to_string(), Some("kernel-boot")))?;
                s.expect(&[&prompt], left(boot_deadline))
                    .await
                    .map_err(|e| boot_fail(e, "U-Boot's prompt"))?;
                for (i, c) in uboot_cmds.iter().enumerate() {
                    s.send(format!("{c}\n").as_bytes())
                        .await
                        .map_err(|e| fail("console_lost", e.to_string(), Some("kernel-boot")))?;
                    if i + 1 < uboot_cmds.len() {
                        s.expect(&[&prompt], left(boot_deadline))
                            .await
                            .map_err(|e| boot_fail(e, "U-Boot's prompt"))?;
                    }
                }
            }
            BootPreset::Grub => {
                let g = &cfg.boot.grub;
                let menu = re(&regex::escape(&g.menu_prompt), "grub.menu_prompt")?;
                let prompt = re(&regex::escape(&g.prompt), "grub.prompt")?;
                s.expect(&[&menu], left(boot_deadline))
                    .await
                    .map_err(|e| boot_fail(e, "GRUB's menu"))?;
                s.send(b"c")
                    .await
                    .map_err(|e| fail("console_lost", e.to_string(), Some("kernel-boot")))?;
                s.expect(&[&prompt], left(boot_deadline))
                    .await
                    .map_err(|e| boot_fail(e, "GRUB's prompt"))?;
                for (i, c) in grub_cmds.iter().enumerate() {
                    s.send(format!("{c}\n").as_bytes())
                        .await
                        .map_err(|e| fail("console_lost", e.to_string(), Some("kernel-boot")))?;
                    if i + 1 < grub_cmds.len() {
                        s.expect(&[&prompt], left(boot_deadline))
                            .await
                            .map_err(|e| boot_fail(e, "GRUB's prompt"))?;
                    }
                }
            }
        }
        for (pattern, send, t) in &steps {
            s.expect(&[pattern], (*t).min(left(boot_deadline)))
                .await
                .map_err(|e| boot_fail(e, &format!("boot step `{}`", pattern.as_str())))?;
            if let Some(text) = send {
                s.send(text.as_bytes())
                    .await
                    .map_err(|e| fail("console_lost", e.to_string(), Some("kernel-boot")))?;
            }
        }
        let kernel = re(&cfg.boot.kernel_start, "boot.kernel_start")?;
        s.expect(&[&kernel], left(boot_deadline))
            .await
            .map_err(|e| boot_fail(e, "the kernel's start message"))?;
        data.insert(
            "kernel_started_ms".into(),
            (started.elapsed().as_millis() as u64).into(),
        );
        setup.push(TestNode::leaf("kernel-boot", NodeResult::Pass));

        // Log in.
        let l = &cfg.login;
        let login_deadline = Instant::now() + l.timeout;
        let login_fail =
            |e, what: &str| expect_failure(e, what, "login_failed", "login", l.timeout);
        let shell = re(&l.shell_prompt, "login.shell_prompt")?;
        let login_prompt = re(&l.login_prompt, "login.login_prompt")?;
        let password_prompt = re(&l.password_prompt, "login.password_prompt")?;
        let incorrect = re(
            r"Login incorrect|Login failed|incorrect password",
            "login failure message",
        )?;
        match &l.username {
            None => {
                s.send(b"\n")
                    .await
                    .map_err(|e| fail("console_lost", e.to_string(), Some("login")))?;
                s.expect(&[&shell], left(login_deadline))
                    .await
                    .map_err(|e| login_fail(e, "the shell prompt"))?;
            }
            Some(user) => {
                s.expect(&[&login_prompt], left(login_deadline))
                    .await
                    .map_err(|e| login_fail(e, "the login prompt"))?;
                s.send(format!("{user}\n").as_bytes())
                    .await
                    .map_err(|e| fail("console_lost", e.to_string(), Some("login")))?;
                let (i, _) = s
                    .expect(
                        &[&password_prompt, &shell, &incorrect],
                        left(login_deadline),
                    )
                    .await
                    .map_err(|e| login_fail(e, "the password prompt or a shell prompt"))?;
                if i == 0 {
                    let pw = l.password.as_ref().map(|p| p.0.clone()).unwrap_or_default();
                    s.send(format!("{pw}\n").as_bytes())
                        .await
                        .map_err(|e| fail("console_lost", e.to_string(), Some("login")))?;
                    let (i, _) = s
                        .expect(&[&shell, &incorrect, &login_prompt], left(login_deadline))
                        .await
                        .map_err(|e| login_fail(e, "the shell prompt"))?;
                    if i != 0 {
                        return Err(fail(
                            "login_failed",
                            format!("the board refused the login of `{user}` (wrong password?)"),
                            Some("login"),
                        ));
                    }
                } else if i == 2 {
                    return Err(fail(
                        "login_failed",
                        format!("the board refused the login of `{user}`"),
                        Some("login"),
                    ));
                }
            }
        }
        data.insert(
            "login_ms".into(),
            (started.elapsed().as_millis() as u64).into(),
        );
        setup.push(TestNode::leaf("login", NodeResult::Pass));

        // Commands: the parameters are exported as quoted words; each command runs in a
        // `{ ...; }` group followed by a marker whose text cannot appear in the echo of what
        // was typed (`%s` and `$?` there, their values in the output).
        let mut nonce = [0u8; 6];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let (a, b) = (&nonce[..6], &nonce[6..]);
        let marker = re(&format!(r"LW{a}-{b}:(\d+):END"), "marker")?;
        let job_deadline = Instant::now() + ctx.timeout.saturating_sub(started.elapsed());
        let mut setup_cmds = vec![format!("export LABWIRE_JOB_ID={}", ctx.job)];
        let mut names: Vec<&String> = ctx.spec.params.keys().collect();
        names.sort();
        for k in names {
            setup_cmds.push(format!(
                "export LABWIRE_PARAM_{}={}",
                k.to_ascii_uppercase(),
                shell_quote(&ctx.spec.params[k])
            ));
        }
        let all: Vec<(bool, String)> = setup_cmds
            .into_iter()
            .map(|c| (false, c))
            .chain(commands.into_iter().map(|c| (true, c)))
            .collect();
        let mut n = 0;
        for (counted, cmd) in all {
            s.clear();
            let line = format!("{{ {cmd}\n}}; printf 'LW%s-%s:%d:END\\n' {a} {b} \"$?\"\n");
            s.send(line.as_bytes())
                .await
                .map_err(|e| fail("console_lost", e.to_string(), None))?;
            let got = s.expect(&[&marker], left(job_deadline)).await;
            let status = match got {
                Ok((_, text)) => text
                    .split(':')
                    .nth(1)
                    .and_then(|c| c.parse::<i32>().ok())
                    .unwrap_or(-1),
                Err(ExpectError::Timeout) => {
                    // Interrupt the command so the board is usable for the power-off log.
                    let _ = s.send(b"\x03").await;
                    s.drain_for(Duration::from_millis(500)).await;
                    if counted {
                        n += 1;
                        let mut t = TestNode::leaf(format!("command-{n}"), NodeResult::Incomplete);
                        t.error = Some(format!("`{cmd}` did not finish in time"));
                        cmds.push(t);
                    }
                    return Err(fail(
                        "test_timeout",
                        format!(
                            "`{cmd}` did not finish within the job's time limit ({})",
                            humantime::format_duration(ctx.timeout)
                        ),
                        None,
                    ));
                }
                Err(e) => {
                    return Err(expect_failure(
                        e,
                        "the command's exit status",
                        "test_timeout",
                        "login",
                        ctx.timeout,
                    ));
                }
            };
            if counted {
                n += 1;
                let result = if status == 0 {
                    NodeResult::Pass
                } else {
                    NodeResult::Fail
                };
                let mut t = TestNode::leaf(format!("command-{n}"), result);
                if status != 0 {
                    t.error = Some(format!("`{cmd}` exited with status {status}"));
                }
                cmds.push(t);
            } else if status != 0 {
                return Err(fail(
                    "infrastructure",
                    format!("setting up the board's shell failed: `{cmd}` exited with {status}"),
                    None,
                ));
            }
        }
        let _ = s.expect(&[&shell], Duration::from_millis(500)).await;
        Ok(())
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
            let limit = self.cfg.max_download_bytes;
            let artifacts =
                match crate::fetch::fetch_all(&ctx.spec.artifacts, &ctx.dir, limit, ctx.timeout)
                    .await
                {
                    Ok(a) => a,
                    Err(e) => {
                        ctx.log.note(&format!("download failed: {e}"));
                        return Outcome::infra("download_failed", e.to_string());
                    }
                };
            for (k, p) in &artifacts {
                ctx.log.note(&format!("artifact {k}: {}", p.display()));
            }
            let (mut setup, mut cmds, mut data) = (Vec::new(), Vec::new(), serde_json::Map::new());
            let res = self
                .boot_and_test(ctx, &artifacts, &mut setup, &mut cmds, &mut data)
                .await;
            // Always: the board goes off, whatever happened above.
            self.power_off(ctx, &artifacts).await;
            let mut outcome = match res {
                Ok(()) => {
                    let r = NodeResult::aggregate(cmds.iter().map(|t| t.result));
                    Outcome::finished(if r == NodeResult::Skip {
                        NodeResult::Pass
                    } else {
                        r
                    })
                }
                Err(f) => {
                    ctx.log.note(&format!("{}: {}", f.code, f.msg));
                    if let Some(t) = f.test {
                        let mut node = TestNode::leaf(t, NodeResult::Fail);
                        node.error = Some(f.msg.clone());
                        setup.push(node);
                    }
                    Outcome::infra(f.code, f.msg)
                }
            };
            outcome.data = data;
            if !setup.is_empty() {
                outcome.tests.push(TestNode::group("setup", setup));
            }
            if !cmds.is_empty() {
                outcome.tests.push(TestNode::group("commands", cmds));
            }
            outcome
        })
    }
}
