//! Runs every benchmark scenario at toy sizes (a real coordinator process, simulated agents
//! and a real agent over mutual TLS) so that the benchmark cannot rot. Checks that each
//! scenario produced its figures and that they are sane; it checks no performance target
//! (those are for `labwire-bench all` on a quiet machine, see the README).

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
            "--agents",
            "3",
            "--jobs",
            "20",
            "--tests",
            "2",
            "--nodes",
            "2000",
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
        "throughput",
        "queries",
        "events",
        "footprint",
        "idle",
        "parsers",
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
    }
}
