//! End-to-end tests of the Labgrid driver against a real Labgrid (version 26, in the venv that
//! scripts/setup.d/30-labgrid.sh installs at ~/.cache/labwire/labgrid-venv): a
//! `labgrid-coordinator` on 127.0.0.1 (its own port per test), a `labgrid-exporter` exporting
//! a scripted board's serial port (a pty, published through ser2net as an RFC 2217 port) and
//! its power switch (a `NetworkPowerPort` of model `simplerest`, served by the board script),
//! one place matching them, and the agent running jobs on that place. `jobs`: jobs on the
//! scripted and the QEMU board. `holds`: places held by others, an agent killed or stopped
//! mid-job. `edges`: a raw-TCP serial port with the figures, a Labgrid coordinator
//! restarted mid-job, the log while a job runs. `moves`: a second board on a second
//! exporter; the first one's exporter killed mid-job, the job moves. `reload`: SIGHUP and
//! the `labgrid:` section.

mod edges;
mod holds;
mod jobs;
mod moves;
mod reload;

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
fn start_exporter(rig: &Rig, venv: &Path, address: &str, home: &Path, name: &str) -> Proc {
    spawn(
        rig,
        &format!("labgrid-exporter-{name}"),
        Command::new(venv.join("bin/labgrid-exporter"))
            .args(["-c", address, "--hostname", "127.0.0.1", "-n", name])
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

/// Starts a board (scripted, or QEMU) in `run`; returns it, the raw-mode ser2net (`raw`)
/// and the exporter config lines of its serial port and power switch. `suffix` names its
/// logs apart.
fn start_board_proc(
    rig: &Rig,
    venv: &Path,
    run: &Path,
    qemu: Option<&Path>,
    raw: bool,
    suffix: &str,
) -> (Proc, Option<Proc>, String) {
    let mut board_cmd = Command::new(venv.join("bin/python3"));
    board_cmd
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/labgrid/board.py"))
        .arg(run);
    if let Some(q) = qemu {
        board_cmd.arg("--qemu").arg(q);
    }
    let board = spawn(rig, &format!("board{suffix}"), &mut board_cmd);
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
            &format!("ser2net-raw{suffix}"),
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
    (board, ser2net, format!("{serial}{power}"))
}

/// A second board, `board-2`, published by its own exporter `exp2` (see
/// [`Labgrid::add_board`]). Its processes stop when it is dropped.
struct Second {
    run: PathBuf,
    home: PathBuf,
    exporter: Proc,
    _board: Proc,
}

impl Second {
    /// Kills its exporter (and its ser2net) with SIGKILL, as a crash would.
    fn kill_exporter(&mut self) {
        let _ = nix::sys::signal::killpg(self.exporter.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.exporter.child.wait();
    }

    /// Starts its exporter again; `lg.wait_resources()` then waits for it.
    fn restart_exporter(&mut self, rig: &Rig, lg: &Labgrid) {
        self.kill_exporter();
        self.exporter = start_exporter(rig, &lg.venv, &lg.address, &self.home, "exp2");
    }

    /// The board's power switches so far.
    fn power_log(&self) -> Vec<String> {
        power_log(&self.run)
    }
}

impl Drop for Second {
    fn drop(&mut self) {
        let _ = self.exporter.terminate(Duration::from_secs(5));
        self.kill_exporter();
    }
}

/// The power switches (`on`, `off`) in a board's power.log.
fn power_log(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("power.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
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
        let address = format!("127.0.0.1:{}", free_port());
        let home = rig.path("labgrid");
        let run = rig.path("board");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let coordinator = start_coordinator(rig, &venv, &address, &home);
        let (board, ser2net, resources) = start_board_proc(rig, &venv, &run, qemu, raw, "");
        std::fs::write(home.join("exporter.yaml"), format!("board-1:\n{resources}")).unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        while !lg_client(&venv, &address, OTHER_USER, &["places"])
            .status
            .success()
        {
            assert!(Instant::now() < end, "labgrid-coordinator did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        let exporter = start_exporter(rig, &venv, &address, &home, "exp");
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
        self.exporter = start_exporter(rig, &self.venv, &self.address, &self.home, "exp");
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
            if text.contains("exp/board-1/NetworkSerialPort")
                && text.contains("exp/board-1/NetworkPowerPort")
            {
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
        power_log(&self.run)
    }

    /// A second place, `board-2` (tagged `board=scripted` like `board-1`), on a second
    /// scripted board published by a second exporter, `exp2`.
    fn add_board(&self, rig: &Rig) -> Second {
        let run = rig.path("board-2");
        let home = rig.path("labgrid-2");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let (board, _, resources) = start_board_proc(rig, &self.venv, &run, None, false, "-2");
        std::fs::write(home.join("exporter.yaml"), format!("board-2:\n{resources}")).unwrap();
        let exporter = start_exporter(rig, &self.venv, &self.address, &home, "exp2");
        let second = Second {
            run,
            home,
            exporter,
            _board: board,
        };
        self.client_ok(OTHER_USER, &["-p", "board-2", "create"]);
        self.client_ok(
            OTHER_USER,
            &["-p", "board-2", "add-match", "exp2/board-2/*"],
        );
        self.client_ok(OTHER_USER, &["-p", "board-2", "set-tags", "board=scripted"]);
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.client(OTHER_USER, &["-p", "board-2", "show"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("/NetworkSerialPort/") && text.contains("/NetworkPowerPort/") {
                return second;
            }
            assert!(Instant::now() < end, "exp2 did not publish board-2: {text}");
            std::thread::sleep(Duration::from_millis(300));
        }
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
