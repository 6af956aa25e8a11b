//! `labwire demo`: the whole pipeline on one machine, on the embedded defaults. It creates a
//! temporary CA and data folder, starts a coordinator (SQLite) and one agent over mutual TLS
//! on loopback, submits a job, shows its progress, prints the resulting node tree and where
//! the log is, then shuts both down. It exits 0 only if the job really ran and passed.

use crate::commands::{fetch_tree, render_tree, wait_done};
use crate::output::say;
use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use labwire_agent::config::AgentConfig;
use labwire_coordinator::config::CoordinatorConfig;
use labwire_proto::v1;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Options of `labwire demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the demo's folder (CA, database, agent state, logs) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Use this folder instead of a temporary one (implies --keep).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The script the demo's shell device runs: a greeting (a job parameter, passed as a
/// positional argument so the shell never parses it), facts about the host, and a small
/// KTAP report.
const DEMO_SCRIPT: &str = r#"echo "greeting: $1"
echo "host: $(uname -sr)"
echo "KTAP version 1"
echo "1..1"
echo "    KTAP version 1"
echo "    # Subtest: demo"
echo "    1..3"
echo "    ok 1 host_has_shell"
[ -d /proc ] && echo "    ok 2 proc_is_mounted" || echo "    not ok 2 proc_is_mounted"
echo "    ok 3 needs_hardware # SKIP no board on this host"
echo "ok 1 demo"
"#;

fn agent_yaml(lab: &str, url: &str, bundle: &Path, state: &Path, script: &Path) -> String {
    format!(
        "lab: {lab}\n\
         coordinator:\n  url: {url}\n  ca: {b}/ca.pem\n  cert: {b}/agent.pem\n  key: {b}/agent.key\n\
         state_dir: {state}\n\
         limits: {{poll_wait: 10s, drain_timeout: 30s}}\n\
         devices:\n\
         \x20 - name: demo-host\n\
         \x20   device_type: lab-host\n\
         \x20   tags: [demo]\n\
         \x20   driver:\n\
         \x20     type: shell\n\
         \x20     command: [sh, '{script}', '{{params.greeting}}']\n",
        b = bundle.display(),
        state = state.display(),
        script = script.display(),
    )
}

/// The QEMU board of tests/board/ as a serial device, when QEMU is installed and the board
/// can be built (the Debian kernel and busybox come from Debian's packages).
fn board_device(root: &Path) -> Option<(String, PathBuf)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scripts = repo.join("tests/board");
    let qemu = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
        .unwrap_or(false);
    if !qemu {
        say!(
            "==> qemu-system-x86_64 is not installed, so the demo runs without a board.\n    \
             To see a real Linux kernel boot on a serial console, install it and run again:\n    \
             sudo apt-get install -y --no-install-recommends qemu-system-x86 busybox-static cpio"
        );
        return None;
    }
    if !scripts.join("build.sh").is_file() {
        say!(
            "==> the board scripts ({}) are not there; the demo runs without a board",
            scripts.display()
        );
        return None;
    }
    let board = std::env::var_os("LABWIRE_BOARD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/labwire/board")
        });
    say!(
        "==> preparing the QEMU board (Debian kernel + busybox initramfs) in {}",
        board.display()
    );
    let ok = std::process::Command::new(scripts.join("build.sh"))
        .arg(&board)
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        say!("==> building the board failed (see above); the demo runs without a board");
        return None;
    }
    let run = root.join("board-run");
    let yaml = format!(
        "  - name: demo-qemu\n\
         \x20   device_type: qemu-x86_64\n\
         \x20   tags: [demo]\n\
         \x20   settings: {{board: '{board}'}}\n\
         \x20   driver:\n\
         \x20     type: serial\n\
         \x20     console: {{tty: {{path: '{run}/console'}}}}\n\
         \x20     power_on_command: ['{s}/run-qemu.sh', --kernel, '{{artifacts.kernel}}', --initrd, '{{artifacts.ramdisk}}', '{{device.board}}']\n\
         \x20     power_off_command: ['{s}/stop-qemu.sh', '{{device.board}}']\n\
         \x20     command_env: {{LABWIRE_BOARD_RUNDIR: '{run}'}}\n\
         \x20     boot: {{timeout: 120s}}\n\
         \x20     login: {{username: root, password: labwire, shell_prompt: 'root@labwire-board:~# ', timeout: 60s}}\n",
        board = board.display(),
        run = run.display(),
        s = scripts.display(),
    );
    Some((yaml, board))
}

/// Runs the demo.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let keep = args.keep || args.dir.is_some();
    let (root, _guard) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("labwire-demo-").tempdir()?;
            if keep {
                (t.keep(), None)
            } else {
                (t.path().to_path_buf(), Some(t))
            }
        }
    };
    let result = demo(&root).await;
    if keep {
        say!("demo folder kept: {}", root.display());
    }
    match result {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::FAILURE),
        Err(e) => Err(e),
    }
}

async fn demo(root: &Path) -> anyhow::Result<bool> {
    let step = |s: &str| {
        say!("==> {s}");
    };
    let cdir = root.join("coordinator");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let url = format!("https://127.0.0.1:{}", addr.port());
    let mut ccfg = CoordinatorConfig {
        data_dir: cdir.clone(),
        public_url: url.clone(),
        ..Default::default()
    };
    ccfg.leases.duration = Duration::from_secs(30);
    ccfg.leases.heartbeat = Duration::from_secs(5);

    step(&format!(
        "creating a CA and a coordinator in {}",
        cdir.display()
    ));
    let token =
        labwire_coordinator::cli::ca_init(&ccfg, &["localhost".into()], &["127.0.0.1".parse()?])?;
    let bundle = root.join("lab-bundle");
    labwire_coordinator::cli::ca_issue_agent(&ccfg, "demo-lab", &bundle)?;
    step("issued a client certificate for lab `demo-lab`");

    let stop_coord = CancellationToken::new();
    let coord = tokio::spawn(labwire_coordinator::server::serve(
        ccfg.clone(),
        listener,
        stop_coord.clone(),
    ));
    step(&format!("coordinator listening on {url} (gRPC over TLS)"));

    let agent_state = root.join("agent");
    let script = root.join("demo-test.sh");
    std::fs::write(&script, DEMO_SCRIPT)?;
    let mut yaml = agent_yaml("demo-lab", &url, &bundle, &agent_state, &script);
    let board = board_device(root);
    let uboot = crate::demo_uboot::prepare(root);
    let mut file_dirs = Vec::new();
    if let Some((dev, dir)) = &board {
        yaml.push_str(dev);
        file_dirs.push(format!("'{}'", dir.display()));
    }
    if let Some(u) = &uboot {
        yaml.push_str(&u.yaml);
        file_dirs.push(format!("'{}'", u.dir.display()));
    }
    if !file_dirs.is_empty() {
        // The board jobs' kernel and ramdisk are file:// URLs into the boards' folders.
        yaml.push_str(&format!(
            "artifacts: {{file_dirs: [{}]}}\n",
            file_dirs.join(", ")
        ));
    }
    std::fs::write(root.join("agent.yaml"), &yaml)?;
    let acfg = AgentConfig::parse(&yaml).context("the demo's agent config")?;
    let stop_agent = CancellationToken::new();
    let agent = tokio::spawn(labwire_agent::daemon::run(acfg, None, stop_agent.clone()));
    step(match (board.is_some(), uboot.is_some()) {
        (true, true) => {
            "agent started with three devices: `demo-host` (shell driver on this machine), `demo-qemu` (a QEMU board on a serial console) and `demo-uboot` (an arm64 board behind U-Boot, booting over TFTP)"
        }
        (true, false) => {
            "agent started with two devices: `demo-host` (shell driver on this machine) and `demo-qemu` (a QEMU board on a serial console)"
        }
        (false, true) => {
            "agent started with two devices: `demo-host` (shell driver on this machine) and `demo-uboot` (an arm64 board behind U-Boot, booting over TFTP)"
        }
        (false, false) => {
            "agent started with one device: `demo-host` (shell driver on this machine)"
        }
    });

    let ca = cdir.join("pki/ca.pem");
    let shell_job = v1::JobSpec {
        name: "demo-ktap".into(),
        criteria: Some(v1::Criteria {
            driver: "shell".into(),
            tags: vec!["demo".into()],
            ..Default::default()
        }),
        params: [(
            "greeting".to_string(),
            "hello from labwire; $(echo this is not run)".to_string(),
        )]
        .into(),
        timeout_seconds: 60,
        ..Default::default()
    };
    let mut outcome = submit_and_follow(&url, &ca, &token, &agent_state, shell_job).await;
    if let (Ok(true), Some((_, dir))) = (&outcome, &board) {
        let file = |f: &str| v1::Artifact {
            url: format!("file://{}", dir.join(f).display()),
            sha256: String::new(),
        };
        let board_job = v1::JobSpec {
            name: "demo-board-kunit".into(),
            criteria: Some(v1::Criteria {
                driver: "serial".into(),
                arch: "x86_64".into(),
                tags: vec!["demo".into()],
                ..Default::default()
            }),
            artifacts: [
                ("kernel".to_string(), file("vmlinuz")),
                ("ramdisk".to_string(), file("initramfs.cpio.gz")),
            ]
            .into(),
            commands: vec!["uname -a".into(), "labwire-ktap-pass".into()],
            timeout_seconds: 240,
            ..Default::default()
        };
        step(
            "now a real Linux kernel: power the QEMU board on, boot, log in, run KTAP tests, power off",
        );
        outcome = submit_and_follow(&url, &ca, &token, &agent_state, board_job).await;
    }
    if let (Ok(true), Some(u)) = (&outcome, &uboot) {
        step(
            "now a board farm's path: power the arm64 board on, interrupt U-Boot, fetch the kernel and ramdisk over TFTP from the job's staged folder, booti, log in, run KTAP tests, power off",
        );
        outcome = submit_and_follow(
            &url,
            &ca,
            &token,
            &agent_state,
            crate::demo_uboot::job(&u.dir),
        )
        .await;
    }

    step("shutting down the agent and the coordinator");
    stop_agent.cancel();
    let a = agent.await.context("the agent task panicked")?;
    stop_coord.cancel();
    let c = coord.await.context("the coordinator task panicked")?;
    a.context("the agent failed")?;
    c.context("the coordinator failed")?;
    outcome
}

async fn submit_and_follow(
    url: &str,
    ca: &Path,
    token: &str,
    agent_state: &Path,
    spec: v1::JobSpec,
) -> anyhow::Result<bool> {
    let ca = std::fs::read(ca)?;
    let mut c = crate::client::connect(url, &ca, token).await?;
    let node = c
        .nodes
        .submit_job(v1::SubmitJobRequest {
            spec: Some(spec),
            parent: 0,
            submitter: "labwire demo".into(),
        })
        .await?
        .into_inner()
        .node
        .context("no node returned")?;
    say!("==> submitted job {} `{}`", node.id, node.name);

    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] job {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let done = tokio::time::timeout(
        Duration::from_secs(300),
        wait_done(&mut c, node.id, |n| {
            let data = n
                .data
                .as_ref()
                .map(labwire_proto::convert::struct_to_map)
                .unwrap_or_default();
            let where_ = data
                .get("device")
                .and_then(|v| v.as_str())
                .map(|d| format!(" on {d}"))
                .unwrap_or_default();
            let status = if n.state == v1::NodeState::Done as i32 {
                format!("done: {}", crate::commands::result_name(n))
            } else if where_.is_empty() {
                "queued, waiting for an agent".to_string()
            } else {
                format!("running{where_}")
            };
            bar.set_message(format!("{}: {status}", n.id));
        }),
    )
    .await;
    bar.finish();
    let done = match done {
        Ok(d) => d?,
        Err(_) => bail!("the job did not finish within 300 s"),
    };
    let (root, kids) = fetch_tree(&mut c, done.id).await?;
    say!("\nnode tree:\n{}", render_tree(&root, &kids));
    let mut log = Vec::new();
    let mut s = c
        .nodes
        .get_log(v1::GetLogRequest {
            job: done.id,
            attempt: -1,
        })
        .await?
        .into_inner();
    while let Some(chunk) = s.message().await? {
        log.extend_from_slice(&chunk.data);
    }
    say!(
        "job log ({} bytes, stored by the coordinator; `labwire log {}` prints it):",
        log.len(),
        done.id
    );
    let text = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if lines.len() > 30 && (6..lines.len() - 22).contains(&i) {
            if i == 6 {
                say!("  | ... {} more lines ...", lines.len() - 28);
            }
            continue;
        }
        // Strip terminal control sequences a board may print (cursor queries, colours).
        let clean: String = line
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect();
        say!("  | {clean}");
    }
    let attempt = labwire_proto::convert::struct_to_map(&done.data.clone().unwrap_or_default())
        .get("attempt")
        .and_then(|v| v.as_i64())
        .unwrap_or(1);
    say!(
        "agent's copy: {}",
        agent_state
            .join("jobs")
            .join(format!("{}-{attempt}", done.id))
            .join("console.log")
            .display()
    );
    let passed = done.result == v1::NodeResult::Pass as i32;
    say!(
        "\nresult: {}",
        if passed {
            "PASS — the pipeline ran end to end"
        } else {
            "the job did not pass"
        }
    );
    Ok(passed)
}
