//! Fresh, empty PostgreSQL databases for tests, on a private PostgreSQL server on 127.0.0.1.
//!
//! ```no_run
//! let db = labwire_testpg::database();
//! // db.url is postgres://postgres@127.0.0.1:PORT/labwire_test_...; hand it to the store.
//! db.psql("CREATE TABLE t (x int)").unwrap();
//! drop(db); // drops the database
//! ```
//!
//! - [`database()`] returns a [`TestDb`]: a new database, made from `template0` (so empty,
//!   whatever anyone did to `template1`), owned by the superuser `postgres`, with its
//!   connection URL in [`TestDb::url`]. Dropping the `TestDb` drops the database
//!   (`DROP DATABASE ... WITH (FORCE)`, best effort). It panics with a clear message when
//!   something is missing; missing PostgreSQL programs name `scripts/setup.d/15-postgres.sh`.
//! - [`stop()`] stops the shared server (`labwire-testpg stop` does the same from a shell,
//!   e.g. at the end of `scripts/test.sh`); the next [`database()`] starts it again.
//!
//! **One server for the whole run.** nextest runs each test in a process of its own, and
//! initdb costs seconds, so all test processes of a user share one server, kept in
//! `/tmp/labwire-testpg-<uid>/` (see below). A test process takes an exclusive `flock` on
//! its `lock` file, reuses the server if it answers on the port recorded in `port`, and
//! otherwise initdb's it (once, then kept) and starts it on a free port (bound on
//! 127.0.0.1:0 to choose it), so concurrent test processes start it exactly once. On each
//! start, the test databases left by earlier runs (tests killed before their drop) are
//! dropped. The folder is in `/tmp` because, as root, the server runs as the `postgres`
//! system user, which must be able to reach it (it cannot reach `/root`); the folder must be
//! owned by the current user and writable only by it, else `database()` refuses it.
//! `LABWIRE_TESTPG_DIR=FOLDER` puts the server in FOLDER instead (a second, separate
//! server; this crate's own tests use it to check a cold start). As root, FOLDER must be
//! reachable by the `postgres` user.
//!
//! | path | what |
//! | --- | --- |
//! | `lock` | flock'ed while the server is checked, started or stopped |
//! | `port` | the TCP port of the running server |
//! | `ready` | written after a complete initdb (the PostgreSQL `bin` folder used) |
//! | `pg/data/` | the cluster (`pg/` belongs to the user the server runs as, mode 700) |
//! | `pg/.s.PGSQL.PORT` | the server's unix socket (the tests use TCP) |
//! | `pg/postgres.log` | the server's log |
//!
//! **Programs.** `/usr/lib/postgresql/15/bin` (Debian's PostgreSQL 15), or else the newest
//! `/usr/lib/postgresql/*/bin`. PostgreSQL refuses to run as root: as root, `initdb`,
//! `pg_ctl` and so the server run as the `postgres` user (`runuser -u postgres --`); as
//! any other user they run as that user. `psql` (a client) runs as the caller.
//!
//! **Settings** (this server holds nothing but throw-away test data):
//! - `listen_addresses=127.0.0.1`: loopback only;
//! - authentication `trust` (initdb `-A trust`): any local user who reaches the port or
//!   the socket may connect as any database user, without a password. That is acceptable
//!   for a private server on loopback holding only test data, and it keeps passwords out
//!   of the URLs, the tests and the logs; never use these settings for real data;
//! - `max_connections=500`: room for about 30 concurrent test processes with about 10
//!   connections each, plus headroom;
//! - `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`, initdb `--no-sync`:
//!   a crash of the machine may corrupt the cluster, which costs nothing here (the next
//!   run cannot reuse it: remove the folder) and makes the tests much faster;
//! - `--locale=C`, encoding UTF8.

mod server;

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use server::{DIR_ENV, SETUP_SCRIPT};

/// What went wrong while starting, stopping or using the shared server.
#[derive(Debug, Clone)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// A fresh, empty database on the shared test server; dropped with this value.
#[derive(Debug)]
pub struct TestDb {
    /// `postgres://postgres@127.0.0.1:PORT/NAME` (no password: the server trusts loopback).
    pub url: String,
    /// The database's name, `labwire_test_<pid>_<n>_<nanoseconds>`.
    pub name: String,
    port: u16,
    psql: PathBuf,
    keep: bool,
}

impl TestDb {
    /// Runs one SQL statement on this database with `psql` (as the superuser) and returns
    /// its output: one row a line, columns separated by `|`, no header. `Err` holds psql's
    /// error message (e.g. `relation "t" does not exist`).
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        server::psql(&self.psql, self.port, &self.name, &[sql])
    }

    /// The TCP port of the shared server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Keeps the database after this value is gone and returns its URL. It lives until the
    /// shared server is next started (which drops the leftovers of earlier runs).
    pub fn keep(mut self) -> String {
        self.keep = true;
        std::mem::take(&mut self.url)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = server::psql(&self.psql, self.port, "postgres", &[&sql]) {
            eprintln!(
                "labwire-testpg: could not drop test database {}: {e}",
                self.name
            );
        }
    }
}

/// The shared server as this process last found it (checked once per process).
static SERVER: Mutex<Option<server::Server>> = Mutex::new(None);

/// A fresh, empty database on the shared PostgreSQL test server, which is started (and
/// initdb'ed, the first time) if it does not run. See the [crate documentation](crate).
///
/// # Panics
///
/// When the server cannot be started or the database cannot be created; the message says
/// why (missing PostgreSQL programs name [`SETUP_SCRIPT`]).
pub fn database() -> TestDb {
    match try_database() {
        Ok(db) => db,
        Err(e) => panic!("labwire-testpg: no PostgreSQL test database: {e}"),
    }
}

/// [`database()`] without the panic.
pub fn try_database() -> Result<TestDb, Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "{}{}_{}_{nanos}",
        server::DB_PREFIX,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let create = format!("CREATE DATABASE \"{name}\" TEMPLATE template0");
    let mut last = String::new();
    // The second round is for a server that went away since this process last checked it.
    for fresh in [false, true] {
        let server = current_server(fresh)?;
        match server::psql(&server.psql, server.port, "postgres", &[&create]) {
            Ok(_) => {
                return Ok(TestDb {
                    url: format!(
                        "postgres://{}@127.0.0.1:{}/{name}",
                        server::DB_USER,
                        server.port
                    ),
                    name,
                    port: server.port,
                    psql: server.psql,
                    keep: false,
                });
            }
            Err(e) => last = e,
        }
    }
    Err(Error(format!("creating database {name}: {last}")))
}

fn current_server(fresh: bool) -> Result<server::Server, Error> {
    let mut cached = SERVER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if fresh {
        *cached = None;
    }
    if let Some(server) = &*cached {
        return Ok(server.clone());
    }
    let server = server::ensure()?;
    *cached = Some(server.clone());
    Ok(server)
}

/// The CA certificate (PEM file) that signed the shared server's TLS certificate (valid for
/// 127.0.0.1 and localhost). The server takes TLS and plain connections alike; call
/// [`database`] first so that the server and this file exist.
pub fn tls_ca() -> PathBuf {
    server::tls_ca()
}

/// Stops the shared test server if it runs (`pg_ctl stop -m fast`: open connections are
/// closed); returns whether it ran. Its data folder is kept for the next start.
pub fn stop() -> Result<bool, Error> {
    let stopped = server::stop()?;
    *SERVER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    Ok(stopped)
}

/// The folder of this user's shared test server: `/tmp/labwire-testpg-<uid>`, or the
/// folder named by `LABWIRE_TESTPG_DIR` ([`DIR_ENV`]) when that is set.
pub fn folder() -> PathBuf {
    server::Layout::new().base().to_path_buf()
}
