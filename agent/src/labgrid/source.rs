//! A Labgrid coordinator as a device source: it keeps a session with the coordinator
//! ([`super::link`]), whose update stream says at once when a place is acquired or released
//! and when an exporter's resources come or go. On each change it keeps the places the
//! config names (by name or by tags), and publishes as devices the ones that are free or
//! held by this agent (a job of ours runs there) and that have what a job needs: their
//! exporter's serial port (unless the entry has its own console) and a power resource
//! (unless `power: none`). Places someone else holds, places whose exporter is gone and
//! places the agent still owes a power-off or release ([`super::owed`]) are left out; with
//! no session (the coordinator cannot be reached) every place is withdrawn.
//!
//! The reading is shared with the jobs on the places (their console, their hold watch).
//! At start, places held by this agent's identity (a crash, a SIGKILL) join the journal as
//! owed; a settling task powers owed places off and releases them, with back-off, until it
//! succeeds.

use super::client::LabgridClient;
use super::owed::{Debt, Shared};
use super::view::{Place, Snapshot};
use crate::config::{AgentConfig, LabgridConfig, LabgridPlaceConfig};
use crate::device_types::Library;
use crate::devices::Device;
use crate::driver::labgrid::LabgridDriver;
use crate::labgrid::config::PlacePower;
use crate::sources::DeviceSource;
use futures::future::BoxFuture;
use labwire_common::{DeviceInfo, Health};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One Labgrid coordinator's places.
pub(crate) struct LabgridSource {
    /// The source's name (`labgrid:NAME`).
    name: String,
    /// What SIGHUP may change without a new session.
    settings: std::sync::RwLock<Arc<Settings>>,
    /// Bumped by each [`LabgridSource::update`]: the devices are made anew.
    generation: std::sync::atomic::AtomicU64,
    client: Arc<LabgridClient>,
    /// The folders `file://` artifacts may come from (`artifacts.file_dirs`).
    file_dirs: Arc<[std::path::PathBuf]>,
    /// What the jobs on the places share with the source.
    shared: Arc<Shared>,
}

/// The part of a source's config that a reload replaces in place.
struct Settings {
    /// The `labgrid:` entry.
    cfg: LabgridConfig,
    lib: Library,
    /// Names of the devices of the config file: a place of the same name is not offered.
    taken: HashSet<String>,
}

impl LabgridSource {
    /// The source of one `labgrid:` entry.
    pub(crate) fn new(
        cfg: &LabgridConfig,
        agent: &AgentConfig,
        lib: Library,
    ) -> anyhow::Result<Self> {
        let journal = agent
            .state_dir
            .join("labgrid")
            .join(format!("{}.json", cfg.name));
        Ok(LabgridSource {
            name: format!("labgrid:{}", cfg.name),
            client: Arc::new(LabgridClient::new(cfg, &agent.lab)),
            settings: std::sync::RwLock::new(Arc::new(Settings {
                cfg: cfg.clone(),
                lib,
                taken: agent.devices.iter().map(|d| d.name.clone()).collect(),
            })),
            generation: std::sync::atomic::AtomicU64::new(0),
            file_dirs: agent.artifacts.file_dirs.clone().into(),
            shared: Shared::open(&journal)?,
        })
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether `cfg` can replace this source's entry in place: the same coordinator, the
    /// same identity and client, so the same session, journal and holds.
    pub(crate) fn same_session(&self, cfg: &LabgridConfig) -> bool {
        let s = self.settings();
        let old = &s.cfg;
        old.name == cfg.name
            && old.coordinator == cfg.coordinator
            && old.client == cfg.client
            && old.env == cfg.env
            && old.user == cfg.user
            && old.host == cfg.host
            && old.command_timeout == cfg.command_timeout
    }

    /// Whether `cfg` is the entry this source follows now.
    pub(crate) fn is(&self, cfg: &LabgridConfig) -> bool {
        format!("{:?}", self.settings().cfg) == format!("{cfg:?}")
    }

    /// SIGHUP: the places, their settings and `acquire_timeout` of `cfg` (which must be
    /// [`Self::same_session`]) apply from now on: the devices are made anew (a job in
    /// flight keeps the device it started with).
    pub(crate) fn update(&self, cfg: &LabgridConfig, agent: &AgentConfig, lib: Library) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Settings {
            cfg: cfg.clone(),
            lib,
            taken: agent.devices.iter().map(|d| d.name.clone()).collect(),
        });
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.poke.notify_one();
    }

    /// Places of ours that an earlier run of the agent left acquired join the journal as
    /// owed: read from the first reading of the session.
    fn recover(&self, s: &Snapshot) {
        let me = self.client.identity();
        for p in &s.places {
            // Every place held by this agent's identity, even one the config no longer
            // names: nobody else acquires as `labwire-LAB` on this host.
            if p.acquired.as_deref() == Some(me.as_str()) && !self.shared.journal.is_owed(&p.name) {
                tracing::warn!(source = %self.name(), place = %p.name, "place left acquired by an earlier run of this agent; it is powered off and released");
                self.shared.journal.set(&p.name, Debt::Owed, true);
            }
        }
    }

    /// Powers an owed place off (if `power_off`) and releases it. A place someone else
    /// holds now is left alone until they release it.
    async fn settle(&self, place: &str, power_off: bool) -> Result<(), String> {
        self.client.sync().await.map_err(|e| e.to_string())?;
        let snap = self
            .shared
            .latest()
            .ok_or("no session with the Labgrid coordinator")?;
        let places = &snap.places;
        let me = self.client.identity();
        // A place missing from the list stays owed: a Labgrid coordinator that has just
        // restarted can list places before its exporters are back, and a board left powered
        // is worse than a warning every back-off interval until an admin settles it.
        let Some(p) = places.iter().find(|p| p.name == place) else {
            return Err(
                "the Labgrid coordinator does not list the place now; tried again later".into(),
            );
        };
        // Labgrid's power drivers need the place's resources: while its exporter is away,
        // nothing can switch the board; wait for it.
        let published = snap.resources_of(p).next().is_some();
        let away = || {
            "its resources are not published now (is its exporter running?); powered off once they are back".to_string()
        };
        match p.acquired.as_deref() {
            // Someone else's now: nothing to release; a board left on is powered off
            // once they release the place.
            Some(h) if h != me && power_off => {
                return Err(format!("held by {h} now; powered off once they release it"));
            }
            Some(h) if h != me => return Ok(()),
            None if !power_off => return Ok(()),
            None if !published => return Err(away()),
            None => self
                .client
                .acquire(place)
                .await
                .map_err(|e| e.to_string())?,
            Some(_) if power_off && !published => return Err(away()),
            // Ours, but acquired while its exporter was away: it holds no resource and
            // Labgrid gives it none later. Acquire it again to get them.
            Some(_) if power_off && p.held_resources == 0 => {
                self.client
                    .release(place)
                    .await
                    .map_err(|e| e.to_string())?;
                self.client
                    .acquire(place)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some(_) => {}
        }
        if power_off {
            self.client
                .power(place, "off")
                .await
                .map_err(|e| e.to_string())?;
        }
        self.client.release(place).await.map_err(|e| e.to_string())
    }

    /// Settles owed places until `stop`, with back-off while it fails.
    async fn settle_owed(self: Arc<Self>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let owed = self.shared.journal.owed();
            let mut failed = false;
            for (place, power_off) in owed {
                match self.settle(&place, power_off).await {
                    Ok(()) => {
                        tracing::info!(source = %self.name(), place = %place, power_off, "owed place given back (powered off and released)");
                        self.shared.journal.remove(&place);
                        self.shared.poke.notify_one();
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(source = %self.name(), place = %place, error = %e, failures, "cannot give the owed place back yet; retrying");
                    }
                }
            }
            let wait = if failed {
                failures += 1;
                crate::client::backoff(failures, Duration::from_secs(1), Duration::from_secs(60))
            } else {
                failures = 0;
                Duration::from_secs(3600)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shared.owed_added.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    fn device(
        &self,
        set: &Settings,
        place: &str,
        entry: &LabgridPlaceConfig,
    ) -> Option<Arc<Device>> {
        let dt = set.lib.get(&entry.device_type)?;
        let config = entry.device(place);
        let info = DeviceInfo {
            name: place.to_string(),
            device_type: entry.device_type.clone(),
            driver: "labgrid".into(),
            properties: dt.properties(),
            features: dt.features.clone(),
            tags: entry.tags.clone(),
            health: Health::Good,
            ..Default::default()
        };
        let driver = LabgridDriver::new(
            config.clone(),
            Arc::new(entry.clone()),
            self.client.clone(),
            self.shared.clone(),
            set.cfg.acquire_timeout,
            self.file_dirs.clone(),
        );
        Some(Arc::new(Device {
            secrets: config.secrets(),
            config: Some(config),
            info,
            driver: Arc::new(driver),
            max_jobs: 1,
            count: 1,
        }))
    }

    /// Why a free place cannot take a job now, if it cannot.
    fn unfit(&self, s: &Snapshot, p: &Place, entry: &LabgridPlaceConfig) -> Option<String> {
        if self.shared.journal.is_owed(&p.name) {
            return Some("the agent still owes it a power-off or release".into());
        }
        if s.resources_of(p).next().is_none() {
            return Some("none of its resources is published (is its exporter running?)".into());
        }
        if entry.console.is_none() && s.serial_of(p).is_none() {
            return Some(
                "its exporter publishes no NetworkSerialPort (and the entry names no console)"
                    .into(),
            );
        }
        if entry.power == PlacePower::Labgrid && !s.has_power(p) {
            return Some(format!(
                "it has no power resource Labgrid can switch ({}); give it one, or set `power: none` for an always-on board",
                super::view::POWER_CLASSES.join(", ")
            ));
        }
        None
    }

    /// The devices for the places read now; devices already made are kept as they are.
    /// `why` keeps the reason each place is left out, to log it once.
    fn devices(
        &self,
        s: &Snapshot,
        known: &mut BTreeMap<String, Arc<Device>>,
        why: &mut BTreeMap<String, String>,
    ) -> Vec<Arc<Device>> {
        let set = self.settings();
        let me = self.client.identity();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut left_out = BTreeMap::new();
        for p in &s.places {
            let Some(entry) = set.cfg.places.iter().find(|c| c.matches(&p.name, &p.tags)) else {
                continue;
            };
            if set.taken.contains(&p.name) {
                tracing::warn!(place = %p.name, "a device of the config file has this place's name; the place is not offered");
                continue;
            }
            let ours = p.acquired.as_deref() == Some(me.as_str());
            if p.acquired.is_some() && !ours {
                continue;
            }
            let unfit = if ours {
                // A job of ours runs on it (its device is busy), unless it ended owing.
                self.shared
                    .journal
                    .is_owed(&p.name)
                    .then(|| "the agent still owes it a power-off or release".to_string())
            } else {
                self.unfit(s, p, entry)
            };
            if let Some(reason) = unfit {
                if why.get(&p.name) != Some(&reason) {
                    tracing::warn!(source = %self.name(), place = %p.name, reason = %reason, "Labgrid place not offered");
                }
                left_out.insert(p.name.clone(), reason);
                continue;
            }
            seen.insert(p.name.clone());
            if !known.contains_key(&p.name)
                && let Some(d) = self.device(&set, &p.name, entry)
            {
                known.insert(p.name.clone(), d);
            }
            if let Some(d) = known.get(&p.name) {
                out.push(d.clone());
            }
        }
        known.retain(|name, _| seen.contains(name));
        *why = left_out;
        out
    }

    async fn follow(self: Arc<Self>, tx: watch::Sender<Vec<Arc<Device>>>, stop: CancellationToken) {
        let name = self.name();
        let mut readings = self.shared.snapshot.subscribe();
        // The session: it keeps the shared reading current until `stop`.
        let session = {
            let me = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move { me.client.follow(&me.shared, &stop).await })
        };
        let mut known = BTreeMap::new();
        let mut why = BTreeMap::new();
        let mut last: Option<Vec<String>> = None;
        let mut recovered = false;
        let mut generation = 0;
        loop {
            let snap = readings.borrow_and_update().clone();
            // A reload: the devices are made anew with the new settings and published.
            let g = self.generation.load(std::sync::atomic::Ordering::Relaxed);
            if g != generation {
                generation = g;
                known.clear();
                last = None;
            }
            match snap {
                Some(snap) => {
                    // Recovery first: until it has run, nothing is offered.
                    if !recovered {
                        recovered = true;
                        self.recover(&snap);
                        tokio::spawn(self.clone().settle_owed(stop.clone()));
                    }
                    let list = self.devices(&snap, &mut known, &mut why);
                    let names: Vec<String> = list.iter().map(|d| d.info.name.clone()).collect();
                    if last.as_ref() != Some(&names) {
                        tracing::info!(source = %name, places = ?names, "Labgrid places available");
                        last = Some(names);
                        tx.send_replace(list);
                    }
                }
                None if last.as_ref().is_some_and(|l| !l.is_empty()) => {
                    tracing::warn!(source = %name, "withdrawing the places until the session with the Labgrid coordinator is open again");
                    last = Some(Vec::new());
                    known.clear();
                    tx.send_replace(Vec::new());
                }
                None => {}
            }
            tokio::select! {
                r = readings.changed() => if r.is_err() { break },
                _ = self.shared.poke.notified() => {}
                _ = stop.cancelled() => break,
            }
        }
        let _ = session.await;
    }
}

impl DeviceSource for LabgridSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn run(
        self: Arc<Self>,
        tx: watch::Sender<Vec<Arc<Device>>>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(self.follow(tx, stop))
    }
}
