//! The board engine shared by the drivers that drive a board's console themselves (`serial`,
//! `labgrid`): what runs on an open console session once the board is powered (bootloader
//! steps, the kernel's start, the login, the job's commands with their exit status), the
//! configured lab-host commands (power, deploy) with time limits, and the job outcome built
//! from the steps. The drivers differ only in how they power the board and reach its console.

pub(crate) mod config;
mod program;
mod script;
pub(crate) mod uboot;

pub(crate) use program::{run_command, run_program_without};
pub(crate) use script::Script;

use super::Outcome;
use crate::joblog::JobLog;
use crate::serial::ExpectError;
use labwire_common::{ErrorCode, NodeResult, TestNode};
use regex::bytes::Regex;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A step that failed: the error code, the message, and the setup test that failed with it.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The job's `error_code` (`power_failed`, `boot_timeout`, ...).
    pub code: ErrorCode,
    /// What happened, for people.
    pub msg: String,
    /// The setup test (`kernel-boot`, `login`) that failed with it, if any.
    pub test: Option<&'static str>,
}

/// A failure with a code, a message and the setup test it fails.
pub(crate) fn fail(code: ErrorCode, msg: impl Into<String>, test: Option<&'static str>) -> Failure {
    Failure {
        code,
        msg: msg.into(),
        test,
    }
}

pub(crate) fn re(pattern: &str, what: &str) -> Result<Regex, Failure> {
    Regex::new(pattern).map_err(|e| {
        fail(
            ErrorCode::InvalidConfig,
            format!("{what} `{pattern}`: {e}"),
            None,
        )
    })
}

pub(crate) fn expect_failure(
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

/// What the setup steps and commands of a job produced so far: the `setup` tests
/// (`kernel-boot`, `login`), one test per command, and timings for the job's data.
#[derive(Default)]
pub(crate) struct Steps {
    /// `kernel-boot`, `login`.
    pub setup: Vec<TestNode>,
    /// `command-N`.
    pub commands: Vec<TestNode>,
    /// Timings (`powered_on_ms`, `kernel_started_ms`, `login_ms`, `commands_done_ms`), in
    /// milliseconds since the board's part of the job began (after the artifacts and their
    /// staging).
    pub data: Map<String, Value>,
}

impl Steps {
    /// Records a timing since `started`.
    pub(crate) fn mark(&mut self, key: &str, started: Instant) {
        self.data
            .insert(key.into(), (started.elapsed().as_millis() as u64).into());
    }

    /// The job's outcome: `pass`/`fail` from the commands when every step worked, else the
    /// failure's code with the setup test that failed.
    pub(crate) fn outcome(mut self, res: Result<(), Failure>, log: &mut JobLog) -> Outcome {
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

pub(crate) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Fetches the job's artifacts into its folder (nothing is powered on for a job whose files
/// cannot be had), within the job's time limit and cancellation, `file://` URLs only from
/// `file_dirs`; a failure is the job's outcome (`invalid_job` for what the job got wrong,
/// `download_failed` for a transfer, `cancelled`).
pub(crate) async fn fetch_artifacts(
    ctx: &mut super::JobContext,
    limit: u64,
    file_dirs: &[std::path::PathBuf],
) -> Result<BTreeMap<String, std::path::PathBuf>, Outcome> {
    let opts = crate::fetch::FetchOptions {
        limit,
        timeout: ctx.timeout,
        cancel: ctx.cancel.clone(),
        file_dirs: file_dirs.to_vec(),
    };
    match crate::fetch::fetch_all(&ctx.spec.artifacts, &ctx.dir, &opts).await {
        Ok(a) => {
            for (k, p) in &a {
                ctx.log.note(&format!("artifact {k}: {}", p.display()));
            }
            Ok(a)
        }
        Err(e) => {
            ctx.log.note(&format!("artifacts: {e}"));
            Err(Outcome::infra(e.code(), e.to_string()))
        }
    }
}
