//! A LAVA server's devices as labwire devices: one pooled device per offered device type
//! (`lava-INSTANCE-DEVICETYPE`), advertised only while at least one device of the type can
//! take a job (health `Good` or `Unknown`), with `count` the number of such devices and
//! room for `count + queue_depth` jobs at once. The view is read again every `refresh`.
//!
//! A LAVA device type that the device-type library knows advertises the library's
//! properties (arch, mach, boot method, ...); another is advertised with only what LAVA
//! says of it (its name, and its architecture when the admin set it), so jobs reach it by
//! `device_type`.

use super::client::{DeviceEntry, DeviceTypeInfo, LavaClient, LavaError};
use super::config::LavaConfig;
use super::notify::Notifier;
use super::templates::Templates;
use crate::device_types::Library;
use crate::devices::Device;
use crate::driver::lava::{LavaDriver, LavaJobRef};
use crate::sources::DeviceSource;
use futures::future::BoxFuture;
use labwire_common::{DeviceInfo, Health};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// After this many failed refreshes in a row the source offers nothing until the server
/// answers again.
const FAILURES_BEFORE_WITHDRAW: u32 = 3;

/// One LAVA server as a device source.
pub struct LavaSource {
    cfg: Arc<LavaConfig>,
    client: LavaClient,
    templates: Arc<Templates>,
    library: Arc<Library>,
    lab: String,
    /// LAVA's callbacks, when `notify` is set.
    notifier: Option<Arc<Notifier>>,
    /// Device types already warned about (no boot method or template), to warn once.
    warned: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Whether a LAVA device in this health can take jobs.
pub fn usable(health: &str) -> bool {
    matches!(health, "Good" | "Unknown")
}

impl LavaSource {
    /// A source for one `lava:` entry.
    pub fn new(cfg: LavaConfig, lab: &str, library: Arc<Library>) -> anyhow::Result<Self> {
        let client = LavaClient::new(&cfg)?;
        Self::with_client(cfg, client, lab, library)
    }

    /// A source using the given client.
    pub fn with_client(
        cfg: LavaConfig,
        client: LavaClient,
        lab: &str,
        library: Arc<Library>,
    ) -> anyhow::Result<Self> {
        let templates = Arc::new(Templates::load(cfg.templates_dir.as_deref())?);
        let notifier = cfg.notify.clone().map(|n| Notifier::new(&cfg.name, n));
        Ok(LavaSource {
            notifier,
            cfg: Arc::new(cfg),
            client,
            templates,
            library,
            lab: lab.to_string(),
            warned: Default::default(),
        })
    }

    /// The labwire name of a device type of this server.
    pub fn device_name(&self, device_type: &str) -> String {
        format!("lava-{}-{}", self.cfg.name, device_type)
    }

    /// The boot method (template) of a device type: `boot_methods`, else the library's,
    /// else `qemu` for a type named `qemu*`.
    pub fn boot_method(&self, device_type: &str) -> Option<String> {
        if let Some(b) = self.cfg.boot_methods.get(device_type) {
            return Some(b.clone());
        }
        if let Some(b) = self
            .library
            .get(device_type)
            .and_then(|t| t.boot_method.clone())
        {
            return Some(b);
        }
        device_type.starts_with("qemu").then(|| "qemu".to_string())
    }

    /// The pooled device of a device type with `usable` devices behind it.
    pub fn pooled(&self, dt: &DeviceTypeInfo, usable: usize, boot_method: String) -> Arc<Device> {
        let (mut properties, features) = match self.library.get(&dt.name) {
            Some(t) => (t.properties(), t.features.clone()),
            None => (BTreeMap::new(), Vec::new()),
        };
        if let Some(a) = dt.architecture.as_deref().filter(|a| !a.is_empty()) {
            properties
                .entry("arch".into())
                .or_insert_with(|| a.to_string());
        }
        properties
            .entry("boot_method".into())
            .or_insert_with(|| boot_method.clone());
        let info = DeviceInfo {
            name: self.device_name(&dt.name),
            device_type: dt.name.clone(),
            driver: "lava".into(),
            properties,
            features,
            tags: self.cfg.tags.clone(),
            health: if usable > 0 {
                Health::Good
            } else {
                Health::Bad
            },
            health_reason: if usable > 0 {
                String::new()
            } else {
                format!(
                    "no device of type `{}` is usable on the LAVA server",
                    dt.name
                )
            },
            ..Default::default()
        };
        let driver = LavaDriver::new(
            self.cfg.clone(),
            self.client.clone(),
            self.templates.clone(),
            self.lab.clone(),
            dt.name.clone(),
            boot_method,
        )
        .with_notifier(self.notifier.clone());
        let mut secrets = vec![self.client.token().clone()];
        if let Some(p) = self
            .cfg
            .device_type_settings
            .get(&dt.name)
            .and_then(|s| s.login.as_ref())
            .and_then(|l| l.password.clone())
        {
            secrets.push(p);
        }
        Arc::new(Device {
            config: None,
            info,
            driver: Arc::new(driver),
            max_jobs: usable + self.cfg.queue_depth,
            count: usable,
            secrets,
        })
    }

    fn first_warning(&self, device_type: &str) -> bool {
        match self.warned.lock() {
            Ok(mut w) => w.insert(device_type.to_string()),
            Err(_) => false,
        }
    }

    /// Reads the server's device types and devices once; returns the devices to offer.
    pub async fn snapshot(&self) -> Result<Vec<Arc<Device>>, LavaError> {
        let types = self.client.device_types().await?;
        let devices = self.client.devices().await?;
        Ok(self.devices_from(&types, &devices))
    }

    /// The devices to offer, given the server's device types and devices.
    pub fn devices_from(
        &self,
        types: &[DeviceTypeInfo],
        devices: &[DeviceEntry],
    ) -> Vec<Arc<Device>> {
        let mut usable_count: BTreeMap<&str, usize> = BTreeMap::new();
        for d in devices {
            if usable(&d.health) {
                *usable_count.entry(d.device_type.as_str()).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for dt in types {
            if !self.cfg.device_types.offers(&dt.name) {
                continue;
            }
            let n = usable_count.get(dt.name.as_str()).copied().unwrap_or(0);
            if n == 0 {
                continue;
            }
            let Some(boot) = self.boot_method(&dt.name) else {
                if self.first_warning(&dt.name) {
                    tracing::warn!(instance = %self.cfg.name, device_type = %dt.name, "no boot method for this LAVA device type (set lava[].boot_methods); not offered");
                }
                continue;
            };
            if !self.templates.has(&boot) {
                if self.first_warning(&dt.name) {
                    tracing::warn!(instance = %self.cfg.name, device_type = %dt.name, boot_method = %boot, "no job template for this boot method; not offered");
                }
                continue;
            }
            out.push(self.pooled(dt, n, boot));
        }
        out
    }
}

/// What is advertised of a list, to publish only real changes.
fn summary(list: &[Arc<Device>]) -> Vec<(String, usize, usize)> {
    list.iter()
        .map(|d| (d.info.name.clone(), d.count, d.max_jobs))
        .collect()
}

impl DeviceSource for LavaSource {
    fn name(&self) -> String {
        format!("lava:{}", self.cfg.name)
    }

    fn run(
        self: Arc<Self>,
        tx: watch::Sender<Vec<Arc<Device>>>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(n) = &self.notifier {
                tokio::spawn(n.clone().serve(stop.clone()));
            }
            let mut failures = 0u32;
            let mut last: Option<Vec<(String, usize, usize)>> = None;
            loop {
                match self.snapshot().await {
                    Ok(list) => {
                        if failures > 0 {
                            tracing::info!(instance = %self.cfg.name, "LAVA server answers again");
                        }
                        failures = 0;
                        let s = summary(&list);
                        if last.as_ref() != Some(&s) {
                            tracing::info!(instance = %self.cfg.name, device_types = list.len(), devices = list.iter().map(|d| d.count).sum::<usize>(), "LAVA inventory changed");
                            last = Some(s);
                            let _ = tx.send(list);
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(instance = %self.cfg.name, error = %e, failures, "cannot read the LAVA inventory");
                        if failures == FAILURES_BEFORE_WITHDRAW
                            && last.as_ref().is_some_and(|l| !l.is_empty())
                        {
                            tracing::warn!(instance = %self.cfg.name, "LAVA unreachable: offering none of its device types until it answers");
                            last = Some(Vec::new());
                            let _ = tx.send(Vec::new());
                        }
                    }
                }
                let wait = if failures > 0 {
                    crate::client::backoff(
                        failures,
                        std::time::Duration::from_secs(1),
                        self.cfg.refresh,
                    )
                } else {
                    self.cfg.refresh
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    }

    fn resume(&self, device: &str, dir: &Path) -> Option<Arc<Device>> {
        let prefix = format!("lava-{}-", self.cfg.name);
        let device_type = device.strip_prefix(&prefix)?;
        let r = LavaJobRef::load(dir)?;
        if r.instance != self.cfg.name {
            return None;
        }
        let boot = self
            .boot_method(device_type)
            .unwrap_or_else(|| "qemu".into());
        let dt = DeviceTypeInfo {
            name: device_type.to_string(),
            architecture: None,
        };
        Some(self.pooled(&dt, 0, boot))
    }
}
