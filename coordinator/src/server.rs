//! Runs the coordinator: opens the store, starts dispatch and the background sweeps, and
//! serves the gRPC API over TLS until the shutdown token is cancelled.

use crate::api::{AdminApi, AgentApi, EventApi, NodeApi, Shared};
use crate::auth::Auth;
use crate::config::CoordinatorConfig;
use crate::dispatch::Dispatcher;
use crate::store::Backend;
use anyhow::Context;
use labwire_proto::MAX_MESSAGE_BYTES;
use labwire_proto::v1::admin_service_server::AdminServiceServer;
use labwire_proto::v1::agent_service_server::AgentServiceServer;
use labwire_proto::v1::event_service_server::EventServiceServer;
use labwire_proto::v1::node_service_server::NodeServiceServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

fn read(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "cannot read the {what} {} (run `labwire-coordinator ca init` to create it)",
            path.display()
        )
    })
}

/// The TLS settings: the server's identity, and client certificates from the coordinator's
/// CA accepted but not required (clients with tokens have none; the agent service refuses
/// calls without one).
pub fn tls_config(cfg: &CoordinatorConfig) -> anyhow::Result<ServerTlsConfig> {
    let cert = read(&cfg.cert_path(), "server certificate")?;
    let key = read(&cfg.key_path(), "server key")?;
    let ca = read(&cfg.client_ca_path(), "client CA certificate")?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(true)
        .timeout(cfg.connections.handshake_timeout))
}

/// Serves on `listener` until `shutdown` is cancelled, then drains: long polls and event
/// streams end, in-flight calls finish. The HTTP side, when configured (`http.listen`),
/// listens on its own port.
pub async fn serve(
    cfg: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let http = match cfg.http.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (http.listen)"))?,
        ),
        None => None,
    };
    serve_with_http(cfg, listener, http, shutdown).await
}

/// Like [`serve`], with the HTTP side on `http` (already bound, so the caller knows its
/// port) instead of `http.listen`.
pub async fn serve_with_http(
    cfg: CoordinatorConfig,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = tls_config(&cfg)?;
    let c2 = cfg.clone();
    let store = tokio::task::spawn_blocking(move || crate::cli::open_store(&c2)).await??;
    let placement = match &cfg.placement {
        Some(p) => crate::placement::Placement::load(p)?,
        None => Default::default(),
    };
    let pipeline = if cfg.pipeline.is_empty() {
        None
    } else {
        let loaded = crate::pipeline_config::PipelineConfig::load_files(&cfg.pipeline)?;
        for w in &loaded.warnings {
            tracing::info!("scheduler config: {w}");
        }
        Some(loaded.config)
    };
    // Other replicas' job changes after this point reach the dispatcher through the event
    // log (PostgreSQL); what happened before, it loads from the store now.
    let follow_from = *store.last_seq().borrow();
    let dispatcher = Dispatcher::load(
        store.clone(),
        cfg.leases.duration,
        cfg.leases.heartbeat,
        placement,
    )
    .await?;
    let shared = Arc::new(Shared {
        store: store.clone(),
        dispatcher,
        auth: Auth::new(store.clone()),
        sessions: Default::default(),
        config: cfg.clone(),
        shutdown: shutdown.clone(),
    });

    crate::services::check(&shared)?;
    let stats = tokio::spawn(refresh_stats(shared.clone()));
    let leader = tokio::spawn(lead(shared.clone(), pipeline.map(Arc::new)));
    let follower = (store.backend() == Backend::Postgres).then(|| {
        (
            tokio::spawn(follow_jobs(shared.clone(), follow_from)),
            tokio::spawn(refresh_remote_labs(shared.clone())),
        )
    });
    let ports = if http.is_some() { 2 } else { 1 };
    let mut services = crate::services::start_http(&shared, http)?;

    let addr = listener.local_addr()?;
    let conns = crate::net::Tracker::new("gRPC", &cfg.connections, ports);
    let router = Server::builder()
        .layer(conns.layer())
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_nodelay(true)
        .add_service(
            AgentServiceServer::new(AgentApi::new(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            NodeServiceServer::new(NodeApi::new(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(EventServiceServer::new(EventApi::new(shared.clone())))
        .add_service(AdminServiceServer::new(AdminApi::new(shared.clone())))
        // Server reflection, so grpcurl and other tools can list and call the services
        // (v1, and v1alpha for older tools).
        .add_service(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(labwire_proto::FILE_DESCRIPTOR_SET)
                .build_v1()?,
        )
        .add_service(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(labwire_proto::FILE_DESCRIPTOR_SET)
                .build_v1alpha()?,
        );
    tracing::info!(%addr, store = %store.location(), "coordinator listening");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let s2 = shutdown.clone();
    let res = router
        .serve_with_incoming_shutdown(
            // Connection limits (crate::net); it also sets TCP_NODELAY on every socket.
            conns.incoming(listener),
            async move {
                s2.cancelled().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                tracing::info!("coordinator draining");
            },
        )
        .await;
    shutdown.cancel();
    stats.abort();
    if let Some((jobs, labs)) = follower {
        jobs.abort();
        labs.abort();
    }
    // The leader task stops its services and gives the role up, so that another replica
    // takes over at once.
    let _ = tokio::time::timeout(Duration::from_secs(15), leader).await;
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while services.join_next().await.is_some() {}
    })
    .await;
    services.abort_all();
    res.context("the gRPC server failed")?;
    tracing::info!("coordinator stopped");
    Ok(())
}

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
async fn lead(shared: Arc<Shared>, pipeline: Option<Arc<crate::pipeline_config::PipelineConfig>>) {
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
    let stop = shared.shutdown.child_token();
    let mut set = tokio::task::JoinSet::new();
    set.spawn(sweep_leases(shared.clone(), stop.clone()));
    set.spawn(prune_events(shared.clone(), stop.clone()));
    if let Some(p) = pipeline {
        set.spawn(crate::scheduler::run(shared.clone(), p));
    }
    crate::services::start_leader(shared, &stop, &mut set)?;
    Ok((stop, set))
}

/// On PostgreSQL, other replicas change jobs too: follows the event log and brings this
/// replica's dispatcher in line with every job event (a job submitted or requeued there
/// reaches an agent waiting here at once; a lease taken there counts here).
/// On PostgreSQL, every few seconds: what the labs connected to other replicas advertised,
/// for placement.
async fn refresh_remote_labs(shared: Arc<Shared>) {
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

async fn follow_jobs(shared: Arc<Shared>, start: i64) {
    let mut events = crate::store::events::follow(
        shared.store.clone(),
        start,
        None,
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
            Ok(Some(row)) => shared.dispatcher.sync(&row).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cannot read a job another replica changed")
            }
        }
    }
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
        match shared
            .store
            .write(move |w| w.sweep_expired_leases(max_retries))
            .await
        {
            Ok(sweep) => {
                for job in &sweep.requeued {
                    tracing::warn!(job = %job.id, "lease expired; job back in the queue");
                    shared.dispatcher.enqueue(job).await;
                }
                for id in &sweep.failed {
                    tracing::warn!(job = %id, "lease expired and no retries left; job incomplete");
                    shared.dispatcher.forget(*id).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "lease sweep failed"),
        }
    }
}

/// Reloads the job statistics for placement every 30 s.
async fn refresh_stats(shared: Arc<Shared>) {
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
