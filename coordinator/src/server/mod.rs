//! Runs the coordinator: opens the store, starts dispatch and the background tasks, and
//! serves the gRPC API over TLS until the shutdown token is cancelled. The services that run
//! once across replicas are in `leader`; what keeps this replica's dispatcher in line with
//! the store (other replicas, other processes, statistics) in `follow`.

mod follow;
mod leader;

use crate::auth::Auth;
use crate::config::CoordinatorConfig;
use crate::dispatch::{Dispatcher, JobQueue};
use crate::grpc::{AdminApi, AgentApi, BorrowApi, EventApi, NodeApi};
use crate::shared::Shared;
use crate::store::Backend;
use crate::store::cursor::EventCursor;
use anyhow::Context;
use labwire_proto::MAX_MESSAGE_BYTES;
use labwire_proto::v1::admin_service_server::AdminServiceServer;
use labwire_proto::v1::agent_service_server::AgentServiceServer;
use labwire_proto::v1::borrow_service_server::BorrowServiceServer;
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
pub(crate) fn tls_config(cfg: &CoordinatorConfig) -> anyhow::Result<ServerTlsConfig> {
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
    let store = tokio::task::spawn_blocking(move || crate::setup::open_store(&c2)).await??;
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
    // The services that follow the event log from a stored cursor start, the first time, at
    // the end of the log as it is now, before any client can reach this coordinator: what a
    // client does while the leader's services start up is not missed.
    let mut cursors = Vec::new();
    if pipeline.is_some() {
        cursors.push(EventCursor::SCHEDULER);
    }
    if cfg.reports.email.is_some() {
        cursors.push(EventCursor::REPORT_MAIL);
    }
    store
        .write(move |w| {
            for c in cursors {
                w.start_cursor(c)?;
            }
            Ok(())
        })
        .await?;
    // Revocations after this point reach the dispatcher through the store's notifications;
    // what was revoked before, the queue it loads is already in line with.
    let revoked = store.read(crate::store::labs::revoked_labs).await?;
    // Other replicas' job changes after this point reach the dispatcher through the event
    // log (PostgreSQL); what happened before, it loads from the store now.
    let follow_from = *store.last_seq().borrow();
    let dispatcher = Arc::new(
        Dispatcher::load(
            store.clone(),
            cfg.leases.duration,
            cfg.leases.heartbeat,
            placement,
        )
        .await?,
    );
    // Another process on an SQLite file (`ca revoke` while this runs) is heard of too.
    store.watch_other_processes();
    let shared = Arc::new(Shared {
        store: store.clone(),
        queue: JobQueue::new(store.clone(), dispatcher.clone()),
        dispatcher,
        auth: Auth::new(store.clone()),
        sessions: Default::default(),
        config: cfg.clone(),
        shutdown: shutdown.clone(),
        consoles: Default::default(),
    });

    crate::pipeline::check(&shared)?;
    let mut upkeep = tokio::task::JoinSet::new();
    upkeep.spawn(follow::refresh_stats(shared.clone()));
    upkeep.spawn(follow::watch_revocations(shared.clone(), revoked));
    upkeep.spawn(follow::write_liveness(shared.clone()));
    upkeep.spawn(follow::watch_admin_health(shared.clone()));
    // Reservations whose lease ran out end here (on every replica; the store lets one win).
    upkeep.spawn(crate::borrow::sweep(shared.clone()));
    if store.backend() == Backend::Postgres {
        upkeep.spawn(follow::follow_jobs(shared.clone(), follow_from));
        upkeep.spawn(follow::refresh_remote_labs(shared.clone()));
    }
    let leader = tokio::spawn(leader::lead(shared.clone(), pipeline.map(Arc::new)));
    let ports = if http.is_some() { 2 } else { 1 };
    let mut services = crate::pipeline::start_http(&shared, http)?;

    let addr = listener.local_addr()?;
    let conns = crate::net::Tracker::new("gRPC", &cfg.connections, ports);
    // A revoked lab's connections are closed.
    shared.auth.track_connections(conns.clone());
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
        .add_service(BorrowServiceServer::new(BorrowApi::new(shared.clone())))
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
    upkeep.abort_all();
    // The leader task stops its services and gives the role up, so that another replica
    // takes over at once.
    let _ = tokio::time::timeout(Duration::from_secs(15), leader).await;
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while services.join_next().await.is_some() {}
    })
    .await;
    services.abort_all();
    // What heartbeats left in memory reaches the store before the process ends.
    match shared
        .dispatcher
        .liveness
        .write(&shared.store, shared.config.leases.silent_after())
        .await
    {
        Ok(w) => tracing::info!(
            labs = w.labs,
            renewed = w.renewed,
            "liveness written at shutdown"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot write the agents' liveness at shutdown"),
    }
    res.context("the gRPC server failed")?;
    tracing::info!("coordinator stopped");
    Ok(())
}
