//! Borrowing a board, end to end on the real QEMU board of tests/board/ driven by the serial
//! driver: a reservation takes the board out of the pool when its job ends, belongs to the
//! token that made it, shows in `device list` and on the event stream; a release or a lease
//! that runs out has the agent power the board off and a queued job runs on it; a
//! reservation survives a coordinator restart and an agent SIGKILL, and no board stays out
//! of the pool without a live reservation.

use crate::common;
use crate::serial::{board_dir, board_job, qemu_running, serial_agent, serial_device};

use common::*;
use labwire_proto::v1;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CONFIG: &str = "leases: {duration: 30s, heartbeat: 1s}\nhttp: {listen: 127.0.0.1:0}\n";
const LAB: &str = "borrow-lab";
const BOARD: &str = "borrow-lab/qemu-1";

/// Runs `labwire` with `token`; returns (success, stdout, stderr).
fn labwire(rig: &Rig, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(CLIENT)
        .args(["--server", &rig.url(), "--ca"])
        .arg(rig.path("coordinator/pki/ca.pem"))
        .args(["--token", token])
        .args(args)
        .output()
        .expect("run labwire");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `labwire` with `token` and returns its standard output; panics if it fails.
fn labwire_ok(rig: &Rig, token: &str, args: &[&str]) -> String {
    let (ok, out, err) = labwire(rig, token, args);
    assert!(ok, "labwire {args:?} failed: {out}\n{err}");
    out
}

/// The queue status of `job`.
async fn status(c: &mut labwire::client::Clients, job: i64) -> v1::JobStatus {
    let jobs = c
        .admin
        .list_jobs(v1::ListJobsRequest {
            status: 0,
            limit: 1000,
        })
        .await
        .expect("list jobs")
        .into_inner()
        .jobs;
    let j = jobs
        .iter()
        .find(|j| j.node.as_ref().is_some_and(|n| n.id == job))
        .expect("the job is listed");
    v1::JobStatus::try_from(j.status).expect("a status")
}

async fn wait_status(c: &mut labwire::client::Clients, job: i64, want: v1::JobStatus) {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(c, job).await;
        if s == want {
            return;
        }
        assert!(Instant::now() < end, "job {job} is {s:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The reservation events of `/events/stream` from the start, until one of type `last`.
async fn reservation_events(rig: &Rig, last: &str) -> Vec<serde_json::Value> {
    let mut resp = rig
        .http_client()
        .get(format!("{}/events/stream?from=0", rig.http_url()))
        .bearer_auth(&rig.admin_token)
        .send()
        .await
        .expect("event stream");
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut buf = String::new();
    let mut out: Vec<serde_json::Value> = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let chunk = tokio::time::timeout_at(end, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no `{last}` event; saw {out:?}"))
            .expect("event stream chunk")
            .expect("event stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            for line in frame.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let e: serde_json::Value = serde_json::from_str(data.trim()).expect("CloudEvent");
                let t = e["type"].as_str().unwrap_or_default().to_string();
                if t.starts_with("org.labwire.device.re") {
                    out.push(e);
                    if t == last {
                        return out;
                    }
                }
            }
        }
    }
}

/// Powers the board on by hand, as its borrower would (the board's own script).
fn power_on_by_hand(rig: &Rig, board: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    run_ok(
        Command::new(repo.join("tests/board/run-qemu.sh"))
            .env("LABWIRE_BOARD_RUNDIR", rig.path("run-qemu-1"))
            .arg(board),
    );
    assert!(qemu_running(rig, "qemu-1"));
}

fn start(rig: &Rig, board: &Path) -> (Proc, Proc) {
    let coord = rig.start_coordinator();
    rig.issue_lab(LAB);
    serial_agent(
        rig,
        LAB,
        &serial_device(rig, "qemu-1", "borrow", board, "labwire"),
        board,
    );
    let agent = rig.start_agent(LAB);
    (coord, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_board_leaves_the_pool_after_its_job_and_comes_back_powered_off() {
    let board = board_dir();
    let rig = Rig::new(CONFIG);
    let _keep = rig.keep_on_failure();
    let mut s = Steps::new();
    let (_coord, _agent) = start(&rig, &board);
    let ana = rig.create_token("ana", "console");
    let bob = rig.create_token("bob", "console");
    let reader = rig.create_token("reader", "read");
    let mut c = rig.client().await;

    s.at("a job holds the board");
    let first = submit_spec(
        &mut c,
        board_job("holds-board", "borrow", &board, &["sleep 10"], &[], 120),
    )
    .await;
    wait_status(&mut c, first, v1::JobStatus::Leased).await;

    s.at("reserved while its job runs");
    let out = labwire_ok(
        &rig,
        &ana,
        &[
            "--json", "reserve", BOARD, "--for", "10m", "--reason", "bisect",
        ],
    );
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(r["owner"], "ana", "{r}");
    assert_eq!(r["job_running"], true, "{r}");
    let (ok, _, err) = labwire(&rig, &bob, &["reserve", BOARD, "--for", "1h"]);
    assert!(!ok && err.contains("reserved by `ana`"), "{err}");
    let (ok, _, err) = labwire(&rig, &reader, &["reserve", BOARD, "--for", "1h"]);
    assert!(!ok && err.contains("needs `console`"), "{err}");
    let (ok, _, err) = labwire(&rig, &ana, &["reserve", "borrow-lab/nope", "--for", "1h"]);
    assert!(
        !ok && err.contains("no lab `borrow-lab` with a device `nope`"),
        "{err}"
    );
    let second = submit_spec(
        &mut c,
        board_job("after-release", "borrow", &board, &["uname -a"], &[], 120),
    )
    .await;

    s.at("the running job ends; the next one waits for the release");
    let n = wait_node(&mut c, first, Duration::from_secs(180), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(status(&mut c, second).await, v1::JobStatus::Queued);
    let list = labwire_ok(&rig, &rig.admin_token, &["device", "list", LAB, "--json"]);
    let dev: serde_json::Value =
        serde_json::from_str(list.lines().next().expect("a line")).expect("device JSON");
    assert_eq!(dev["reserved_by"], "ana", "{list}");
    let mine = labwire_ok(&rig, &ana, &["reservations"]);
    assert!(mine.contains(BOARD) && mine.contains("bisect"), "{mine}");

    s.at("the borrower uses the board; only they or an admin may end the loan");
    power_on_by_hand(&rig, &board);
    let (ok, _, err) = labwire(&rig, &bob, &["release", BOARD]);
    assert!(!ok && err.contains("only they or an admin"), "{err}");
    let out = labwire_ok(&rig, &ana, &["reserve", BOARD, "--for", "20m", "--extend"]);
    assert!(out.contains("extended"), "{out}");

    s.at("released: the board is powered off and runs the queued job");
    labwire_ok(&rig, &ana, &["release", BOARD]);
    wait_for(Duration::from_secs(30), "the board powered off", || {
        !qemu_running(&rig, "qemu-1")
    });
    let n = wait_node(&mut c, second, Duration::from_secs(180), is_done).await;
    let log = read_log(&mut c, second).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{log}");
    assert!(log.contains("Linux labwire-board"), "{log}");

    s.at("each change is an event");
    let ev = reservation_events(&rig, "org.labwire.device.released").await;
    let types: Vec<&str> = ev.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "org.labwire.device.reserved",
            "org.labwire.device.reservation_extended",
            "org.labwire.device.released"
        ]
    );
    assert!(
        ev.iter()
            .all(|e| e["data"]["owner"] == "ana" && e["data"]["device"] == "qemu-1"),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_survives_restarts_and_its_lease_runs_out_by_itself() {
    let board = board_dir();
    let rig = Rig::new(CONFIG);
    let _keep = rig.keep_on_failure();
    let mut s = Steps::new();
    let (mut coord, agent) = start(&rig, &board);
    let ana = rig.create_token("ana", "console");
    wait_for(Duration::from_secs(30), "the agent to advertise", || {
        labwire(&rig, &rig.admin_token, &["device", "list", LAB])
            .1
            .contains(BOARD)
    });

    s.at("reserve, then restart the coordinator and SIGKILL the agent");
    labwire_ok(&rig, &ana, &["reserve", BOARD, "--for", "10m"]);
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    drop(agent);
    assert!(coord.terminate(Duration::from_secs(20)).is_some());
    drop(coord);
    let coord = rig.start_coordinator();
    let _agent = rig.start_agent(LAB);
    let mut c = rig.client().await;
    let job = submit_spec(
        &mut c,
        board_job("waits", "borrow", &board, &["uname -a"], &[], 120),
    )
    .await;

    s.at("the reservation is still there and the board stays out of the pool");
    let list = labwire_ok(&rig, &ana, &["--json", "reservations"]);
    assert!(list.contains("\"owner\":\"ana\""), "{list}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(status(&mut c, job).await, v1::JobStatus::Queued);
    assert!(!qemu_running(&rig, "qemu-1"));

    s.at("the lease runs out by itself: the board is back and runs the job");
    labwire_ok(&rig, &ana, &["reserve", BOARD, "--for", "3s", "--extend"]);
    let n = wait_node(&mut c, job, Duration::from_secs(180), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32);
    let ev = reservation_events(&rig, "org.labwire.device.reservation_expired").await;
    assert_eq!(ev.len(), 3, "{ev:?}");
    let list = labwire_ok(&rig, &ana, &["--json", "reservations"]);
    assert!(list.trim().is_empty(), "{list}");
    drop(coord);
}
