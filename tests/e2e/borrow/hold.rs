//! `--hold-on-failure`, end to end on the real QEMU board: a job submitted with it that
//! fails leaves its board reserved for the token that submitted it, powered and logged in,
//! so that `labwire console` answers at once without a power-on; the release powers it off
//! and the queued job runs; a job with the flag that passes holds nothing and powers off.

use super::{BOARD, Console, LAB, labwire, labwire_ok, reservation_events, start, status};
use crate::common::*;
use crate::serial::{board_dir, board_job, qemu_running};
use labwire_proto::v1;
use std::time::Duration;

/// A job file for the board: its kernel and ramdisk, `commands`, on the borrow board.
fn job_file(rig: &Rig, name: &str, board: &std::path::Path, commands: &[&str]) -> String {
    let path = rig.path(&format!("{name}.yaml"));
    let cmds: Vec<String> = commands.iter().map(|c| format!("  - '{c}'\n")).collect();
    let yaml = format!(
        "name: {name}\ncriteria: {{driver: serial, arch: x86_64, tags: [borrow]}}\n\
         artifacts:\n  kernel: file://{k}\n  ramdisk: file://{r}\ntimeout: 120\n\
         commands:\n{cmds}",
        k = board.join("vmlinuz").display(),
        r = board.join("initramfs.cpio.gz").display(),
        cmds = cmds.concat(),
    );
    std::fs::write(&path, yaml).expect("write the job file");
    path.display().to_string()
}

/// Submits a job file as `token` with `--hold-on-failure 10m`; returns its id.
fn submit_held(rig: &Rig, token: &str, file: &str) -> i64 {
    let out = labwire_ok(
        rig,
        token,
        &["--json", "submit", "-f", file, "--hold-on-failure", "10m"],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("submit JSON");
    v["id"].as_i64().expect("a job id")
}

fn qemu_pid(rig: &Rig) -> String {
    std::fs::read_to_string(rig.path("run-qemu-1/qemu.pid")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_holds_its_board_for_its_submitter_logged_in() {
    let board = board_dir();
    let rig = Rig::new(super::CONFIG);
    let _keep = rig.keep_on_failure();
    let mut s = Steps::new();
    let (_coord, _agent) = start(&rig, &board);
    let ana = rig.create_token("ana", "submit,console");
    let mut c = rig.client().await;

    s.at("the hold is bounded");
    let fails = job_file(
        &rig,
        "hold-fails",
        &board,
        &["echo before-the-failure", "false"],
    );
    let (ok, _, err) = labwire(
        &rig,
        &ana,
        &[
            "submit",
            "-f",
            &fails,
            "--hold-on-failure",
            "25h",
            "--dry-run",
        ],
    );
    assert!(!ok && err.contains("24 hours"), "{err}");

    s.at("a job with --hold-on-failure fails; the next job waits");
    let failed = submit_held(&rig, &ana, &fails);
    let queued = submit_spec(
        &mut c,
        board_job("after-hold", "borrow", &board, &["uname -a"], &[], 120),
    )
    .await;
    let n = wait_node(&mut c, failed, Duration::from_secs(240), is_done).await;
    let log = read_log(&mut c, failed).await;
    assert_eq!(n.result, v1::NodeResult::Fail as i32, "{log}");
    assert!(log.contains("the board stays powered"), "{log}");

    s.at("the board is reserved for the submitter, still powered");
    let mine = labwire_ok(&rig, &ana, &["--json", "reservations"]);
    let held: serde_json::Value =
        serde_json::from_str(mine.lines().next().unwrap_or("null")).expect("reservation JSON");
    assert_eq!(held["owner"], "ana", "{mine}");
    assert_eq!(held["device"], "qemu-1", "{mine}");
    let reason = format!("held after job {failed} failed");
    assert_eq!(held["reason"], reason.as_str(), "{mine}");
    assert!(
        qemu_running(&rig, "qemu-1"),
        "the held board was powered off"
    );
    let pid = qemu_pid(&rig);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(status(&mut c, queued).await, v1::JobStatus::Queued);

    s.at("the console answers at once: no power-on, no login");
    let mut console = Console::open(&rig, &ana);
    console.send("echo held-$((6*7))\n");
    let at = console.wait_out(0, "held-42", Duration::from_secs(30));
    console.wait_out(at, "root@labwire-board:~# ", Duration::from_secs(30));
    assert_eq!(qemu_pid(&rig), pid, "the board was powered on again");

    s.at("the hold is an event made by the coordinator");
    let ev = reservation_events(&rig, "org.labwire.device.reserved").await;
    let e = ev
        .iter()
        .find(|e| e["type"] == "org.labwire.device.reserved")
        .expect("a reserved event");
    assert_eq!(e["data"]["owner"], "ana", "{e}");
    assert_eq!(e["data"]["by"], "coordinator", "{e}");
    assert_eq!(e["data"]["reason"], reason.as_str(), "{e}");

    s.at("released: the board goes off and runs the queued job");
    labwire_ok(&rig, &ana, &["release", BOARD]);
    console.wait_err("reservation ended", Duration::from_secs(20));
    wait_for(Duration::from_secs(30), "the board powered off", || {
        !qemu_running(&rig, "qemu-1")
    });
    let n = wait_node(&mut c, queued, Duration::from_secs(240), is_done).await;
    let log = read_log(&mut c, queued).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{log}");

    s.at("a job with the flag that passes holds nothing and powers off");
    let passes = job_file(&rig, "hold-passes", &board, &["echo fine"]);
    let passed = submit_held(&rig, &ana, &passes);
    let n = wait_node(&mut c, passed, Duration::from_secs(240), is_done).await;
    let log = read_log(&mut c, passed).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{log}");
    let list = labwire_ok(&rig, &ana, &["reservations"]);
    assert!(!list.contains(BOARD), "{list}");
    wait_for(Duration::from_secs(30), "the board powered off", || {
        !qemu_running(&rig, "qemu-1")
    });
    let list = labwire_ok(&rig, &rig.admin_token, &["device", "list", LAB, "--json"]);
    let dev: serde_json::Value =
        serde_json::from_str(list.lines().next().expect("a line")).expect("device JSON");
    assert!(dev["reserved_by"].is_null(), "{list}");
}
