//! Jobs on a real Labgrid place: a scripted board (KTAP, a hostile parameter, a failing
//! command, a time limit; the place free and the board off after each) and the QEMU board
//! (a real kernel boots on the console the exporter publishes).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_a_labgrid_place_which_is_free_again_afterwards() {
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let lg = Labgrid::start(&rig);
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-lg");
    lg.agent_config(&rig, "lab-lg", "2s", "30s");
    let _agent = rig.start_agent("lab-lg");
    let mut c = rig.client().await;
    wait_advertised(&mut c, "lab-lg", &["board-1"]).await;

    // A passing job: KTAP from the board, a parameter full of shell metacharacters.
    let hostile = "$(touch /tmp/labwire-lg-pwned) `id` ; echo 'x' \"y\"";
    let ktap = "printf 'KTAP version 1\\n1..2\\nok 1 lg_first\\nok 2 lg_second\\n'";
    let id = submit_spec(
        &mut c,
        job(
            "lg-pass",
            &[
                "echo hello from the board",
                "printf '%s\\n' {params.msg}",
                ktap,
            ],
            &[("msg", hostile)],
            120,
        ),
    )
    .await;
    let n = wait_node(&mut c, id, Duration::from_secs(120), is_done).await;
    let log = read_log(&mut c, id).await;
    let d = data(&n);
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{d:?}\n{log}");
    assert!(log.contains("Linux version 6.1.0-labwire"), "{log}");
    assert!(
        log.contains("acquired Labgrid place board-1 as labwire-test/labwire-agent-test"),
        "{log}"
    );
    assert!(log.contains("console: telnet 127.0.0.1:"), "{log}");
    assert!(log.contains("hello from the board"), "{log}");
    assert!(
        log.contains(hostile),
        "the parameter reached the board literally: {log}"
    );
    assert!(log.contains("released Labgrid place board-1"), "{log}");
    assert!(!Path::new("/tmp/labwire-lg-pwned").exists());
    assert_eq!(d.get("device").and_then(|v| v.as_str()), Some("board-1"));
    let t = tree(&mut c, id).await;
    for (path, want) in [
        ("setup.kernel-boot", v1::NodeResult::Pass),
        ("setup.login", v1::NodeResult::Pass),
        ("commands.command-1", v1::NodeResult::Pass),
        ("commands.command-3", v1::NodeResult::Pass),
    ] {
        assert!(has(&t, path, want), "{path} in {t:?}");
    }
    assert!(
        t.iter()
            .any(|(p, r)| p.ends_with("lg_second") && *r == v1::NodeResult::Pass as i32),
        "{t:?}\n{log}"
    );
    assert_eq!(lg.acquired(), None, "the place is free after the job");
    assert_eq!(lg.power_log(), ["on", "off"]);

    // A failing command: `fail`, and the place is given back all the same.
    let id = submit_spec(
        &mut c,
        job(
            "lg-fail",
            &["echo before", "exit_code_3() { return 3; }; exit_code_3"],
            &[],
            120,
        ),
    )
    .await;
    let n = wait_node(&mut c, id, Duration::from_secs(120), is_done).await;
    let log = read_log(&mut c, id).await;
    assert_eq!(
        n.result,
        v1::NodeResult::Fail as i32,
        "{:?}\n{log}",
        data(&n)
    );
    let t = tree(&mut c, id).await;
    assert!(has(&t, "commands.command-2", v1::NodeResult::Fail), "{t:?}");
    assert_eq!(
        lg.acquired(),
        None,
        "the place is free after the failed job"
    );
    assert_eq!(lg.power_log(), ["on", "off", "on", "off"]);
    // A command that outlives the job's time limit: `test_timeout`, and the place is given
    // back.
    let id = submit_spec(&mut c, job("lg-timeout", &["sleep 600"], &[], 10)).await;
    let n = wait_node(&mut c, id, Duration::from_secs(60), is_done).await;
    let d = data(&n);
    assert_eq!(
        d.get("error_code").and_then(|v| v.as_str()),
        Some("test_timeout"),
        "{d:?}"
    );
    assert_eq!(lg.acquired(), None, "the place is free after the timeout");
    assert_eq!(lg.power_log(), ["on", "off", "on", "off", "on", "off"]);
    // The place stays on offer.
    assert_eq!(advertised(&mut c, "lab-lg").await, ["board-1"]);
}

/// Builds (or reuses) the QEMU test board of tests/board/ (cached in ~/.cache/labwire/board).
fn qemu_board() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var("LABWIRE_BOARD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/labwire/board")
        });
    let st = Command::new(repo.join("tests/board/build.sh"))
        .arg(&dir)
        .status()
        .expect("run tests/board/build.sh");
    assert!(st.success(), "building the test board failed");
    dir
}

/// The QEMU board behind Labgrid: the job's kernel and ramdisk are staged by the place's
/// deploy command (as into a TFTP folder), Labgrid powers QEMU on, a real Linux kernel boots
/// on the console the exporter publishes, the agent logs in and runs KTAP tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_kernel_boots_on_a_labgrid_place() {
    let board = qemu_board();
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 2s}\n");
    let _keep = rig.keep_on_failure();
    let lg = Labgrid::start_board(&rig, Some(&board));
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-qemu");
    let deploy = lg.run.join("deploy");
    let place = format!(
        r#"device_type: qemu-x86_64
        tags: [lg]
        deploy_command: [sh, -c, 'mkdir -p "$3" && cp "$1" "$3/kernel" && cp "$2" "$3/ramdisk"', sh, '{{artifacts.kernel}}', '{{artifacts.ramdisk}}', "{deploy}"]
        boot: {{timeout: 120s}}
        login: {{username: root, password: labwire, shell_prompt: 'root@labwire-board:~# ', timeout: 60s}}"#,
        deploy = deploy.display()
    );
    lg.agent_config_with(&rig, "lab-qemu", "2s", "30s", &place);
    // The job's kernel and ramdisk are file:// URLs into the board's folder.
    let cfg = rig.path("labs/lab-qemu/agent.yaml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "artifacts: {{file_dirs: [\"{}\"]}}\n",
        board.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let _agent = rig.start_agent("lab-qemu");
    let mut c = rig.client().await;
    wait_advertised(&mut c, "lab-qemu", &["board-1"]).await;

    let file = |f: &str| v1::Artifact {
        url: format!("file://{}", board.join(f).display()),
        sha256: String::new(),
    };
    let mut spec = job("lg-qemu", &["labwire-ktap-pass", "uname -r"], &[], 300);
    spec.artifacts = [
        ("kernel".to_string(), file("vmlinuz")),
        ("ramdisk".to_string(), file("initramfs.cpio.gz")),
    ]
    .into();
    let id = submit_spec(&mut c, spec).await;
    let n = wait_node(&mut c, id, Duration::from_secs(300), is_done).await;
    let log = read_log(&mut c, id).await;
    assert_eq!(
        n.result,
        v1::NodeResult::Pass as i32,
        "{:?}\n{log}",
        data(&n)
    );
    assert!(log.contains("Linux version"), "{log}");
    assert!(log.contains("console: telnet 127.0.0.1:"), "{log}");
    assert!(
        deploy.join("kernel").exists(),
        "the deploy command staged the kernel"
    );
    let t = tree(&mut c, id).await;
    assert!(has(&t, "setup.login", v1::NodeResult::Pass), "{t:?}");
    assert!(
        t.iter()
            .any(|(p, r)| p.ends_with("labwire_pass.test_three")
                && *r == v1::NodeResult::Pass as i32),
        "{t:?}"
    );
    assert_eq!(lg.acquired(), None, "the place is free after the job");
    assert_eq!(lg.power_log(), ["on", "off"]);
    assert!(!lg.qemu_running(), "QEMU is off after the job");
}
