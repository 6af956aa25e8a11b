//! The coordinator's store, behind this module: one SQLite file in WAL mode (the embedded
//! default, one coordinator process) or a PostgreSQL database (several coordinator replicas
//! may share it). Every query is written once against [`db::Connection`].
//!
//! Each change is one transaction ([`Store::write`]), or on SQLite one savepoint in a
//! transaction shared with the changes waiting at the same time (group commit, [`group`]);
//! reads take a connection of their own ([`Store::read`]). Both run off the async threads
//! (the writer thread, tokio's blocking pool) so that the async services never block on the
//! database. Every node change appends its event in the same transaction; the events
//! are inserted at commit time (see [`events`] for how sequence numbers stay gap-free across
//! replicas).
//!
//! SQLite: one writer connection (`BEGIN IMMEDIATE`), so transactions run one after another.
//! PostgreSQL: a pool of connections, transactions at READ COMMITTED; what must not race takes
//! row locks (a job is claimed with `FOR UPDATE SKIP LOCKED`, a node is read `FOR UPDATE`
//! before it changes).

pub(crate) mod alerts;
pub(crate) mod copy;
pub(crate) mod cursor;
pub mod db;
pub mod events;
mod group;
pub(crate) mod health;
pub(crate) mod jobs;
pub(crate) mod kernelci;
pub(crate) mod lab_report;
pub(crate) mod labs;
pub(crate) mod leader;
mod location;
pub(crate) mod metrics;
pub(crate) mod migrations;
pub(crate) mod nodes;
mod pg;
pub(crate) mod reports;
pub(crate) mod reservations;
pub(crate) mod scheduled;
pub(crate) mod timeouts;
pub(crate) mod trigger;
mod watch;

pub use db::{Backend, Connection};
pub(crate) use events::StoredEvent;
pub(crate) use jobs::{
    Claim, JobRow, JobStatus, LeaseSweep, NewJob, ReportOutcome, RetryPolicy, RunGroup,
};
pub use location::{Location, redact};
pub(crate) use nodes::NodeFilter;
pub use nodes::{NewNode, NodeUpdate};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::model::NodeId;
use chrono::{DateTime, TimeZone, Utc};
use location::pg_config;
use pg::{PgTls, Pool, broken, open_pg, pg_tls};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// What [`Store::connect`] does with the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Apply pending migrations.
    Migrate,
    /// Refuse a schema that is not exactly this coordinator's (PostgreSQL replicas: the
    /// error says to run `labwire-coordinator migrate`).
    Check,
    /// Neither (`labwire-coordinator migrate` itself).
    AsIs,
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

enum Kind {
    /// One SQLite file: one writer connection, a few readers.
    Sqlite {
        path: PathBuf,
        writer: Mutex<Connection>,
        readers: Mutex<Vec<Connection>>,
    },
    /// A PostgreSQL database: a pool of connections for reads and writes alike.
    Pg {
        config: postgres::Config,
        tls: PgTls,
        pool: Pool,
    },
}

struct Inner {
    kind: Kind,
    location: Location,
    last_seq: tokio::sync::watch::Sender<i64>,
    /// Moves when a lab may have been revoked (here or by another process).
    labs: tokio::sync::watch::Sender<u64>,
    /// Whether the SQLite watcher runs.
    watching: std::sync::atomic::AtomicBool,
    clock: Clock,
    /// SQLite: the queue of the writer thread that commits writes in groups ([`group`]).
    group: Option<std::sync::mpsc::Sender<group::Job>>,
}

/// An event written by a transaction, inserted when it commits.
pub(crate) struct PendingEvent {
    time: i64,
    node_id: i64,
    kind: &'static str,
    op: &'static str,
    previous_state: Option<&'static str>,
    previous_result: Option<&'static str>,
    node: String,
}

/// An open write transaction, with the time of the change and the events it appended.
pub struct Write<'c> {
    tx: &'c Connection,
    now: DateTime<Utc>,
    events: Vec<PendingEvent>,
    queue: Vec<QueueChange>,
    /// Whether the transaction revoked a lab.
    labs_changed: bool,
}

/// A change of the job queue that a transaction made, for the dispatcher to follow once the
/// transaction commits ([`Store::write_queue`], [`crate::dispatch::JobQueue`]).
#[derive(Debug, Clone)]
pub(crate) enum QueueChange {
    /// The job is (back) in the queue, waiting for an agent.
    Queued(Box<JobRow>),
    /// The job left the queue for good: finished, cancelled, failed, timed out, or its entry
    /// closed by a repair.
    Ended(NodeId),
}

impl Write<'_> {
    /// The time stamped on every change of this transaction.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// The transaction, for the store's own reads and writes inside it.
    pub(in crate::store) fn conn(&self) -> &Connection {
        self.tx
    }

    /// Notes a queue change of this transaction for the dispatcher.
    pub(in crate::store) fn queue_changed(&mut self, change: QueueChange) {
        self.queue.push(change);
    }

    /// Runs `f` inside a savepoint of this transaction: when it fails, what it wrote (and
    /// the events and queue changes it noted) is undone and the transaction goes on, so that
    /// one bad row does not fail a whole sweep. The error is returned.
    pub fn savepoint<T>(&mut self, f: impl FnOnce(&mut Write<'_>) -> Result<T>) -> Result<T> {
        let events = self.events.len();
        let queue = self.queue.len();
        self.tx.execute_batch("SAVEPOINT labwire_step")?;
        match f(self) {
            Ok(v) => {
                self.tx.execute_batch("RELEASE SAVEPOINT labwire_step")?;
                Ok(v)
            }
            Err(e) => {
                self.tx.execute_batch(
                    "ROLLBACK TO SAVEPOINT labwire_step; RELEASE SAVEPOINT labwire_step",
                )?;
                self.events.truncate(events);
                self.queue.truncate(queue);
                Err(e)
            }
        }
    }
}

fn open_sqlite(path: &Path) -> Result<Connection> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(Connection::Sqlite(conn))
}

impl Store {
    /// Opens (creating if needed) the SQLite file at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store> {
        Self::open_with_clock(path, Clock::system())
    }

    /// Like [`Store::open`], with the time of every change taken from `clock` (tests move a
    /// manual clock to check timeouts).
    pub fn open_with_clock(path: &Path, clock: Clock) -> Result<Store> {
        Self::connect(
            &Location::Sqlite(path.to_path_buf()),
            clock,
            Schema::Migrate,
        )
    }

    /// Opens the store at `location`, doing `schema` with its schema first.
    pub fn connect(location: &Location, clock: Clock, schema: Schema) -> Result<Store> {
        off_runtime(matches!(location, Location::Postgres(_)), || {
            Self::connect_here(location, clock, schema)
        })
    }

    fn connect_here(location: &Location, clock: Clock, schema: Schema) -> Result<Store> {
        let kind = match location {
            Location::Sqlite(path) => {
                if let Some(dir) = path.parent()
                    && !dir.as_os_str().is_empty()
                {
                    crate::files::private_dir(dir).map_err(|e| {
                        Error::Internal(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                // The database holds token hashes, job logs and results: 0600, and SQLite
                // gives its -wal and -shm files the same mode.
                crate::files::private_file(path).map_err(|e| {
                    Error::Internal(format!("cannot create {}: {e}", path.display()))
                })?;
                let writer = open_sqlite(path)?;
                if let Connection::Sqlite(c) = &writer {
                    // A big transaction (a result of 150,000 tests, a batch of writes) stays
                    // in memory up to 64 MiB instead of spilling pages to the WAL as it goes.
                    c.pragma_update(None, "cache_size", -65536)?;
                }
                Kind::Sqlite {
                    path: path.clone(),
                    writer: Mutex::new(writer),
                    readers: Mutex::new(Vec::new()),
                }
            }
            Location::Postgres(url) => {
                let (config, ca) = pg_config(url).map_err(Error::Invalid)?;
                let tls = pg_tls(ca.as_deref())?;
                let first = open_pg(&config, &tls).map_err(|e| {
                    Error::Internal(format!("cannot connect to {}: {e}", redact(url)))
                })?;
                Kind::Pg {
                    config,
                    tls,
                    pool: Pool {
                        idle: Mutex::new((vec![first], 1)),
                        freed: Condvar::new(),
                    },
                }
            }
        };
        let (last_seq, _) = tokio::sync::watch::channel(0);
        let (labs, _) = tokio::sync::watch::channel(0);
        let (group, jobs) = match kind {
            Kind::Sqlite { .. } => {
                let (tx, rx) = std::sync::mpsc::channel();
                (Some(tx), Some(rx))
            }
            Kind::Pg { .. } => (None, None),
        };
        let inner = Arc::new(Inner {
            kind,
            location: location.clone(),
            last_seq,
            labs,
            watching: Default::default(),
            clock,
            group,
        });
        if let Some(jobs) = jobs {
            group::start(Arc::downgrade(&inner), jobs)?;
        }
        inner.with_conn(true, |c| match schema {
            Schema::Migrate => migrations::apply(c).map(|_| ()),
            Schema::Check => migrations::check(c),
            Schema::AsIs => Ok(()),
        })?;
        let last = match schema {
            Schema::AsIs => 0,
            _ => inner.with_conn(false, events::last_seq)?,
        };
        inner.last_seq.send_replace(last);
        if let Kind::Pg { config, tls, .. } = &inner.kind
            && schema != Schema::AsIs
        {
            watch::listen(
                config.clone(),
                tls.clone(),
                WeakStore(Arc::downgrade(&inner)),
            );
        }
        Ok(Store { inner })
    }

    /// Where the store lives (a PostgreSQL password is not shown).
    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self.inner.kind {
            Kind::Sqlite { .. } => Backend::Sqlite,
            Kind::Pg { .. } => Backend::Postgres,
        }
    }

    /// Runs `f` in one write transaction on the blocking pool. The transaction commits when
    /// `f` returns `Ok`, and rolls back otherwise. Subscribers learn of new events after the
    /// commit.
    ///
    /// The queue changes the transaction made are dropped: code that runs next to a
    /// dispatcher changes the queue through `dispatch::JobQueue` instead, which
    /// passes them on.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Write<'_>) -> Result<T> + Send + 'static,
    {
        Ok(self.write_queue(f).await?.0)
    }

    /// Like [`Store::write`], and returns the queue changes the transaction made, in order,
    /// for the dispatcher to follow.
    ///
    /// On SQLite the write is committed together with the others waiting at the same time
    /// ([`group`]): it runs in a savepoint of their shared transaction, and this returns
    /// once that transaction has committed.
    pub(crate) async fn write_queue<T, F>(&self, f: F) -> Result<(T, Vec<QueueChange>)>
    where
        T: Send + 'static,
        F: FnOnce(&mut Write<'_>) -> Result<T> + Send + 'static,
    {
        if let Some(to) = &self.inner.group {
            return group::write(to, f).await;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.write_blocking(f))
            .await
            .map_err(|e| Error::Internal(format!("database task failed: {e}")))?
    }

    /// Like [`Store::write`], on the calling thread (for command-line tools and tests).
    pub fn write_blocking<T: Send>(
        &self,
        f: impl FnOnce(&mut Write<'_>) -> Result<T> + Send,
    ) -> Result<T> {
        Ok(self.off_runtime(|| self.inner.write_blocking(f))?.0)
    }

    fn off_runtime<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        off_runtime(matches!(self.inner.kind, Kind::Pg { .. }), f)
    }

    /// Runs `f` with a read connection on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_conn(false, f))
            .await
            .map_err(|e| Error::Internal(format!("database task failed: {e}")))?
    }

    /// Like [`Store::read`], on the calling thread.
    pub fn read_blocking<T: Send>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send,
    ) -> Result<T> {
        self.off_runtime(|| self.inner.with_conn(false, f))
    }

    /// The clock that stamps changes.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The sequence number of the newest committed event, watched. On PostgreSQL it also
    /// moves when another coordinator replica commits (LISTEN/NOTIFY).
    pub fn last_seq(&self) -> tokio::sync::watch::Receiver<i64> {
        self.inner.last_seq.subscribe()
    }

    /// Moves when a lab may have been revoked: by this process, by another replica
    /// (PostgreSQL NOTIFY) or, once [`Store::watch_other_processes`] runs, by another process
    /// on the same SQLite file. The watcher reads the labs to learn which.
    pub fn labs_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.labs.subscribe()
    }

    /// On SQLite, starts watching the file for other processes' commits (see
    /// `store::watch`), so that [`Store::last_seq`] and [`Store::labs_changed`] move
    /// for them too; on PostgreSQL the notifications do that already. The daemon calls it;
    /// once is enough.
    pub fn watch_other_processes(&self) {
        use std::sync::atomic::Ordering;
        if let Kind::Sqlite { path, .. } = &self.inner.kind
            && !self.inner.watching.swap(true, Ordering::SeqCst)
        {
            watch::poll_sqlite(path.clone(), WeakStore(Arc::downgrade(&self.inner)));
        }
    }
}

/// A store handle that does not keep the store open (for its own background thread).
#[derive(Clone)]
pub(crate) struct WeakStore(Weak<Inner>);

impl WeakStore {
    /// The store, while someone still holds it.
    pub(crate) fn upgrade(&self) -> Option<Store> {
        self.0.upgrade().map(|inner| Store { inner })
    }
}

impl Store {
    /// Announces a newer committed event (from another replica's NOTIFY).
    pub(crate) fn announce(&self, seq: i64) {
        self.inner.announce(seq);
    }

    /// Announces that a lab may have been revoked.
    pub(crate) fn announce_labs(&self) {
        self.inner.labs.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Runs `f` here, or, for PostgreSQL (`pg`) when called from inside a tokio runtime, on a
/// thread of its own: the `postgres` client drives its own runtime, which cannot start
/// inside another.
fn off_runtime<T: Send>(pg: bool, f: impl FnOnce() -> T + Send) -> T {
    if pg && tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(f)
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    } else {
        f()
    }
}

impl Inner {
    /// Moves the newest committed event number forward (never back: a notification can
    /// arrive after a later local commit).
    fn announce(&self, seq: i64) {
        self.last_seq.send_if_modified(|cur| {
            let newer = seq > *cur;
            if newer {
                *cur = seq;
            }
            newer
        });
    }

    /// Runs `f` with a connection: the SQLite writer when `write`, else a reader; on
    /// PostgreSQL any pooled connection.
    fn with_conn<T>(&self, write: bool, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        match &self.kind {
            Kind::Sqlite {
                path,
                writer,
                readers,
            } => {
                if write {
                    let conn = writer
                        .lock()
                        .map_err(|_| Error::Internal("writer lock poisoned".into()))?;
                    return f(&conn);
                }
                let pooled = readers
                    .lock()
                    .map_err(|_| Error::Internal("reader pool lock poisoned".into()))?
                    .pop();
                let conn = match pooled {
                    Some(c) => c,
                    None => open_sqlite(path)?,
                };
                let out = f(&conn);
                if let Ok(mut pool) = readers.lock()
                    && pool.len() < 8
                {
                    pool.push(conn);
                }
                out
            }
            Kind::Pg { config, tls, pool } => {
                let conn = pool.take(config, tls)?;
                let out = f(&conn);
                pool.give_back(conn);
                out
            }
        }
    }

    fn write_blocking<T>(
        &self,
        f: impl FnOnce(&mut Write<'_>) -> Result<T>,
    ) -> Result<(T, Vec<QueueChange>)> {
        let (out, last, changes, labs) = self.with_conn(true, |conn| {
            conn.execute_batch(match conn.backend() {
                // Take the write lock now rather than at the first write, so that a
                // transaction never fails half-way for want of it.
                Backend::Sqlite => "BEGIN IMMEDIATE",
                Backend::Postgres => "BEGIN",
            })?;
            let mut w = Write {
                tx: conn,
                now: self.clock.now(),
                events: Vec::new(),
                queue: Vec::new(),
                labs_changed: false,
            };
            let res = f(&mut w).and_then(|out| {
                let last = events::flush(conn, std::mem::take(&mut w.events))?;
                conn.execute_batch("COMMIT")?;
                Ok((out, last, std::mem::take(&mut w.queue), w.labs_changed))
            });
            if res.is_err() && !broken(conn) {
                // A failed COMMIT has already ended the transaction; ROLLBACK then only
                // warns.
                let _ = conn.execute_batch("ROLLBACK");
            }
            res
        })?;
        if let Some(seq) = last {
            self.announce(seq);
        }
        if labs {
            self.labs.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok((out, changes))
    }
}

/// Microseconds since the Unix epoch, the unit of every stored time.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A stored time back as a time.
pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{what}: {e}"))
}

/// What keeps a test store alive: its folder, and on PostgreSQL its database.
#[cfg(test)]
pub(crate) struct TestStore {
    _dir: tempfile::TempDir,
    _db: Option<labwire_testpg::TestDb>,
}

/// A fresh store for a unit test: an SQLite file, or with `LABWIRE_TEST_STORE=postgres` a
/// fresh database on the private PostgreSQL test server (labwire-testpg), so the same tests
/// run on both (`scripts/test.sh` runs them both ways).
#[cfg(test)]
pub(crate) fn temp_store_with_clock(clock: Clock) -> (TestStore, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    if std::env::var("LABWIRE_TEST_STORE").as_deref() == Ok("postgres") {
        let db = labwire_testpg::database();
        let store = Store::connect(&Location::Postgres(db.url.clone()), clock, Schema::Migrate)
            .expect("open the PostgreSQL test store");
        return (
            TestStore {
                _dir: dir,
                _db: Some(db),
            },
            store,
        );
    }
    let store = Store::open_with_clock(&dir.path().join("labwire.db"), clock).expect("open store");
    (
        TestStore {
            _dir: dir,
            _db: None,
        },
        store,
    )
}

/// [`temp_store_with_clock`] with the system clock.
#[cfg(test)]
pub(crate) fn temp_store() -> (TestStore, Store) {
    temp_store_with_clock(Clock::system())
}

#[cfg(test)]
mod pg_tests {
    use super::pg::PG_POOL;
    use super::*;

    fn two_replicas() -> (labwire_testpg::TestDb, Store, Store) {
        let db = labwire_testpg::database();
        let loc = Location::Postgres(db.url.clone());
        let a = Store::connect(&loc, Clock::system(), Schema::Migrate).unwrap();
        let b = Store::connect(&loc, Clock::system(), Schema::Check).unwrap();
        (db, a, b)
    }

    /// Two stores (two replicas' connection pools) on one database, eight writers at once,
    /// some transactions with several events: a reader that follows the log sees every
    /// number exactly once, each the one after the last: no gap ever shows that fills in later.
    #[test]
    fn concurrent_replicas_number_events_without_visible_gaps() {
        use crate::model::NodeKind;
        let (_db, a, b) = two_replicas();
        const WRITERS: usize = 8;
        const EACH: usize = 40;
        // Each writer: EACH transactions, every other one with a create and an update.
        let total = (WRITERS * EACH + WRITERS * EACH / 2) as i64;
        let done = std::sync::atomic::AtomicBool::new(false);
        let seen = std::thread::scope(|s| {
            let follower = s.spawn(|| {
                let mut cursor = 0i64;
                let mut seen = Vec::new();
                let start = std::time::Instant::now();
                while cursor < total {
                    assert!(
                        start.elapsed() < Duration::from_secs(120),
                        "stuck at {cursor}"
                    );
                    let evs = b
                        .read_blocking(move |c| events::events_after(c, cursor, 1000, None, false))
                        .unwrap();
                    for e in evs {
                        assert_eq!(e.seq, cursor + 1, "a gap showed after {cursor}");
                        cursor = e.seq;
                        seen.push(e.seq);
                    }
                    if done.load(std::sync::atomic::Ordering::SeqCst) && cursor >= total {
                        break;
                    }
                }
                seen
            });
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let store = if w % 2 == 0 { a.clone() } else { b.clone() };
                    s.spawn(move || {
                        for i in 0..EACH {
                            store
                                .write_blocking(move |tx| {
                                    let n = tx.create_node(NewNode::new(
                                        NodeKind::Checkout,
                                        format!("w{w}-{i}"),
                                    ))?;
                                    if i % 2 == 0 {
                                        tx.update_node(
                                            n.id,
                                            NodeUpdate {
                                                state: Some(crate::model::NodeState::Done),
                                                ..Default::default()
                                            },
                                        )?;
                                    }
                                    Ok(())
                                })
                                .unwrap();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            follower.join().unwrap()
        });
        assert_eq!(seen, (1..=total).collect::<Vec<_>>());
        // Each store hears of the other's commits through LISTEN/NOTIFY, soon after.
        let start = std::time::Instant::now();
        while *a.last_seq().borrow() < total || *b.last_seq().borrow() < total {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no notification: {} and {} of {total}",
                *a.last_seq().borrow(),
                *b.last_seq().borrow()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*a.last_seq().borrow(), total);
    }

    /// A transaction with more events than one INSERT takes (a big result tree): every
    /// event is stored, numbered in order, and announced once.
    #[test]
    fn a_transaction_with_many_events_is_numbered_whole() {
        use crate::model::NodeKind;
        let (_db, a, b) = two_replicas();
        a.write_blocking(|w| w.create_node(NewNode::new(NodeKind::Checkout, "first")))
            .unwrap();
        a.write_blocking(|w| {
            for i in 0..1234 {
                w.create_node(NewNode::new(NodeKind::Checkout, format!("n{i}")))?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(*a.last_seq().borrow(), 1235);
        let evs = b
            .read_blocking(|c| events::events_after(c, 0, 5000, None, false))
            .unwrap();
        assert_eq!(
            evs.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=1235).collect::<Vec<_>>()
        );
        assert_eq!(evs[1234].node.name, "n1233");
    }

    /// The database drops every connection (a failover, a restart, an admin's
    /// pg_terminate_backend): each pooled connection fails one call (UNAVAILABLE), then the
    /// pool connects again, and the listener too, so the other replica still hears of new
    /// events.
    #[test]
    fn replicas_reconnect_after_the_database_drops_their_connections() {
        use crate::model::NodeKind;
        let (db, a, b) = two_replicas();
        let create = |s: &Store, name: &str| {
            let name = name.to_string();
            s.write_blocking(move |w| w.create_node(NewNode::new(NodeKind::Checkout, name)))
        };
        create(&a, "before").unwrap();
        let killed = db
            .psql(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .expect("terminate the store's connections");
        assert_ne!(killed.trim(), "0", "no connection was dropped");
        // At most one failure per pooled connection, then it works again.
        let mut failures = 0;
        let node = loop {
            match create(&a, "after") {
                Ok(n) => break n,
                Err(e) => {
                    failures += 1;
                    assert!(failures <= PG_POOL, "no reconnect: {e}");
                }
            }
        };
        // The other replica's listener reconnected and hears of it.
        let want = *a.last_seq().borrow();
        let start = std::time::Instant::now();
        while *b.last_seq().borrow() < want {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the other replica never heard of event {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its pool meets the dropped connections too: each fails one call (as UNAVAILABLE,
        // which clients retry), then is replaced.
        let mut failures = 0;
        let back = loop {
            match b.read_blocking(move |c| nodes::get_node(c, node.id)) {
                Ok(n) => break n,
                Err(e) => {
                    failures += 1;
                    assert!(failures <= PG_POOL, "no reconnect: {e}");
                    let status = tonic::Status::from(e);
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                }
            }
        };
        assert_eq!(back.name, "after");
    }

    /// Two replicas race to lease the same 60 jobs: each job is leased exactly once.
    #[test]
    fn concurrent_replicas_lease_each_job_once() {
        let (_db, a, b) = two_replicas();
        let ids: Vec<crate::model::NodeId> = (0..60)
            .map(|i| {
                a.write_blocking(move |w| {
                    w.submit_job(NewJob {
                        spec: labwire_proto::v1::JobSpec {
                            name: format!("j{i}"),
                            ..Default::default()
                        },
                        ..Default::default()
                    })
                })
                .unwrap()
                .0
                .id
            })
            .collect();
        let until = chrono::Utc::now() + chrono::Duration::seconds(60);
        let won: Vec<Vec<crate::model::NodeId>> = std::thread::scope(|s| {
            let racers: Vec<_> = [(&a, "lab-a"), (&b, "lab-b"), (&a, "lab-c"), (&b, "lab-d")]
                .into_iter()
                .map(|(store, lab)| {
                    let ids = ids.clone();
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        for id in ids {
                            match store.write_blocking(move |w| w.claim_for_test(id, lab, until)) {
                                Ok(Some(c)) => mine.push(c.job.id),
                                Ok(None) => {}
                                Err(e) => panic!("claim of {id} by {lab}: {e}"),
                            }
                        }
                        mine
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let mut all: Vec<_> = won.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, ids, "every job leased exactly once: {won:?}");
        let attempts: Vec<i32> = b
            .read_blocking(|c| c.query_map("SELECT attempt FROM jobs", db::params![], |r| r.get(0)))
            .unwrap();
        assert!(attempts.iter().all(|a| *a == 1), "{attempts:?}");
    }

    /// A real TLS connection to the test server, verified against its CA; another CA is
    /// refused.
    #[test]
    fn tls_to_postgres_is_verified() {
        let db = labwire_testpg::database();
        let ca = labwire_testpg::tls_ca();
        let url = format!("{}?sslrootcert={}", db.url, ca.display());
        let store = Store::connect(&Location::Postgres(url), Clock::system(), Schema::Migrate)
            .expect("a TLS connection verified against the test CA");
        let ssl: bool = store
            .read_blocking(|c| {
                c.query_row(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    db::params![],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert!(ssl, "the connection is not encrypted");
        drop(store);

        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other-ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&other, p.self_signed(&key).unwrap().pem()).unwrap();
        let url = format!("{}?sslrootcert={}", db.url, other.display());
        let err = Store::connect(&Location::Postgres(url), Clock::system(), Schema::Migrate)
            .err()
            .expect("a server certificate from another CA is refused");
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}
