//! The `labgrid` driver: a job on a place of a Labgrid coordinator. The agent downloads the
//! job's artifacts, acquires the place, opens the console the place's exporter publishes
//! (its `NetworkSerialPort`, spoken as the exporter says: `rfc2217` as telnet, `raw` as
//! plain TCP), powers the board through Labgrid, and runs the board engine's boot, login and
//! commands on that console.
//!
//! Acquiring (over the coordinator's gRPC protocol): a place someone else holds is waited
//! for (up to `acquire_timeout`, woken by the update stream when it is released); a
//! coordinator that cannot be reached, a place that does not exist or whose resources are
//! missing fail at once with `place_unavailable`, an infrastructure code, so the job is
//! retried on another board.
//!
//! The hold is watched while the job runs: a change on the update stream that shows the
//! place free or held by someone else, or its resources gone, ends the job at once
//! (`place_lost`), and the hold is confirmed once more (a `Sync` round trip) before a result
//! is given, so a job never passes on a place it no longer held. The place goes
//! into the source's journal before power-on; power-off and release run on every path
//! (success, failure, timeout, cancel, agent shutdown), and whatever of them fails (or a
//! lost hold) stays owed in the journal, settled by the source with back-off.

use super::board::{Failure, Script, Steps, fail, run_command};
use super::{Driver, JobContext, Outcome};
use crate::config::{ConsoleConfig, DeviceConfig, LabgridPlaceConfig};
use crate::labgrid::config::PlacePower;
use crate::labgrid::owed::{Debt, Shared};
use crate::labgrid::view::{Snapshot, console_of};
use crate::labgrid::{LabgridClient, LabgridError};
use crate::placeholders::{Values, expand_argv};
use crate::serial::Session;
use futures::future::BoxFuture;
use labwire_common::ErrorCode;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a job asks again for a place someone else holds when no reading of the
/// coordinator said it is free meanwhile.
const ACQUIRE_RETRY: Duration = Duration::from_secs(5);

/// The driver of one Labgrid place.
pub(crate) struct LabgridDriver {
    device: DeviceConfig,
    cfg: Arc<LabgridPlaceConfig>,
    client: Arc<LabgridClient>,
    shared: Arc<Shared>,
    acquire_timeout: Duration,
    /// The folders `file://` artifacts may come from (`artifacts.file_dirs`).
    file_dirs: Arc<[PathBuf]>,
}

/// What became of the hold.
enum Hold {
    /// Still ours, as far as the coordinator says.
    Kept,
    /// Lost: why.
    Lost(String),
}

impl LabgridDriver {
    /// A driver for the place `device.name`; `file://` artifacts only from `file_dirs`.
    pub(crate) fn new(
        device: DeviceConfig,
        cfg: Arc<LabgridPlaceConfig>,
        client: Arc<LabgridClient>,
        shared: Arc<Shared>,
        acquire_timeout: Duration,
        file_dirs: Arc<[PathBuf]>,
    ) -> Self {
        LabgridDriver {
            device,
            cfg,
            client,
            shared,
            acquire_timeout,
            file_dirs,
        }
    }

    fn place(&self) -> &str {
        &self.device.name
    }

    /// Acquires the place: waits while someone else holds it, up to the acquire timeout
    /// (and the job's own limit) or until the job is cancelled; fails at once for what
    /// waiting does not cure.
    async fn acquire(&self, ctx: &mut JobContext) -> Result<(), Failure> {
        let place = self.place();
        let limit = self.acquire_timeout.min(ctx.timeout);
        let deadline = Instant::now() + limit;
        let mut said = false;
        let mut readings = self.shared.snapshot.subscribe();
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
            if err.is_held() && self.held_by_us() {
                ctx.log.note(&format!(
                    "Labgrid place {place} is already acquired by this agent"
                ));
                return Ok(());
            }
            let fast = if err.is_unknown_place() {
                Some(format!("the Labgrid place {place} does not exist"))
            } else if err.is_unreachable() {
                Some("the Labgrid coordinator cannot be reached".to_string())
            } else if err.is_missing_resources() {
                Some(format!(
                    "the resources of the Labgrid place {place} are missing (is its exporter running?)"
                ))
            } else if !err.is_held() {
                Some(format!("Labgrid refused to acquire the place {place}"))
            } else {
                None
            };
            if let Some(what) = fast {
                // A call that was stopped may still have acquired the place at the
                // coordinator: give back what may be ours (a release `fromuser` never touches a
                // place someone else holds).
                if err.may_have_acted() {
                    let _ = self.client.release(place).await;
                }
                return Err(fail(
                    ErrorCode::PlaceUnavailable,
                    format!("{what}: {}", err.message()),
                    None,
                ));
            }
            let holder = self.holder().unwrap_or_else(|| "someone else".into());
            if !said {
                said = true;
                ctx.log.note(&format!(
                    "waiting up to {} for the Labgrid place {place}, held by {holder}: {}",
                    humantime::format_duration(limit),
                    err.message()
                ));
            }
            // Give up only once the whole wait has passed (one last try at the deadline).
            let now = Instant::now();
            if now >= deadline {
                return Err(fail(
                    ErrorCode::PlaceUnavailable,
                    format!(
                        "could not acquire the Labgrid place {place} within {}: held by {holder}: {}",
                        humantime::format_duration(limit),
                        err.message()
                    ),
                    None,
                ));
            }
            // Try again when a reading shows the place free, or after a while.
            let wait = tokio::time::sleep(ACQUIRE_RETRY.min(deadline - now));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    r = readings.changed() => {
                        if r.is_err() { break; }
                        let free = readings.borrow_and_update().as_ref().is_some_and(|s| {
                            s.place(place).is_some_and(|p| p.acquired.is_none())
                        });
                        if free { break; }
                    }
                    _ = ctx.cancel.cancelled() => {
                        return Err(fail(ErrorCode::Cancelled, format!("the job was cancelled while waiting for the Labgrid place {place}"), None));
                    }
                }
            }
        }
    }

    /// What a reading says of our hold (`None`: the reading does not tell).
    fn hold_in(&self, s: &Snapshot) -> Option<Hold> {
        let me = self.client.identity();
        let place = self.place();
        let Some(p) = s.place(place) else {
            return Some(Hold::Lost(format!(
                "the Labgrid place {place} is gone from the coordinator"
            )));
        };
        match p.acquired.as_deref() {
            Some(h) if h == me => {}
            Some(h) => {
                return Some(Hold::Lost(format!(
                    "the Labgrid place {place} is held by {h} now (the agent's hold was lost, e.g. by a Labgrid coordinator restart)"
                )));
            }
            None => {
                return Some(Hold::Lost(format!(
                    "the Labgrid place {place} is no longer acquired by this agent (a Labgrid coordinator restart drops every hold)"
                )));
            }
        }
        if s.resources_of(p).next().is_none() {
            return Some(Hold::Lost(format!(
                "the resources of the Labgrid place {place} are gone (its exporter stopped)"
            )));
        }
        Some(Hold::Kept)
    }

    /// Resolves when a reading taken after `since` shows the hold lost.
    async fn watch_hold(&self, since: tokio::time::Instant) -> String {
        let mut rx = self.shared.snapshot.subscribe();
        loop {
            if let Some(s) = rx.borrow_and_update().clone()
                && s.at >= since
                && let Some(Hold::Lost(why)) = self.hold_in(&s)
            {
                return why;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Who holds the place, as the latest reading says.
    fn holder(&self) -> Option<String> {
        self.shared
            .latest()
            .and_then(|s| s.place(self.place()).and_then(|p| p.acquired.clone()))
    }

    /// Whether the latest reading shows the place held by this agent.
    fn held_by_us(&self) -> bool {
        let me = self.client.identity();
        self.shared.latest().is_some_and(|s| {
            s.place(self.place())
                .is_some_and(|p| p.acquired.as_deref() == Some(me.as_str()))
        })
    }

    /// Asks the coordinator for everything it knows now (a `Sync` round trip on the
    /// session) and says whether the hold is still ours; a session that is down is asked
    /// again with back-off for up to a minute (within the acquire timeout) before the hold
    /// counts as lost.
    async fn confirm_hold(&self) -> Hold {
        let limit = self.acquire_timeout.min(Duration::from_secs(60));
        let end = Instant::now() + limit;
        let mut tries = 0;
        loop {
            let r = self.client.sync().await;
            if r.is_ok()
                && let Some(s) = self.shared.latest()
            {
                return self.hold_in(&s).unwrap_or(Hold::Kept);
            }
            if Instant::now() >= end {
                return Hold::Lost(format!(
                    "could not confirm the hold on the Labgrid place {} at the end of the job: {}",
                    self.place(),
                    r.err()
                        .map_or_else(|| "no reading".to_string(), |e| e.to_string())
                ));
            }
            tries += 1;
            let wait =
                crate::client::backoff(tries, Duration::from_millis(200), Duration::from_secs(5));
            tokio::time::sleep(wait.min(end.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// The console the place's exporter publishes, as its protocol says: from the latest
    /// reading (`fresh`: after a `Sync` round trip, so it has every change the coordinator
    /// knows of).
    async fn exported_console(&self, fresh: bool) -> Result<ConsoleConfig, Failure> {
        let place = self.place();
        let lost = |msg: String| fail(ErrorCode::ConsoleLost, msg, None);
        if fresh {
            self.client.sync().await.map_err(|e| {
                lost(format!(
                    "cannot find the console of the Labgrid place {place}: {e}"
                ))
            })?;
        }
        let port = self
            .shared
            .latest()
            .and_then(|s| {
                let p = s.place(place)?;
                s.serial_of(p).cloned()
            })
            .ok_or_else(|| {
                lost(format!(
                    "the Labgrid place {place} has no available NetworkSerialPort (does its exporter export a serial port, and is ser2net running?)"
                ))
            })?;
        console_of(&port)
            .map_err(|e| lost(format!("the console of the Labgrid place {place}: {e}")))
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
        let exported = cfg.console.is_none();
        let (console, console_argv) = match &cfg.console {
            Some(c @ ConsoleConfig::Command { argv }) => (c.clone(), Some(expand(argv)?)),
            Some(c) => (c.clone(), None),
            None => (self.exported_console(false).await?, None),
        };
        if cfg.power == PlacePower::Labgrid
            && let Some(s) = self.shared.latest()
            && let Some(p) = s.place(&place)
            && !s.has_power(p)
        {
            return Err(fail(
                ErrorCode::InvalidConfig,
                format!(
                    "the Labgrid place {place} has no power resource Labgrid can switch ({}); give it one, or set `power: none` for its entry in the agent's config",
                    crate::labgrid::view::POWER_CLASSES.join(", ")
                ),
                None,
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
        // The console first, so that nothing the board prints at power-on is missed. An
        // exporter may have moved the port since the last reading (its ser2net restarted):
        // an exported console that cannot be opened is looked up again once, fresh.
        let t = Instant::now();
        let console = match crate::serial::open(&console, console_argv, Duration::from_secs(10))
            .await
        {
            Ok(c) => c,
            Err(e) if exported => {
                tracing::info!(place = %place, error = %e, "the console of the last reading cannot be opened; asking Labgrid again");
                let fresh = self.exported_console(true).await?;
                crate::serial::open(&fresh, None, Duration::from_secs(10))
                    .await
                    .map_err(|e| fail(ErrorCode::ConsoleLost, e.to_string(), None))?
            }
            Err(e) => return Err(fail(ErrorCode::ConsoleLost, e.to_string(), None)),
        };
        out.mark("labgrid_console_ms", t);
        if cfg.power == PlacePower::Labgrid {
            let action = if cfg.power_cycle { "cycle" } else { "on" };
            ctx.log.note(&format!(
                "power {action}: labgrid-client -p {place} power {action}"
            ));
            *powered = true;
            self.shared.journal.set(&place, Debt::Running, true);
            let t = Instant::now();
            self.client
                .power(&place, action)
                .await
                .map_err(|e| fail(ErrorCode::PowerFailed, power_msg(&place, action, &e), None))?;
            out.mark("labgrid_power_on_ms", t);
        } else {
            ctx.log
                .note("power: none (an always-on board): no power step");
        }
        out.mark("powered_on_ms", started);
        let cancel = ctx.cancel.clone();
        let mut s = Session::new(console, &mut ctx.log, cancel);
        let desc = s.describe().to_string();
        s.log().note(&format!("console: {desc}"));
        script.run(&mut s, started, out).await
    }

    /// Powers the place off and releases it. Only what succeeded is said in the log; what
    /// failed (or a lost hold) stays owed in the journal for the source to settle.
    /// Records `labgrid_power_off_ms` and `labgrid_release_ms` in `out`.
    async fn give_back(&self, ctx: &mut JobContext, powered: bool, lost: bool, out: &mut Steps) {
        let place = self.place();
        if lost {
            ctx.log.note(&format!(
                "the hold on Labgrid place {place} was lost: the agent powers it off and releases it once it can (it is not offered until then; a place someone else holds now is left to them)"
            ));
            self.shared.owe(place, powered);
            return;
        }
        let mut off_owed = false;
        if powered {
            ctx.log
                .note(&format!("power off: labgrid-client -p {place} power off"));
            let t = Instant::now();
            let r = self.client.power(place, "off").await;
            out.mark("labgrid_power_off_ms", t);
            if let Err(e) = r {
                tracing::error!(place, error = %e, "Labgrid power off failed; retrying in the background");
                ctx.log.note(&format!(
                    "power off failed (retried by the agent until it succeeds; the place is not offered until then): {e}"
                ));
                off_owed = true;
            }
        }
        if off_owed {
            self.shared.owe(place, true);
            return;
        }
        let t = Instant::now();
        let r = self.client.release(place).await;
        out.mark("labgrid_release_ms", t);
        match r {
            Ok(()) => {
                self.shared.journal.remove(place);
                ctx.log.note(&format!("released Labgrid place {place}"));
            }
            Err(e) => {
                tracing::error!(place, error = %e, "could not release the Labgrid place; retrying in the background");
                ctx.log.note(&format!(
                    "release failed (retried by the agent until it succeeds; the place is not offered until then): {e}"
                ));
                self.shared.owe(place, false);
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

    /// After an agent restart: the place is owed a power-off and release (the source
    /// settles it, retrying until it succeeds).
    fn recover(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.shared.owe(self.place(), true);
            Ok(())
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
            let t = Instant::now();
            if let Err(f) = self.acquire(ctx).await {
                return steps.outcome(Err(f), &mut ctx.log);
            }
            steps.mark("labgrid_acquire_ms", t);
            let since = tokio::time::Instant::now();
            let mut powered = false;
            let res = tokio::select! {
                r = self.on_place(ctx, &artifacts, &script, started, &mut powered, &mut steps) => r,
                why = self.watch_hold(since) => Err(fail(ErrorCode::PlaceLost, why, None)),
            };
            // Never a result from a place that is not ours (any more).
            let lost = matches!(res, Err(ref f) if f.code == ErrorCode::PlaceLost);
            if !lost {
                let t = Instant::now();
                let hold = self.confirm_hold().await;
                steps.mark("labgrid_confirm_ms", t);
                if let Hold::Lost(why) = hold {
                    if let Err(f) = &res {
                        ctx.log.note(&format!("{}: {}", f.code, f.msg));
                    }
                    let t = Instant::now();
                    self.give_back(ctx, powered, true, &mut steps).await;
                    steps.mark("labgrid_give_back_ms", t);
                    return steps.outcome(Err(fail(ErrorCode::PlaceLost, why, None)), &mut ctx.log);
                }
            }
            // Always: off and released (or owed), whatever happened above.
            let t = Instant::now();
            self.give_back(ctx, powered, lost, &mut steps).await;
            steps.mark("labgrid_give_back_ms", t);
            steps.outcome(res, &mut ctx.log)
        })
    }
}

#[cfg(test)]
mod tests {
    //! Failures the driver sees without a Labgrid coordinator, and the console choice. The
    //! driver against a real Labgrid is exercised by tests/e2e/labgrid/.
    use super::*;
    use crate::config::LabgridConfig;
    use crate::joblog::JobLog;
    use crate::outbox::Outbox;
    use labwire_common::NodeResult;
    use tokio_util::sync::CancellationToken;

    /// With no session (nothing listens at the coordinator's address), a job fails at once
    /// with `place_unavailable` and touches nothing.
    #[tokio::test]
    async fn an_unreachable_coordinator_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: LabgridConfig = yaml_serde::from_str(
            "{name: t, coordinator: '127.0.0.1:1', user: u, host: h, command_timeout: 1s, acquire_timeout: 2s, places: [{name: b1, device_type: qemu-x86_64}]}",
        )
        .unwrap();
        let client = Arc::new(LabgridClient::new(&cfg, "lab"));
        let place_cfg: LabgridPlaceConfig =
            yaml_serde::from_str("{name: b1, device_type: qemu-x86_64}").unwrap();
        let shared = Shared::open(&dir.path().join("journal.json")).unwrap();
        let driver = LabgridDriver::new(
            place_cfg.device("b1"),
            Arc::new(place_cfg),
            client,
            shared.clone(),
            Duration::from_secs(2),
            Arc::from(Vec::new()),
        );
        let state = dir.path().join("state");
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
            left_on: false,
        };
        let t = Instant::now();
        let o = driver.run(&mut ctx).await;
        assert_eq!(o.result, NodeResult::Incomplete);
        assert_eq!(o.error_code, Some(ErrorCode::PlaceUnavailable), "{o:?}");
        let msg = o.error_msg.unwrap();
        assert!(msg.contains("cannot be reached"), "{msg}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(shared.journal.owed().is_empty());
    }
}
