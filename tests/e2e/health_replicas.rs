//! The admins' say through another replica (a submodule of `health`; always on PostgreSQL,
//! which replicas need): with the lab's agent connected to replica A only, a resume through
//! replica B reaches the agent at once (its failed health check runs again and the board is
//! good), a maintenance through B stops A from placing a job on the board, and a resume
//! through B lets the waiting job run.

use crate::common;

use super::explain;
use common::*;
use labwire_proto::v1;
use std::process::Command;
use std::time::Duration;

/// Runs `labwire ARGS` against the replica at `url`; returns its standard output.
fn cli_at(rig: &Rig, url: &str, args: &[&str]) -> String {
    run_ok(
        Command::new(CLIENT)
            .args(["--server", url, "--ca"])
            .arg(rig.path("coordinator/pki/ca.pem"))
            .args(["--token", &rig.admin_token])
            .args(args),
    )
}

/// Waits until replica `url` lists `lab/device` with `health`.
fn wait_health_at(rig: &Rig, url: &str, target: &str, health: &str, within: Duration) {
    let lab = target.split('/').next().unwrap_or("");
    let device = target.split('/').nth(1).unwrap_or("");
    let end = std::time::Instant::now() + within;
    let mut last = String::new();
    while std::time::Instant::now() < end {
        last = cli_at(rig, url, &["device", "list", lab, "--json"]);
        let hit = last.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["device"] == device && v["health"] == health
        });
        if hit {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {target} to be {health}; last seen {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_or_maintenance_through_another_replica_acts_at_once() {
    let mut steps = Steps::new();
    let rig = Rig::new_on_postgres("leases: {duration: 30s, heartbeat: 500ms}\n");
    let _keep = rig.keep_on_failure();
    let _coord_a = rig.start_coordinator();
    let port_b = free_port();
    let _coord_b = rig.start_replica("b", port_b);
    let (a, b) = (rig.url(), format!("https://127.0.0.1:{port_b}"));
    rig.issue_lab("lab-r");
    let broken = rig.path("broken");
    std::fs::write(&broken, "").unwrap();
    // The device's own command sleeps as a job asks; its health check fails while the
    // file exists.
    let check = "health: {checks: [{device: d1, params: {sleep: '0'}, timeout: 30s}]}\n";
    let test = format!(
        "test ! -e '{}' && echo \"run by $LABWIRE_DEVICE\" && sleep \"$1\"",
        broken.display()
    );
    rig.agent_config(
        "lab-r",
        &[("d1", &["sh", "-c", &test, "sh", "{params.sleep}"], &["r"])],
        check,
    );
    // The agent knows replica A only.
    let _agent = rig.start_agent("lab-r");
    wait_health_at(&rig, &a, "lab-r/d1", "bad", Duration::from_secs(30));

    steps.at("repaired and resumed through B: the agent on A runs its check at once");
    std::fs::remove_file(&broken).unwrap();
    let out = cli_at(&rig, &b, &["device", "resume", "lab-r/d1"]);
    assert!(out.starts_with("lab-r/d1: bad -> bad"), "{out}");
    wait_health_at(&rig, &a, "lab-r/d1", "good", Duration::from_secs(15));

    steps.at("maintenance through B: A places no job on the device");
    let out = cli_at(
        &rig,
        &b,
        &["device", "maintenance", "lab-r/d1", "--reason", "cabling"],
    );
    assert_eq!(out.trim(), "lab-r/d1: good -> maintenance");
    // A's picture follows within a moment (the PostgreSQL notification).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ca = rig.client().await;
    let queued = submit(&mut ca, "waits", &["r"], &[("sleep", "0")]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = wait_node(&mut ca, queued, Duration::from_secs(5), |_| true).await;
    assert!(!is_done(&n), "ran on a device in maintenance: {n:?}");
    let why = explain(&mut ca, queued, "lab-r").await;
    assert!(why.contains("d1 is maintenance: cabling"), "{why}");

    steps.at("resumed through B: the waiting job runs on A's agent");
    cli_at(&rig, &b, &["device", "resume", "lab-r/d1"]);
    let n = wait_node(&mut ca, queued, Duration::from_secs(15), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
}
