//! A Labgrid coordinator as a device source: it reads the places every `poll_interval`,
//! keeps those the config names (by name or by tags), and publishes as devices the ones that
//! are free or held by this agent (a job of ours runs there); places someone else holds are
//! left out. At start it first gives back what an earlier run of the agent left acquired (a
//! crash, a SIGKILL): those places are powered off and released.

use super::client::{LabgridClient, Place};
use crate::config::{AgentConfig, LabgridConfig, LabgridPlaceConfig};
use crate::device_types::Library;
use crate::devices::Device;
use crate::driver::labgrid::LabgridDriver;
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
    cfg: LabgridConfig,
    client: Arc<LabgridClient>,
    lib: Library,
    /// Names of the devices of the config file: a place of the same name is not offered.
    taken: HashSet<String>,
    /// The folders `file://` artifacts may come from (`artifacts.file_dirs`).
    file_dirs: Arc<[std::path::PathBuf]>,
}

/// After this many failed reads in a row, the places are withdrawn until the coordinator
/// answers again (jobs would only fail with `place_unavailable`).
const FAILURES_BEFORE_WITHDRAW: u32 = 3;

impl LabgridSource {
    /// The source of one `labgrid:` entry.
    pub(crate) fn new(cfg: &LabgridConfig, agent: &AgentConfig, lib: Library) -> Self {
        LabgridSource {
            client: Arc::new(LabgridClient::new(cfg, &agent.lab)),
            cfg: cfg.clone(),
            lib,
            taken: agent.devices.iter().map(|d| d.name.clone()).collect(),
            file_dirs: agent.artifacts.file_dirs.clone().into(),
        }
    }

    /// The config entry a place falls under, if any.
    fn entry(&self, p: &Place) -> Option<&LabgridPlaceConfig> {
        self.cfg.places.iter().find(|c| c.matches(&p.name, &p.tags))
    }

    /// Places of ours that an earlier run of the agent left acquired: powered off and
    /// released. Returns false if the places could not be read (the caller retries).
    async fn recover(&self) -> bool {
        let places = match self.client.places().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(source = %self.name(), error = %e, "cannot read the Labgrid places");
                return false;
            }
        };
        let me = self.client.identity();
        for p in places {
            // Every place held by this agent's identity, even one the config no longer
            // names: nobody else acquires as `labwire-LAB` on this host.
            if p.acquired.as_deref() != Some(me.as_str()) {
                continue;
            }
            tracing::warn!(source = %self.name(), place = %p.name, "place left acquired by an earlier run of this agent; powering it off and releasing it");
            if let Err(e) = self.client.power(&p.name, "off").await {
                tracing::error!(place = %p.name, error = %e, "could not power the place off");
            }
            if let Err(e) = self.client.release(&p.name).await {
                tracing::error!(place = %p.name, error = %e, "could not release the place");
            }
        }
        true
    }

    fn device(&self, place: &str, entry: &LabgridPlaceConfig) -> Option<Arc<Device>> {
        let dt = self.lib.get(&entry.device_type)?;
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
            self.cfg.acquire_timeout,
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

    /// The devices for the places read now; devices already made are kept as they are.
    fn devices(
        &self,
        places: &[Place],
        known: &mut BTreeMap<String, Arc<Device>>,
    ) -> Vec<Arc<Device>> {
        let me = self.client.identity();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for p in places {
            let Some(entry) = self.entry(p) else { continue };
            if self.taken.contains(&p.name) {
                tracing::warn!(place = %p.name, "a device of the config file has this place's name; the place is not offered");
                continue;
            }
            let ours = p.acquired.as_deref() == Some(me.as_str());
            if p.acquired.is_some() && !ours {
                continue;
            }
            seen.insert(p.name.clone());
            if !known.contains_key(&p.name)
                && let Some(d) = self.device(&p.name, entry)
            {
                known.insert(p.name.clone(), d);
            }
            if let Some(d) = known.get(&p.name) {
                out.push(d.clone());
            }
        }
        known.retain(|name, _| seen.contains(name));
        out
    }

    async fn follow(self: Arc<Self>, tx: watch::Sender<Vec<Arc<Device>>>, stop: CancellationToken) {
        let name = self.name();
        let mut failures = 0u32;
        // Recovery first: until it has run, nothing is offered.
        loop {
            if self.recover().await {
                break;
            }
            failures += 1;
            let wait = crate::client::backoff(
                failures,
                Duration::from_secs(1),
                self.cfg.poll_interval.max(Duration::from_secs(1)),
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
        failures = 0;
        let mut known = BTreeMap::new();
        let mut last: Vec<String> = Vec::new();
        loop {
            match self.client.places().await {
                Ok(places) => {
                    failures = 0;
                    let list = self.devices(&places, &mut known);
                    let names: Vec<String> = list.iter().map(|d| d.info.name.clone()).collect();
                    if names != last {
                        tracing::info!(source = %name, places = ?names, "Labgrid places available");
                        last = names;
                        tx.send_replace(list);
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(source = %name, error = %e, failures, "cannot read the Labgrid places");
                    if failures == FAILURES_BEFORE_WITHDRAW && !last.is_empty() {
                        tracing::warn!(source = %name, "withdrawing the places until the Labgrid coordinator answers");
                        last.clear();
                        known.clear();
                        tx.send_replace(Vec::new());
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

impl DeviceSource for LabgridSource {
    fn name(&self) -> String {
        format!("labgrid:{}", self.cfg.name)
    }

    fn run(
        self: Arc<Self>,
        tx: watch::Sender<Vec<Arc<Device>>>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(self.follow(tx, stop))
    }
}
