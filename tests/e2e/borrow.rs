//! Borrowing a board, end to end on the real QEMU board of tests/board/ driven by the serial
//! driver: a reservation takes the board out of the pool when its job ends, belongs to the
//! token that made it, shows in `device list` and on the event stream; its owner powers it
//! on with `labwire power`, logs in on `labwire console` (a scripted client on pipes) and
//! runs `uname -a` while another person watches, resets it and sees it boot again; a release
//! or a lease that runs out closes the console with a message, has the agent power the
//! board off, and a queued job runs on it; a reservation survives a coordinator restart and
//! an agent SIGKILL, and no board stays out of the pool without a live reservation.

mod hold;

use crate::common;
use crate::serial::{board_dir, board_job, qemu_running, serial_agent, serial_device};

use common::*;
use labwire_proto::v1;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
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
                if t.starts_with("org.labwire.device.re") || t == "org.labwire.device.console" {
                    out.push(e);
                    if t == last {
                        return out;
                    }
                }
            }
        }
    }
}

/// A `labwire console` process on pipes: what it printed so far, and its stdin.
struct Console {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                return;
            }
            b.lock().expect("buffer").extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

impl Console {
    fn open(rig: &Rig, token: &str) -> Console {
        let mut child = Command::new(CLIENT)
            .args(["--server", &rig.url(), "--ca"])
            .arg(rig.path("coordinator/pki/ca.pem"))
            .args(["--token", token, "console", BOARD])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start labwire console");
        let out = collect(child.stdout.take().expect("stdout"));
        let err = collect(child.stderr.take().expect("stderr"));
        let c = Console {
            stdin: child.stdin.take(),
            child,
            out,
            err,
        };
        c.wait_err("reserved by", Duration::from_secs(20));
        c
    }

    fn out(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().expect("out")).into_owned()
    }

    fn err(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().expect("err")).into_owned()
    }

    /// Waits until the output after byte `from` contains `what`; returns where it ends.
    fn wait_out(&self, from: usize, what: &str, within: Duration) -> usize {
        let end = Instant::now() + within;
        loop {
            let out = self.out.lock().expect("out").clone();
            let tail = String::from_utf8_lossy(&out[from.min(out.len())..]).into_owned();
            if let Some(i) = tail.find(what) {
                return from + i + what.len();
            }
            assert!(
                Instant::now() < end,
                "no `{what}` on the console after byte {from}; it printed:\n{tail}\nstderr: {}",
                self.err()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_err(&self, what: &str, within: Duration) {
        wait_for(within, &format!("`{what}` from labwire console"), || {
            self.err().contains(what)
        });
    }

    fn send(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(s.as_bytes()).expect("type");
        stdin.flush().expect("flush");
    }

    /// Waits for the process to end by itself.
    fn ended(&mut self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The QEMU board as a serial device whose power-on needs no job values (it boots the
/// board's own kernel, the one the jobs here name too), so that its borrower can power it
/// on.
fn borrowable_device(rig: &Rig, board: &Path) -> String {
    let d = serial_device(rig, "qemu-1", "borrow", board, "labwire");
    let without = d.replace(
        r#"--kernel, "{artifacts.kernel}", --initrd, "{artifacts.ramdisk}", "#,
        "",
    );
    assert_ne!(d, without, "the board's power-on changed; update this test");
    without
}

fn start(rig: &Rig, board: &Path) -> (Proc, Proc) {
    let coord = rig.start_coordinator();
    rig.issue_lab(LAB);
    serial_agent(rig, LAB, &borrowable_device(rig, board), board);
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

    s.at("the owner opens the console, powers the board on and logs in");
    let mut ana_console = Console::open(&rig, &ana);
    let (ok, _, err) = labwire(&rig, &bob, &["power", BOARD, "on"]);
    assert!(!ok && err.contains("only they or an admin"), "{err}");
    labwire_ok(&rig, &ana, &["power", BOARD, "on"]);
    assert!(qemu_running(&rig, "qemu-1"));
    let at = ana_console.wait_out(0, "login:", Duration::from_secs(120));
    ana_console.send("root\n");
    let at = ana_console.wait_out(at, "Password:", Duration::from_secs(30));
    ana_console.send("labwire\n");
    let at = ana_console.wait_out(at, "root@labwire-board:~# ", Duration::from_secs(30));

    s.at("a watcher sees what the owner types; its keystrokes go nowhere");
    let mut bob_console = Console::open(&rig, &bob);
    assert!(
        bob_console.err().contains("watching"),
        "{}",
        bob_console.err()
    );
    bob_console.send("echo from-bob\n");
    ana_console.send("uname -a\n");
    let at = ana_console.wait_out(at, "Linux labwire-board", Duration::from_secs(30));
    bob_console.wait_out(0, "Linux labwire-board", Duration::from_secs(30));
    let at = ana_console.wait_out(at, "root@labwire-board:~# ", Duration::from_secs(30));
    assert!(!ana_console.out().contains("from-bob"), "a watcher typed");
    drop(bob_console);

    s.at("a power reset is seen on the console");
    labwire_ok(&rig, &ana, &["power", BOARD, "reset"]);
    // A fresh login prompt after the shell prompt: the board booted again.
    ana_console.wait_out(at, "login:", Duration::from_secs(120));
    let (ok, _, err) = labwire(&rig, &bob, &["release", BOARD]);
    assert!(!ok && err.contains("only they or an admin"), "{err}");
    let out = labwire_ok(&rig, &ana, &["reserve", BOARD, "--for", "20m", "--extend"]);
    assert!(out.contains("extended"), "{out}");

    s.at("released: the console closes, the board is powered off and runs the queued job");
    labwire_ok(&rig, &ana, &["release", BOARD]);
    ana_console.wait_err("reservation ended", Duration::from_secs(20));
    assert!(
        ana_console.ended(Duration::from_secs(10)),
        "the console client ended"
    );
    wait_for(Duration::from_secs(30), "the board powered off", || {
        !qemu_running(&rig, "qemu-1")
    });
    let n = wait_node(&mut c, second, Duration::from_secs(180), is_done).await;
    let log = read_log(&mut c, second).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{log}");
    assert!(log.contains("Linux labwire-board"), "{log}");
    let dir = rig.path("coordinator/consoles/borrow-lab/qemu-1");
    let transcripts: Vec<String> = std::fs::read_dir(&dir)
        .expect("transcripts")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    assert!(
        transcripts
            .iter()
            .any(|t| t.contains("Linux labwire-board")),
        "no transcript with the session in {}",
        dir.display()
    );

    s.at("each change is an event");
    let ev = reservation_events(&rig, "org.labwire.device.released").await;
    let types: Vec<&str> = ev.iter().filter_map(|e| e["type"].as_str()).collect();
    let reservation: Vec<&str> = types
        .iter()
        .copied()
        .filter(|t| *t != "org.labwire.device.console")
        .collect();
    assert_eq!(
        reservation,
        [
            "org.labwire.device.reserved",
            "org.labwire.device.reservation_extended",
            "org.labwire.device.released"
        ]
    );
    let sessions: Vec<(&str, &str)> = ev
        .iter()
        .filter(|e| e["type"] == "org.labwire.device.console")
        .filter_map(|e| Some((e["data"]["who"].as_str()?, e["data"]["session"].as_str()?)))
        .collect();
    assert!(
        sessions.contains(&("ana", "opened")) && sessions.contains(&("bob", "closed")),
        "{sessions:?}"
    );
    assert!(ev.iter().all(|e| e["data"]["device"] == "qemu-1"), "{ev:?}");
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

    s.at("reserve by criteria, then restart the coordinator and SIGKILL the agent");
    let (ok, _, err) = labwire(
        &rig,
        &ana,
        &[
            "reserve",
            "--criteria",
            "tag=nothing-has-it",
            "--for",
            "10m",
        ],
    );
    assert!(!ok && err.contains("meets the criteria"), "{err}");
    let out = labwire_ok(
        &rig,
        &ana,
        &[
            "--json",
            "reserve",
            "--criteria",
            "tag=borrow",
            "--criteria",
            "arch=x86_64",
            "--for",
            "10m",
        ],
    );
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(
        (r["lab"].as_str(), r["device"].as_str()),
        (Some(LAB), Some("qemu-1")),
        "{r}"
    );
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

    s.at("the lease runs out while the console is open");
    let mut console = Console::open(&rig, &ana);
    labwire_ok(&rig, &ana, &["power", BOARD, "on"]);
    console.wait_out(0, "login:", Duration::from_secs(120));
    labwire_ok(&rig, &ana, &["reserve", BOARD, "--for", "2s", "--extend"]);
    console.wait_err("reservation ended", Duration::from_secs(20));
    assert!(
        console.ended(Duration::from_secs(10)),
        "the console client ended"
    );
    wait_for(Duration::from_secs(30), "the board powered off", || {
        !qemu_running(&rig, "qemu-1")
    });

    s.at("the board is back in the pool and runs the job");
    let n = wait_node(&mut c, job, Duration::from_secs(180), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32);
    let ev = reservation_events(&rig, "org.labwire.device.reservation_expired").await;
    let types: Vec<&str> = ev
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| *t != "org.labwire.device.console")
        .collect();
    assert_eq!(
        types,
        [
            "org.labwire.device.reserved",
            "org.labwire.device.reservation_extended",
            "org.labwire.device.reservation_expired"
        ]
    );
    let list = labwire_ok(&rig, &ana, &["--json", "reservations"]);
    assert!(list.trim().is_empty(), "{list}");
    drop(coord);
}
