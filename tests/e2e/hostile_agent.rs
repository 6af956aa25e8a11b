//! What a submitter or a board sends cannot reach outside its job on the lab host, leave a
//! trace of a file it should not see, hang a board or the agent's drain, put a secret into
//! the stored log, or lose a result: real coordinator and agent processes over mutual TLS,
//! a real Linux board under QEMU for the echoed password (issue 17, the agent's part).

use crate::common;

use common::*;
use labwire_proto::v1;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A serial board whose power commands do nothing and whose console nobody serves: its jobs
/// get as far as their artifacts, which the agent fetches (and checks) first.
fn paper_board(name: &str, tag: &str) -> String {
    format!(
        "  - name: {name}\n    device_type: qemu-x86_64\n    tags: [{tag}]\n    driver:\n      type: serial\n      console: {{tcp: {{address: '127.0.0.1:9'}}}}\n      power_on_command: ['true']\n      power_off_command: ['true']\n"
    )
}

/// Writes `lab`'s agent config with `extra` top-level keys and `devices`.
fn agent_yaml(rig: &Rig, lab: &str, extra: &str, devices: &str) -> PathBuf {
    let b = rig.path(&format!("labs/{lab}"));
    let yaml = format!(
        "lab: {lab}\ncoordinator:\n  url: {}\n  ca: {b}/ca.pem\n  cert: {b}/agent.pem\n  key: {b}/agent.key\nstate_dir: {b}/state\n{extra}devices:\n{devices}",
        rig.url(),
        b = b.display()
    );
    let p = b.join("agent.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

fn serial_job(name: &str, tag: &str, artifacts: &[(&str, String)], timeout: u32) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        criteria: Some(v1::Criteria {
            driver: "serial".into(),
            tags: vec![tag.into()],
            ..Default::default()
        }),
        artifacts: artifacts
            .iter()
            .map(|(k, u)| {
                (
                    k.to_string(),
                    v1::Artifact {
                        url: u.clone(),
                        sha256: "0".repeat(64),
                    },
                )
            })
            .collect(),
        timeout_seconds: timeout,
        ..Default::default()
    }
}

fn error_msg(n: &v1::Node) -> String {
    data(n)
        .get("error_msg")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

fn error_code(n: &v1::Node) -> String {
    data(n)
        .get("error_code")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// An HTTP server on loopback that answers every request with `body`.
async fn http_server(body: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body).await;
            });
        }
    });
    addr
}

/// Submits a job with a hostile artifact role. The coordinator may refuse the role at
/// submit (naming it); if it lets it through, the agent must refuse it: the job ends
/// `invalid_job` naming the role, and nothing is written outside the job's folder.
async fn hostile_role(role: &str) {
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 2s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    let addr = http_server(b"the submitter's bytes").await;
    agent_yaml(&rig, "lab-a", "", &paper_board("board", "paper"));
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let before = files_under(rig.dir.path());
    let url = format!("http://{addr}/vmlinuz");
    let mut spec = serial_job("role", "paper", &[(role, url)], 60);
    // No checksum: what arrives is what the role would have written.
    spec.artifacts.values_mut().for_each(|a| a.sha256.clear());
    let submitted = c
        .nodes
        .submit_job(v1::SubmitJobRequest {
            spec: Some(spec),
            parent: 0,
            submitter: "e2e".into(),
        })
        .await;
    match submitted {
        Err(s) => assert!(s.message().contains(role), "{s:?}"),
        Ok(r) => {
            let id = r.into_inner().node.unwrap().id;
            let n = wait_node(&mut c, id, Duration::from_secs(60), is_done).await;
            assert_eq!(n.result, v1::NodeResult::Incomplete as i32, "{n:?}");
            assert_eq!(error_code(&n), "invalid_job", "{n:?}");
            assert!(
                error_msg(&n).contains(&format!("artifact role `{role}`")),
                "{n:?}"
            );
        }
    }
    // Nothing new outside the agent's job folders and the processes' own files.
    let jobs = rig.path("labs/lab-a/state/jobs");
    let state = rig.path("labs/lab-a/state");
    let new: Vec<PathBuf> = files_under(rig.dir.path())
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| !p.starts_with(&jobs))
        .filter(|p| !(p.starts_with(&state) && p.to_string_lossy().contains("outbox.db")))
        .filter(|p| p.extension().is_none_or(|e| e != "log"))
        .filter(|p| !p.starts_with(rig.path("coordinator")))
        .collect();
    assert!(new.is_empty(), "written outside the job folder: {new:?}");
    for f in files_under(&jobs) {
        assert!(
            !std::fs::read(&f)
                .unwrap()
                .windows(21)
                .any(|w| w == b"the submitter's bytes"),
            "{f:?} holds the artifact"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_role_with_dot_dots_writes_nothing_outside_the_job_folder() {
    hostile_role("../../pwned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_artifact_role_writes_nothing_outside_the_job_folder() {
    let dir = std::env::temp_dir().join(format!("labwire-abs-role-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let role = format!("{}/pwned", dir.display());
    hostile_role(&role).await;
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(left.is_empty(), "the absolute role wrote {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_etc_shadow_is_refused_with_no_hash_in_error_msg_or_log() {
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 2s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    // file:// is off by default: no artifacts.file_dirs.
    steps.at("file:// is off by default");
    agent_yaml(&rig, "lab-a", "", &paper_board("board", "paper"));
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let spec = serial_job(
        "shadow",
        "paper",
        &[("kernel", "file:///etc/shadow".into())],
        60,
    );
    let id = submit_spec(&mut c, spec).await;
    let n = wait_node(&mut c, id, Duration::from_secs(60), is_done).await;
    assert_eq!(error_code(&n), "invalid_job", "{n:?}");
    let msg = error_msg(&n);
    assert!(
        msg.contains("file:// artifacts are not allowed on this lab"),
        "{msg}"
    );
    let log = read_log(&mut c, id).await;
    let hex = regex::Regex::new("[0-9a-f]{64}").unwrap();
    let agent_log = std::fs::read_to_string(rig.path("agent-lab-a.log")).unwrap();
    for (what, text) in [
        ("error_msg", &msg),
        ("job log", &log),
        ("agent log", &agent_log),
    ] {
        let hashes: Vec<&str> = hex
            .find_iter(text)
            .map(|m| m.as_str())
            .filter(|h| *h != "0".repeat(64))
            .collect();
        assert!(hashes.is_empty(), "{what} holds a hash: {hashes:?}\n{text}");
        assert!(
            !text.contains("root:"),
            "{what} holds /etc/shadow's content"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_artifact_is_refused_at_once_and_the_drain_finishes() {
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 2s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    let allowed = rig.path("artifacts");
    std::fs::create_dir_all(&allowed).unwrap();
    let fifo = allowed.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let extra = format!(
        "limits: {{drain_timeout: 3s}}\nartifacts: {{file_dirs: ['{}']}}\n",
        allowed.display()
    );
    agent_yaml(&rig, "lab-a", &extra, &paper_board("board", "paper"));
    let mut agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let spec = serial_job(
        "fifo",
        "paper",
        &[("kernel", format!("file://{}", fifo.display()))],
        3600,
    );
    let started = Instant::now();
    let id = submit_spec(&mut c, spec).await;
    let n = wait_node(&mut c, id, Duration::from_secs(30), is_done).await;
    assert_eq!(error_code(&n), "invalid_job", "{n:?}");
    assert!(
        error_msg(&n).contains("is a FIFO, not a regular file"),
        "{n:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The board is free again, and the agent stops when asked.
    steps.at("The board is free again, and the agent stops when asked");
    let st = agent.terminate(Duration::from_secs(30));
    assert!(
        st.is_some_and(|s| s.success()),
        "the agent did not drain: {st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_hangs_does_not_hold_up_the_drain() {
    let mut steps = Steps::new();
    // An HTTP server that accepts and never answers.
    steps.at("An HTTP server that accepts and never answers");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 2s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    agent_yaml(
        &rig,
        "lab-a",
        "limits: {drain_timeout: 2s}\n",
        &paper_board("board", "paper"),
    );
    let mut agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let spec = serial_job(
        "hang",
        "paper",
        &[("kernel", format!("http://{addr}/vmlinuz"))],
        3600,
    );
    let id = submit_spec(&mut c, spec).await;
    let log = rig.path("agent-lab-a.log");
    wait_for(Duration::from_secs(30), "the job to start", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("job starting"))
    });
    let stopping = Instant::now();
    let st = agent.terminate(Duration::from_secs(40));
    assert!(
        st.is_some_and(|s| s.success()),
        "the agent did not drain: {st:?}"
    );
    assert!(stopping.elapsed() < Duration::from_secs(30));
    let n = wait_node(&mut c, id, Duration::from_secs(30), is_done).await;
    assert_eq!(error_code(&n), "cancelled", "{n:?}");
    assert!(error_msg(&n).contains("cancelled while fetching"), "{n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_result_ends_the_job_without_a_rerun() {
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 4s, heartbeat: 1s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    // A test named with a non-breaking space only: the parser keeps it, the coordinator of
    // issue 17 refused the whole report for it.
    steps.at("A test named with a non-breaking space only");
    let cmd: &[&str] = &[
        "printf",
        "KTAP version 1\\n1..2\\nok 1 first\\nok 2 \\302\\240\\n",
    ];
    rig.agent_config("lab-a", &[("host", cmd, &["odd"])], "");
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let id = submit(&mut c, "odd-name", &["odd"], &[]).await;
    let n = wait_node(&mut c, id, Duration::from_secs(60), is_done).await;
    // Either the coordinator stored the result (normalised), or it refused it and the agent
    // ended the job invalid_result; never a lease expiry, never a second run.
    steps.at("Either the coordinator stored the result (normalised), or it refused it and the agent ended the j...");
    assert_eq!(n.retry_counter, 0, "{n:?}");
    let code = error_code(&n);
    assert_ne!(code, "lease_expired", "{n:?}");
    if code == "invalid_result" {
        assert_eq!(n.result, v1::NodeResult::Incomplete as i32);
        assert!(
            error_msg(&n).starts_with("the coordinator refused the job's result: "),
            "{n:?}"
        );
        let log = read_log(&mut c, id).await;
        assert!(log.contains("ok 1 first"), "the log is kept: {log}");
    }
    let agent_log = std::fs::read_to_string(rig.path("agent-lab-a.log")).unwrap();
    assert_eq!(
        agent_log.matches("job starting").count(),
        1,
        "the job ran more than once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_job_folders_are_removed_at_start_and_the_state_is_private() {
    let mut steps = Steps::new();
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    let cmd: &[&str] = &["echo", "hello"];
    rig.agent_config(
        "lab-a",
        &[("host", cmd, &["keep"])],
        "state: {keep_jobs: 1d}\n",
    );
    let jobs = rig.path("labs/lab-a/state/jobs");
    for name in ["90-1", "91-1"] {
        std::fs::create_dir_all(jobs.join(name)).unwrap();
        std::fs::write(jobs.join(name).join("console.log"), b"old").unwrap();
    }
    let two_days = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    for p in [jobs.join("90-1/console.log"), jobs.join("90-1")] {
        std::fs::File::open(&p)
            .unwrap()
            .set_modified(two_days)
            .unwrap();
    }
    // Run by hand with a permissive umask.
    steps.at("Run by hand with a permissive umask");
    let log = std::fs::File::create(rig.path("agent-lab-a.log")).unwrap();
    let child = Command::new("sh")
        .args(["-c", "umask 000; exec \"$0\" run --config \"$1\""])
        .arg(AGENT)
        .arg(rig.path("labs/lab-a/agent.yaml"))
        .env("LABWIRE_LOG", "info,labwire_agent=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _agent = Proc {
        child,
        name: "agent lab-a".into(),
    };
    let mut c = rig.client().await;
    let id = submit(&mut c, "private", &["keep"], &[]).await;
    let n = wait_node(&mut c, id, Duration::from_secs(60), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    assert!(
        !jobs.join("90-1").exists(),
        "the two-day-old folder is gone"
    );
    assert!(jobs.join("91-1").exists(), "a recent folder stays");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    let state = rig.path("labs/lab-a/state");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&jobs), 0o700);
    assert_eq!(mode(&state.join("outbox.db")), 0o600);
    let job_dir = std::fs::read_dir(&jobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.ends_with("91-1"))
        .unwrap();
    assert_eq!(mode(&job_dir), 0o700);
    assert_eq!(mode(&job_dir.join("console.log")), 0o600);
}

#[test]
fn check_config_refuses_a_job_value_that_would_become_a_script() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("[sh, -ec, '{params.x}']", "command[2] `{params.x}`"),
        ("[env, sh, -c, '{params.x}']", "command[3] `{params.x}`"),
        ("[bash, -xc, '{params.x}']", "command[2] `{params.x}`"),
        ("[python3, -c, '{params.x}']", "command[2] `{params.x}`"),
        (
            "[sudo, -u, lab, sh, -c, '{params.x}']",
            "command[5] `{params.x}`",
        ),
        (
            "[perl, -ne, 'print', '{params.x}']",
            "command[3] `{params.x}`",
        ),
    ];
    for (cmd, want) in cases {
        let cfg = dir.path().join("agent.yaml");
        std::fs::write(
            &cfg,
            format!(
                "lab: lab-a\ncoordinator: {{url: 'https://127.0.0.1:7443', ca: ca.pem, cert: a.pem, key: a.key}}\ndevices:\n  - name: runner\n    device_type: lab-host\n    driver: {{type: shell, command: {cmd}}}\n"
            ),
        )
        .unwrap();
        let out = Command::new(AGENT)
            .args(["check-config", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} passed check-config");
        assert!(
            err.contains(&format!("devices[0] (runner).driver.{want}")),
            "{cmd}: {err}"
        );
    }
}

/// Builds (or reuses) the QEMU test board of tests/board/.
fn board_dir() -> PathBuf {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_the_password_prompt_are_masked_in_a_real_boards_log() {
    let mut steps = Steps::new();
    let board = board_dir();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 2s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    let run = rig.path("run-board");
    std::fs::create_dir_all(&run).unwrap();
    // The board's password is `labwire` (7 characters: masked where the agent types it, so
    // in its echo when busybox `login` echoes it; in our runs under QEMU it did not, the
    // echo being a race; the unit tests of the masker and the job log show the echo case);
    // the PDU secret is long enough to be masked wherever it appears.
    steps.at("The board's password is `labwire` (7 characters");
    let device = format!(
        r#"  - name: qemu
    device_type: qemu-x86_64
    tags: [pw]
    settings: {{board: "{board}", pdu_password: "pdu-Secret-0042"}}
    secret_settings: [pdu_password]
    driver:
      type: serial
      console: {{tty: {{path: "{run}/console"}}}}
      pre_power_command: ["true", "{{device.pdu_password}}"]
      power_on_command: ["{repo}/tests/board/run-qemu.sh", --kernel, "{{artifacts.kernel}}", --initrd, "{{artifacts.ramdisk}}", "{{device.board}}"]
      power_off_command: ["{repo}/tests/board/stop-qemu.sh", "{{device.board}}"]
      command_env: {{LABWIRE_BOARD_RUNDIR: "{run}"}}
      boot: {{timeout: 90s}}
      login: {{username: root, password: labwire, shell_prompt: 'root@labwire-board:~# ', timeout: 40s}}
"#,
        board = board.display(),
        run = run.display(),
        repo = repo.display(),
    );
    let extra = format!(
        "limits: {{drain_timeout: 20s}}\nartifacts: {{file_dirs: [\"{}\"]}}\n",
        board.display()
    );
    agent_yaml(&rig, "lab-a", &extra, &device);
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let file = |f: &str| format!("file://{}", board.join(f).display());
    let mut spec = serial_job(
        "password",
        "pw",
        &[
            ("kernel", file("vmlinuz")),
            ("ramdisk", file("initramfs.cpio.gz")),
        ],
        240,
    );
    spec.artifacts.values_mut().for_each(|a| a.sha256.clear());
    spec.criteria.as_mut().unwrap().arch = "x86_64".into();
    spec.commands = vec!["echo the pdu says pdu-Secret-0042".into()];
    let id = submit_spec(&mut c, spec).await;
    let n = wait_node(&mut c, id, Duration::from_secs(240), is_done).await;
    let log = read_log(&mut c, id).await;
    assert_eq!(
        n.result,
        v1::NodeResult::Pass as i32,
        "{:?}\n{log}",
        data(&n)
    );
    let job_dir = rig.path(&format!("labs/lab-a/state/jobs/{id}-1"));
    let kept = std::fs::read_to_string(job_dir.join("console.log")).unwrap();
    for (what, text) in [("stored log", &log), ("console.log", &kept)] {
        // Whatever the board echoed after the password prompt is not the password.
        let after = text
            .split("Password:")
            .nth(1)
            .unwrap_or_else(|| panic!("{what} has no password prompt: {text}"));
        let line = after.lines().next().unwrap_or("");
        assert!(
            !line.contains("labwire"),
            "{what}: the password is in `{line}`"
        );
        assert!(
            !text.contains("pdu-Secret-0042"),
            "{what} holds the PDU secret"
        );
        assert!(text.contains("the pdu says [MASKED]"), "{what}: {text}");
        assert!(
            text.contains("pre-power: [\"true\", \"[MASKED]\"]"),
            "{what}: {text}"
        );
    }
}
