//! The shared server against a real PostgreSQL: concurrent databases are separate and empty,
//! a dropped one is gone, and concurrent processes start a server in a new folder once.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use labwire_testpg::{TestDb, database};

/// Tables, views, sequences... a user made (anything outside the system schemas).
const USER_RELATIONS: &str = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'";

fn exists(probe: &TestDb, name: &str) -> bool {
    let n = probe
        .psql(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
        ))
        .unwrap();
    match n.trim() {
        "0" => false,
        "1" => true,
        other => panic!("unexpected count {other:?}"),
    }
}

#[test]
fn concurrent_databases_are_separate_and_empty() {
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                database()
            })
        })
        .collect();
    let dbs: Vec<TestDb> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let (a, b) = (&dbs[0], &dbs[1]);
    assert_ne!(a.name, b.name);
    assert_ne!(a.url, b.url);
    for db in [a, b] {
        assert_eq!(
            db.url,
            format!("postgres://postgres@127.0.0.1:{}/{}", db.port(), db.name)
        );
        assert_eq!(
            db.psql("SELECT current_database()").unwrap().trim(),
            db.name
        );
        assert_eq!(
            db.psql(USER_RELATIONS).unwrap().trim(),
            "0",
            "{} is not empty",
            db.name
        );
    }

    a.psql("CREATE TABLE only_in_a (x int)").unwrap();
    a.psql("INSERT INTO only_in_a VALUES (42)").unwrap();
    assert_eq!(a.psql("SELECT x FROM only_in_a").unwrap().trim(), "42");
    let err = b.psql("SELECT x FROM only_in_a").unwrap_err();
    assert!(
        err.contains("relation \"only_in_a\" does not exist"),
        "{err}"
    );
    assert_eq!(b.psql(USER_RELATIONS).unwrap().trim(), "0");
}

#[test]
fn a_dropped_database_is_gone() {
    let probe = database();
    let db = database();
    let name = db.name.clone();
    db.psql("CREATE TABLE t (x int)").unwrap();
    assert!(exists(&probe, &name));
    drop(db);
    assert!(
        !exists(&probe, &name),
        "{name} still exists after its TestDb was dropped"
    );
}

/// Runs the `labwire-testpg` binary with its server in `dir`.
fn testpg(dir: &std::path::Path, arg: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_labwire-testpg"))
        .arg(arg)
        .env(labwire_testpg::DIR_ENV, dir)
        .output()
        .unwrap()
}

/// Stops the private server of the cold-start test, also when the test fails.
struct StopOnDrop(std::path::PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let out = testpg(&self.0, "stop");
        if !out.status.success() {
            eprintln!(
                "stopping the private server: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Three processes ask a folder with no server for a database at once: one initdb, one
/// server, three databases. After a stop the next start reuses the cluster and drops the
/// databases the first round kept.
#[test]
fn concurrent_processes_start_one_server_and_stop_stops_it() {
    let tmp = tempfile::Builder::new()
        .prefix("labwire-testpg-test")
        .tempdir_in("/tmp")
        .unwrap();
    // As root the server runs as `postgres`, which must reach the folder.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("server");
    let _stop = StopOnDrop(dir.clone());

    let started = Instant::now();
    let children: Vec<_> = (0..3)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || testpg(&dir, "url"))
        })
        .collect();
    let urls: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.join().unwrap();
            assert!(
                out.status.success(),
                "url failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        })
        .collect();
    eprintln!("3 concurrent `url` with initdb: {:?}", started.elapsed());

    let port_of = |url: &str| {
        url.split(':')
            .nth(2)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let port = port_of(&urls[0]);
    assert!(
        urls.iter().all(|u| port_of(u) == port),
        "more than one server: {urls:?}"
    );
    let mut names: Vec<&str> = urls.iter().map(|u| u.rsplit('/').next().unwrap()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3, "{urls:?}");
    let log = std::fs::read_to_string(dir.join("pg/postgres.log")).unwrap();
    assert_eq!(
        log.matches("database system is ready to accept connections")
            .count(),
        1,
        "{log}"
    );
    let psql = |db: &str, sql: &str| {
        Command::new("/usr/lib/postgresql/15/bin/psql")
            .args([
                "-X",
                "-At",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &port,
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap()
    };
    let dbs = psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'labwire\\_test\\_%'",
    );
    assert_eq!(String::from_utf8_lossy(&dbs.stdout).trim(), "3");

    let out = testpg(&dir, "stop");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("stopped"));
    assert!(
        !psql("postgres", "SELECT 1").status.success(),
        "the server still answers after stop"
    );
    assert!(!dir.join("port").exists());
    let out = testpg(&dir, "stop");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("no PostgreSQL test server"));

    let ready = std::fs::metadata(dir.join("ready"))
        .unwrap()
        .modified()
        .unwrap();
    let started = Instant::now();
    let out = testpg(&dir, "url");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("`url` with a restart, no initdb: {:?}", started.elapsed());
    assert_eq!(
        std::fs::metadata(dir.join("ready"))
            .unwrap()
            .modified()
            .unwrap(),
        ready,
        "initdb ran again"
    );
    let url = String::from_utf8(out.stdout).unwrap();
    let port = port_of(url.trim());
    let psql = |sql: &str| {
        let out = Command::new("/usr/lib/postgresql/15/bin/psql")
            .args([
                "-X",
                "-At",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &port,
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let left = psql(
        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'labwire\\_test\\_%'",
    );
    assert_eq!(
        left,
        url.trim().rsplit('/').next().unwrap(),
        "leftovers of the first round were not dropped"
    );
}
