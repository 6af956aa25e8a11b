//! The coordinator's store: one SQLite file in WAL mode behind this module. Writes go through
//! one connection, one transaction each ([`Store::write`]); reads use a small pool of
//! connections ([`Store::read`]). Every node change appends its event in the same transaction.
//! Both run on tokio's blocking pool so that the async services never block on the disk.

pub mod events;
pub mod jobs;
pub mod labs;
pub mod migrations;
pub mod nodes;

pub use events::StoredEvent;
pub use jobs::{
    Claim, JobRow, JobStatus, LeaseSweep, NewJob, ReportOutcome, RetryPolicy, RunGroup,
};
pub use labs::{LabRow, Scope, TokenInfo};
pub use nodes::{NewNode, NodeFilter, NodeUpdate};

use crate::clock::Clock;
use crate::error::{Error, Result};
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    last_seq: watch::Sender<i64>,
    clock: Clock,
}

/// An open write transaction, with the time of the change and the events it appended.
pub struct Write<'c> {
    tx: rusqlite::Transaction<'c>,
    now: DateTime<Utc>,
    last_seq: Option<i64>,
}

impl Write<'_> {
    /// The time stamped on every change of this transaction.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// The transaction, for reads inside it.
    pub fn conn(&self) -> &Connection {
        &self.tx
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the SQLite file at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store> {
        Self::open_with_clock(path, Clock::system())
    }

    /// Like [`Store::open`], with the time of every change taken from `clock` (tests move a
    /// manual clock to check timeouts).
    pub fn open_with_clock(path: &Path, clock: Clock) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut writer = open_conn(path)?;
        migrations::apply(&mut writer)?;
        let last = events::last_seq(&writer)?;
        let (last_seq, _) = watch::channel(last);
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                last_seq,
                clock,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` in one write transaction on the blocking pool. The transaction commits when
    /// `f` returns `Ok`, and rolls back otherwise. Subscribers learn of new events after the
    /// commit.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Write<'_>) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.write_blocking(f))
            .await
            .map_err(|e| Error::Internal(format!("database task failed: {e}")))?
    }

    /// Like [`Store::write`], on the calling thread (for command-line tools and tests).
    pub fn write_blocking<T>(&self, f: impl FnOnce(&mut Write<'_>) -> Result<T>) -> Result<T> {
        self.inner.write_blocking(f)
    }

    /// Runs `f` with a read connection on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.read_blocking(f))
            .await
            .map_err(|e| Error::Internal(format!("database task failed: {e}")))?
    }

    /// Like [`Store::read`], on the calling thread.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.inner.read_blocking(f)
    }

    /// The clock that stamps changes.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The sequence number of the newest committed event, watched.
    pub fn last_seq(&self) -> watch::Receiver<i64> {
        self.inner.last_seq.subscribe()
    }
}

impl Inner {
    fn write_blocking<T>(&self, f: impl FnOnce(&mut Write<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self
            .writer
            .lock()
            .map_err(|_| Error::Internal("writer lock poisoned".into()))?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut w = Write {
            tx,
            now: self.clock.now(),
            last_seq: None,
        };
        let out = f(&mut w)?;
        let Write { tx, last_seq, .. } = w;
        tx.commit()?;
        if let Some(seq) = last_seq {
            self.last_seq.send_replace(seq);
        }
        Ok(out)
    }

    fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self
            .readers
            .lock()
            .map_err(|_| Error::Internal("reader pool lock poisoned".into()))?
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_conn(&self.path)?,
        };
        let out = f(&conn);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < 8
        {
            pool.push(conn);
        }
        out
    }
}

/// Microseconds since the Unix epoch, the unit of every stored time.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A stored time back as a time.
pub fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{what}: {e}"))
}

#[cfg(test)]
pub(crate) fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("labwire.db")).expect("open store");
    (dir, store)
}
