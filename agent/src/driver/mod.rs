//! Drivers run a job on a device. One trait, one implementation per kind of device: `shell`
//! runs a command on the lab host, `serial` drives a board through its power commands and
//! console, `labgrid` a place of a Labgrid coordinator (the last two share the board engine,
//! `board`: boot, login, commands on a console), `lava` hands the job to the lab's LAVA
//! server.

pub(crate) mod board;
pub(crate) mod labgrid;
pub mod lava;
pub(crate) mod pdudaemon;
pub(crate) mod serial;
pub(crate) mod shell;

use crate::joblog::JobLog;
use futures::future::BoxFuture;
use labwire_common::{ErrorCode, NodeResult, TestNode};
use labwire_proto::v1;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a driver needs for one job attempt.
pub struct JobContext {
    /// The job node id.
    pub job: i64,
    /// The attempt.
    pub attempt: i32,
    /// What to run.
    pub spec: v1::JobSpec,
    /// The job's own folder (created, empty).
    pub dir: PathBuf,
    /// The job's log: everything the device prints goes here.
    pub log: JobLog,
    /// Cancelled when the job must stop (coordinator cancel, lease lost, agent shutdown).
    pub cancel: CancellationToken,
    /// The time limit of the run.
    pub timeout: Duration,
    /// Artifacts downloaded for the job, by role (drivers that need them fetch them).
    pub artifacts: std::collections::BTreeMap<String, PathBuf>,
    /// Set by a driver that left the board powered and logged in at the end of the run
    /// (`hold_on_failure` and no infrastructure error): the caller powers it off unless
    /// the job's final result is `fail`.
    pub left_on: bool,
}

/// How a run ended, as the driver sees it. Parsed test results are added by the caller.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The job's result.
    pub result: NodeResult,
    /// Why the run ended `incomplete` (infrastructure failures and the like).
    pub error_code: Option<ErrorCode>,
    /// Human-readable error.
    pub error_msg: Option<String>,
    /// Test results the driver itself produced (setup steps, exit status).
    pub tests: Vec<TestNode>,
    /// Extra data for the job node.
    pub data: Map<String, Value>,
}

impl Outcome {
    /// A run that passed or failed on its own terms.
    pub fn finished(result: NodeResult) -> Self {
        Outcome {
            result,
            error_code: None,
            error_msg: None,
            tests: Vec::new(),
            data: Map::new(),
        }
    }

    /// An infrastructure failure: `incomplete` with an error code and message.
    pub fn infra(code: ErrorCode, msg: impl Into<String>) -> Self {
        Outcome {
            result: NodeResult::Incomplete,
            error_code: Some(code),
            error_msg: Some(msg.into()),
            tests: Vec::new(),
            data: Map::new(),
        }
    }
}

/// What a borrower asks of a board's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Power on.
    On,
    /// Power off.
    Off,
    /// Off and on again, or the board's hard reset.
    Reset,
}

/// A kind of device driver.
pub trait Driver: Send + Sync {
    /// The driver's name (`shell`, ...), as advertised to the coordinator.
    fn kind(&self) -> &'static str;

    /// Runs one job attempt to its end. Must return (not hang) when `ctx.cancel` fires or
    /// the timeout passes, and must leave the device off/idle whatever happens.
    fn run<'a>(&'a self, ctx: &'a mut JobContext) -> BoxFuture<'a, Outcome>;

    /// Brings the device back to a known state after an agent restart found a job of it
    /// interrupted (a board is powered off). Errors are only logged.
    fn recover(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Opens the device's console for a person who borrowed it (`labwire console`), as a
    /// job opens it; a tty that appears at power-on is waited for up to `wait`. Drivers
    /// with no console keep the default, which refuses.
    fn open_console(
        &self,
        _wait: Duration,
    ) -> BoxFuture<'_, Result<crate::serial::Console, String>> {
        let kind = self.kind();
        Box::pin(async move { Err(format!("the `{kind}` driver offers no console to borrow")) })
    }

    /// Switches the device's power for a person who borrowed it (`labwire power`). Drivers
    /// with no power control keep the default, which refuses.
    fn power(&self, _action: PowerAction) -> BoxFuture<'_, Result<(), String>> {
        let kind = self.kind();
        Box::pin(async move { Err(format!("the `{kind}` driver offers no power control")) })
    }

    /// Follows again a job that an earlier run of the agent started and that goes on
    /// without it (a LAVA job): called after a restart, with the job's folder as that run
    /// left it and a fresh log (written again from the start). Drivers whose jobs die with
    /// the agent keep the default, which reports the job interrupted.
    fn resume<'a>(&'a self, _ctx: &'a mut JobContext) -> BoxFuture<'a, Outcome> {
        Box::pin(async {
            Outcome::infra(
                ErrorCode::AgentRestart,
                "the agent restarted while the job ran",
            )
        })
    }
}
