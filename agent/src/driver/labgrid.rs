//! The `labgrid` driver: a job on a place of a Labgrid coordinator. The agent downloads the
//! job's artifacts, acquires the place (waiting up to `acquire_timeout` while someone else
//! holds it, then failing with `place_unavailable`), opens the console the place's exporter
//! publishes (a telnet/RFC 2217 port served by ser2net), powers the board through Labgrid,
//! and runs the board engine's boot, login and commands on that console. Then it powers the
//! place off and releases it on every path: success, failure, timeout, cancel, agent
//! shutdown. A place left acquired by a killed agent is released by the source at the next
//! start.

use super::board::{Failure, Script, Steps, fail, run_command};
use super::{Driver, JobContext, Outcome};
use crate::config::{ConsoleConfig, DeviceConfig, LabgridPlaceConfig};
use crate::labgrid::{LabgridClient, LabgridError};
use crate::placeholders::{Values, expand_argv};
use crate::serial::Session;
use futures::future::BoxFuture;
use labwire_common::ErrorCode;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a job asks again for a place someone else holds.
const ACQUIRE_RETRY: Duration = Duration::from_secs(1);

/// The driver of one Labgrid place.
pub(crate) struct LabgridDriver {
    device: DeviceConfig,
    cfg: Arc<LabgridPlaceConfig>,
    client: Arc<LabgridClient>,
    acquire_timeout: Duration,
    /// The folders `file://` artifacts may come from (`artifacts.file_dirs`).
    file_dirs: Arc<[PathBuf]>,
}

impl LabgridDriver {
    /// A driver for the place `device.name`; `file://` artifacts only from `file_dirs`.
    pub(crate) fn new(
        device: DeviceConfig,
        cfg: Arc<LabgridPlaceConfig>,
        client: Arc<LabgridClient>,
        acquire_timeout: Duration,
        file_dirs: Arc<[PathBuf]>,
    ) -> Self {
        LabgridDriver {
            device,
            cfg,
            client,
            acquire_timeout,
            file_dirs,
        }
    }

    fn place(&self) -> &str {
        &self.device.name
    }

    /// Acquires the place, waiting while someone else holds it, up to the acquire timeout
    /// (and the job's own limit), or until the job is cancelled.
    async fn acquire(&self, ctx: &mut JobContext) -> Result<(), Failure> {
        let place = self.place();
        let limit = self.acquire_timeout.min(ctx.timeout);
        let deadline = Instant::now() + limit;
        let mut said = false;
        loop {
            let err = match self.client.acquire(place).await {
                Ok(()) => {
                    ctx.log.note(&format!(
                        "acquired Labgrid place {place} as {}",
                        self.client.identity()
                    ));
                    return Ok(());
                }
                Err(e) => e,
            };
            // Already ours (a release that failed after an earlier job): use it.
            if err.is_held() && self.held_by_us().await {
                ctx.log.note(&format!(
                    "Labgrid place {place} is already acquired by this agent"
                ));
                return Ok(());
            }
            if err.is_unknown_place() {
                return Err(fail(
                    ErrorCode::PlaceUnavailable,
                    format!(
                        "the Labgrid place {place} does not exist: {}",
                        err.message()
                    ),
                    None,
                ));
            }
            if !said {
                said = true;
                ctx.log.note(&format!(
                    "waiting up to {} for the Labgrid place {place}: {}",
                    humantime::format_duration(limit),
                    err.message()
                ));
            }
            // Give up only once the whole wait has passed (one last try at the deadline),
            // not one retry interval early.
            let now = Instant::now();
            if now >= deadline {
                // A call that was stopped may still have acquired the place at the
                // coordinator: give back what may be ours (`release-from` never touches a
                // place someone else holds).
                if matches!(err, LabgridError::Run { .. }) {
                    let _ = self.client.release(place).await;
                }
                return Err(fail(
                    ErrorCode::PlaceUnavailable,
                    format!(
                        "could not acquire the Labgrid place {place} within {}: {}",
                        humantime::format_duration(limit),
                        err.message()
                    ),
                    None,
                ));
            }
            tokio::select! {
                _ = tokio::time::sleep(ACQUIRE_RETRY.min(deadline - now)) => {}
                _ = ctx.cancel.cancelled() => {
                    return Err(fail(ErrorCode::Cancelled, format!("the job was cancelled while waiting for the Labgrid place {place}"), None));
                }
            }
        }
    }

    async fn held_by_us(&self) -> bool {
        let me = self.client.identity();
        match self.client.places().await {
            Ok(places) => places
                .iter()
                .any(|p| p.name == self.place() && p.acquired.as_deref() == Some(me.as_str())),
            Err(_) => false,
        }
    }

    /// On the acquired place: deploy, console, power on, then the board engine.
    async fn on_place(
        &self,
        ctx: &mut JobContext,
        artifacts: &BTreeMap<String, PathBuf>,
        script: &Script<'_>,
        started: Instant,
        powered: &mut bool,
        out: &mut Steps,
    ) -> Result<(), Failure> {
        let place = self.place().to_string();
        let cfg = &self.cfg;
        let values = Values {
            params: &ctx.spec.params,
            device: &self.device,
            job: ctx.job,
            attempt: ctx.attempt,
            dir: &ctx.dir,
            artifacts,
            tftp: None,
        };
        let expand = |argv: &[String]| {
            expand_argv(argv, &values).map_err(|e| fail(ErrorCode::InvalidJob, e, None))
        };
        let deploy = cfg.deploy_command.as_deref().map(expand).transpose()?;
        let (console, console_argv) = match &cfg.console {
            Some(c @ ConsoleConfig::Command { argv }) => (c.clone(), Some(expand(argv)?)),
            Some(c) => (c.clone(), None),
            None => {
                let address = self.client.serial_port(&place).await.map_err(|e| {
                    fail(
                        ErrorCode::ConsoleLost,
                        format!("cannot find the console of the Labgrid place {place}: {e}"),
                        None,
                    )
                })?;
                (ConsoleConfig::Telnet { address }, None)
            }
        };
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
        // The console first, so that nothing the board prints at power-on is missed.
        let console = crate::serial::open(&console, console_argv, Duration::from_secs(10))
            .await
            .map_err(|e| fail(ErrorCode::ConsoleLost, e.to_string(), None))?;
        let action = if cfg.power_cycle { "cycle" } else { "on" };
        ctx.log.note(&format!(
            "power {action}: labgrid-client -p {place} power {action}"
        ));
        *powered = true;
        self.client
            .power(&place, action)
            .await
            .map_err(|e| fail(ErrorCode::PowerFailed, power_msg(&place, action, &e), None))?;
        out.mark("powered_on_ms", started);
        let cancel = ctx.cancel.clone();
        let mut s = Session::new(console, &mut ctx.log, cancel);
        let desc = s.describe().to_string();
        s.log().note(&format!("console: {desc}"));
        script.run(&mut s, started, out).await
    }

    /// Powers the place off and releases it; errors are logged (the outcome is decided).
    async fn give_back(&self, ctx: &mut JobContext, powered: bool) {
        let place = self.place();
        if powered {
            ctx.log
                .note(&format!("power off: labgrid-client -p {place} power off"));
            if let Err(e) = self.client.power(place, "off").await {
                tracing::error!(place, error = %e, "Labgrid power off failed");
                ctx.log.note(&format!("power off failed: {e}"));
            }
        }
        match self.client.release(place).await {
            Ok(()) => ctx.log.note(&format!("released Labgrid place {place}")),
            Err(e) => {
                tracing::error!(place, error = %e, "could not release the Labgrid place; it is released at the next start of the agent");
                ctx.log.note(&format!("release failed: {e}"));
            }
        }
    }
}

fn power_msg(place: &str, action: &str, e: &LabgridError) -> String {
    format!("Labgrid could not power {action} the place {place}: {e}")
}

impl Driver for LabgridDriver {
    fn kind(&self) -> &'static str {
        "labgrid"
    }

    /// After an agent restart: power off and release the place if this agent holds it.
    fn recover(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if !self.held_by_us().await {
                return Ok(());
            }
            let off = self.client.power(self.place(), "off").await;
            self.client
                .release(self.place())
                .await
                .map_err(|e| e.to_string())?;
            off.map_err(|e| e.to_string())
        })
    }

    fn run<'a>(&'a self, ctx: &'a mut JobContext) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let started = Instant::now();
            // Artifacts first: the place is not held while files download.
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
            // Everything about the job is checked before the place is touched.
            let values = Values {
                params: &ctx.spec.params,
                device: &self.device,
                job: ctx.job,
                attempt: ctx.attempt,
                dir: &ctx.dir,
                artifacts: &artifacts,
                tftp: None,
            };
            let script = match Script::prepare(
                &self.cfg.boot,
                &self.cfg.login,
                &values,
                &ctx.spec.commands,
                &ctx.spec.params,
                ctx.timeout,
            ) {
                Ok(s) => s,
                Err(f) => return steps.outcome(Err(f), &mut ctx.log),
            };
            if let Err(f) = self.acquire(ctx).await {
                return steps.outcome(Err(f), &mut ctx.log);
            }
            let mut powered = false;
            let res = self
                .on_place(ctx, &artifacts, &script, started, &mut powered, &mut steps)
                .await;
            // Always: off and released, whatever happened above.
            self.give_back(ctx, powered).await;
            steps.outcome(res, &mut ctx.log)
        })
    }
}

#[cfg(test)]
mod tests {
    //! The driver against a stand-in `labgrid-client` (a script that logs its calls and
    //! fails as told): how client failures become job errors, and that the place is given
    //! back. The real Labgrid is exercised by tests/e2e/labgrid.rs.
    use super::*;
    use crate::config::LabgridConfig;
    use crate::joblog::JobLog;
    use crate::outbox::Outbox;
    use labwire_common::NodeResult;
    use tokio_util::sync::CancellationToken;

    const FAKE: &str = r#"#!/bin/sh
echo "$*" >> "$FAKE_LOG"
shift 2
[ "$1" = -p ] || { echo "Place 'b1':"; echo "  acquired: None"; exit 0; }
place=$2; cmd=$3
case "$place:$cmd:$4" in
  nope:acquire:*) echo "labgrid-client: Error: place pattern nope matches nothing" >&2; exit 1 ;;
  hang:acquire:*) exec sleep 30 ;;
  *:acquire:*) echo "acquired place $place" ;;
  *:show:*) printf "Acquired resource 'S' (e/b/NetworkSerialPort/S):\n  {'params': {'host': '127.0.0.1', 'port': %s}}\n" "$FAKE_PORT" ;;
  *:power:on) echo "labgrid-client: Error: power on failed: 500 Server Error" >&2; exit 1 ;;
  *) ;;
esac
"#;

    struct Fake {
        dir: tempfile::TempDir,
        _listener: tokio::net::TcpListener,
        client: Arc<LabgridClient>,
    }

    async fn fake() -> Fake {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("labgrid-client");
        std::fs::write(&prog, FAKE).unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The console: a TCP port that accepts (the kernel's backlog is enough).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg: LabgridConfig = yaml_serde::from_str(&format!(
            "{{name: t, coordinator: '127.0.0.1:1', client: ['{}'], user: u, host: h, command_timeout: 1s, acquire_timeout: 2s, env: {{FAKE_LOG: '{}', FAKE_PORT: '{port}'}}, places: [{{name: b1, device_type: qemu-x86_64}}]}}",
            prog.display(),
            dir.path().join("calls").display()
        ))
        .unwrap();
        Fake {
            client: Arc::new(LabgridClient::new(&cfg, "lab")),
            dir,
            _listener: listener,
        }
    }

    impl Fake {
        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("calls"))
                .unwrap_or_default()
                .lines()
                .map(|l| l.trim_start_matches("-x 127.0.0.1:1 ").to_string())
                .collect()
        }

        async fn run(&self, place: &str) -> (Outcome, Duration) {
            let place_cfg: LabgridPlaceConfig =
                yaml_serde::from_str("{name: b1, device_type: qemu-x86_64}").unwrap();
            let driver = LabgridDriver::new(
                place_cfg.device(place),
                Arc::new(place_cfg),
                self.client.clone(),
                Duration::from_secs(2),
                Arc::from(Vec::new()),
            );
            let state = self.dir.path().join(format!("state-{place}"));
            let jobdir = state.join("job");
            std::fs::create_dir_all(&jobdir).unwrap();
            let outbox = Arc::new(Outbox::open(&state).unwrap());
            let mut ctx = JobContext {
                job: 1,
                attempt: 1,
                spec: labwire_proto::v1::JobSpec {
                    commands: vec!["true".into()],
                    ..Default::default()
                },
                dir: jobdir.clone(),
                log: JobLog::create(&jobdir, outbox, 1, 1, None).unwrap(),
                cancel: CancellationToken::new(),
                timeout: Duration::from_secs(60),
                artifacts: Default::default(),
            };
            let t = Instant::now();
            let o = driver.run(&mut ctx).await;
            (o, t.elapsed())
        }
    }

    #[tokio::test]
    async fn a_power_failure_is_power_failed_and_the_place_is_released() {
        let f = fake().await;
        let (o, _) = f.run("b1").await;
        assert_eq!(o.result, NodeResult::Incomplete);
        assert_eq!(o.error_code, Some(ErrorCode::PowerFailed), "{o:?}");
        assert!(o.error_msg.unwrap().contains("500 Server Error"));
        assert_eq!(
            f.calls(),
            [
                "-p b1 acquire",
                "-p b1 show",
                "-p b1 power on",
                "-p b1 power off",
                "-p b1 release-from h/u",
            ]
        );
    }

    #[tokio::test]
    async fn an_unknown_place_fails_at_once_and_a_hanging_client_does_not_hang_the_job() {
        let f = fake().await;
        let (o, took) = f.run("nope").await;
        assert_eq!(o.error_code, Some(ErrorCode::PlaceUnavailable), "{o:?}");
        assert!(o.error_msg.unwrap().contains("does not exist"));
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(f.calls(), ["-p nope acquire"]);

        // Each call is stopped after command_timeout (1s); the wait ends at acquire_timeout.
        let (o, took) = f.run("hang").await;
        assert_eq!(o.error_code, Some(ErrorCode::PlaceUnavailable), "{o:?}");
        assert!(o.error_msg.unwrap().contains("did not finish within 1s"));
        assert!(took < Duration::from_secs(5), "{took:?}");
        let calls = f.calls();
        assert!(calls.iter().all(|c| !c.contains("power")), "{calls:?}");
        assert_eq!(
            calls.last().map(String::as_str),
            Some("-p hang release-from h/u")
        );
    }
}
