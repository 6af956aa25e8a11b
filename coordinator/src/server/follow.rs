//! What keeps this replica's dispatcher in line with the store: the job changes of other
//! replicas (PostgreSQL, through the event log), what labs connected to other replicas
//! advertise, revocations made by another process (an admin command, another replica), and
//! the job statistics placement estimates from.

use crate::model::LabName;
use crate::shared::Shared;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Writes the liveness that heartbeats leave in memory (lease renewals, labs' last calls)
/// every `leases.write_interval`, in one transaction each time (see `dispatch::liveness`).
/// The last write is made by [`super::serve`] after the server stopped.
pub(super) async fn write_liveness(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.leases.write_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        match shared
            .dispatcher
            .liveness
            .write(&shared.store, shared.config.leases.silent_after())
            .await
        {
            Ok(w) if w.renewed + w.lost + w.labs > 0 => {
                tracing::debug!(
                    labs = w.labs,
                    renewed = w.renewed,
                    lost = w.lost,
                    "liveness written"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the agents' liveness; kept for the next try")
            }
        }
    }
}

/// On PostgreSQL, every few seconds: what the labs connected to other replicas advertised,
/// for placement.
pub(super) async fn refresh_remote_labs(shared: Arc<Shared>) {
    let period =
        (shared.config.leases.heartbeat / 2).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        match shared.store.read(crate::store::labs::adverts).await {
            Ok(rows) => shared.dispatcher.refresh_remote_labs(&rows).await,
            Err(e) => tracing::warn!(error = %e, "cannot read the labs of other replicas"),
        }
    }
}

/// On PostgreSQL, other replicas change jobs too: follows the event log and brings this
/// replica's dispatcher in line with every job event (a job submitted or requeued there
/// reaches an agent waiting here at once; a lease taken there counts here).
pub(super) async fn follow_jobs(shared: Arc<Shared>, start: i64) {
    let mut events = crate::store::events::follow(
        shared.store.clone(),
        start,
        None,
        false,
        false,
        shared.shutdown.clone(),
    );
    while let Some(ev) = events.recv().await {
        let ev = match ev {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot follow the event log; other replicas' jobs are not seen");
                return;
            }
        };
        if !matches!(
            ev.node.kind,
            crate::model::NodeKind::Job
                | crate::model::NodeKind::Kbuild
                | crate::model::NodeKind::Process
        ) {
            continue;
        }
        let id = ev.node.id;
        match shared
            .store
            .read(move |c| crate::store::jobs::find_job(c, id))
            .await
        {
            Ok(Some(row)) => shared.queue.follow(&row).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cannot read a job another replica changed")
            }
        }
    }
}

/// Reloads the job statistics for placement every 30 s.
pub(super) async fn refresh_stats(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        if let Err(e) = shared.dispatcher.refresh_stats().await {
            tracing::warn!(error = %e, "cannot read the job statistics");
        }
    }
}

/// Watches for revoked labs and certificates, whoever revoked them (RevokeLab here or on
/// another replica, `labwire-coordinator ca revoke` from another process): revoked
/// certificates leave the authentication cache and their labs' connections are closed; for
/// each newly revoked lab, the dispatcher forgets it, its waiting agents stop waiting, its
/// sessions end, and the jobs it held are offered again at once.
///
/// `before` are the labs revoked when the dispatcher loaded the queue.
pub(super) async fn watch_revocations(shared: Arc<Shared>, before: Vec<String>) {
    let mut changed = shared.store.labs_changed();
    let mut known: BTreeSet<String> = before.into_iter().collect();
    let mut known_certs: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        let read = shared
            .store
            .read(|c| {
                Ok((
                    crate::store::labs::revoked_labs(c)?,
                    crate::store::labs::revoked_certs(c)?,
                ))
            })
            .await;
        match read {
            Ok((now, certs)) => {
                let certs: BTreeSet<(String, String)> = certs.into_iter().collect();
                let fresh: Vec<(String, String)> =
                    certs.difference(&known_certs).cloned().collect();
                if !fresh.is_empty() {
                    let closed = shared.auth.revoked(&fresh);
                    tracing::debug!(
                        certificates = fresh.len(),
                        connections_closed = closed,
                        "revoked certificates left the authentication cache"
                    );
                }
                known_certs = certs;
                let now: BTreeSet<String> = now.into_iter().collect();
                for lab in now.difference(&known) {
                    let lab = LabName::new(lab.clone());
                    shared.end_sessions(&lab);
                    match shared.queue.lab_revoked(&lab).await {
                        Ok(queued) => {
                            tracing::warn!(lab = %lab, queued, "lab revoked: its agents are refused, its jobs offered again")
                        }
                        Err(e) => {
                            tracing::error!(lab = %lab, error = %e, "lab revoked, but its jobs could not be requeued")
                        }
                    }
                }
                known = now;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the revoked labs"),
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// Follows the admins' say over devices, whichever replica took it: when the labs change
/// (`store::watch`; a maintenance, retirement or resume anywhere), each lab with an agent
/// connected here gets the health that counts of its devices in this replica's picture, and
/// a resume is told to its agent at its next heartbeat, not only when it next advertises
/// its devices.
pub(super) async fn watch_admin_health(shared: Arc<Shared>) {
    let mut changed = shared.store.labs_changed();
    loop {
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = shared.shutdown.cancelled() => return,
        }
        for (lab, session) in shared.connected_labs() {
            let name = lab.as_str().to_string();
            let read = shared
                .store
                .read(move |c| crate::store::health::counted(c, &name))
                .await;
            let devices = match read {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(lab = %lab, error = %e, "cannot read the lab's device health");
                    continue;
                }
            };
            for d in &devices {
                let here = session.devices.iter().find(|s| s.name == d.device);
                if here.is_some_and(|s| s.health != d.health || s.health_reason != d.reason) {
                    crate::grpc::health::apply_health(
                        &shared, &lab, &d.device, d.health, &d.reason,
                    )
                    .await;
                }
            }
            if devices.iter().any(|d| d.resumed) {
                shared.dispatcher.note_resume(&lab);
            }
        }
    }
}
