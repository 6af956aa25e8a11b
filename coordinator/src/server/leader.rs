//! Leadership of the once-only services: one replica (always the only one on SQLite) runs the
//! scheduler, the lease sweeps, event pruning, the timeout service, the trigger and the report
//! mailer, while it holds the `services` role in the store.

use crate::shared::{Shared, SharedRef};
use crate::store::Backend;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The role that runs the once-only services.
const SERVICES_ROLE: &str = "services";

/// This replica's name in the leadership table and logs: host, process, and a random part.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "coordinator".into());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Runs the services that must run once across replicas (scheduler, lease sweeps, event
/// pruning, timeouts, trigger, reports) while this replica holds the leadership, renewing
/// it every third of `replicas.leader_ttl`. Stops them as soon as a renewal fails (another
/// replica takes over once the claim expired), and gives the role up on shutdown. On SQLite
/// there is only one coordinator process: it takes the role at once, even if a crashed
/// predecessor's claim has not expired.
pub(super) async fn lead(
    shared: SharedRef,
    pipeline: Option<Arc<crate::pipeline_config::PipelineConfig>>,
) {
    let me = replica_name();
    let ttl = shared.config.replicas.leader_ttl;
    let ttl_chrono = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(10));
    let force = shared.store.backend() == Backend::Sqlite;
    let mut running: Option<(CancellationToken, tokio::task::JoinSet<()>)> = None;
    loop {
        let (who, force_now) = (me.clone(), force && running.is_none());
        let held = shared
            .store
            .write(move |w| {
                if force_now {
                    w.resign_any(SERVICES_ROLE)?;
                }
                w.try_lead(SERVICES_ROLE, &who, ttl_chrono)
            })
            .await;
        match (&held, running.is_some()) {
            (Ok(true), false) => {
                tracing::info!(replica = %me, "this replica runs the scheduler and services now");
                match start_services(&shared, pipeline.clone()).await {
                    Ok(r) => running = Some(r),
                    Err(e) => tracing::error!(error = %e, "cannot start the services"),
                }
            }
            (Ok(false), true) | (Err(_), true) => {
                if let Err(e) = &held {
                    tracing::error!(error = %e, "cannot renew the leadership; stopping the services");
                } else {
                    tracing::warn!(replica = %me, "another replica took the leadership over; stopping the services");
                }
                if let Some((stop, mut set)) = running.take() {
                    stop.cancel();
                    set.abort_all();
                    while set.join_next().await.is_some() {}
                }
            }
            (Err(e), false) => tracing::warn!(error = %e, "cannot read the leadership"),
            _ => {}
        }
        // Alive as long as the store answers (systemd's WatchdogSec), leader or not.
        if held.is_ok() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
        tokio::select! {
            _ = tokio::time::sleep((ttl / 3).min(Duration::from_secs(5))) => {}
            _ = shared.shutdown.cancelled() => break,
        }
    }
    if let Some((stop, mut set)) = running.take() {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while set.join_next().await.is_some() {}
        })
        .await;
        set.abort_all();
        let who = me.clone();
        match shared
            .store
            .write(move |w| w.resign(SERVICES_ROLE, &who))
            .await
        {
            Ok(_) => tracing::info!(replica = %me, "gave the leadership up"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot give the leadership up; it expires by itself")
            }
        }
    }
}

/// Starts the leader's services; the token stops them.
async fn start_services(
    shared: &Arc<Shared>,
    pipeline: Option<Arc<crate::pipeline_config::PipelineConfig>>,
) -> anyhow::Result<(CancellationToken, tokio::task::JoinSet<()>)> {
    // Leases held when the previous leader (or this coordinator, before a restart) stopped
    // get a grace period, so that agents have time to reconnect before their jobs are taken
    // away.
    let grace = chrono::Utc::now()
        + chrono::Duration::from_std(shared.config.leases.duration)
            .unwrap_or(chrono::Duration::seconds(60));
    let extended = shared
        .store
        .write(move |w| w.extend_all_leases(grace))
        .await?;
    if extended > 0 {
        tracing::info!(
            leases = extended,
            "gave leases held before the leadership changed a grace period"
        );
    }
    // Queue entries whose node had ended (rows an older version let a client make) are
    // closed before anything sweeps them.
    let repaired = shared.queue.repair().await?;
    if !repaired.is_empty() {
        tracing::warn!(
            jobs = repaired.len(),
            "closed queue entries whose node had ended"
        );
    }
    let stop = shared.shutdown.child_token();
    let mut set = tokio::task::JoinSet::new();
    set.spawn(sweep_leases(shared.clone(), stop.clone()));
    set.spawn(prune_events(shared.clone(), stop.clone()));
    if let Some(p) = pipeline {
        set.spawn(crate::pipeline::scheduler::run(shared.clone(), p));
    }
    crate::pipeline::start_leader(shared, &stop, &mut set)?;
    Ok((stop, set))
}

/// Puts expired leases back in the queue, a few times per lease period.
async fn sweep_leases(shared: Arc<Shared>, stop: CancellationToken) {
    let period = (shared.config.leases.duration / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let max_retries = shared.config.leases.max_retries as i32;
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match shared.queue.sweep_leases(max_retries).await {
            Ok(sweep) => {
                for job in &sweep.requeued {
                    tracing::warn!(job = %job.id, "lease expired; job back in the queue");
                }
                for id in &sweep.failed {
                    tracing::warn!(job = %id, "lease expired and no retries left; job incomplete");
                }
            }
            Err(e) => tracing::error!(error = %e, "lease sweep failed"),
        }
    }
}

/// Deletes events older than the retention, hourly.
async fn prune_events(shared: Arc<Shared>, stop: CancellationToken) {
    let retention = chrono::Duration::from_std(shared.config.events.retention)
        .unwrap_or(chrono::Duration::days(30));
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let before = chrono::Utc::now() - retention;
        match shared.store.write(move |w| w.prune_events(before)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned old events"),
            Err(e) => tracing::error!(error = %e, "event pruning failed"),
        }
    }
}
