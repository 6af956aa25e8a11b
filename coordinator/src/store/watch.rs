//! Hearing of commits made elsewhere. A coordinator learns at once of what it commits itself;
//! what another process commits reaches it here:
//!
//! - **PostgreSQL**: every transaction with events sends `NOTIFY labwire_events, 'SEQ'`, and a
//!   revocation sends `NOTIFY labwire_labs, 'LAB'`, both delivered at commit; a thread per
//!   store listens and moves the store's watches. After a lost connection it connects again
//!   and announces both, so nothing is missed (readers read the durable tables; the
//!   notification only wakes them).
//! - **SQLite**: another process on the same file (an admin command such as
//!   `labwire-coordinator ca revoke` while the coordinator runs) cannot notify; a thread reads
//!   `PRAGMA data_version` on a connection of its own every [`SQLITE_POLL`], which changes
//!   whenever another connection committed, and then announces both. Started by
//!   [`super::Store::watch_other_processes`] (the daemon does; admin commands do not).

use super::db::Connection;
use super::events::last_seq;
use super::pg::PgTls;
use super::{WeakStore, open_sqlite};
use crate::error::Result;
use std::path::PathBuf;
use std::time::Duration;

/// The PostgreSQL channel that carries the newest sequence number of each commit.
pub(super) const EVENTS_CHANNEL: &str = "labwire_events";
/// The PostgreSQL channel that names a lab whose certificates were revoked.
pub(super) const LABS_CHANNEL: &str = "labwire_labs";
/// How often the SQLite watcher looks for another process's commits.
pub(crate) const SQLITE_POLL: Duration = Duration::from_millis(200);

/// Listens on PostgreSQL for other replicas' commits and moves the store's watches, on a
/// thread of its own, until the store is dropped.
pub(super) fn listen(config: postgres::Config, tls: PgTls, store: WeakStore) {
    let spawned = std::thread::Builder::new()
        .name("labwire-pg-listen".into())
        .spawn(move || {
            let mut warned = false;
            while store.upgrade().is_some() {
                if let Err(e) = listen_once(&config, &tls, &store) {
                    if !warned {
                        tracing::warn!(error = %e, "lost the PostgreSQL notification connection; reconnecting");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                } else {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the PostgreSQL listener thread");
    }
}

/// One connection's worth of listening; `Ok` when the store is gone.
fn listen_once(config: &postgres::Config, tls: &PgTls, store: &WeakStore) -> Result<()> {
    let mut client = tls.connect(config)?;
    client.batch_execute(&format!("LISTEN {EVENTS_CHANNEL}; LISTEN {LABS_CHANNEL}"))?;
    let last: i64 = client.query_one("SELECT last FROM event_seq", &[])?.get(0);
    match store.upgrade() {
        // Whatever happened while no one listened.
        Some(s) => {
            s.announce(last);
            s.announce_labs();
        }
        None => return Ok(()),
    }
    loop {
        let mut notes = client.notifications();
        let mut it = notes.timeout_iter(Duration::from_secs(1));
        use postgres::fallible_iterator::FallibleIterator;
        let next = it.next()?;
        let Some(store) = store.upgrade() else {
            return Ok(());
        };
        if let Some(n) = next {
            if n.channel() == LABS_CHANNEL {
                store.announce_labs();
            } else if let Ok(seq) = n.payload().parse::<i64>() {
                store.announce(seq);
            }
        }
    }
}

/// Watches an SQLite file for other processes' commits, on a thread of its own, until the
/// store is dropped.
pub(super) fn poll_sqlite(path: PathBuf, store: WeakStore) {
    let spawned = std::thread::Builder::new()
        .name("labwire-sqlite-watch".into())
        .spawn(move || {
            let mut conn: Option<Connection> = None;
            let mut seen: Option<i64> = None;
            while store.upgrade().is_some() {
                std::thread::sleep(SQLITE_POLL);
                let c = match conn.take() {
                    Some(c) => c,
                    None => match open_sqlite(&path) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot watch the store for other processes' changes");
                            continue;
                        }
                    },
                };
                let version = c.query_row("PRAGMA data_version", &[], |r| r.get::<_, i64>(0));
                match version {
                    Ok(v) if seen != Some(v) => {
                        seen = Some(v);
                        let Some(s) = store.upgrade() else { return };
                        if let Ok(last) = last_seq(&c) {
                            s.announce(last);
                        }
                        s.announce_labs();
                        conn = Some(c);
                    }
                    Ok(_) => conn = Some(c),
                    Err(e) => tracing::warn!(error = %e, "cannot watch the store for other processes' changes"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the SQLite watcher thread");
    }
}
