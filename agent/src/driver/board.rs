//! The board engine shared by the drivers that drive a board's console themselves (`serial`,
//! `labgrid`): what runs on an open console session once the board is powered (bootloader
//! steps, the kernel's start, the login, the job's commands with their exit status), the
//! configured lab-host commands (power, deploy) with time limits, and the job outcome built
//! from the steps. The drivers differ only in how they power the board and reach its console.

use super::Outcome;
use crate::config::{BootConfig, BootPreset, LoginConfig};
use crate::joblog::JobLog;
use crate::placeholders::{Values, expand_board_command, expand_boot_text, shell_quote};
use crate::serial::{ExpectError, Session};
use labwire_common::{ErrorCode, NodeResult, TestNode};
use rand::RngCore;
use regex::bytes::Regex;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// A step that failed: the error code, the message, and the setup test that failed with it.
#[derive(Debug)]
pub struct Failure {
    /// The job's `error_code` (`power_failed`, `boot_timeout`, ...).
    pub code: ErrorCode,
    /// What happened, for people.
    pub msg: String,
    /// The setup test (`kernel-boot`, `login`) that failed with it, if any.
    pub test: Option<&'static str>,
}

/// A failure with a code, a message and the setup test it fails.
pub fn fail(code: ErrorCode, msg: impl Into<String>, test: Option<&'static str>) -> Failure {
    Failure {
        code,
        msg: msg.into(),
        test,
    }
}

fn re(pattern: &str, what: &str) -> Result<Regex, Failure> {
    Regex::new(pattern).map_err(|e| {
        fail(
            ErrorCode::InvalidConfig,
            format!("{what} `{pattern}`: {e}"),
            None,
        )
    })
}

fn expect_failure(
    e: ExpectError,
    what: &str,
    timeout_code: ErrorCode,
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
            ErrorCode::ConsoleLost,
            format!("the console closed while waiting for {what}: {why}"),
            Some(test),
        ),
        ExpectError::Cancelled => fail(
            ErrorCode::Cancelled,
            format!("the job was cancelled while waiting for {what}"),
            Some(test),
        ),
        ExpectError::Panic(text) => fail(
            ErrorCode::KernelPanic,
            format!("the kernel panicked: {}", first_line(&text)),
            Some(test),
        ),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

/// The output of a finished lab-host command.
pub struct CommandOutput {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// The exit status.
    pub status: std::process::ExitStatus,
}

/// Runs a program (no shell) with a time limit and collects its output; the program is
/// killed when the limit passes. Errors say which program and why.
pub async fn run_program(
    argv: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<CommandOutput, String> {
    run_program_without(argv, env, &[], timeout).await
}

/// [`run_program`] with the variables `remove` taken out of the inherited environment.
pub async fn run_program_without(
    argv: &[String],
    env: &BTreeMap<String, String>,
    remove: &[&str],
    timeout: Duration,
) -> Result<CommandOutput, String> {
    let Some(prog) = argv.first() else {
        return Err("the command is empty".into());
    };
    let mut cmd = tokio::process::Command::new(prog);
    for r in remove {
        cmd.env_remove(r);
    }
    let mut child = cmd
        .args(&argv[1..])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `{prog}`: {e}"))?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let collect = async {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut a).await;
            }
        };
        let read_err = async {
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_end(&mut b).await;
            }
        };
        tokio::join!(read_out, read_err);
        let st = child.wait().await;
        (a, b, st)
    };
    let (stdout, stderr, st) = tokio::time::timeout(timeout, collect).await.map_err(|_| {
        format!(
            "`{prog}` did not finish within {}",
            humantime::format_duration(timeout)
        )
    })?;
    let status = st.map_err(|e| format!("cannot wait for `{prog}`: {e}"))?;
    Ok(CommandOutput {
        stdout,
        stderr,
        status,
    })
}

/// Runs a configured command (no shell) with a time limit; its output goes to the job log.
pub async fn run_command(
    what: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
    log: &mut JobLog,
) -> Result<(), String> {
    log.note(&format!("{what}: {argv:?}"));
    let out = run_program(argv, env, timeout)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    for chunk in [&out.stdout, &out.stderr] {
        for line in String::from_utf8_lossy(chunk).lines() {
            log.note(&format!("{what}: {line}"));
        }
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what}: `{}` failed ({})", argv[0], out.status))
    }
}

/// What the setup steps and commands of a job produced so far: the `setup` tests
/// (`kernel-boot`, `login`), one test per command, and timings for the job's data.
#[derive(Default)]
pub struct Steps {
    /// `kernel-boot`, `login`.
    pub setup: Vec<TestNode>,
    /// `command-N`.
    pub commands: Vec<TestNode>,
    /// Timings (`powered_on_ms`, `kernel_started_ms`, `login_ms`).
    pub data: Map<String, Value>,
}

impl Steps {
    /// Records a timing since `started`.
    pub fn mark(&mut self, key: &str, started: Instant) {
        self.data
            .insert(key.into(), (started.elapsed().as_millis() as u64).into());
    }

    /// The job's outcome: `pass`/`fail` from the commands when every step worked, else the
    /// failure's code with the setup test that failed.
    pub fn outcome(mut self, res: Result<(), Failure>, log: &mut JobLog) -> Outcome {
        let mut outcome = match res {
            Ok(()) => {
                let r = NodeResult::aggregate(self.commands.iter().map(|t| t.result));
                Outcome::finished(if r == NodeResult::Skip {
                    NodeResult::Pass
                } else {
                    r
                })
            }
            Err(f) => {
                log.note(&format!("{}: {}", f.code, f.msg));
                if let Some(t) = f.test {
                    let mut node = TestNode::leaf(t, NodeResult::Fail);
                    node.error = Some(f.msg.clone());
                    self.setup.push(node);
                }
                Outcome::infra(f.code, f.msg)
            }
        };
        outcome.data = self.data;
        if !self.setup.is_empty() {
            outcome.tests.push(TestNode::group("setup", self.setup));
        }
        if !self.commands.is_empty() {
            outcome
                .tests
                .push(TestNode::group("commands", self.commands));
        }
        outcome
    }
}

/// Everything the engine does on the console, prepared (placeholders expanded, expressions
/// compiled) before the board is powered, so that a bad job or config fails without touching
/// the board.
pub struct Script<'c> {
    boot: &'c BootConfig,
    login: &'c LoginConfig,
    uboot_cmds: Vec<String>,
    grub_cmds: Vec<String>,
    steps: Vec<(Regex, Option<String>, Duration)>,
    /// Shell set-up lines (exports) run before the job's commands; not counted as tests.
    exports: Vec<String>,
    /// The job's commands, parameters quoted.
    commands: Vec<String>,
    /// The job's time limit.
    timeout: Duration,
}

impl<'c> Script<'c> {
    /// Prepares the boot, login and commands of one job.
    pub fn prepare(
        boot: &'c BootConfig,
        login: &'c LoginConfig,
        values: &Values<'_>,
        commands: &[String],
        params: &HashMap<String, String>,
        timeout: Duration,
    ) -> Result<Self, Failure> {
        let boot_texts = |cmds: &[String]| -> Result<Vec<String>, Failure> {
            cmds.iter()
                .map(|c| {
                    expand_boot_text(c, values).map_err(|e| fail(ErrorCode::InvalidJob, e, None))
                })
                .collect()
        };
        let uboot_cmds = boot_texts(&boot.u_boot.commands)?;
        let grub_cmds = boot_texts(&boot.grub.commands)?;
        let steps = boot
            .steps
            .iter()
            .map(|s| {
                let send = s
                    .send
                    .as_deref()
                    .map(|t| expand_boot_text(t, values))
                    .transpose()
                    .map_err(|e| fail(ErrorCode::InvalidJob, e, None))?;
                Ok((re(&s.expect, "boot step")?, send, s.timeout))
            })
            .collect::<Result<_, Failure>>()?;
        let commands = commands
            .iter()
            .map(|c| {
                expand_board_command(c, params).map_err(|e| fail(ErrorCode::InvalidJob, e, None))
            })
            .collect::<Result<_, _>>()?;
        // An empty PS2 first: each command is typed as two lines (`{ cmd` and `}; marker`),
        // and the shell's continuation prompt (`> `) would otherwise stand before the first
        // line of every command's output, where it hides a `KTAP version 1` from the parser.
        let mut exports = vec![
            "PS2=''".to_string(),
            format!("export LABWIRE_JOB_ID={}", values.job),
        ];
        let mut names: Vec<&String> = params.keys().collect();
        names.sort();
        for k in names {
            exports.push(format!(
                "export LABWIRE_PARAM_{}={}",
                k.to_ascii_uppercase(),
                shell_quote(&params[k])
            ));
        }
        Ok(Script {
            boot,
            login,
            uboot_cmds,
            grub_cmds,
            steps,
            exports,
            commands,
            timeout,
        })
    }

    /// Runs on a powered board's console: bootloader steps, the kernel's start, the login,
    /// then the commands. `started` is when the job began (the job's time limit counts from
    /// there).
    pub async fn run(
        &self,
        s: &mut Session<'_>,
        started: Instant,
        out: &mut Steps,
    ) -> Result<(), Failure> {
        self.boot(s).await?;
        out.mark("kernel_started_ms", started);
        out.setup
            .push(TestNode::leaf("kernel-boot", NodeResult::Pass));
        self.log_in(s).await?;
        out.mark("login_ms", started);
        out.setup.push(TestNode::leaf("login", NodeResult::Pass));
        self.commands(s, started, &mut out.commands).await
    }

    /// Bootloader steps, then the kernel's first message.
    async fn boot(&self, s: &mut Session<'_>) -> Result<(), Failure> {
        let boot = self.boot;
        let boot_deadline = Instant::now() + boot.timeout;
        let boot_fail = |e, what: &str| {
            expect_failure(e, what, ErrorCode::BootTimeout, "kernel-boot", boot.timeout)
        };
        let lost =
            |e: std::io::Error| fail(ErrorCode::ConsoleLost, e.to_string(), Some("kernel-boot"));
        match boot.preset {
            BootPreset::Kernel => {}
            BootPreset::UBoot => {
                let u = &boot.u_boot;
                let interrupt = re(
                    &regex::escape(&u.interrupt_prompt),
                    "u_boot.interrupt_prompt",
                )?;
                let prompt = re(&regex::escape(&u.prompt), "u_boot.prompt")?;
                s.expect(&[&interrupt], left(boot_deadline))
                    .await
                    .map_err(|e| boot_fail(e, "U-Boot's autoboot prompt"))?;
                s.send(u.interrupt_char.as_bytes()).await.map_err(lost)?;
                s.expect(&[&prompt], left(boot_deadline))
                    .await
                    .map_err(|e| boot_fail(e, "U-Boot's prompt"))?;
                for (i, c) in self.uboot_cmds.iter().enumerate() {
                    s.send(format!("{c}\n").as_bytes()).await.map_err(lost)?;
                    if i + 1 < self.uboot_cmds.len() {
                        s.expect(&[&prompt], left(boot_deadline))
                            .await
                            .map_err(|e| boot_fail(e, "U-Boot's prompt"))?;
                    }
                }
            }
            BootPreset::Grub => {
                let g = &boot.grub;
                let menu = re(&regex::escape(&g.menu_prompt), "grub.menu_prompt")?;
                let prompt = re(&regex::escape(&g.prompt), "grub.prompt")?;
                s.expect(&[&menu], left(boot_deadline))
                    .await
                    .map_err(|e| boot_fail(e, "GRUB's menu"))?;
                s.send(b"c").await.map_err(lost)?;
                s.expect(&[&prompt], left(boot_deadline))
                    .await
                    .map_err(|e| boot_fail(e, "GRUB's prompt"))?;
                for (i, c) in self.grub_cmds.iter().enumerate() {
                    s.send(format!("{c}\n").as_bytes()).await.map_err(lost)?;
                    if i + 1 < self.grub_cmds.len() {
                        s.expect(&[&prompt], left(boot_deadline))
                            .await
                            .map_err(|e| boot_fail(e, "GRUB's prompt"))?;
                    }
                }
            }
        }
        for (pattern, send, t) in &self.steps {
            s.expect(&[pattern], (*t).min(left(boot_deadline)))
                .await
                .map_err(|e| boot_fail(e, &format!("boot step `{}`", pattern.as_str())))?;
            if let Some(text) = send {
                s.send(text.as_bytes()).await.map_err(lost)?;
            }
        }
        let kernel = re(&boot.kernel_start, "boot.kernel_start")?;
        s.expect(&[&kernel], left(boot_deadline))
            .await
            .map_err(|e| boot_fail(e, "the kernel's start message"))?;
        Ok(())
    }

    /// Logs in (or just waits for the shell prompt when there is no user name).
    async fn log_in(&self, s: &mut Session<'_>) -> Result<(), Failure> {
        let l = self.login;
        let login_deadline = Instant::now() + l.timeout;
        let login_fail =
            |e, what: &str| expect_failure(e, what, ErrorCode::LoginFailed, "login", l.timeout);
        let lost = |e: std::io::Error| fail(ErrorCode::ConsoleLost, e.to_string(), Some("login"));
        let shell = re(&l.shell_prompt, "login.shell_prompt")?;
        let login_prompt = re(&l.login_prompt, "login.login_prompt")?;
        let password_prompt = re(&l.password_prompt, "login.password_prompt")?;
        let incorrect = re(
            r"Login incorrect|Login failed|incorrect password",
            "login failure message",
        )?;
        match &l.username {
            None => {
                s.send(b"\n").await.map_err(lost)?;
                s.expect(&[&shell], left(login_deadline))
                    .await
                    .map_err(|e| login_fail(e, "the shell prompt"))?;
            }
            Some(user) => {
                s.expect(&[&login_prompt], left(login_deadline))
                    .await
                    .map_err(|e| login_fail(e, "the login prompt"))?;
                s.send(format!("{user}\n").as_bytes()).await.map_err(lost)?;
                let (i, _) = s
                    .expect(
                        &[&password_prompt, &shell, &incorrect],
                        left(login_deadline),
                    )
                    .await
                    .map_err(|e| login_fail(e, "the password prompt or a shell prompt"))?;
                if i == 0 {
                    let pw = l.password.as_ref().map(|p| p.0.clone()).unwrap_or_default();
                    s.send(format!("{pw}\n").as_bytes()).await.map_err(lost)?;
                    let (i, _) = s
                        .expect(&[&shell, &incorrect, &login_prompt], left(login_deadline))
                        .await
                        .map_err(|e| login_fail(e, "the shell prompt"))?;
                    if i != 0 {
                        return Err(fail(
                            ErrorCode::LoginFailed,
                            format!("the board refused the login of `{user}` (wrong password?)"),
                            Some("login"),
                        ));
                    }
                } else if i == 2 {
                    return Err(fail(
                        ErrorCode::LoginFailed,
                        format!("the board refused the login of `{user}`"),
                        Some("login"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The commands: the parameters are exported as quoted words; each command runs in a
    /// `{ ...; }` group followed by a marker whose text cannot appear in the echo of what
    /// was typed (`%s` and `$?` there, their values in the output).
    async fn commands(
        &self,
        s: &mut Session<'_>,
        started: Instant,
        cmds: &mut Vec<TestNode>,
    ) -> Result<(), Failure> {
        let shell = re(&self.login.shell_prompt, "login.shell_prompt")?;
        let mut nonce = [0u8; 6];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex::encode(nonce);
        let (a, b) = (&nonce[..6], &nonce[6..]);
        let marker = re(&format!(r"LW{a}-{b}:(\d+):END"), "marker")?;
        let job_deadline = Instant::now() + self.timeout.saturating_sub(started.elapsed());
        let all = self
            .exports
            .iter()
            .map(|c| (false, c))
            .chain(self.commands.iter().map(|c| (true, c)));
        let mut n = 0;
        for (counted, cmd) in all {
            s.clear();
            let line = format!("{{ {cmd}\n}}; printf 'LW%s-%s:%d:END\\n' {a} {b} \"$?\"\n");
            s.send(line.as_bytes())
                .await
                .map_err(|e| fail(ErrorCode::ConsoleLost, e.to_string(), None))?;
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
                        ErrorCode::TestTimeout,
                        format!(
                            "`{cmd}` did not finish within the job's time limit ({})",
                            humantime::format_duration(self.timeout)
                        ),
                        None,
                    ));
                }
                Err(e) => {
                    return Err(expect_failure(
                        e,
                        "the command's exit status",
                        ErrorCode::TestTimeout,
                        "login",
                        self.timeout,
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
                    ErrorCode::Infrastructure,
                    format!("setting up the board's shell failed: `{cmd}` exited with {status}"),
                    None,
                ));
            }
        }
        let _ = s.expect(&[&shell], Duration::from_millis(500)).await;
        Ok(())
    }
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Downloads the job's artifacts into its folder (nothing is powered on for a job whose
/// files cannot be had); a failure is the job's `download_failed` outcome.
pub async fn fetch_artifacts(
    ctx: &mut super::JobContext,
    limit: u64,
) -> Result<BTreeMap<String, std::path::PathBuf>, Outcome> {
    match crate::fetch::fetch_all(&ctx.spec.artifacts, &ctx.dir, limit, ctx.timeout).await {
        Ok(a) => {
            for (k, p) in &a {
                ctx.log.note(&format!("artifact {k}: {}", p.display()));
            }
            Ok(a)
        }
        Err(e) => {
            ctx.log.note(&format!("download failed: {e}"));
            Err(Outcome::infra(ErrorCode::DownloadFailed, e.to_string()))
        }
    }
}
