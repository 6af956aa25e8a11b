//! The lab's devices: their configuration, what they advertise (device-type properties,
//! tags, health) and their drivers; and the choice of a device for a job among the free ones
//! (a device that matches, idle first, least recently used).

use crate::config::{AgentConfig, DeviceConfig, DriverConfig};
use crate::device_types::Library;
use crate::driver::Driver;
use crate::driver::serial::SerialDriver;
use crate::driver::shell::ShellDriver;
use labwire_common::{Criteria, DeviceInfo, Health};
use std::sync::Arc;

/// One device with its driver.
pub struct Device {
    /// Its entry in agent.yaml; `None` for a device found by a source (a LAVA device type).
    pub config: Option<DeviceConfig>,
    /// What it advertises.
    pub info: DeviceInfo,
    /// Its driver.
    pub driver: Arc<dyn Driver>,
    /// How many jobs may run on it at once.
    pub max_jobs: usize,
    /// How many devices stand behind this entry: 1 for a board, the number of usable
    /// devices for a pooled back end (a LAVA device type).
    pub count: usize,
    /// Secrets masked in the logs of its jobs (a login password, a LAVA token).
    pub secrets: Vec<crate::secrets::Secret>,
}

/// Builds the devices of a config.
pub fn build(cfg: &AgentConfig, lib: &Library) -> anyhow::Result<Vec<Arc<Device>>> {
    cfg.devices
        .iter()
        .map(|d| {
            let dt = lib.get(&d.device_type).ok_or_else(|| {
                anyhow::anyhow!(
                    "device `{}`: unknown device type `{}`",
                    d.name,
                    d.device_type
                )
            })?;
            let info = DeviceInfo {
                name: d.name.clone(),
                device_type: d.device_type.clone(),
                driver: d.driver.kind().to_string(),
                properties: dt.properties(),
                features: dt.features.clone(),
                tags: d.tags.clone(),
                health: Health::Good,
                ..Default::default()
            };
            let (driver, max_jobs): (Arc<dyn Driver>, usize) = match &d.driver {
                DriverConfig::Shell(s) => (
                    Arc::new(ShellDriver::new(d.clone(), s.clone())),
                    s.max_jobs.max(1),
                ),
                // A board runs one job at a time: the job holds it exclusively.
                DriverConfig::Serial(s) => (
                    Arc::new(SerialDriver::new(
                        d.clone(),
                        (**s).clone(),
                        cfg.artifacts.file_dirs.clone(),
                        cfg.tftp.clone(),
                        dt.u_boot.clone(),
                    )),
                    1,
                ),
                DriverConfig::Labgrid(_) => anyhow::bail!(
                    "device `{}`: labgrid places come from the `labgrid:` section",
                    d.name
                ),
            };
            Ok(Arc::new(Device {
                config: Some(d.clone()),
                secrets: d.secrets(),
                info,
                driver,
                max_jobs,
                count: 1,
            }))
        })
        .collect()
}

/// Picks the device for a job among `free` (already in preference order: idle first, least
/// recently used): the coordinator's suggestion if it matches (it knows about retries and
/// run variants), else the first matching device in good health, else the first matching
/// one whose health is only unknown. `criteria` carries the variant's exclusions
/// (`avoid_device_types`, `avoid_devices`), which [`Criteria::matches`] honours.
pub fn choose<'a>(
    criteria: &Criteria,
    suggested: &str,
    free: &[&'a Arc<Device>],
) -> Option<&'a Arc<Device>> {
    let matching = || free.iter().filter(|d| criteria.matches(&d.info));
    matching()
        .find(|d| d.info.name == suggested)
        .or_else(|| matching().find(|d| d.info.health == Health::Good))
        .or_else(|| matching().next())
        .copied()
}
