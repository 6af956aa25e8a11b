//! The device list: the devices of the config file and those the sources found, merged
//! into the offered list; SIGHUP reloads the file's devices, limits and `state.keep_jobs`.

use super::{Agent, State};
use crate::config::AgentConfig;
use crate::devices::{self, Device};
use crate::sources;
use std::sync::Arc;
use tokio::sync::watch;

/// Makes the configured and discovered devices the offered ones: a device that is gone is
/// forgotten now if idle, else when its job ends; the next heartbeat advertises the list.
pub(super) fn install_devices(st: &mut State) {
    let devices: Vec<Arc<Device>> = st
        .configured
        .iter()
        .chain(st.discovered.values().flatten())
        .cloned()
        .collect();
    st.max_jobs = st
        .max_jobs_cfg
        .unwrap_or_else(|| devices.iter().map(|d| d.max_jobs).sum::<usize>().max(1));
    for d in &devices {
        st.devs.entry(d.info.name.clone()).or_default();
    }
    let names: std::collections::HashSet<&str> =
        devices.iter().map(|d| d.info.name.as_str()).collect();
    st.devs
        .retain(|name, s| names.contains(name.as_str()) || s.busy > 0 || s.polling);
    st.devices = devices;
    st.advertise = true;
}

/// Follows one device source: every list it publishes replaces that source's devices.
pub(super) async fn follow_source(agent: Arc<Agent>, source: Arc<dyn sources::DeviceSource>) {
    let name = source.name();
    let (tx, mut rx) = watch::channel(Vec::new());
    tokio::spawn(source.run(tx, agent.stop.clone()));
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = agent.stop.cancelled() => return,
        }
        let list = rx.borrow_and_update().clone();
        tracing::info!(source = %name, devices = list.len(), "device source changed");
        {
            let mut st = agent.lock();
            st.discovered.insert(name.clone(), list);
            install_devices(&mut st);
        }
        agent.bump();
        // Advertise at once rather than at the next heartbeat.
        agent.session_lost.notify_one();
    }
}

/// Reloads the device list and limits from `path` on every SIGHUP. Jobs in flight keep
/// their device until they end; a device removed from the file is no longer offered; a bad
/// file is refused (logged) and the running configuration kept. The lab, the coordinator
/// link and the state directory need a restart to change.
pub(super) async fn reload_on_sighup(agent: Arc<Agent>, path: std::path::PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    loop {
        tokio::select! {
            got = hup.recv() => if got.is_none() { return },
            _ = agent.stop.cancelled() => return,
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        match reload(&agent, &path) {
            Ok(n) => {
                tracing::info!(config = %path.display(), devices = n, "SIGHUP: configuration reloaded")
            }
            Err(e) => {
                tracing::error!(config = %path.display(), error = %format!("{e:#}"), "SIGHUP: configuration refused; keeping the running one")
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}

pub(super) fn reload(agent: &Agent, path: &std::path::Path) -> anyhow::Result<usize> {
    let cfg = AgentConfig::load(path)?;
    if cfg.lab != agent.cfg.lab
        || !cfg.coordinator.same_link(&agent.cfg.coordinator)
        || cfg.state_dir != agent.cfg.state_dir
    {
        anyhow::bail!("`lab`, `coordinator` and `state_dir` cannot change without a restart");
    }
    let devices = devices::build(&cfg, &cfg.library()?)?;
    let n = devices.len();
    {
        let mut st = agent.lock();
        st.max_jobs_cfg = cfg.limits.max_jobs;
        st.limits = cfg.limits.clone();
        st.keep_jobs = cfg.state.keep_jobs;
        st.configured = devices;
        install_devices(&mut st);
    }
    agent.bump();
    agent.session_lost.notify_one();
    Ok(n)
}
