//! The agent's session with the coordinator: Register, then Heartbeats that renew the
//! leases of the jobs it holds and advertise its devices, sent on the session stream
//! ([`super::link`]) when the coordinator has one, else as calls; a forgotten session is
//! registered again at once.

use super::link::{self, Link, Opened};
use super::{Agent, health_check};
use crate::client::backoff;
use labwire_proto::v1;
use std::sync::Arc;
use std::time::Duration;

/// Registers, then heartbeats; registers again whenever the coordinator forgot the session.
pub(super) async fn keep_session(agent: Arc<Agent>) {
    let mut failures = 0u32;
    // The open session stream, and whether the coordinator has one (asked again after each
    // Register: the agent may have moved to another replica).
    let mut stream: Option<Link> = None;
    let mut streams = true;
    loop {
        let session = agent.lock().session.clone();
        let wait = match session {
            None => {
                let devices = agent.advertised();
                let names: std::collections::HashSet<String> =
                    devices.iter().map(|d| d.name.clone()).collect();
                let req = v1::RegisterRequest {
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    devices,
                    free_slots: agent.free_slots(),
                    held_jobs: agent.held_jobs(),
                };
                match agent
                    .coordinator
                    .call(|mut c| async move { c.register(req).await })
                    .await
                {
                    Ok(resp) => {
                        let r = resp.into_inner();
                        failures = 0;
                        if r.lab != agent.cfg.lab {
                            tracing::warn!(config = %agent.cfg.lab, certificate = %r.lab, "the certificate names another lab than the config; the certificate wins");
                        }
                        agent.withdraw(&r.lost_jobs);
                        agent.set_reserved(&r.reserved);
                        stream = None;
                        streams = true;
                        let hb = Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(100)));
                        {
                            let mut st = agent.lock();
                            st.session = Some(r.session.clone());
                            st.heartbeat = hb;
                            st.accepted(names);
                        }
                        agent.bump();
                        tracing::info!(lab = %r.lab, session = %r.session, url = %agent.coordinator.url(), "registered with the coordinator");
                        hb
                    }
                    Err(s) => {
                        failures += 1;
                        let wait = backoff(
                            failures,
                            Duration::from_millis(500),
                            Duration::from_secs(30),
                        );
                        tracing::warn!(code = ?s.code(), error = %s.message(), retry_in = ?wait, "cannot register with the coordinator");
                        wait
                    }
                }
            }
            Some(session) => {
                let running = agent.held_jobs();
                let advertise = std::mem::take(&mut agent.lock().advertise);
                let devices = if advertise {
                    agent.advertised()
                } else {
                    Vec::new()
                };
                let names: std::collections::HashSet<String> =
                    devices.iter().map(|d| d.name.clone()).collect();
                let req = v1::HeartbeatRequest {
                    session: session.clone(),
                    running,
                    devices,
                    free_slots: agent.free_slots(),
                    draining: agent.draining.is_cancelled(),
                    devices_changed: advertise,
                };
                if stream.as_ref().is_some_and(|l| l.session != session) {
                    stream = None;
                }
                if stream.is_none() && streams {
                    match link::open(&agent, &session).await {
                        Opened::Link(l) => {
                            tracing::debug!("session stream open");
                            stream = Some(l);
                        }
                        Opened::Unsupported => {
                            tracing::info!(
                                "the coordinator has no session stream; heartbeats go as calls"
                            );
                            streams = false;
                        }
                        Opened::Failed(s) => {
                            tracing::debug!(code = ?s.code(), error = %s.message(), "cannot open the session stream now");
                        }
                    }
                }
                let answer = match stream.as_mut() {
                    Some(l) => {
                        let within = agent.lock().heartbeat.max(Duration::from_secs(5));
                        let r = l.heartbeat(req, within).await;
                        if r.is_err() {
                            stream = None;
                        }
                        r
                    }
                    None => agent
                        .coordinator
                        .call(|mut c| async move { c.heartbeat(req).await })
                        .await
                        .map(|r| r.into_inner()),
                };
                match answer {
                    Ok(resp) => {
                        failures = 0;
                        if advertise {
                            agent.lock().accepted(names);
                            agent.bump();
                        }
                        agent.withdraw(&resp.cancel);
                        agent.set_reserved(&resp.reserved);
                        let mut changed = false;
                        for d in &resp.resumed {
                            changed |= health_check::resumed(&agent, d);
                        }
                        if changed {
                            agent.health_changed();
                        }
                    }
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        tracing::info!("the coordinator forgot this session; registering again");
                        agent.lock().session = None;
                        agent.bump();
                        continue;
                    }
                    Err(s) => {
                        failures += 1;
                        if advertise {
                            agent.lock().advertise = true;
                        }
                        tracing::warn!(code = ?s.code(), error = %s.message(), "heartbeat failed");
                    }
                }
                agent.lock().heartbeat
            }
        };
        // The session loop never waits longer than 30 s, so systemd's watchdog (WatchdogSec in
        // the unit) hears from a healthy agent well within its period.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = agent.session_lost.notified() => {}
            _ = agent.stop.cancelled() => return,
        }
    }
}
