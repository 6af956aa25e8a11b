//! End-to-end tests of the serial driver on a real Linux board: the Debian kernel booted under
//! QEMU (software emulation) with the busybox initramfs of tests/board/, its serial port on a
//! pty opened by the agent with tokio-serial. The agent powers the board on and off with the
//! board's scripts, follows the boot, logs in, runs commands and parses their output.

use crate::common;

use common::*;
use labwire_proto::v1;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Builds (or reuses) the board: kernel and initramfs. Cached across runs.
pub(crate) fn board_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var("LABWIRE_BOARD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/labwire/board")
        });
    let st = std::process::Command::new(repo.join("tests/board/build.sh"))
        .arg(&dir)
        .status()
        .expect("run tests/board/build.sh");
    assert!(st.success(), "building the test board failed");
    dir
}

/// A serial device on the QEMU board; each device has its own run folder (its own QEMU).
pub(crate) fn serial_device(
    rig: &Rig,
    name: &str,
    tag: &str,
    board: &Path,
    password: &str,
) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = rig.path(&format!("run-{name}"));
    std::fs::create_dir_all(&run).unwrap();
    format!(
        r#"  - name: {name}
    device_type: qemu-x86_64
    tags: [{tag}]
    settings: {{board: "{board}"}}
    driver:
      type: serial
      console: {{tty: {{path: "{run}/console"}}}}
      power_on_command: ["{repo}/tests/board/run-qemu.sh", --kernel, "{{artifacts.kernel}}", --initrd, "{{artifacts.ramdisk}}", "{{device.board}}", "{{params.kernel_args?}}"]
      power_off_command: ["{repo}/tests/board/stop-qemu.sh", "{{device.board}}"]
      command_env: {{LABWIRE_BOARD_RUNDIR: "{run}"}}
      boot: {{timeout: 90s}}
      login: {{username: root, password: "{password}", shell_prompt: 'root@labwire-board:~# ', timeout: 40s}}
"#,
        board = board.display(),
        run = run.display(),
        repo = repo.display(),
    )
}

/// An agent config with `devices`; the jobs' `file://` artifacts come from `board`.
pub(crate) fn serial_agent(rig: &Rig, lab: &str, devices: &str, board: &Path) -> PathBuf {
    let bundle = rig.path(&format!("labs/{lab}"));
    let yaml = format!(
        "lab: {lab}\ncoordinator:\n  url: {}\n  ca: {b}/ca.pem\n  cert: {b}/agent.pem\n  key: {b}/agent.key\nstate_dir: {b}/state\nlimits: {{drain_timeout: 20s}}\nartifacts: {{file_dirs: [\"{}\"]}}\ndevices:\n{devices}",
        rig.url(),
        board.display(),
        b = bundle.display()
    );
    let p = bundle.join("agent.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

pub(crate) fn board_job(
    name: &str,
    tag: &str,
    board: &Path,
    commands: &[&str],
    params: &[(&str, &str)],
    timeout: u32,
) -> v1::JobSpec {
    let file = |f: &str| v1::Artifact {
        url: format!("file://{}", board.join(f).display()),
        sha256: String::new(),
    };
    v1::JobSpec {
        name: name.into(),
        criteria: Some(v1::Criteria {
            driver: "serial".into(),
            arch: "x86_64".into(),
            tags: vec![tag.into()],
            ..Default::default()
        }),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        artifacts: [
            ("kernel".to_string(), file("vmlinuz")),
            ("ramdisk".to_string(), file("initramfs.cpio.gz")),
        ]
        .into(),
        commands: commands.iter().map(|s| s.to_string()).collect(),
        timeout_seconds: timeout,
        ..Default::default()
    }
}

pub(crate) fn qemu_running(rig: &Rig, device: &str) -> bool {
    let pidfile = rig.path(&format!("run-{device}/qemu.pid"));
    let Ok(pid) = std::fs::read_to_string(pidfile) else {
        return false;
    };
    std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .map(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
        .unwrap_or(false)
}

async fn tree(c: &mut labwire::client::Clients, id: i64) -> String {
    let (root, kids) = labwire::commands::fetch_tree(c, id).await.unwrap();
    labwire::commands::render_tree(&root, &kids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_kernel_boots_logs_in_and_reports_ktap_then_failures_end_cleanly() {
    let board = board_dir();
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 2s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("board-lab");
    let devices = format!(
        "{}{}",
        serial_device(&rig, "qemu-1", "qemu", &board, "labwire"),
        serial_device(&rig, "qemu-badpw", "badpw", &board, "not-the-password"),
    );
    serial_agent(&rig, "board-lab", &devices, &board);
    let _agent = rig.start_agent("board-lab");
    let mut c = rig.client().await;

    // 1. A good run: boot, login, KTAP results, a failing command, and parameters full of
    //    shell metacharacters that reach the board literally and never run on the lab host.
    let pwned = rig.path("pwned-on-lab-host");
    let evil = format!(
        "it's $(touch {p}) `touch {p}`; touch {p} && echo \"x\"",
        p = pwned.display()
    );
    let spec = board_job(
        "ktap-on-board",
        "qemu",
        &board,
        &[
            "labwire-ktap-demo",
            "printf 'MSG=[%s]\\n' {params.msg}",
            "printf 'ENV=[%s]\\n' \"$LABWIRE_PARAM_MSG\"",
            "false",
        ],
        &[("msg", &evil)],
        120,
    );
    let job = submit_spec(&mut c, spec).await;
    let n = wait_node(&mut c, job, Duration::from_secs(180), is_done).await;
    let t = tree(&mut c, job).await;
    let log = read_log(&mut c, job).await;
    assert_eq!(n.result, v1::NodeResult::Fail as i32, "{t}\n{log}");
    assert!(data(&n).get("error_code").is_none(), "{t}");
    assert!(log.contains("Linux version"), "{log}");
    assert!(log.contains(&format!("MSG=[{evil}]")), "{log}");
    assert!(log.contains(&format!("ENV=[{evil}]")), "{log}");
    assert!(!pwned.exists(), "a job parameter ran on the lab host");
    for line in [
        "setup [test]",
        "kernel-boot [test]",
        "login [test]",
        "command-1 [test]",
        "command-4 [test]",
        "labwire_demo [test]",
        "test_b [test]",
        "labwire_math [test]",
    ] {
        assert!(t.contains(line), "missing {line} in\n{t}");
    }
    let test_b = c
        .nodes
        .query_nodes(v1::QueryNodesRequest {
            name: "test_b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(test_b.len(), 1);
    assert_eq!(test_b[0].result, v1::NodeResult::Fail as i32, "{t}");
    assert!(
        !qemu_running(&rig, "qemu-1"),
        "QEMU is still running after the job"
    );

    // 2. A kernel that panics (init exits).
    let job = submit_spec(
        &mut c,
        board_job(
            "panic",
            "qemu",
            &board,
            &["true"],
            &[("kernel_args", "labwire.panic=1")],
            120,
        ),
    )
    .await;
    let n = wait_node(&mut c, job, Duration::from_secs(180), is_done).await;
    let log = read_log(&mut c, job).await;
    assert_eq!(n.result, v1::NodeResult::Incomplete as i32);
    assert_eq!(data(&n)["error_code"], "kernel_panic", "{log}");
    assert!(log.contains("Kernel panic - not syncing"), "{log}");
    assert!(!qemu_running(&rig, "qemu-1"));

    // 3. A board that never shows a login prompt.
    let job = submit_spec(
        &mut c,
        board_job(
            "nologin",
            "qemu",
            &board,
            &["true"],
            &[("kernel_args", "labwire.nologin=1")],
            120,
        ),
    )
    .await;
    let n = wait_node(&mut c, job, Duration::from_secs(180), is_done).await;
    let log = read_log(&mut c, job).await;
    assert_eq!(data(&n)["error_code"], "login_failed", "{log}");
    assert!(log.contains("this boot offers no login prompt"), "{log}");
    assert!(!qemu_running(&rig, "qemu-1"));

    // 4. A wrong password.
    let job = submit_spec(
        &mut c,
        board_job("badpw", "badpw", &board, &["true"], &[], 120),
    )
    .await;
    let n = wait_node(&mut c, job, Duration::from_secs(180), is_done).await;
    let log = read_log(&mut c, job).await;
    assert_eq!(data(&n)["error_code"], "login_failed", "{log}");
    assert!(log.contains("Login incorrect"), "{log}");
    assert!(!qemu_running(&rig, "qemu-badpw"));

    // 5. A command that hangs until the job's time limit.
    let job = submit_spec(
        &mut c,
        board_job("hang", "qemu", &board, &["labwire-hang"], &[], 50),
    )
    .await;
    let n = wait_node(&mut c, job, Duration::from_secs(180), is_done).await;
    let log = read_log(&mut c, job).await;
    assert_eq!(data(&n)["error_code"], "test_timeout", "{log}");
    assert_eq!(n.result, v1::NodeResult::Incomplete as i32);
    assert!(!qemu_running(&rig, "qemu-1"));
}
