//! The agent daemon: registers with the coordinator, keeps its leases alive with heartbeats,
//! long-polls for work with the devices it has free, runs each job on its device's driver,
//! and delivers everything through the outbox. On shutdown it drains: stops pulling, lets
//! running jobs finish (up to `limits.drain_timeout`, then stops them), flushes the outbox.

mod console;
mod health_check;
mod job;
mod link;
mod pull;
mod reload;
mod reserved;
mod sender;
mod session;
mod upkeep;

use crate::client::Coordinator;
use crate::config::AgentConfig;
use crate::devices::{self, Device};
use crate::outbox::Outbox;
use crate::sources;
use job::recover_journal;
use labwire_proto::{convert, v1};
use pull::pull_loop;
use reload::{install_devices, reload_on_sighup, start_source};
use sender::send_outbox;
use session::keep_session;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct DevState {
    busy: usize,
    polling: bool,
    last_used: Option<Instant>,
}

struct RunningJob {
    cancel: CancellationToken,
}

#[derive(Default)]
struct State {
    /// The devices offered now: those of the config file, then those of the sources.
    devices: Vec<Arc<Device>>,
    /// The devices of the config file, as last loaded (SIGHUP reloads them).
    configured: Vec<Arc<Device>>,
    /// The devices each source found, by source name.
    discovered: std::collections::BTreeMap<String, Vec<Arc<Device>>>,
    /// The stop token of each source's follower, by source name (SIGHUP replaces sources).
    sources: std::collections::BTreeMap<String, CancellationToken>,
    /// The `lava:` entries the running LAVA sources were built from.
    lava: Vec<crate::lava::LavaConfig>,
    /// The running Labgrid sources (SIGHUP updates them in place).
    labgrid: Vec<Arc<crate::labgrid::LabgridSource>>,
    /// `limits.max_jobs` of the config file, if set.
    max_jobs_cfg: Option<usize>,
    /// At most this many jobs at once.
    max_jobs: usize,
    /// The limits, as last loaded.
    limits: crate::config::Limits,
    /// `state.keep_jobs`, as last loaded.
    keep_jobs: Duration,
    /// The device list changed: advertise it with the next heartbeat.
    advertise: bool,
    /// The devices the coordinator last accepted in a Register or Heartbeat: only these
    /// go into a request for work (the coordinator refuses others).
    advertised_names: std::collections::HashSet<String>,
    session: Option<String>,
    heartbeat: Duration,
    devs: HashMap<String, DevState>,
    polls: usize,
    running: HashMap<(i64, i32), RunningJob>,
    /// The devices whose health check must run before they take another job (agent start,
    /// resume, quarantine, interval): not offered meanwhile.
    checks_due: std::collections::HashSet<String>,
    /// The devices the coordinator says are reserved (lent to a person): offered for no job
    /// and no health check ([`reserved`]).
    reserved: std::collections::HashSet<String>,
    /// Whether the coordinator told the reserved devices since the agent started: until it
    /// has, no health check claims a device.
    reservations_known: bool,
    /// The boards left powered and logged in after a failed job with `hold_on_failure`,
    /// since when: reserved here until the coordinator's list names them ([`reserved`]).
    held: HashMap<String, std::time::Instant>,
    /// The console relays the coordinator attached, by relay id.
    consoles: HashMap<u64, console::Relay>,
}

/// The running agent.
pub struct Agent {
    cfg: AgentConfig,
    outbox: Arc<Outbox>,
    /// The coordinator (its replicas, one of them current).
    coordinator: Coordinator,
    state: Mutex<State>,
    /// Bumped on every change of device or session state; the pull loop waits on it.
    changed: watch::Sender<u64>,
    /// Cancelled when the agent starts draining.
    draining: CancellationToken,
    /// Cancelled when the agent must stop everything now.
    stop: CancellationToken,
    /// Woken when a call found the session unknown (register again at once), or when the
    /// device list must be advertised at once (a device's health changed).
    session_lost: tokio::sync::Notify,
    /// Each device's health as the agent sees it (quarantines), kept in the state folder.
    health: Mutex<crate::health::HealthBook>,
}

impl State {
    /// The coordinator accepted `names`: those still offered (a source may have withdrawn
    /// a device while the call ran) may go into requests for work.
    fn accepted(&mut self, names: std::collections::HashSet<String>) {
        let now: std::collections::HashSet<&str> =
            self.devices.iter().map(|d| d.info.name.as_str()).collect();
        self.advertised_names = names
            .into_iter()
            .filter(|n| now.contains(n.as_str()))
            .collect();
    }
}

impl Agent {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn device(&self, name: &str) -> Option<Arc<Device>> {
        self.lock()
            .devices
            .iter()
            .find(|d| d.info.name == name)
            .cloned()
    }

    fn health_book(&self) -> std::sync::MutexGuard<'_, crate::health::HealthBook> {
        match self.health.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Whether a device may take jobs: its back end says so (a LAVA device type with usable
    /// devices), the agent has not quarantined it, and it is not reserved.
    fn usable(&self, d: &Device) -> bool {
        d.info.health.usable() && self.health_book().get(&d.info.name).health.usable() && {
            let st = self.lock();
            !st.checks_due.contains(&d.info.name) && !st.reserved.contains(&d.info.name)
        }
    }

    /// Advertises the devices at once (a device's health changed) and wakes the pull loop.
    fn health_changed(&self) {
        self.lock().advertise = true;
        self.session_lost.notify_one();
        self.bump();
    }

    fn advertised(&self) -> Vec<v1::Device> {
        let book = self.health_book();
        let st = self.lock();
        st.devices
            .iter()
            .map(|d| {
                let busy = st.devs.get(&d.info.name).is_some_and(|s| s.busy > 0);
                let mut p = convert::device_to_proto(&d.info, busy);
                p.count = d.count as u32;
                let h = book.get(&d.info.name);
                if d.info.health.usable() && !h.health.usable() {
                    p.health = convert::health_to_proto(h.health) as i32;
                    p.health_reason = h.reason.clone();
                }
                p.last_check = h.last_check;
                p.failure_streak = h.failure_streak;
                p
            })
            .collect()
    }

    fn free_slots(&self) -> u32 {
        let st = self.lock();
        let busy: usize = st.devs.values().map(|d| d.busy).sum();
        st.max_jobs.saturating_sub(busy) as u32
    }

    fn held_jobs(&self) -> Vec<v1::JobRef> {
        match self.outbox.journal() {
            Ok(j) => j
                .into_iter()
                .map(|e| v1::JobRef {
                    job: e.job,
                    attempt: e.attempt,
                })
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job journal");
                Vec::new()
            }
        }
    }

    /// Stops the listed attempts (the coordinator withdrew them) and forgets their results.
    fn withdraw(&self, jobs: &[v1::JobRef]) {
        for j in jobs {
            tracing::warn!(
                job = j.job,
                attempt = j.attempt,
                "the coordinator withdrew this job; stopping it"
            );
            if let Some(r) = self.lock().running.get(&(j.job, j.attempt)) {
                r.cancel.cancel();
            }
            if let Err(e) = self.outbox.drop_attempt(j.job, j.attempt) {
                tracing::error!(error = %e, "cannot drop a withdrawn job from the outbox");
            }
        }
    }
}

/// Runs the agent until `shutdown` is cancelled, then drains and returns.
/// With `reload_from`, SIGHUP reloads that config file's devices and limits.
pub async fn run(
    cfg: AgentConfig,
    reload_from: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let lib = cfg.library()?;
    let configured = devices::build(&cfg, &lib)?;
    let labgrid = sources::labgrid(&cfg)?;
    let sources = sources::build(&cfg, &labgrid)?;
    crate::state::private_dir(&cfg.state_dir)?;
    crate::state::private_dir(&crate::state::jobs_dir(&cfg.state_dir))?;
    // TFTP folders of jobs that an agent killed mid-job left behind (no job of a board is
    // resumed across a restart: each is powered off and ended by the journal's recovery).
    if let Some(t) = &cfg.tftp {
        match crate::tftp::clean_leftovers(t) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(folder = %t.folder().display(), removed = n, "removed job folders left under the TFTP root")
            }
            Err(e) => anyhow::bail!("tftp.root: cannot clean {}: {e}", t.folder().display()),
        }
    }
    crate::state::warn_if_shared(&cfg.coordinator.key, "lab's private key");
    for l in &cfg.lava {
        if let Some(t) = &l.token_file {
            crate::state::warn_if_shared(t, "LAVA token file");
        }
    }
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let outbox = Arc::new(Outbox::open(&cfg.state_dir)?);
    let coordinator = Coordinator::connect(&cfg.coordinator)?;
    let (changed, _) = watch::channel(0);
    let mut state = State {
        configured,
        max_jobs_cfg: cfg.limits.max_jobs,
        limits: cfg.limits.clone(),
        keep_jobs: cfg.state.keep_jobs,
        ..Default::default()
    };
    install_devices(&mut state);
    // Every device with a health check is checked before it takes its first job.
    state.checks_due = state
        .devices
        .iter()
        .filter(|d| {
            cfg.health
                .check_for(&d.info.name, &d.info.device_type)
                .is_some()
        })
        .map(|d| d.info.name.clone())
        .collect();
    let (n_devices, max_jobs) = (state.devices.len(), state.max_jobs);
    let agent = Arc::new(Agent {
        outbox,
        coordinator,
        state: Mutex::new(state),
        changed,
        draining: CancellationToken::new(),
        stop: CancellationToken::new(),
        session_lost: tokio::sync::Notify::new(),
        health: Mutex::new(crate::health::HealthBook::open(&cfg.state_dir)),
        cfg,
    });
    let resumed = recover_journal(&agent, &sources).await?;
    upkeep::prune_now(&agent);
    tokio::spawn(upkeep::prune_periodically(agent.clone()));
    tracing::info!(lab = %agent.cfg.lab, devices = n_devices, max_jobs, sources = sources.len(), "agent starting");
    agent.lock().lava = agent.cfg.lava.clone();
    agent.lock().labgrid = labgrid;
    for source in sources {
        start_source(&agent, source);
    }
    if let Some(path) = reload_from {
        tokio::spawn(reload_on_sighup(agent.clone(), path));
    }

    let sender = tokio::spawn(send_outbox(agent.clone()));
    let session = tokio::spawn(keep_session(agent.clone()));
    let mut jobs = JoinSet::new();
    let puller = tokio::spawn(pull_loop(agent.clone(), resumed));
    let checker = tokio::spawn(health_check::check_loop(agent.clone()));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    shutdown.cancelled().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("draining: no new jobs; waiting for running ones");
    agent.draining.cancel();
    agent.bump();
    if let Ok(js) = puller.await {
        jobs = js;
    }
    let drain_timeout = agent.lock().limits.drain_timeout;
    let drain = tokio::time::sleep(drain_timeout);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            r = jobs.join_next() => if r.is_none() { break },
            _ = &mut drain => {
                tracing::warn!(running = jobs.len(), "drain timeout: stopping the running jobs");
                for r in agent.lock().running.values() {
                    r.cancel.cancel();
                }
                while jobs.join_next().await.is_some() {}
                break;
            }
        }
    }
    // Last chance to deliver what is pending; what is left stays in the outbox for the next
    // start.
    let flushed = tokio::time::timeout(Duration::from_secs(15), async {
        while !agent.outbox.is_empty().unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if flushed.is_err() {
        tracing::warn!(
            pending = agent.outbox.len().unwrap_or(0),
            "outbox not empty at exit; it will be sent at the next start"
        );
    }
    agent.stop.cancel();
    let _ = checker.await;
    let _ = sender.await;
    let _ = session.await;
    tracing::info!("agent stopped");
    Ok(())
}
