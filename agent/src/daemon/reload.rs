//! The device list: the devices of the config file and those the sources found, merged
//! into the offered list; SIGHUP reloads the file's devices, limits, `state.keep_jobs`,
//! `lava:` entries and `labgrid:` entries (in place, where the entry's session stays the
//! same; the log names any that need a restart).

use super::{Agent, State};
use crate::config::AgentConfig;
use crate::devices::{self, Device};
use crate::sources::{self, DeviceSource};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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
    // A device no longer offered leaves the requests for work at once (the pull loop
    // ends the open ones that name it); one that is new waits until it is advertised.
    st.advertised_names.retain(|n| names.contains(n.as_str()));
    st.devices = devices;
    st.advertise = true;
}

/// Starts following `source` under a stop token of its own (a child of the agent's), kept
/// in the state under the source's name so that SIGHUP can replace it.
pub(super) fn start_source(agent: &Arc<Agent>, source: Arc<dyn sources::DeviceSource>) {
    let stop = agent.stop.child_token();
    if let Some(old) = agent.lock().sources.insert(source.name(), stop.clone()) {
        old.cancel();
    }
    tokio::spawn(follow_source(agent.clone(), source, stop));
}

/// Stops following the source `name` and withdraws its devices (jobs in flight keep theirs).
fn stop_source(st: &mut State, name: &str) {
    if let Some(stop) = st.sources.remove(name) {
        stop.cancel();
    }
    st.discovered.remove(name);
}

/// Follows one device source until `stop`: every list it publishes replaces that source's
/// devices.
async fn follow_source(
    agent: Arc<Agent>,
    source: Arc<dyn sources::DeviceSource>,
    stop: CancellationToken,
) {
    let name = source.name();
    let (tx, mut rx) = watch::channel(Vec::new());
    tokio::spawn(source.run(tx, stop.clone()));
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
        let list = rx.borrow_and_update().clone();
        {
            let mut st = agent.lock();
            // Checked under the lock: a source SIGHUP replaced publishes nothing more.
            if stop.is_cancelled() {
                return;
            }
            tracing::info!(source = %name, devices = list.len(), "device source changed");
            st.discovered.insert(name.clone(), list);
            install_devices(&mut st);
        }
        agent.bump();
        // Advertise at once rather than at the next heartbeat.
        agent.session_lost.notify_one();
    }
}

/// Reloads the device list, limits, `lava:` and `labgrid:` entries from `path` on every
/// SIGHUP. Jobs in flight keep their device until they end; a device removed from the file
/// is no longer offered; a `lava:` entry that changed is followed anew (its devices are read
/// again); a `labgrid:` entry whose coordinator, identity, client and `command_timeout` are
/// unchanged takes its new places and settings in place (its session, journal and holds
/// stay); a bad file is refused (logged) and the running configuration kept. The lab, the
/// coordinator link, the state directory, and `labgrid:` entries added, removed or with a
/// new session need a restart (the log names them).
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
            Ok(r) if !r.labgrid_not_applied.is_empty() => {
                // Not "reloaded": a running Labgrid source owns its session, its journal
                // and the holds of its jobs; replacing it under them is left to a restart.
                tracing::warn!(config = %path.display(), devices = r.devices, lava_restarted = ?r.lava_restarted, lava_kept = r.lava_kept, labgrid_applied = ?r.labgrid_applied, labgrid_not_applied = ?r.labgrid_not_applied, "SIGHUP: configuration reloaded EXCEPT these `labgrid:` entries, which are NOT applied: restart the agent to apply them");
            }
            Ok(r) => {
                tracing::info!(config = %path.display(), devices = r.devices, lava_restarted = ?r.lava_restarted, lava_kept = r.lava_kept, labgrid_applied = ?r.labgrid_applied, "SIGHUP: configuration reloaded");
            }
            Err(e) => {
                tracing::error!(config = %path.display(), error = %format!("{e:#}"), "SIGHUP: configuration refused; keeping the running one")
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}

/// What a reload changed.
pub(super) struct Reloaded {
    /// Devices of the config file.
    pub(super) devices: usize,
    /// `lava:` entries followed anew (changed, added; removed ones are only stopped).
    pub(super) lava_restarted: Vec<String>,
    /// `lava:` entries left running as they were.
    pub(super) lava_kept: usize,
    /// `labgrid:` entries whose new settings apply now.
    pub(super) labgrid_applied: Vec<String>,
    /// `labgrid:` entries that changed and need a restart, each with why.
    pub(super) labgrid_not_applied: Vec<String>,
}

pub(super) fn reload(agent: &Arc<Agent>, path: &std::path::Path) -> anyhow::Result<Reloaded> {
    let cfg = AgentConfig::load(path)?;
    if cfg.lab != agent.cfg.lab
        || !cfg.coordinator.same_link(&agent.cfg.coordinator)
        || cfg.state_dir != agent.cfg.state_dir
    {
        anyhow::bail!("`lab`, `coordinator` and `state_dir` cannot change without a restart");
    }
    let lib = cfg.library()?;
    let devices = devices::build(&cfg, &lib)?;
    let labgrid_applied;
    let labgrid_not_applied;
    // Built before anything changes, so that a bad entry refuses the whole file.
    let lava = sources::lava(&cfg)?;
    let n = devices.len();
    let mut restarted = Vec::new();
    let mut kept = 0;
    {
        let mut st = agent.lock();
        st.max_jobs_cfg = cfg.limits.max_jobs;
        st.limits = cfg.limits.clone();
        st.keep_jobs = cfg.state.keep_jobs;
        st.configured = devices;
        let running = std::mem::take(&mut st.lava);
        for old in &running {
            if !cfg.lava.iter().any(|l| l == old) {
                stop_source(&mut st, &format!("lava:{}", old.name));
            }
        }
        for (entry, source) in cfg.lava.iter().zip(lava) {
            if running.iter().any(|l| l == entry) {
                kept += 1;
            } else {
                restarted.push(entry.name.clone());
                stop_source(&mut st, &source.name());
                drop(st);
                start_source(agent, source);
                st = agent.lock();
            }
        }
        st.lava = cfg.lava.clone();
        (labgrid_applied, labgrid_not_applied) = update_labgrid(&st.labgrid, &cfg, &lib);
        install_devices(&mut st);
    }
    agent.bump();
    agent.session_lost.notify_one();
    Ok(Reloaded {
        devices: n,
        lava_restarted: restarted,
        lava_kept: kept,
        labgrid_applied,
        labgrid_not_applied,
    })
}

/// Gives each running Labgrid source its entry of `cfg` where the session stays the same;
/// returns the entries applied and those that need a restart (with why).
fn update_labgrid(
    running: &[Arc<crate::labgrid::LabgridSource>],
    cfg: &AgentConfig,
    lib: &crate::device_types::Library,
) -> (Vec<String>, Vec<String>) {
    let (mut applied, mut not_applied) = (Vec::new(), Vec::new());
    for e in &cfg.labgrid {
        let name = format!("labgrid:{}", e.name);
        match running.iter().find(|s| s.name() == name) {
            Some(s) if s.is(e) => {}
            Some(s) if s.same_session(e) => {
                s.update(e, cfg, lib.clone());
                applied.push(e.name.clone());
            }
            Some(_) => not_applied.push(format!(
                "{}: its coordinator, client, env, user, host or command_timeout changed",
                e.name
            )),
            None => not_applied.push(format!("{}: added", e.name)),
        }
    }
    for s in running {
        if !cfg
            .labgrid
            .iter()
            .any(|e| s.name() == format!("labgrid:{}", e.name))
        {
            not_applied.push(format!("{}: removed", s.name()));
        }
    }
    (applied, not_applied)
}
