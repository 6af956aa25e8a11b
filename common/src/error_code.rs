//! The error codes of jobs that ended `incomplete` (`data.error_code`): one spelling for every
//! driver, the coordinator, its retry list and the KCIDB export.
//!
//! A code is written with [`ErrorCode::as_str`] and read with [`ErrorCode::parse`], which
//! never fails: a code this build does not know (written by an older or newer agent, or by
//! another KernelCI runtime) is kept as [`ErrorCode::Other`] with its text unchanged, and the
//! old spelling `canceled` (LAVA's, written by agents before this type existed) reads as
//! [`ErrorCode::Cancelled`].
//!
//! [`ErrorCode::is_infrastructure`] says whose fault a code is: an infrastructure failure is
//! the lab's (a board, its power, its console, a download, the agent, a back end such as LAVA
//! or Labgrid), not the kernel's or the test's. The coordinator's default retry list is
//! exactly those codes ([`ErrorCode::infrastructure`]): another attempt, preferably on
//! another device, may pass.

use std::fmt;

/// Why a job (or an attempt of it) ended `incomplete`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A person or a client cancelled the job (`cancelled`).
    Cancelled,
    /// The node ran past its `timeout` (the coordinator's timeout service) (`node_timeout`).
    NodeTimeout,
    /// The lab holding the job stopped renewing its lease and the job ran out of retries
    /// (`lease_expired`).
    LeaseExpired,
    /// No device type was left for a run variant of the job (`no_variant`).
    NoVariant,
    /// The coordinator refused the job's result for good; the agent reported this instead,
    /// with the coordinator's reason and the log (`invalid_result`).
    InvalidResult,
    /// The coordinator found the job's queue entry damaged (a row an older version left
    /// inconsistent) and ended the job while repairing it (`queue_error`).
    QueueError,
    /// The agent restarted while the job ran (`agent_restart`).
    AgentRestart,
    /// The lab's infrastructure failed in a way no more precise code says (`infrastructure`;
    /// also LAVA's `Infrastructure` error type).
    Infrastructure,
    /// The job cannot run as given: a missing parameter, a bad artifact, a definition the
    /// back end refused (`invalid_job`).
    InvalidJob,
    /// The device's configuration does not work (`invalid_config`).
    InvalidConfig,
    /// An artifact could not be downloaded (`download_failed`).
    DownloadFailed,
    /// The deploy command failed (`deploy_failed`).
    DeployFailed,
    /// A power command (or Labgrid's power) failed (`power_failed`).
    PowerFailed,
    /// The console could not be opened or closed under the job (`console_lost`).
    ConsoleLost,
    /// The Labgrid place could not be acquired (`place_unavailable`).
    PlaceUnavailable,
    /// The hold on a Labgrid place was lost while the job ran on it: a coordinator restart,
    /// someone else's `release`, an exporter gone (`place_lost`).
    PlaceLost,
    /// The kernel did not start in time (`boot_timeout`).
    BootTimeout,
    /// The bootloader refused a command the agent typed: a TFTP file not found or not
    /// reachable, a kernel image of the wrong format (`bootloader_error`).
    BootloaderError,
    /// The kernel panicked (`kernel_panic`).
    KernelPanic,
    /// The board refused the login or never offered a shell (`login_failed`).
    LoginFailed,
    /// The job's commands ran past its time limit (`test_timeout`; also LAVA's
    /// `LAVATimeout`).
    TestTimeout,
    /// Parsed tests did not complete (a crash, a cut log) (`test_incomplete`).
    TestIncomplete,
    /// LAVA's `Test` error type: the test definition failed (`test_error`).
    TestError,
    /// LAVA's `Configuration` error type: the LAVA device or server is misconfigured
    /// (`lava_configuration`).
    LavaConfiguration,
    /// LAVA's `Bug` error type: LAVA itself failed (`lava_bug`).
    LavaBug,
    /// A LAVA job ended `Incomplete` with no error type labwire knows (`lava_incomplete`).
    LavaIncomplete,
    /// KernelCI's runtimes: the job could not be submitted to its back end
    /// (`submit_error`). labwire does not write it; nodes imported from KernelCI may carry it.
    SubmitError,
    /// KernelCI's runtimes: the job's parameters are invalid (`invalid_job_params`).
    /// labwire does not write it; nodes imported from KernelCI may carry it.
    InvalidJobParams,
    /// A code this build does not know, kept as written.
    Other(String),
}

/// Every known code with its spelling, in the order of the enum.
const KNOWN: &[(ErrorCode, &str)] = &[
    (ErrorCode::Cancelled, "cancelled"),
    (ErrorCode::NodeTimeout, "node_timeout"),
    (ErrorCode::LeaseExpired, "lease_expired"),
    (ErrorCode::NoVariant, "no_variant"),
    (ErrorCode::InvalidResult, "invalid_result"),
    (ErrorCode::QueueError, "queue_error"),
    (ErrorCode::AgentRestart, "agent_restart"),
    (ErrorCode::Infrastructure, "infrastructure"),
    (ErrorCode::InvalidJob, "invalid_job"),
    (ErrorCode::InvalidConfig, "invalid_config"),
    (ErrorCode::DownloadFailed, "download_failed"),
    (ErrorCode::DeployFailed, "deploy_failed"),
    (ErrorCode::PowerFailed, "power_failed"),
    (ErrorCode::ConsoleLost, "console_lost"),
    (ErrorCode::PlaceUnavailable, "place_unavailable"),
    (ErrorCode::PlaceLost, "place_lost"),
    (ErrorCode::BootTimeout, "boot_timeout"),
    (ErrorCode::BootloaderError, "bootloader_error"),
    (ErrorCode::KernelPanic, "kernel_panic"),
    (ErrorCode::LoginFailed, "login_failed"),
    (ErrorCode::TestTimeout, "test_timeout"),
    (ErrorCode::TestIncomplete, "test_incomplete"),
    (ErrorCode::TestError, "test_error"),
    (ErrorCode::LavaConfiguration, "lava_configuration"),
    (ErrorCode::LavaBug, "lava_bug"),
    (ErrorCode::LavaIncomplete, "lava_incomplete"),
    (ErrorCode::SubmitError, "submit_error"),
    (ErrorCode::InvalidJobParams, "invalid_job_params"),
];

/// Old spellings that read as a known code.
const ALIASES: &[(&str, ErrorCode)] = &[("canceled", ErrorCode::Cancelled)];

impl ErrorCode {
    /// The code as written in `data.error_code`.
    pub fn as_str(&self) -> &str {
        if let ErrorCode::Other(s) = self {
            return s;
        }
        KNOWN.iter().find(|(c, _)| c == self).map_or("", |(_, s)| s)
    }

    /// Reads a code; never fails (unknown codes are kept as [`ErrorCode::Other`]). Old
    /// spellings (`canceled`) read as today's code.
    pub fn parse(s: &str) -> ErrorCode {
        KNOWN
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(c, _)| c.clone())
            .or_else(|| {
                ALIASES
                    .iter()
                    .find(|(n, _)| *n == s)
                    .map(|(_, c)| c.clone())
            })
            .unwrap_or_else(|| ErrorCode::Other(s.to_string()))
    }

    /// Whether the code is an infrastructure failure: the lab's, not the kernel's or the
    /// test's. A cancel, a time limit, a kernel that panics or does not boot, a refused login,
    /// a job or a result that cannot be used are not; unknown codes are not.
    pub fn is_infrastructure(&self) -> bool {
        use ErrorCode::*;
        matches!(
            self,
            LeaseExpired
                | AgentRestart
                | Infrastructure
                | InvalidConfig
                | DownloadFailed
                | DeployFailed
                | PowerFailed
                | ConsoleLost
                | PlaceUnavailable
                | PlaceLost
                | LavaConfiguration
                | LavaBug
                | SubmitError
        )
    }

    /// Every known infrastructure code: the coordinator's default `retries.error_codes`.
    pub fn infrastructure() -> Vec<ErrorCode> {
        KNOWN
            .iter()
            .map(|(c, _)| c.clone())
            .filter(ErrorCode::is_infrastructure)
            .collect()
    }

    /// Every code this build knows, in a stable order.
    pub fn known() -> impl Iterator<Item = ErrorCode> {
        KNOWN.iter().map(|(c, _)| c.clone())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ErrorCode {
    fn from(s: &str) -> Self {
        ErrorCode::parse(s)
    }
}

impl std::str::FromStr for ErrorCode {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ErrorCode::parse(s))
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ErrorCode::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_reads_back_as_itself() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::known() {
            let s = c.as_str().to_string();
            assert!(!s.is_empty(), "{c:?} has no spelling");
            assert!(seen.insert(s.clone()), "`{s}` is spelt twice");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "`{s}`"
            );
            assert_eq!(ErrorCode::parse(&s), c);
            assert_eq!(c.to_string(), s);
        }
        assert_eq!(seen.len(), KNOWN.len());
    }

    #[test]
    fn unknown_codes_are_kept_and_old_spellings_read() {
        let c = ErrorCode::parse("from_a_newer_agent");
        assert_eq!(c, ErrorCode::Other("from_a_newer_agent".into()));
        assert_eq!(c.as_str(), "from_a_newer_agent");
        assert!(!c.is_infrastructure());
        assert_eq!(ErrorCode::parse("canceled"), ErrorCode::Cancelled);
        assert_eq!(ErrorCode::parse("canceled").as_str(), "cancelled");
        assert_eq!(ErrorCode::parse(""), ErrorCode::Other(String::new()));
    }

    #[test]
    fn infrastructure_codes_are_the_labs() {
        let infra: Vec<String> = ErrorCode::infrastructure()
            .iter()
            .map(|c| c.to_string())
            .collect();
        for c in [
            "infrastructure",
            "agent_restart",
            "download_failed",
            "deploy_failed",
            "power_failed",
            "console_lost",
            "place_unavailable",
            "place_lost",
            "lava_configuration",
            "lava_bug",
        ] {
            assert!(infra.contains(&c.to_string()), "{c} missing from {infra:?}");
        }
        for c in [
            "cancelled",
            "node_timeout",
            "boot_timeout",
            "kernel_panic",
            "login_failed",
            "test_timeout",
            "invalid_job",
            "invalid_result",
            "lava_incomplete",
            "lava_infrastructure",
        ] {
            assert!(!ErrorCode::parse(c).is_infrastructure(), "{c}");
        }
    }

    #[test]
    fn serde_uses_the_spelling() {
        let v = serde_json::to_value(ErrorCode::PowerFailed).unwrap();
        assert_eq!(v, serde_json::json!("power_failed"));
        let c: ErrorCode = serde_json::from_value(serde_json::json!("canceled")).unwrap();
        assert_eq!(c, ErrorCode::Cancelled);
    }
}
