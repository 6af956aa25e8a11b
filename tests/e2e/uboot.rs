//! End-to-end test of the board-farm stack with the real programs: an arm64 board (QEMU
//! `virt`, software emulation) that starts Debian's U-Boot, fetches the job's kernel and
//! ramdisk over TFTP (QEMU's built-in TFTP server serving the agent's TFTP root) from the
//! folder the agent staged for the job, and boots them with `booti`; its serial port exported
//! by a real ser2net 4 (telnet, RFC 2217); its power switched by a real pdudaemon (its HTTP
//! listener and its `localcmdline` driver, which runs tests/uboot/board.sh). Everything is
//! set up by scripts/setup.d/35-boardfarm.sh.

use crate::common;

use common::*;
use labwire_proto::v1;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const SETUP: &str = "scripts/setup.d/35-boardfarm.sh";

pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The board's files (U-Boot, kernel, initramfs), built by tests/uboot/build.sh.
fn board_dir() -> PathBuf {
    for (tool, path) in [
        ("qemu-system-aarch64", "/usr/bin/qemu-system-aarch64"),
        ("pdudaemon", "/usr/sbin/pdudaemon"),
        ("ser2net", "/usr/sbin/ser2net"),
        ("socat", "/usr/bin/socat"),
    ] {
        let found = Path::new(path).exists()
            || Path::new(&path.replace("/usr/sbin/", "/usr/bin/")).exists();
        assert!(found, "{tool} is missing: run {SETUP}");
    }
    let dir = std::env::var("LABWIRE_UBOOT_BOARD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/labwire/uboot-board")
        });
    let st = Command::new(repo().join("tests/uboot/build.sh"))
        .arg(&dir)
        .status()
        .expect("run tests/uboot/build.sh");
    assert!(
        st.success(),
        "building the U-Boot board failed: run {SETUP}"
    );
    dir
}

/// The boards' processes that outlive a test by design (the serial cable's socat loop and
/// QEMU run in sessions of their own): stopped when the test ends, whatever happens.
pub(crate) struct Boards(pub(crate) Vec<PathBuf>);

impl Drop for Boards {
    fn drop(&mut self) {
        for run in &self.0 {
            let _ = Command::new(repo().join("tests/uboot/board.sh"))
                .arg("off")
                .arg(run)
                .status();
            if let Ok(pid) = std::fs::read_to_string(run.join("cable.pid"))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                // The loop leads its own process group (setsid): stop it and its socat.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// One board: its run folder, its serial cable, and a ser2net exporting it on `port`.
fn start_ser2net(rig: &Rig, n: u32, port: u16) -> Proc {
    let run = rig.path(&format!("run-{n}"));
    let conf = rig.path(&format!("ser2net-{n}.yaml"));
    std::fs::write(
        &conf,
        format!(
            "connection: &board{n}\n  accepter: telnet(rfc2217),tcp,127.0.0.1,{port}\n  connector: serialdev,{}/ttyBOARD,115200n81,local\n  options:\n    kickolduser: true\n",
            run.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(rig.path(&format!("ser2net-{n}.log"))).unwrap();
    let child = Command::new("ser2net")
        .args(["-n", "-d", "-c"])
        .arg(&conf)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start ser2net");
    wait_for(Duration::from_secs(10), "ser2net to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Proc {
        child,
        name: format!("ser2net {n}"),
    }
}

fn start_pdudaemon(rig: &Rig, port: u16) -> Proc {
    let board_sh = repo().join("tests/uboot/board.sh");
    let run = rig.path("run-%s");
    let tftp = rig.path("tftp");
    let conf = serde_json::json!({
        "daemon": {"hostname": "127.0.0.1", "port": port, "listener": "http", "logging_level": "DEBUG"},
        "pdus": {"lab-pdu": {
            "driver": "localcmdline",
            "cmd_on": format!("{} on {} {}", board_sh.display(), run.display(), tftp.display()),
            "cmd_off": format!("{} off {}", board_sh.display(), run.display()),
        }}
    });
    let path = rig.path("pdudaemon.conf");
    std::fs::write(&path, conf.to_string()).unwrap();
    let log = std::fs::File::create(rig.path("pdudaemon.log")).unwrap();
    let child = Command::new("pdudaemon")
        .arg("--conf")
        .arg(&path)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start pdudaemon");
    wait_for(Duration::from_secs(20), "pdudaemon to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Proc {
        child,
        name: "pdudaemon".into(),
    }
}

/// A U-Boot board device: console on ser2net's `console` port, power on pdudaemon's outlet
/// `n`; `extra` adds boot settings.
fn device(name: &str, tag: &str, n: u32, console: u16, pdu: u16, u_boot: &str) -> String {
    format!(
        r#"  - name: {name}
    device_type: qemu-arm64-uboot
    tags: [{tag}]
    driver:
      type: serial
      console: {{telnet: {{address: "127.0.0.1:{console}"}}}}
      power: {{pdudaemon: {{url: "http://127.0.0.1:{pdu}", hostname: lab-pdu, port: {n}}}}}
      boot:
        preset: u-boot
        u_boot: {{bootargs: "console=ttyAMA0,115200", {u_boot}}}
        timeout: 150s
      login: {{username: root, password: labwire, shell_prompt: 'root@labwire-board:~# ', timeout: 90s}}
"#
    )
}

fn write_agent(rig: &Rig, lab: &str, devices: &str) {
    let b = rig.path(&format!("labs/{lab}"));
    let yaml = format!(
        "lab: {lab}\ncoordinator:\n  url: {}\n  ca: {b}/ca.pem\n  cert: {b}/agent.pem\n  key: {b}/agent.key\nstate_dir: {b}/state\nlimits: {{drain_timeout: 20s}}\nartifacts: {{file_dirs: [\"{board}\"]}}\ntftp: {{root: \"{tftp}\", server: 10.0.2.2}}\ndevices:\n{devices}",
        rig.url(),
        b = b.display(),
        board = board_dir().display(),
        tftp = rig.path("tftp").display(),
    );
    std::fs::write(b.join("agent.yaml"), yaml).unwrap();
}

fn job(name: &str, tag: &str, board: &Path, commands: &[&str], timeout: u32) -> v1::JobSpec {
    let file = |f: &str| v1::Artifact {
        url: format!("file://{}", board.join(f).display()),
        sha256: String::new(),
    };
    v1::JobSpec {
        name: name.into(),
        criteria: Some(v1::Criteria {
            driver: "serial".into(),
            arch: "arm64".into(),
            tags: vec![tag.into()],
            ..Default::default()
        }),
        artifacts: [
            ("kernel".to_string(), file("Image")),
            ("ramdisk".to_string(), file("initramfs.cpio.gz")),
        ]
        .into(),
        commands: commands.iter().map(|s| s.to_string()).collect(),
        timeout_seconds: timeout,
        ..Default::default()
    }
}

fn board_on(rig: &Rig, n: u32) -> bool {
    let Ok(pid) = std::fs::read_to_string(rig.path(&format!("run-{n}/qemu.pid"))) else {
        return false;
    };
    std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .map(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
        .unwrap_or(false)
}

/// The job folders under the TFTP root's `labwire/`.
fn staged(rig: &Rig) -> Vec<String> {
    std::fs::read_dir(rig.path("tftp/labwire"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn tree(c: &mut labwire::client::Clients, id: i64) -> String {
    let (root, kids) = labwire::commands::fetch_tree(c, id).await.unwrap();
    labwire::commands::render_tree(&root, &kids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u_boot_over_tftp_with_pdudaemon_and_ser2net() {
    let mut steps = Steps::new();
    let board = board_dir();
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 2s}\nretries: {max: 1}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("farm");
    std::fs::create_dir_all(rig.path("tftp")).unwrap();
    let _boards = Boards(vec![rig.path("run-1"), rig.path("run-2")]);
    for n in [1, 2] {
        let st = Command::new(repo().join("tests/uboot/board.sh"))
            .arg("cable")
            .arg(rig.path(&format!("run-{n}")))
            .status()
            .unwrap();
        assert!(st.success(), "the serial cable of board {n}");
    }
    let (c1, c2, pdu, dead) = (free_port(), free_port(), free_port(), free_port());
    let mut ser = [start_ser2net(&rig, 1, c1), start_ser2net(&rig, 2, c2)];
    let _pdud = start_pdudaemon(&rig, pdu);
    let devices = [
        device("uboot-1", "farm", 1, c1, pdu, ""),
        device("uboot-2", "farm", 2, c2, pdu, ""),
        // The same board 1, with U-Boot commands of the lab admin that ask for a file the
        // job did not bring.
        device(
            "uboot-missing",
            "missing",
            1,
            c1,
            pdu,
            "commands: ['setenv autoload no', dhcp, 'tftp ${kernel_addr_r} {tftp.dir}/zImage', 'booti ${kernel_addr_r} - ${fdtcontroladdr}']",
        ),
        // Board 1 waiting for an autoboot message its U-Boot never prints.
        device(
            "uboot-nostop",
            "nostop",
            1,
            c1,
            pdu,
            "interrupt_prompt: 'Press Ctrl-C to abort autoboot'",
        )
        .replace("timeout: 150s", "timeout: 25s"),
        // A pdudaemon that is not there.
        device("uboot-nopdu", "nopdu", 1, c1, dead, ""),
    ]
    .concat();
    write_agent(&rig, "farm", &devices);
    let mut agent = rig.start_agent("farm");
    let mut c = rig.client().await;

    steps.at("a job boots U-Boot over TFTP, logs in and reports KTAP");
    let id = submit_spec(
        &mut c,
        job(
            "ktap",
            "farm",
            &board,
            &["uname -m", "labwire-ktap-demo"],
            240,
        ),
    )
    .await;
    let n = wait_node(&mut c, id, Duration::from_secs(300), is_done).await;
    let t = tree(&mut c, id).await;
    let log = read_log(&mut c, id).await;
    assert_eq!(n.result, v1::NodeResult::Fail as i32, "{t}\n{log}");
    assert!(data(&n).get("error_code").is_none(), "{t}\n{log}");
    for want in [
        "Hit any key to stop autoboot",
        "power on: pdudaemon took the request",
        &format!("Filename 'labwire/job-{id}-"),
        "/kernel-Image'",
        "booti ${kernel_addr_r} ${ramdisk_addr_r}:${labwire_rd_size} ${fdtcontroladdr}",
        "Linux version",
        "aarch64",
        "power off: pdudaemon took the request",
    ] {
        assert!(log.contains(want), "missing `{want}` in\n{log}");
    }
    for want in [
        "kernel-boot [test]",
        "login [test]",
        "labwire_demo [test]",
        "test_b [test]",
    ] {
        assert!(t.contains(want), "missing {want} in\n{t}");
    }
    assert!(
        staged(&rig).is_empty(),
        "left under the TFTP root: {:?}",
        staged(&rig)
    );
    wait_for(Duration::from_secs(15), "the board to be off", || {
        !board_on(&rig, 1) && !board_on(&rig, 2)
    });

    steps.at("a file the board asks for is not there: U-Boot's TFTP error");
    let id = submit_spec(&mut c, job("missing", "missing", &board, &["true"], 240)).await;
    let n = wait_node(&mut c, id, Duration::from_secs(300), is_done).await;
    let log = read_log(&mut c, id).await;
    assert_eq!(data(&n)["error_code"], "bootloader_error", "{log}");
    let msg = data(&n)["error_msg"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("File not found"), "{msg}\n{log}");
    assert!(staged(&rig).is_empty(), "{:?}", staged(&rig));
    wait_for(Duration::from_secs(15), "the board to be off", || {
        !board_on(&rig, 1)
    });

    steps.at("autoboot not interrupted");
    let id = submit_spec(&mut c, job("nostop", "nostop", &board, &["true"], 240)).await;
    let n = wait_node(&mut c, id, Duration::from_secs(300), is_done).await;
    let log = read_log(&mut c, id).await;
    assert_eq!(data(&n)["error_code"], "boot_timeout", "{log}");
    assert!(log.contains("Hit any key to stop autoboot"), "{log}");
    let msg = data(&n)["error_msg"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("autoboot prompt"), "{msg}");
    wait_for(Duration::from_secs(15), "the board to be off", || {
        !board_on(&rig, 1)
    });

    steps.at("pdudaemon unreachable");
    let id = submit_spec(&mut c, job("nopdu", "nopdu", &board, &["true"], 240)).await;
    let n = wait_node(&mut c, id, Duration::from_secs(120), is_done).await;
    let log = read_log(&mut c, id).await;
    assert_eq!(data(&n)["error_code"], "power_failed", "{log}");
    let msg = data(&n)["error_msg"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("pdudaemon is not reachable"), "{msg}");
    assert!(staged(&rig).is_empty(), "{:?}", staged(&rig));

    steps.at("ser2net gone mid-job: console_lost, board off, retried on the other board");
    let id = submit_spec(
        &mut c,
        job(
            "lost",
            "farm",
            &board,
            &["sleep 15", "labwire-ktap-pass"],
            300,
        ),
    )
    .await;
    wait_for(Duration::from_secs(120), "a board to start", || {
        board_on(&rig, 1) || board_on(&rig, 2)
    });
    let first = if board_on(&rig, 1) { 0 } else { 1 };
    // The job's console log as the agent writes it (the coordinator gets it at the end).
    let console = |job: i64| {
        let jobs = rig.path("labs/farm/state/jobs");
        std::fs::read_dir(jobs)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("{job}-"))
                    })
                    .map(|e| {
                        std::fs::read_to_string(e.path().join("console.log")).unwrap_or_default()
                    })
                    .collect::<String>()
            })
            .unwrap_or_default()
    };
    wait_for(
        Duration::from_secs(200),
        "the board's shell running `sleep 15`",
        || console(id).contains("sleep 15"),
    );
    ser[first].signal(nix::sys::signal::Signal::SIGKILL);
    let _ = ser[first].child.wait();
    let n = wait_node(&mut c, id, Duration::from_secs(400), is_done).await;
    let t = tree(&mut c, id).await;
    let log = read_log(&mut c, id).await;
    let d = data(&n);
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{t}\n{d:?}\n{log}");
    let attempts = d.get("attempts").map(|a| a.to_string()).unwrap_or_default();
    assert!(attempts.contains("console_lost"), "{d:?}");
    assert!(log.contains("labwire_pass"), "{log}");
    assert!(
        !board_on(&rig, first as u32 + 1),
        "the board stayed on after console_lost"
    );
    assert!(staged(&rig).is_empty(), "{:?}", staged(&rig));
    ser[first] = start_ser2net(&rig, first as u32 + 1, [c1, c2][first]);

    steps.at("agent killed mid-job: the TFTP folder is removed at its next start");
    let _id = submit_spec(&mut c, job("killed", "farm", &board, &["sleep 60"], 240)).await;
    wait_for(Duration::from_secs(120), "the job's TFTP folder", || {
        !staged(&rig).is_empty()
    });
    let left = staged(&rig);
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = agent.child.wait();
    assert_eq!(staged(&rig), left, "the folder of the killed agent's job");
    let _agent = rig.start_agent("farm");
    wait_for(
        Duration::from_secs(30),
        "the leftover TFTP folder to go",
        || !staged(&rig).iter().any(|f| left.contains(f)),
    );
    let pdu_log = std::fs::read_to_string(rig.path("pdudaemon.log")).unwrap_or_default();
    assert!(pdu_log.contains("off"), "{pdu_log}");
}
