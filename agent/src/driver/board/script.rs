//! The board engine's console script: bootloader steps, the kernel's start, the login and
//! the job's commands with their exit status, prepared before the board is powered.

use super::config::{BootConfig, BootPreset, LoginConfig};
use super::{Failure, Steps, expect_failure, fail, left, re};
use crate::placeholders::{Values, expand_board_command, expand_boot_text, shell_quote};
use crate::serial::{ExpectError, Session};
use labwire_common::{ErrorCode, NodeResult, TestNode};
use rand::RngCore;
use regex::bytes::Regex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// U-Boot's messages for a command that failed (2023.01 wording): a TFTP file not found or a
/// transfer that timed out, a kernel image of the wrong format, an unknown command, `## Error`.
const UBOOT_ERRORS: &str = r"TFTP error: [^\r\n]*|Retry count exceeded[^\r\n]*|Bad Linux [^\r\n]*magic!|Wrong Image Format[^\r\n]*|Unknown command '[^\r\n]*|## Error[^\r\n]*|ERROR: [^\r\n]*";

/// A failed U-Boot command: `bootloader_error` quoting U-Boot's line.
fn uboot_error(cmd: &str, text: &str) -> Failure {
    fail(
        ErrorCode::BootloaderError,
        format!("U-Boot refused `{cmd}`: {}", text.trim()),
        Some("kernel-boot"),
    )
}

/// Everything the engine does on the console, prepared (placeholders expanded, expressions
/// compiled) before the board is powered, so that a bad job or config fails without touching
/// the board.
pub(crate) struct Script<'c> {
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
    pub(crate) fn prepare(
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
    pub(crate) async fn run(
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
        let r = self.commands(s, started, &mut out.commands).await;
        out.mark("commands_done_ms", started);
        r
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
                let errors = re(UBOOT_ERRORS, "U-Boot's error messages")?;
                for (i, c) in self.uboot_cmds.iter().enumerate() {
                    s.send(format!("{c}\n").as_bytes()).await.map_err(lost)?;
                    if i + 1 < self.uboot_cmds.len() {
                        let (k, text) = s
                            .expect(&[&prompt, &errors], left(boot_deadline))
                            .await
                            .map_err(|e| boot_fail(e, "U-Boot's prompt"))?;
                        if k == 1 {
                            return Err(uboot_error(c, &text));
                        }
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
        // At U-Boot, the boot command itself may fail (a kernel image of the wrong format).
        let errors = re(UBOOT_ERRORS, "U-Boot's error messages")?;
        let mut watch = vec![&kernel];
        if boot.preset == BootPreset::UBoot {
            watch.push(&errors);
        }
        let (k, text) = s
            .expect(&watch, left(boot_deadline))
            .await
            .map_err(|e| boot_fail(e, "the kernel's start message"))?;
        if k == 1 {
            let last = self.uboot_cmds.last().map_or("", String::as_str);
            return Err(uboot_error(last, &text));
        }
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
                    // A board may echo the password (busybox `login` prints its prompt
                    // before it turns echo off): mask it in the log, however short.
                    s.log().arm_once(&pw);
                    s.send(format!("{pw}\n").as_bytes()).await.map_err(lost)?;
                    let got = s
                        .expect(&[&shell, &incorrect, &login_prompt], left(login_deadline))
                        .await;
                    s.log().disarm();
                    let (i, _) = got.map_err(|e| login_fail(e, "the shell prompt"))?;
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
