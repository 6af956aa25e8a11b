//! Board health end to end: an admin's maintenance (not offered, `jobs explain` names the
//! reason, `--now` cancels the running job, kept across restarts of both daemons, `resume`
//! brings the device back), and a real QEMU board whose power command fails three jobs in a
//! row quarantined by its agent, then resumed and running a real kernel again.

use crate::common;

#[path = "health_alerts.rs"]
mod alerts;
#[path = "health_replicas.rs"]
mod replicas;

use common::*;
use labwire_proto::v1;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `labwire ARGS` with the rig's admin token; returns its standard output.
fn cli(rig: &Rig, args: &[&str]) -> String {
    run_ok(
        Command::new(CLIENT)
            .args(["--server", &rig.url(), "--ca"])
            .arg(rig.path("coordinator/pki/ca.pem"))
            .args(["--token", &rig.admin_token])
            .args(args),
    )
}

/// The devices as `labwire device list LAB --json` prints them, by `lab/device`.
fn devices(rig: &Rig, lab: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    cli(rig, &["device", "list", lab, "--json"])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            (
                format!(
                    "{}/{}",
                    v["lab"].as_str().unwrap_or(""),
                    v["device"].as_str().unwrap_or("")
                ),
                v,
            )
        })
        .collect()
}

/// Waits until `lab/device` has `health` in `labwire device list`.
fn wait_health(rig: &Rig, target: &str, health: &str, within: Duration) -> serde_json::Value {
    let lab = target.split('/').next().unwrap_or("");
    let mut last = serde_json::Value::Null;
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        if let Some(v) = devices(rig, lab).get(target) {
            last = v.clone();
            if v["health"] == health {
                return v.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {target} to be {health}; last seen {last}");
}

/// The first `n` device health events of `/events/stream` (read from the start), as
/// CloudEvents.
async fn health_events(rig: &Rig, n: usize) -> Vec<serde_json::Value> {
    let mut resp = rig
        .http_client()
        .get(format!("{}/events/stream?from=0", rig.http_url()))
        .bearer_auth(&rig.admin_token)
        .send()
        .await
        .expect("event stream");
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut buf = String::new();
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(end, resp.chunk())
            .await
            .expect("timed out reading the event stream")
            .expect("event stream chunk")
            .expect("event stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            for line in frame.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    let e: serde_json::Value =
                        serde_json::from_str(data.trim()).expect("CloudEvent");
                    if e["type"] == "org.labwire.device.health" {
                        out.push(e);
                    }
                }
            }
        }
    }
    out
}

/// What `jobs explain` says of `lab` for `job`.
async fn explain(c: &mut labwire::client::Clients, job: i64, lab: &str) -> String {
    let r = c
        .admin
        .explain_job(v1::ExplainJobRequest { job })
        .await
        .expect("explain")
        .into_inner();
    r.labs
        .iter()
        .filter(|v| v.lab == lab)
        .map(|v| v.reasons.join("; "))
        .collect()
}

const SLEEPER: &[&str] = &[
    "sh",
    "-c",
    "echo \"run by $LABWIRE_DEVICE\"; sleep \"$1\"; echo finished",
    "sh",
    "{params.sleep}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_holds_across_restarts_and_resume_brings_the_device_back() {
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 500ms}\nhttp: {listen: 127.0.0.1:0}\n");
    let _keep = rig.keep_on_failure();
    let mut coord = rig.start_coordinator();
    rig.issue_lab("lab-h");
    rig.agent_config("lab-h", &[("d1", SLEEPER, &["h"])], "");
    let mut agent = rig.start_agent("lab-h");
    let mut c = rig.client().await;
    wait_health(&rig, "lab-h/d1", "good", Duration::from_secs(20));

    steps.at("maintenance while a job runs: the job finishes first");
    let running = submit(&mut c, "long", &["h"], &[("sleep", "3")]).await;
    wait_node(&mut c, running, Duration::from_secs(20), |n| {
        data(n).get("device").is_some()
    })
    .await;
    let out = cli(
        &rig,
        &[
            "device",
            "maintenance",
            "lab-h/d1",
            "--reason",
            "new power supply",
        ],
    );
    assert_eq!(out.trim(), "lab-h/d1: good -> maintenance");
    let n = wait_node(&mut c, running, Duration::from_secs(30), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");

    steps.at("a device in maintenance is not offered; explain names the reason");
    let queued = submit(&mut c, "waits", &["h"], &[("sleep", "0")]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = wait_node(&mut c, queued, Duration::from_secs(5), |_| true).await;
    assert!(!is_done(&n), "ran on a device in maintenance: {n:?}");
    let why = explain(&mut c, queued, "lab-h").await;
    assert!(
        why.contains("out of service") && why.contains("d1 is maintenance: new power supply"),
        "{why}"
    );

    steps.at("maintenance holds across restarts of both daemons");
    coord.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord.terminate(Duration::from_secs(5));
    agent.terminate(Duration::from_secs(20));
    let _coord2 = rig.start_coordinator();
    let _agent2 = rig.start_agent("lab-h");
    let mut c = rig.client().await;
    let d = wait_health(&rig, "lab-h/d1", "maintenance", Duration::from_secs(20));
    assert_eq!(d["reason"], "new power supply");
    // The agent registered again (it says good) and the admin's word still counts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = wait_node(&mut c, queued, Duration::from_secs(5), |_| true).await;
    assert!(!is_done(&n), "ran on a device in maintenance: {n:?}");
    assert!(
        explain(&mut c, queued, "lab-h")
            .await
            .contains("new power supply")
    );

    steps.at("resume: the queued job runs");
    let out = cli(&rig, &["device", "resume", "lab-h/d1"]);
    assert_eq!(out.lines().next(), Some("lab-h/d1: maintenance -> good"));
    let n = wait_node(&mut c, queued, Duration::from_secs(30), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");

    steps.at("retire --now cancels the running job");
    let long = submit(&mut c, "cut-short", &["h"], &[("sleep", "60")]).await;
    wait_node(&mut c, long, Duration::from_secs(20), |n| {
        data(n).get("device").is_some()
    })
    .await;
    let out = cli(
        &rig,
        &[
            "device",
            "retire",
            "lab-h/d1",
            "--reason",
            "board died",
            "--now",
        ],
    );
    assert!(out.contains("good -> retired"), "{out}");
    assert!(out.contains(&format!("cancelled job {long}")), "{out}");
    let n = wait_node(&mut c, long, Duration::from_secs(10), is_done).await;
    assert_eq!(data(&n)["error_code"], "cancelled", "{n:?}");
    wait_health(&rig, "lab-h/d1", "retired", Duration::from_secs(5));

    steps.at("each change is a CloudEvent on /events/stream, in order");
    let seen = health_events(&rig, 3).await;
    let moves: Vec<(String, String, String)> = seen
        .iter()
        .map(|e| {
            let d = &e["data"];
            assert_eq!(e["type"], "org.labwire.device.health", "{e}");
            assert_eq!(
                (d["lab"].as_str(), d["device"].as_str()),
                (Some("lab-h"), Some("d1")),
                "{e}"
            );
            (
                d["from"].as_str().unwrap_or("").to_string(),
                d["to"].as_str().unwrap_or("").to_string(),
                d["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want = [
        ("good", "maintenance", "new power supply"),
        ("maintenance", "good", "resumed by an admin"),
        ("good", "retired", "board died"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(moves, want);
    let ids: Vec<i64> = seen
        .iter()
        .map(|e| e["id"].as_str().and_then(|i| i.parse().ok()).unwrap_or(0))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    steps.at("bad input is refused clearly");
    let out = Command::new(CLIENT)
        .args(["--server", &rig.url(), "--ca"])
        .arg(rig.path("coordinator/pki/ca.pem"))
        .args(["--token", &rig.admin_token])
        .args(["device", "maintenance", "lab-h/nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no device `nope`") && err.contains("d1"),
        "{err}"
    );
    let out = Command::new(CLIENT)
        .args(["--server", &rig.url(), "--ca"])
        .arg(rig.path("coordinator/pki/ca.pem"))
        .args(["--token", &rig.admin_token])
        .args(["device", "resume", "no-slash"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected LAB/DEVICE"));
}

/// Builds (or reuses) the QEMU test board of tests/board/.
fn board_dir() -> std::path::PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var("LABWIRE_BOARD_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/labwire/board")
        });
    let st = Command::new(repo.join("tests/board/build.sh"))
        .arg(&dir)
        .status()
        .expect("run tests/board/build.sh");
    assert!(st.success(), "building the test board failed");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_whose_power_fails_three_jobs_in_a_row_is_quarantined() {
    let mut steps = Steps::new();
    let board = board_dir();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 1s}\nretries: {max: 0}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let bundle = rig.issue_lab("board-lab");
    // The power switch is broken while this file exists: the wrapper fails as a dead PDU
    // would, otherwise it powers the real QEMU board on.
    let broken = rig.path("psu-broken");
    std::fs::write(&broken, "").unwrap();
    let run = rig.path("run-q1");
    std::fs::create_dir_all(&run).unwrap();
    let power_on = rig.path("power-on.sh");
    std::fs::write(
        &power_on,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo 'PDU: no answer' >&2; exit 1; fi\nexec '{}/tests/board/run-qemu.sh' \"$@\"\n",
            broken.display(),
            repo.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &power_on,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let yaml = format!(
        r#"lab: board-lab
coordinator: {{url: {url}, ca: {b}/ca.pem, cert: {b}/agent.pem, key: {b}/agent.key}}
state_dir: {b}/state
limits: {{drain_timeout: 20s}}
artifacts: {{file_dirs: ["{board}"]}}
health: {{quarantine_after: 3}}
devices:
  - name: q1
    device_type: qemu-x86_64
    tags: [q]
    settings: {{board: "{board}"}}
    driver:
      type: serial
      console: {{tty: {{path: "{run}/console"}}}}
      power_on_command: ["{power_on}", --kernel, "{{artifacts.kernel}}", --initrd, "{{artifacts.ramdisk}}", "{{device.board}}"]
      power_off_command: ["{repo}/tests/board/stop-qemu.sh", "{{device.board}}"]
      command_env: {{LABWIRE_BOARD_RUNDIR: "{run}"}}
      boot: {{timeout: 90s}}
      login: {{username: root, password: labwire, shell_prompt: 'root@labwire-board:~# ', timeout: 40s}}
"#,
        url = rig.url(),
        b = bundle.display(),
        board = board.display(),
        run = run.display(),
        power_on = power_on.display(),
        repo = repo.display(),
    );
    std::fs::write(bundle.join("agent.yaml"), yaml).unwrap();
    let mut agent = rig.start_agent("board-lab");
    let mut c = rig.client().await;
    wait_health(&rig, "board-lab/q1", "good", Duration::from_secs(20));

    let job = |name: &str| {
        let file = |f: &str| v1::Artifact {
            url: format!("file://{}", board.join(f).display()),
            sha256: String::new(),
        };
        v1::JobSpec {
            name: name.into(),
            criteria: Some(v1::Criteria {
                driver: "serial".into(),
                tags: vec!["q".into()],
                ..Default::default()
            }),
            artifacts: [
                ("kernel".to_string(), file("vmlinuz")),
                ("ramdisk".to_string(), file("initramfs.cpio.gz")),
            ]
            .into(),
            commands: vec!["uname -r".into()],
            timeout_seconds: 240,
            ..Default::default()
        }
    };

    steps.at("three jobs end power_failed; the board is quarantined by itself");
    for i in 0..3 {
        let id = submit_spec(&mut c, job(&format!("dead-psu-{i}"))).await;
        let n = wait_node(&mut c, id, Duration::from_secs(60), is_done).await;
        assert_eq!(data(&n)["error_code"], "power_failed", "{n:?}");
        let want = if i < 2 { "good" } else { "bad" };
        let d = wait_health(&rig, "board-lab/q1", want, Duration::from_secs(10));
        assert_eq!(d["failure_streak"], i + 1, "{d}");
    }
    let d = devices(&rig, "board-lab")["board-lab/q1"].clone();
    let reason = d["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("quarantined") && reason.contains("power_failed"),
        "{reason}"
    );

    steps.at("a quarantined board is not offered; explain says why");
    let waiting = submit_spec(&mut c, job("after-repair")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = wait_node(&mut c, waiting, Duration::from_secs(5), |_| true).await;
    assert!(!is_done(&n), "ran on a quarantined board: {n:?}");
    let why = explain(&mut c, waiting, "board-lab").await;
    assert!(why.contains("q1 is bad: quarantined"), "{why}");

    steps.at("the quarantine survives an agent restart");
    agent.terminate(Duration::from_secs(20));
    let _agent2 = rig.start_agent("board-lab");
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_health(&rig, "board-lab/q1", "bad", Duration::from_secs(10));
    let n = wait_node(&mut c, waiting, Duration::from_secs(5), |_| true).await;
    assert!(!is_done(&n), "ran on a quarantined board: {n:?}");

    steps.at("repaired and resumed: the waiting job boots the real kernel");
    std::fs::remove_file(&broken).unwrap();
    let out = cli(&rig, &["device", "resume", "board-lab/q1"]);
    // The coordinator still has the agent's word (bad) until the agent clears it.
    assert_eq!(
        out.lines().next(),
        Some("board-lab/q1: bad -> bad"),
        "{out}"
    );
    let d = wait_health(&rig, "board-lab/q1", "good", Duration::from_secs(10));
    assert_eq!(d["failure_streak"], 0, "{d}");
    let n = wait_node(&mut c, waiting, Duration::from_secs(240), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    let log = read_log(&mut c, waiting).await;
    assert!(log.contains("Linux version"), "no kernel boot in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_whose_kernel_panics_fails_its_health_check_until_repaired() {
    let mut steps = Steps::new();
    let board = board_dir();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 1s}\nretries: {max: 0}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let bundle = rig.issue_lab("check-lab");
    // The board's kernel panics while this file exists (a bad kernel on its boot medium).
    let broken = rig.path("kernel-broken");
    std::fs::write(&broken, "").unwrap();
    let run = rig.path("run-q1");
    std::fs::create_dir_all(&run).unwrap();
    let power_on = rig.path("power-on.sh");
    std::fs::write(
        &power_on,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then set -- \"$@\" labwire.panic=1; fi\nexec '{}/tests/board/run-qemu.sh' \"$@\"\n",
            broken.display(),
            repo.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &power_on,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let file = |f: &str| format!("file://{}", board.join(f).display());
    let state = bundle.join("state");
    let yaml = format!(
        r#"lab: check-lab
coordinator: {{url: {url}, ca: {b}/ca.pem, cert: {b}/agent.pem, key: {b}/agent.key}}
state_dir: {state}
limits: {{drain_timeout: 20s}}
artifacts: {{file_dirs: ["{board}"]}}
health:
  interval: 24h
  checks:
    - device_type: qemu-x86_64
      artifacts: {{kernel: "{kernel}", ramdisk: "{ramdisk}"}}
      commands: ["uname -r", "test -d /proc/self"]
      timeout: 3m
devices:
  - name: q1
    device_type: qemu-x86_64
    tags: [q]
    settings: {{board: "{board}"}}
    driver:
      type: serial
      console: {{tty: {{path: "{run}/console"}}}}
      power_on_command: ["{power_on}", --kernel, "{{artifacts.kernel}}", --initrd, "{{artifacts.ramdisk}}", "{{device.board}}"]
      power_off_command: ["{repo}/tests/board/stop-qemu.sh", "{{device.board}}"]
      command_env: {{LABWIRE_BOARD_RUNDIR: "{run}"}}
      boot: {{timeout: 90s}}
      login: {{username: root, password: labwire, shell_prompt: 'root@labwire-board:~# ', timeout: 40s}}
"#,
        url = rig.url(),
        b = bundle.display(),
        state = state.display(),
        board = board.display(),
        kernel = file("vmlinuz"),
        ramdisk = file("initramfs.cpio.gz"),
        run = run.display(),
        power_on = power_on.display(),
        repo = repo.display(),
    );
    std::fs::write(bundle.join("agent.yaml"), yaml).unwrap();
    let _agent = rig.start_agent("check-lab");
    let mut c = rig.client().await;

    steps.at("the check at agent start boots a panicking kernel: the board goes bad");
    let d = wait_health(&rig, "check-lab/q1", "bad", Duration::from_secs(180));
    let reason = d["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.starts_with("health check failed: kernel_panic"),
        "{d}"
    );
    let result: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.join("health/q1/result.json")).expect("the check's record"),
    )
    .unwrap();
    assert_eq!(result["passed"], false, "{result}");
    assert_eq!(result["error_code"], "kernel_panic", "{result}");
    let log = std::fs::read_to_string(state.join("health/q1/console.log")).unwrap();
    assert!(log.contains("Kernel panic - not syncing"), "{log}");

    steps.at("a bad board is not offered: a queued job waits and explain says why");
    let spec = v1::JobSpec {
        name: "after-check".into(),
        criteria: Some(v1::Criteria {
            driver: "serial".into(),
            tags: vec!["q".into()],
            ..Default::default()
        }),
        artifacts: [
            (
                "kernel".to_string(),
                v1::Artifact {
                    url: file("vmlinuz"),
                    sha256: String::new(),
                },
            ),
            (
                "ramdisk".to_string(),
                v1::Artifact {
                    url: file("initramfs.cpio.gz"),
                    sha256: String::new(),
                },
            ),
        ]
        .into(),
        commands: vec!["uname -r".into()],
        timeout_seconds: 240,
        ..Default::default()
    };
    let waiting = submit_spec(&mut c, spec).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = wait_node(&mut c, waiting, Duration::from_secs(5), |_| true).await;
    assert!(!is_done(&n), "ran on a bad board: {n:?}");
    let why = explain(&mut c, waiting, "check-lab").await;
    assert!(
        why.contains("q1 is bad: health check failed: kernel_panic"),
        "{why}"
    );

    steps.at("repaired and resumed: the check passes, the board is good, the job runs");
    std::fs::remove_file(&broken).unwrap();
    cli(&rig, &["device", "resume", "check-lab/q1"]);
    let d = wait_health(&rig, "check-lab/q1", "good", Duration::from_secs(180));
    assert_ne!(d["last_check"], result["ended"], "{d}");
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("health/q1/result.json")).unwrap())
            .unwrap();
    assert_eq!(result["passed"], true, "{result}");
    let log = std::fs::read_to_string(state.join("health/q1/console.log")).unwrap();
    assert!(log.contains("Linux version"), "{log}");
    let n = wait_node(&mut c, waiting, Duration::from_secs(240), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
}
