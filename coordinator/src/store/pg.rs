//! PostgreSQL connections: TLS to the server (verified against the CA of `sslrootcert`) and
//! the small blocking pool that the store takes its connections from.

use super::db::{Connection, PgConn};
use crate::error::{Error, Result};
use std::cell::RefCell;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

/// How the coordinator reaches PostgreSQL: plain, or TLS verified against a CA.
#[derive(Clone)]
pub(crate) enum PgTls {
    /// No TLS (`sslmode` must not be `require`).
    Plain,
    /// TLS, the server verified against the CA of `sslrootcert`.
    Verified(tokio_postgres_rustls::MakeRustlsConnect),
}

impl PgTls {
    pub(crate) fn connect(&self, config: &postgres::Config) -> Result<postgres::Client> {
        Ok(match self {
            PgTls::Plain => config.connect(postgres::NoTls)?,
            PgTls::Verified(tls) => config.connect(tls.clone())?,
        })
    }
}

/// The TLS set-up for a CA file (none: plain).
pub(super) fn pg_tls(ca: Option<&Path>) -> Result<PgTls> {
    let Some(ca) = ca else {
        return Ok(PgTls::Plain);
    };
    let bad = |e: &dyn std::fmt::Display| {
        Error::Invalid(format!("store sslrootcert {}: {e}", ca.display()))
    };
    let pem = std::fs::read(ca).map_err(|e| bad(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Internal(format!("TLS set-up: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(PgTls::Verified(
        tokio_postgres_rustls::MakeRustlsConnect::new(config),
    ))
}

/// How many PostgreSQL connections one coordinator keeps at most.
pub(super) const PG_POOL: usize = 16;

/// A small blocking pool of PostgreSQL connections (callers are on tokio's blocking pool).
pub(super) struct Pool {
    pub(super) idle: Mutex<(Vec<Connection>, usize)>,
    pub(super) freed: Condvar,
}

pub(super) fn open_pg(config: &postgres::Config, tls: &PgTls) -> Result<Connection> {
    let client = tls.connect(config)?;
    Ok(Connection::Pg(Box::new(RefCell::new(PgConn::new(client)))))
}

/// Whether an error means the connection itself is gone (drop it rather than pool it).
pub(super) fn broken(conn: &Connection) -> bool {
    match conn {
        Connection::Sqlite(_) => false,
        Connection::Pg(c) => c.borrow_mut().client().is_closed(),
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing a `postgres` client blocks on its own runtime, which cannot happen on a
        // thread that drives tokio tasks: close them on a thread of their own.
        let conns = match self.idle.get_mut() {
            Ok(g) => std::mem::take(&mut g.0),
            Err(_) => return,
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("labwire-pg-close".into())
                .spawn(move || drop(conns));
        }
    }
}

impl Pool {
    pub(super) fn take(&self, config: &postgres::Config, tls: &PgTls) -> Result<Connection> {
        let mut guard = self
            .idle
            .lock()
            .map_err(|_| Error::Internal("connection pool lock poisoned".into()))?;
        loop {
            if let Some(c) = guard.0.pop() {
                return Ok(c);
            }
            if guard.1 < PG_POOL {
                guard.1 += 1;
                drop(guard);
                return open_pg(config, tls).inspect_err(|_| {
                    if let Ok(mut g) = self.idle.lock() {
                        g.1 -= 1;
                    }
                    self.freed.notify_one();
                });
            }
            guard = self
                .freed
                .wait(guard)
                .map_err(|_| Error::Internal("connection pool lock poisoned".into()))?;
        }
    }

    pub(super) fn give_back(&self, conn: Connection) {
        let Ok(mut guard) = self.idle.lock() else {
            return;
        };
        if broken(&conn) {
            guard.1 -= 1;
        } else {
            guard.0.push(conn);
        }
        drop(guard);
        self.freed.notify_one();
    }
}
