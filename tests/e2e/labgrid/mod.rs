//! End-to-end tests of the Labgrid driver against a real Labgrid (version 26, in the venv that
//! scripts/setup.d/30-labgrid.sh installs at ~/.cache/labwire/labgrid-venv): a
//! `labgrid-coordinator` on 127.0.0.1 (its own port per test), a `labgrid-exporter` exporting
//! a scripted board's serial port (a pty, published through ser2net as an RFC 2217 port) and
//! its power switch (a `NetworkPowerPort` of model `simplerest`, served by the board script),
//! one place matching them, and the agent running jobs on that place. `holds`: places held
//! by others, an agent killed or stopped mid-job. `edges`: a raw-TCP serial port, a Labgrid
//! coordinator restarted and an exporter killed mid-job, the log while a job runs.

mod edges;
mod holds;

use crate::common;

use common::*;
use labwire_proto::v1;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Labgrid user and host the agent acquires places as (set in its config).
const AGENT_ID: &str = "labwire-test/labwire-agent-test";
/// Someone else in the lab.
const OTHER_USER: &str = "alice";

fn venv() -> PathBuf {
    let dir = std::env::var("LABWIRE_LABGRID_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/labwire/labgrid-venv")
        });
    for tool in ["labgrid-coordinator", "labgrid-exporter", "labgrid-client"] {
        assert!(
            dir.join("bin").join(tool).exists(),
            "{} is missing: run scripts/setup.d/30-labgrid.sh (it installs Labgrid 26 into {})",
            dir.join("bin").join(tool).display(),
            dir.display()
        );
    }
    assert!(
        Path::new("/usr/sbin/ser2net").exists() || Path::new("/usr/bin/ser2net").exists(),
        "ser2net is missing (Labgrid's exporter needs it): run scripts/setup.d/30-labgrid.sh"
    );
    dir
}

/// A Labgrid installation with one place `board-1` on a scripted board. Its processes stop
/// when it is dropped (fields drop in order: exporter, board, coordinator).
struct Labgrid {
    venv: PathBuf,
    address: String,
    run: PathBuf,
    /// The coordinator's folder (its places.yaml) and the exporter's config.
    home: PathBuf,
    /// The QEMU board's folder, for the QEMU variant.
    qemu: Option<PathBuf>,
    exporter: Proc,
    /// Our own ser2net in raw TCP mode, for a `protocol: raw` NetworkSerialPort.
    _ser2net: Option<Proc>,
    _board: Proc,
    coordinator: Proc,
}

impl Drop for Labgrid {
    fn drop(&mut self) {
        // The exporter stops its ser2net processes on SIGTERM; whatever is left of its
        // process group goes with SIGKILL.
        let _ = self.exporter.terminate(Duration::from_secs(5));
        let _ = nix::sys::signal::killpg(self.exporter.pid(), nix::sys::signal::Signal::SIGKILL);
        // The board script is killed without a chance to power QEMU off: do it here.
        if let Some(q) = &self.qemu {
            let _ = Command::new(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/board/stop-qemu.sh"),
            )
            .arg(q)
            .env("LABWIRE_BOARD_RUNDIR", self.run.join("qemu"))
            .status();
        }
    }
}

fn lg_client(venv: &Path, address: &str, user: &str, args: &[&str]) -> std::process::Output {
    Command::new(venv.join("bin/labgrid-client"))
        .args(["-x", address])
        .args(args)
        .env("LG_USERNAME", user)
        .env("LG_HOSTNAME", "labwire-test")
        .stdin(Stdio::null())
        .output()
        .expect("run labgrid-client")
}

fn ser2net_bin() -> &'static str {
    if Path::new("/usr/sbin/ser2net").exists() {
        "/usr/sbin/ser2net"
    } else {
        "/usr/bin/ser2net"
    }
}

fn start_coordinator(rig: &Rig, venv: &Path, address: &str, home: &Path) -> Proc {
    spawn(
        rig,
        "labgrid-coordinator",
        Command::new(venv.join("bin/labgrid-coordinator"))
            .args(["-l", address])
            .current_dir(home),
    )
}

/// The exporter, in its own process group, so that its ser2net children go with it.
fn start_exporter(rig: &Rig, venv: &Path, address: &str, home: &Path) -> Proc {
    spawn(
        rig,
        "labgrid-exporter",
        Command::new(venv.join("bin/labgrid-exporter"))
            .args(["-c", address, "--hostname", "127.0.0.1", "-n", "exp"])
            .arg(home.join("exporter.yaml"))
            .current_dir(home)
            .process_group(0),
    )
}

fn spawn(rig: &Rig, name: &str, cmd: &mut Command) -> Proc {
    let log = std::fs::File::create(rig.path(&format!("{name}.log"))).expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    Proc {
        child,
        name: name.into(),
    }
}

impl Labgrid {
    /// A place on the scripted board.
    fn start(rig: &Rig) -> Labgrid {
        Labgrid::start_board(rig, None)
    }

    /// A place on the scripted board, or on the QEMU board built in `qemu`.
    fn start_board(rig: &Rig, qemu: Option<&Path>) -> Labgrid {
        Labgrid::start_with(rig, qemu, false)
    }

    /// A place on the scripted board whose serial port is a `NetworkSerialPort` with
    /// `protocol: raw`: a plain TCP port (our own ser2net in raw mode), not RFC 2217.
    fn start_raw(rig: &Rig) -> Labgrid {
        Labgrid::start_with(rig, None, true)
    }

    fn start_with(rig: &Rig, qemu: Option<&Path>, raw: bool) -> Labgrid {
        let venv = venv();
        let bin = venv.join("bin");
        let address = format!("127.0.0.1:{}", free_port());
        let home = rig.path("labgrid");
        let run = rig.path("board");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let coordinator = start_coordinator(rig, &venv, &address, &home);
        let mut board_cmd = Command::new(bin.join("python3"));
        board_cmd
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/labgrid/board.py"))
            .arg(&run);
        if let Some(q) = qemu {
            board_cmd.arg("--qemu").arg(q);
        }
        let board = spawn(rig, "board", &mut board_cmd);
        wait_for(Duration::from_secs(20), "the board's pty", || {
            run.join("power.port").exists()
        });
        let tty = std::fs::read_to_string(run.join("tty")).unwrap();
        let power_port = std::fs::read_to_string(run.join("power.port")).unwrap();
        let power = format!(
            "  NetworkPowerPort:\n    model: simplerest\n    host: 'http://127.0.0.1:{power_port}/power/{{index}}/{{value}}'\n    index: 0\n"
        );
        let mut ser2net = None;
        let serial = if raw {
            let port = free_port();
            ser2net = Some(spawn(
                rig,
                "ser2net-raw",
                Command::new(ser2net_bin()).args([
                    "-d",
                    "-n",
                    "-Y",
                    &format!("connection: &raw#  accepter: tcp,127.0.0.1,{port}"),
                    "-Y",
                    &format!("  connector: serialdev(nouucplock=true),{tty},115200n81,local"),
                ]),
            ));
            format!(
                "  NetworkSerialPort:\n    host: 127.0.0.1\n    port: {port}\n    protocol: raw\n    speed: 115200\n"
            )
        } else {
            format!("  RawSerialPort:\n    port: {tty}\n    speed: 115200\n")
        };
        std::fs::write(
            home.join("exporter.yaml"),
            format!("board-1:\n{serial}{power}"),
        )
        .unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        while !lg_client(&venv, &address, OTHER_USER, &["places"])
            .status
            .success()
        {
            assert!(Instant::now() < end, "labgrid-coordinator did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        let exporter = start_exporter(rig, &venv, &address, &home);
        let lg = Labgrid {
            venv,
            address,
            run,
            home,
            qemu: qemu.map(Path::to_path_buf),
            exporter,
            _ser2net: ser2net,
            _board: board,
            coordinator,
        };
        lg.client_ok(OTHER_USER, &["-p", "board-1", "create"]);
        lg.client_ok(OTHER_USER, &["-p", "board-1", "add-match", "exp/board-1/*"]);
        lg.client_ok(OTHER_USER, &["-p", "board-1", "set-tags", "board=scripted"]);
        // The exporter has published both resources (and started ser2net).
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let out = lg.client(OTHER_USER, &["-p", "board-1", "show"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("/NetworkSerialPort/") && text.contains("/NetworkPowerPort/") {
                break;
            }
            assert!(
                Instant::now() < end,
                "the exporter did not publish the board: {text}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        lg
    }

    /// Kills the exporter (and its ser2net) with SIGKILL, as a crash would.
    fn kill_exporter(&mut self) {
        let _ = nix::sys::signal::killpg(self.exporter.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.exporter.child.wait();
    }

    /// Starts the exporter again (as systemd restarts it) and waits until the place's
    /// resources are back.
    fn restart_exporter(&mut self, rig: &Rig) {
        self.kill_exporter();
        self.exporter = start_exporter(rig, &self.venv, &self.address, &self.home);
        self.wait_resources();
    }

    /// Kills the Labgrid coordinator with SIGKILL and starts it again on the same address
    /// and folder: its places come back, every hold is gone.
    fn restart_coordinator(&mut self, rig: &Rig) {
        // Labgrid's coordinator writes its places to places.yaml every 15 s: a kill before
        // that loses them (as it would in a lab). The test kills it after they are written.
        let listed = self.client_ok(OTHER_USER, &["places"]);
        let names: Vec<&str> = listed.split_whitespace().collect();
        let end = Instant::now() + Duration::from_secs(40);
        loop {
            let saved = std::fs::read_to_string(self.home.join("places.yaml")).unwrap_or_default();
            if names.iter().all(|n| saved.contains(n)) {
                break;
            }
            assert!(
                Instant::now() < end,
                "labgrid-coordinator did not save {names:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        self.coordinator.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.coordinator.child.wait();
        self.coordinator = start_coordinator(rig, &self.venv, &self.address, &self.home);
        let end = Instant::now() + Duration::from_secs(60);
        while !self.client(OTHER_USER, &["places"]).status.success() {
            assert!(Instant::now() < end, "labgrid-coordinator did not restart");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the exporter has published the place's serial port and power switch.
    fn wait_resources(&self) {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.client(OTHER_USER, &["-v", "resources"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("/NetworkSerialPort") && text.contains("/NetworkPowerPort") {
                return;
            }
            assert!(
                Instant::now() < end,
                "the exporter did not publish the board: {text}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Runs labgrid-client as `user` on host `labwire-test`.
    fn client(&self, user: &str, args: &[&str]) -> std::process::Output {
        lg_client(&self.venv, &self.address, user, args)
    }

    fn client_ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.client(user, args);
        assert!(
            out.status.success(),
            "labgrid-client {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Who holds the place, as Labgrid says (`host/user`).
    /// A Labgrid coordinator that has just restarted may list no place for a moment: asked
    /// again for up to 20 s.
    fn acquired(&self) -> Option<String> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.client_ok(OTHER_USER, &["-v", "places"]);
            if let Some(line) = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("acquired: "))
            {
                let line = line.trim().to_string();
                return (line != "None").then_some(line);
            }
            assert!(Instant::now() < end, "no acquired: line in\n{text}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The board's power switches so far (`on`, `off`).
    fn power_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.run.join("power.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .collect()
    }

    /// Whether the QEMU board's QEMU runs.
    fn qemu_running(&self) -> bool {
        let Ok(pid) = std::fs::read_to_string(self.run.join("qemu/qemu.pid")) else {
            return false;
        };
        std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
            .map(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
            .unwrap_or(false)
    }

    /// An agent config with this place (by tag match) and no other device.
    fn agent_config(&self, rig: &Rig, lab: &str, poll: &str, acquire_timeout: &str) {
        let place = "device_type: qemu-x86_64
        tags: [lg]
        boot: {timeout: 30s}
        login: {username: root, password: labwire, shell_prompt: 'root@labwire-board:~# ', timeout: 20s}";
        self.agent_config_with(rig, lab, poll, acquire_timeout, place);
    }

    fn agent_config_with(
        &self,
        rig: &Rig,
        lab: &str,
        poll: &str,
        acquire_timeout: &str,
        place: &str,
    ) {
        let bundle = rig.path(&format!("labs/{lab}"));
        let (host, user) = AGENT_ID.split_once('/').unwrap();
        let yaml = format!(
            r#"lab: {lab}
coordinator:
  url: {url}
  ca: {b}/ca.pem
  cert: {b}/agent.pem
  key: {b}/agent.key
state_dir: {b}/state
limits: {{drain_timeout: 3s}}
labgrid:
  - name: test
    coordinator: "{address}"
    client: ["{client}"]
    user: {user}
    host: {host}
    poll_interval: {poll}
    acquire_timeout: {acquire_timeout}
    places:
      - match_tags: {{board: scripted}}
        {place}
"#,
            url = rig.url(),
            b = bundle.display(),
            address = self.address,
            client = self.venv.join("bin/labgrid-client").display(),
        );
        std::fs::write(bundle.join("agent.yaml"), yaml).unwrap();
    }
}

fn job(name: &str, commands: &[&str], params: &[(&str, &str)], timeout: u32) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        criteria: Some(v1::Criteria {
            driver: "labgrid".into(),
            tags: vec!["lg".into()],
            ..Default::default()
        }),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        commands: commands.iter().map(|s| s.to_string()).collect(),
        timeout_seconds: timeout,
        ..Default::default()
    }
}

/// The names of the devices a lab advertises now.
async fn advertised(c: &mut labwire::client::Clients, lab: &str) -> Vec<String> {
    let labs = c
        .admin
        .list_labs(v1::ListLabsRequest {})
        .await
        .expect("list labs")
        .into_inner()
        .labs;
    labs.into_iter()
        .find(|l| l.name == lab)
        .map(|l| l.devices.into_iter().map(|d| d.name).collect())
        .unwrap_or_default()
}

async fn wait_advertised(c: &mut labwire::client::Clients, lab: &str, want: &[&str]) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let got = advertised(c, lab).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "lab {lab} advertises {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn children(c: &mut labwire::client::Clients, parent: i64) -> Vec<v1::Node> {
    c.nodes
        .query_nodes(v1::QueryNodesRequest {
            parent,
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .nodes
}

/// The tests under a node as `path -> result`, depth first.
async fn tree(c: &mut labwire::client::Clients, root: i64) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    let mut stack = vec![(root, String::new())];
    while let Some((id, prefix)) = stack.pop() {
        for n in children(c, id).await {
            let path = if prefix.is_empty() {
                n.name.clone()
            } else {
                format!("{prefix}.{}", n.name)
            };
            out.push((path.clone(), n.result));
            stack.push((n.id, path));
        }
    }
    out.sort();
    out
}

fn has(tree: &[(String, i32)], path: &str, result: v1::NodeResult) -> bool {
    tree.iter().any(|(p, r)| p == path && *r == result as i32)
}

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
