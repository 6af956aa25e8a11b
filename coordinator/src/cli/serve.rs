//! `labwire-coordinator serve`: binds the ports (writing their addresses for scripts and
//! tests), installs the signal handlers and runs the daemon until SIGTERM or SIGINT.

use super::ServeArgs;
use crate::config::CoordinatorConfig;
use anyhow::Context;
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// Runs the daemon with `cfg` and the command line's `args`.
pub(super) async fn serve(cfg: CoordinatorConfig, args: ServeArgs) -> anyhow::Result<()> {
    let http = match args.http_listen.or(cfg.http.listen) {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (HTTP side)"))?,
        ),
        None => None,
    };
    if let (Some(l), Some(f)) = (&http, &args.http_addr_file) {
        write_addr(f, l.local_addr()?)?;
    }
    let addr = args.listen.unwrap_or(cfg.listen);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    if let Some(f) = &args.addr_file {
        write_addr(f, listener.local_addr()?)?;
    }
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    crate::server::serve_with_http(cfg, listener, http, shutdown).await
}

/// Writes a listening address to `f` atomically (tests and scripts read the port from it).
fn write_addr(f: &Path, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let tmp = f.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, f).with_context(|| format!("cannot write {}", f.display()))
}

/// Cancels `token` on SIGTERM or SIGINT.
pub(crate) fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
}
