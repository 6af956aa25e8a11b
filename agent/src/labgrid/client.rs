//! How the agent talks to one Labgrid coordinator. Places and resources, acquire and
//! release go over the coordinator's own gRPC protocol ([`super::link`]: one long-lived
//! session whose update stream keeps the agent's view current). Power goes through
//! Labgrid's own client, `labgrid-client power`, because Labgrid's power drivers run on the
//! client side: every call is an argument list (no shell) with a time limit, run with the
//! agent's Labgrid identity (`LG_USERNAME`, `LG_HOSTNAME`). Failures of both become
//! [`LabgridError`]s that say which call failed and what Labgrid said.

use super::link::Link;
use super::owed::Shared;
use crate::config::LabgridConfig;
use crate::driver::board::run_program_without;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a call to Labgrid failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LabgridError {
    /// `labgrid-client` could not be started, or did not finish in time.
    #[error("labgrid-client {args}: {msg}")]
    Run {
        /// The arguments after the program.
        args: String,
        /// What went wrong.
        msg: String,
    },
    /// `labgrid-client` ran and failed; `msg` is what it printed.
    #[error("labgrid-client {args} failed ({status}): {msg}")]
    Failed {
        /// The arguments after the program.
        args: String,
        /// The exit status.
        status: String,
        /// The client's message (its last lines).
        msg: String,
    },
    /// The agent has no session with the Labgrid coordinator now (it cannot be reached,
    /// or the session is being opened again).
    #[error("Labgrid coordinator {what}: {msg}")]
    Down {
        /// What the agent asked for.
        what: String,
        /// Why there is no answer.
        msg: String,
    },
    /// The Labgrid coordinator answered a request with an error.
    #[error("Labgrid coordinator {what}: {msg} ({code:?})")]
    Rpc {
        /// What the agent asked for.
        what: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The coordinator's message.
        msg: String,
    },
}

impl LabgridError {
    /// The error as a sentence, for job errors.
    pub(crate) fn message(&self) -> String {
        self.to_string()
    }

    /// Whether the coordinator said the place is held (by someone else).
    pub(crate) fn is_held(&self) -> bool {
        matches!(self, LabgridError::Rpc { code: tonic::Code::FailedPrecondition, msg, .. } if msg.contains("already acquired"))
    }

    /// Whether the coordinator said the place does not exist.
    pub(crate) fn is_unknown_place(&self) -> bool {
        matches!(self, LabgridError::Rpc { code: tonic::Code::InvalidArgument, msg, .. } if msg.contains("does not exist"))
    }

    /// Whether the Labgrid coordinator could not be reached (or the client not run): an
    /// infrastructure failure that waiting on this place does not cure.
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            LabgridError::Run { .. } | LabgridError::Down { .. } => true,
            LabgridError::Rpc { code, msg, .. } => {
                matches!(
                    code,
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                ) || msg.contains("does not have a valid session")
            }
            LabgridError::Failed { msg, .. } => {
                msg.contains("Could not connect to coordinator")
                    || msg.contains("coordinator is unavailable")
                    || msg.contains("coordinator became unavailable")
            }
        }
    }

    /// Whether the call may have done its work although it failed (it was cut off): an
    /// acquire that timed out may hold the place at the coordinator.
    pub(crate) fn may_have_acted(&self) -> bool {
        matches!(
            self,
            LabgridError::Run { .. }
                | LabgridError::Rpc {
                    code: tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown,
                    ..
                }
        )
    }

    /// Whether the coordinator said the place's resources could not be acquired (its
    /// exporter is gone, or a resource is still held for another place).
    pub(crate) fn is_missing_resources(&self) -> bool {
        matches!(self, LabgridError::Rpc { msg, .. } if msg.contains("Failed to acquire resources"))
    }
}

/// How the agent talks to one Labgrid coordinator.
pub(crate) struct LabgridClient {
    /// The gRPC session with the coordinator.
    link: Link,
    program: Vec<String>,
    coordinator: String,
    env: BTreeMap<String, String>,
    user: String,
    host: String,
    timeout: Duration,
}

impl LabgridClient {
    /// The client of a `labgrid:` entry for lab `lab`.
    pub(crate) fn new(cfg: &LabgridConfig, lab: &str) -> Self {
        let host = cfg.host.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        });
        let user = cfg.user.clone().unwrap_or_else(|| format!("labwire-{lab}"));
        let mut env = cfg.env.clone();
        env.insert("LG_USERNAME".into(), user.clone());
        env.insert("LG_HOSTNAME".into(), host.clone());
        LabgridClient {
            link: Link::new(
                &cfg.coordinator,
                format!("{host}/{user}"),
                cfg.command_timeout,
            ),
            program: cfg.client.clone(),
            coordinator: cfg.coordinator.clone(),
            user,
            env,
            host,
            timeout: cfg.command_timeout,
        }
    }

    /// The identity places are acquired as: `host/user`, as Labgrid shows it.
    pub(crate) fn identity(&self) -> String {
        format!("{}/{}", self.host, self.user)
    }

    /// Keeps a session with the coordinator until `stop`, publishing what it says into
    /// `shared.snapshot` (`None` while there is no session).
    pub(crate) async fn follow(&self, shared: &Shared, stop: &CancellationToken) {
        self.link.follow(&shared.snapshot, stop).await
    }

    /// Waits until every update the coordinator queued before now is in `shared.snapshot`.
    pub(crate) async fn sync(&self) -> Result<(), LabgridError> {
        self.link.sync().await
    }

    /// Acquires a place for this agent; once it returns, the place shows as ours in the
    /// shared reading.
    pub(crate) async fn acquire(&self, place: &str) -> Result<(), LabgridError> {
        self.link.acquire(place).await?;
        self.link.sync().await
    }

    /// Releases a place if (and only if) this agent holds it; a place someone else holds
    /// is left alone. Once it returns, the shared reading shows it.
    pub(crate) async fn release(&self, place: &str) -> Result<(), LabgridError> {
        self.link.release(place, &self.identity()).await?;
        self.link.sync().await
    }

    /// Switches a place's power (`on`, `off` or `cycle`) with `labgrid-client power`.
    pub(crate) async fn power(&self, place: &str, action: &str) -> Result<(), LabgridError> {
        self.run(&["-p", place, "power", action]).await.map(drop)
    }

    /// Runs `labgrid-client` with `args` (after `-x COORDINATOR`); returns its standard
    /// output.
    async fn run(&self, args: &[&str]) -> Result<String, LabgridError> {
        let mut argv = self.program.clone();
        argv.push("-x".into());
        argv.push(self.coordinator.clone());
        argv.extend(args.iter().map(|a| a.to_string()));
        let shown = args.join(" ");
        // The place is always given with -p; a stray LG_PLACE, LG_ENV or LG_COORDINATOR in
        // the agent's environment must not redirect a call.
        let out = run_program_without(
            &argv,
            &self.env,
            &["LG_PLACE", "LG_ENV", "LG_COORDINATOR", "LG_TOKEN"],
            self.timeout,
        )
        .await
        .map_err(|msg| LabgridError::Run {
            args: shown.clone(),
            msg,
        })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        // The client prints its errors on stderr (`labgrid-client: error: ...`), some
        // explanations on stdout; keep the last few lines of both.
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let msg = lines[lines.len().saturating_sub(3)..].join(" | ");
        Err(LabgridError::Failed {
            args: shown,
            status: out.status.to_string(),
            msg: if msg.is_empty() {
                "no message".into()
            } else {
                msg
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_errors_are_classified() {
        let rpc = |code, msg: &str| LabgridError::Rpc {
            what: "acquire b1".into(),
            code,
            msg: msg.into(),
        };
        let held = rpc(
            tonic::Code::FailedPrecondition,
            "Place b1 is already acquired",
        );
        assert!(held.is_held() && !held.is_unreachable() && !held.is_missing_resources());
        let gone = rpc(tonic::Code::InvalidArgument, "Place nope does not exist");
        assert!(gone.is_unknown_place() && !gone.is_held());
        let res = rpc(
            tonic::Code::FailedPrecondition,
            "Failed to acquire resources for place b1",
        );
        assert!(res.is_missing_resources() && !res.is_held());
        let session = rpc(
            tonic::Code::FailedPrecondition,
            "Peer ipv4:127.0.0.1:5 does not have a valid session",
        );
        assert!(session.is_unreachable());
        let cut = rpc(tonic::Code::DeadlineExceeded, "timeout");
        assert!(cut.is_unreachable() && cut.may_have_acted());
        assert!(!held.may_have_acted());
        let down = LabgridError::Down {
            what: "acquire b1".into(),
            msg: "no session".into(),
        };
        assert!(down.is_unreachable() && !down.may_have_acted());
        assert!(down.message().contains("acquire b1: no session"));
    }
}
