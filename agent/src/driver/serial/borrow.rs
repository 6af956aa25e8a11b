//! A borrowed board through the serial driver: its console opened as a job opens it, and
//! its power switched with the device's power commands (or pdudaemon), with no job's
//! values: a placeholder such as `{artifacts.kernel?}` is empty, a required one is refused.

use super::SerialDriver;
use crate::placeholders::{Values, expand_argv};
use crate::serial::config::ConsoleConfig;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

impl SerialDriver {
    /// Expands `argv` with the device's values only.
    fn argv_without_job(&self, argv: &[String]) -> Result<Vec<String>, String> {
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
            tftp: None,
        };
        expand_argv(argv, &v)
    }

    /// Runs one power command of the device outside a job (no job log: the agent's log
    /// says it), for a borrower or after a restart found the board journalled as on.
    pub(super) async fn run_power(&self, what: &str, argv: &[String]) -> Result<(), String> {
        let argv = self.argv_without_job(argv)?;
        tracing::info!(device = %self.device.name, command = ?argv, "{what} outside a job");
        let out = tokio::time::timeout(
            self.cfg.command_timeout,
            tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .envs(&self.cfg.command_env)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .map_err(|_| format!("{what} timed out"))?
        .map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!("{what} failed ({}): {}", out.status, err.trim()))
        }
    }

    /// Powers the board on.
    pub(crate) async fn borrowed_power_on(&self) -> Result<(), String> {
        match &self.cfg.power_on_command {
            Some(on) => self.run_power("power on", on).await,
            None => self.pdu("on", None).await,
        }
    }

    /// Resets the board: its hard reset if it has one, else off then on.
    pub(crate) async fn borrowed_reset(&self) -> Result<(), String> {
        if let Some(reset) = &self.cfg.hard_reset_command {
            return self.run_power("hard reset", reset).await;
        }
        if self.cfg.power_on_command.is_none() && self.cfg.power_off_command.is_none() {
            return self.pdu("reboot", None).await;
        }
        self.power_off_now().await?;
        self.borrowed_power_on().await
    }

    /// Opens the board's console, waiting up to `wait` for a tty that appears at power-on.
    pub(crate) async fn borrowed_console(
        &self,
        wait: Duration,
    ) -> Result<crate::serial::Console, String> {
        let argv = match &self.cfg.console {
            ConsoleConfig::Command { argv } => Some(self.argv_without_job(argv)?),
            _ => None,
        };
        crate::serial::open(&self.cfg.console, argv, wait)
            .await
            .map_err(|e| e.to_string())
    }
}
