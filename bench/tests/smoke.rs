//! Runs every benchmark scenario at toy sizes (a real coordinator process, simulated agents
//! and a real agent over mutual TLS) so that the benchmark cannot rot. Checks that each
//! scenario produced its figures and that they are sane; it checks no performance target
//! (those are for `labwire-bench all` on a quiet machine, see the README). The dispatch
//! scenario also runs on PostgreSQL, both on a fresh database of the test server
//! (`--store postgres`) and on a database named by URL (`--store postgres://...`).

use std::process::Command;

#[test]
fn every_scenario_runs_at_toy_scale() {
    let out = Command::new(env!("CARGO_BIN_EXE_labwire-bench"))
        .args([
            "all",
            "--json",
            "--runs",
            "1",
            "--latency-jobs",
            "5",
            "--cancels",
            "3",
            "--agents",
            "3",
            "--jobs",
            "20",
            "--tests",
            "2",
            "--nodes",
            "2000",
            "--big-tests",
            "1000",
            "--queries",
            "2",
            "--idle-agents",
            "5",
            "--heartbeat",
            "1s",
            "--idle-window",
            "1s",
            "--devices",
            "5",
            "--footprint-window",
            "1s",
            "--log-mb",
            "2",
            "--console-mb",
            "1",
            "--console-window",
            "1s",
        ])
        .env("LABWIRE_LOG", "warn")
        .output()
        .expect("run labwire-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "labwire-bench failed:\n{stderr}");
    let figs: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stderr}"));
    let scenarios: std::collections::BTreeSet<&str> =
        figs.iter().filter_map(|f| f["scenario"].as_str()).collect();
    for s in [
        "dispatch",
        "cancel",
        "throughput",
        "bigresult",
        "queries",
        "events",
        "footprint",
        "idle",
        "parsers",
        "parse-cmd",
        "serial",
    ] {
        assert!(scenarios.contains(s), "no figure from {s}: {figs:?}");
    }
    for f in &figs {
        let v = f["value"].as_f64().expect("numeric value");
        let name = f["name"].as_str().unwrap_or_default();
        assert!(v.is_finite() && v >= 0.0, "{name}: {v}");
        // CPU of an idle process may round to zero over a one-second window; every other
        // figure (latency, rate, memory) must be positive.
        if !name.contains("CPU") {
            assert!(v > 0.0, "{name} is zero: {f}");
        }
        assert!(f["met"].is_boolean() || f["target"].is_null(), "{f}");
        // Every figure of a scenario with a coordinator says it ran on SQLite (the default);
        // the parsers and serial scenarios have no store.
        let scenario = f["scenario"].as_str().unwrap_or_default();
        let store = if ["parsers", "parse-cmd", "serial"].contains(&scenario) {
            serde_json::Value::Null
        } else {
            "sqlite".into()
        };
        assert_eq!(f["store"], store, "{f}");
    }
}

/// Runs the dispatch scenario at its smallest size with `store`; returns its status, JSON
/// figures (when it succeeded) and stderr.
fn dispatch_on(store: &str) -> (bool, Vec<serde_json::Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labwire-bench"))
        .args([
            "dispatch",
            "--json",
            "--store",
            store,
            "--runs",
            "1",
            "--latency-jobs",
            "5",
        ])
        .env("LABWIRE_LOG", "warn")
        .output()
        .expect("run labwire-bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let figs = if out.status.success() {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stderr}"))
    } else {
        Vec::new()
    };
    (out.status.success(), figs, stderr)
}

fn assert_postgres_dispatch(figs: &[serde_json::Value], stderr: &str) {
    let names: Vec<&str> = figs.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, ["latency p50", "latency p99"], "{stderr}");
    for f in figs {
        assert_eq!(f["scenario"], "dispatch", "{f}");
        assert_eq!(f["store"], "postgres", "{f}");
        let v = f["value"].as_f64().expect("numeric value");
        assert!(v.is_finite() && v > 0.0, "{f}");
    }
}

#[test]
fn dispatch_runs_on_postgres() {
    // A fresh database on the private PostgreSQL test server, dropped afterwards.
    let (ok, figs, stderr) = dispatch_on("postgres");
    assert!(ok, "labwire-bench --store postgres failed:\n{stderr}");
    assert!(stderr.contains("store: postgres://"), "{stderr}");
    assert_postgres_dispatch(&figs, &stderr);

    // A database of one's own, by URL: migrated and used once; then it is no longer empty
    // and is refused with the reason.
    let db = labwire_testpg::database();
    let (ok, figs, stderr) = dispatch_on(&db.url);
    assert!(ok, "labwire-bench --store URL failed:\n{stderr}");
    assert_postgres_dispatch(&figs, &stderr);
    let jobs = db.psql("SELECT count(*) FROM jobs").expect("count jobs");
    assert_eq!(jobs.trim(), "25", "20 warm-up and 5 measured jobs");
    let (ok, _, stderr) = dispatch_on(&db.url);
    assert!(!ok, "a used database was accepted:\n{stderr}");
    assert!(stderr.contains("the database is not empty"), "{stderr}");
}
