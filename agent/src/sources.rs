//! Device sources: back ends whose devices are not listed one by one in agent.yaml but found
//! at run time (a LAVA server's inventory, a Labgrid coordinator's places). A source follows
//! its back end and publishes its current devices; the daemon merges them with the devices
//! of the config file and advertises the union to the coordinator whenever it changes.
//!
//! A source publishes a whole new list on every change (a device added or gone, its health
//! or its capacity changed). Devices are identified by name: a job keeps the `Device` it
//! started on until it ends, even when the source has dropped that device meanwhile.

use crate::config::AgentConfig;
use crate::devices::Device;
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One back end that discovers devices.
pub trait DeviceSource: Send + Sync + 'static {
    /// The source's name for logs, unique among the sources (`lava:NAME`, `labgrid:NAME`).
    fn name(&self) -> String;

    /// Follows the back end until `stop` fires, publishing the current devices on `tx`
    /// whenever they change. Must not return early on back-end errors: it publishes what it
    /// still knows (or an empty list) and retries with back-off.
    fn run(
        self: Arc<Self>,
        tx: watch::Sender<Vec<Arc<Device>>>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()>;

    /// A device of this source that can take back a job an earlier run of the agent left
    /// going on the back end (`device` as the journal names it, `dir` the job's folder as
    /// that run left it), or `None` when the job is not this source's or cannot be taken
    /// back. Called at start, before the source has published anything.
    fn resume(&self, _device: &str, _dir: &std::path::Path) -> Option<Arc<Device>> {
        None
    }
}

/// The device sources that a config names: its `lava:` entries and the `labgrid` sources
/// made by [`labgrid`]. SIGHUP reloads the `lava:` entries ([`lava`]) and updates the
/// `labgrid:` ones in place where their session stays the same.
pub(crate) fn build(
    cfg: &AgentConfig,
    labgrid: &[Arc<crate::labgrid::LabgridSource>],
) -> anyhow::Result<Vec<Arc<dyn DeviceSource>>> {
    let mut out: Vec<Arc<dyn DeviceSource>> = Vec::new();
    for l in lava(cfg)? {
        out.push(l);
    }
    for lg in labgrid {
        out.push(lg.clone());
    }
    Ok(out)
}

/// The sources of the `labgrid:` entries, in the file's order.
pub(crate) fn labgrid(
    cfg: &AgentConfig,
) -> anyhow::Result<Vec<Arc<crate::labgrid::LabgridSource>>> {
    if cfg.labgrid.is_empty() {
        return Ok(Vec::new());
    }
    let lib = cfg.library()?;
    cfg.labgrid
        .iter()
        .map(|lg| crate::labgrid::LabgridSource::new(lg, cfg, lib.clone()).map(Arc::new))
        .collect()
}

/// The sources of the `lava:` entries, in the file's order.
pub fn lava(cfg: &AgentConfig) -> anyhow::Result<Vec<Arc<crate::lava::inventory::LavaSource>>> {
    if cfg.lava.is_empty() {
        return Ok(Vec::new());
    }
    let lib = Arc::new(cfg.library()?);
    cfg.lava
        .iter()
        .map(|l| {
            crate::lava::inventory::LavaSource::new(l.clone(), &cfg.lab, lib.clone()).map(Arc::new)
        })
        .collect()
}
