//! The HTTP/JSON side, next to gRPC: nodes and events in the KernelCI style, an event stream
//! (server-sent events) that resumes from a sequence number, log and artifact downloads,
//! Prometheus metrics and a health check. HTTPS with the coordinator's server certificate by
//! default; every route but `/healthz` wants a bearer token with the `read` scope.

mod events;
mod kernelci;
mod logs;
mod metrics;
mod nodes;
mod routes;
mod ui;

pub(crate) use routes::router;

use crate::error::Error;
use crate::shared::SharedRef;
use anyhow::Context;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An error of an HTTP call: the domain error, as a status and `{"detail": "..."}` (the
/// FastAPI shape KernelCI's API uses).
#[derive(Debug)]
pub(crate) struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    /// A 400 naming what was wrong.
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        ApiError(Error::Invalid(msg.into()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let msg = self.0.to_string();
        let status = match &self.0 {
            Error::NodeNotFound(_) | Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Error::OutOfRange(_) => StatusCode::GONE,
            Error::BadTransition { .. }
            | Error::ParentClosed { .. }
            | Error::LeaseLost(_)
            | Error::Refused(_)
            | Error::AlreadyExists(_) => StatusCode::CONFLICT,
            // The database connection dropped, or two replicas' transactions collided: the
            // request may be sent again.
            Error::Pg(e) if crate::error::connection_lost(e) || crate::error::retryable(e) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Db(_) | Error::Pg(_) | Error::Corrupt(_) | Error::Internal(_) => {
                tracing::error!(error = %msg, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut resp = (status, axum::Json(serde_json::json!({ "detail": msg }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The TLS settings of the HTTP side: the coordinator's server certificate and key, no client
/// certificates (clients use bearer tokens), HTTP/2 and HTTP/1.1.
pub(crate) fn tls_config(
    cfg: &crate::config::CoordinatorConfig,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cert_path = cfg.cert_path();
    let key_path = cfg.key_path();
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&cert_path)
            .with_context(|| format!("cannot read {}", cert_path.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("{} is not a PEM certificate chain", cert_path.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?,
    ))
    .with_context(|| format!("{} is not a PEM key", key_path.display()))?
    .with_context(|| format!("{} holds no private key", key_path.display()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the server certificate does not match its key")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Serves the HTTP side on `listener` (TLS when `tls` is given) until `shutdown` is cancelled;
/// open connections then finish their current requests, and event streams end.
pub(crate) async fn serve(
    shared: SharedRef,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) {
    let handshake = shared.config.connections.handshake_timeout;
    // Two ports share the open-files limit: this one and gRPC.
    let conns = crate::net::Tracker::new("HTTP", &shared.config.connections, 2);
    let app = router(shared.clone())
        .merge(kernelci::router(shared.clone()))
        .merge(ui::router(shared));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        // Connection limits (crate::net): a cap, idle connections closed.
        let (tcp, peer) = tokio::select! {
            c = conns.accept(&listener) => c,
            _ = shutdown.cancelled() => return,
        };
        let app = tcp.track(app.clone());
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = TowerToHyperService::new(app);
            let builder = auto::Builder::new(TokioExecutor::new());
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "HTTP TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "HTTP TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                    drive(conn, shutdown).await;
                }
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    drive(conn, shutdown).await;
                }
            }
        });
    }
}

/// Runs one connection; on shutdown, lets it finish the requests under way.
async fn drive<C>(conn: C, shutdown: CancellationToken)
where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            return;
        }
        _ = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
}
