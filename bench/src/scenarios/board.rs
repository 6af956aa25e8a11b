//! Board jobs: the agent's own time per job on a real board, the U-Boot board of
//! tests/uboot/ (QEMU arm64 `virt`, Debian's U-Boot, the kernel and ramdisk fetched over TFTP
//! from the folder the agent staged). A real coordinator and a real agent process; jobs run
//! one after the other. For each job: the total, from submission until the coordinator has
//! the job done, and the board's share, from power-on done until the last command's exit
//! status (`powered_on_ms` to `commands_done_ms` in the job's data: the boot, the login, the
//! commands). The agent's own time is the rest: dispatch, download, staging, power calls,
//! console open, parsing, report.

use crate::Opts;
use crate::report::{Figure, median, spread};
use crate::rig::Rig;
use anyhow::Context;
use labwire_proto::v1;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The board's serial cable and QEMU, stopped when dropped.
struct Board {
    script: PathBuf,
    run: PathBuf,
}

impl Drop for Board {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("off")
            .arg(&self.run)
            .status();
        if let Ok(pid) = std::fs::read_to_string(self.run.join("cable.pid")) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", pid.trim())])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn board_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("LABWIRE_UBOOT_BOARD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/labwire/uboot-board")
        });
    anyhow::ensure!(
        dir.join("board.stamp").is_file() && Path::new("/usr/bin/qemu-system-aarch64").exists(),
        "the U-Boot board is not there ({}): run scripts/setup.d/35-boardfarm.sh",
        dir.display()
    );
    Ok(dir)
}

/// Runs the scenario.
pub async fn run(o: &Opts) -> anyhow::Result<Vec<Figure>> {
    let files = board_dir()?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the bench crate's folder has no parent")?;
    let script = repo.join("tests/uboot/board.sh");
    let mut rig = Rig::new(&o.store, "leases: {duration: 30s, heartbeat: 5s}\n")?;
    let cert = rig.issue_labs("board-", 1)?.remove(0);
    let bundle = rig.write_bundle(&cert)?;
    rig.start()?;
    let run = rig.path("uboot-run");
    let tftp = rig.path("tftp");
    std::fs::create_dir_all(&tftp)?;
    let st = Command::new(&script).arg("cable").arg(&run).status()?;
    anyhow::ensure!(st.success(), "the board's serial cable did not start");
    let _board = Board {
        script: script.clone(),
        run: run.clone(),
    };
    let yaml = format!(
        "lab: {lab}\ncoordinator:\n  url: {url}\n  ca: {b}/ca.pem\n  cert: {b}/agent.pem\n  key: {b}/agent.key\nstate_dir: {b}/state\n\
         artifacts: {{file_dirs: ['{files}']}}\ntftp: {{root: '{tftp}', server: 10.0.2.2}}\ndevices:\n\
         \x20 - name: uboot\n    device_type: qemu-arm64-uboot\n    driver:\n      type: serial\n\
         \x20     console: {{tty: {{path: '{run}/ttyBOARD'}}}}\n\
         \x20     power_on_command: ['{s}', 'on', '{run}', '{tftp}']\n\
         \x20     power_off_command: ['{s}', 'off', '{run}']\n\
         \x20     boot: {{preset: u-boot, u_boot: {{bootargs: 'console=ttyAMA0,115200'}}, timeout: 150s}}\n\
         \x20     login: {{username: root, password: labwire, shell_prompt: 'root@labwire-board:~# ', timeout: 90s}}\n",
        lab = cert.lab,
        url = rig.url(),
        b = bundle.display(),
        files = files.display(),
        tftp = tftp.display(),
        run = run.display(),
        s = script.display(),
    );
    let cfg = bundle.join("agent.yaml");
    std::fs::write(&cfg, yaml)?;
    let log = std::fs::File::create(rig.path("agent.log"))?;
    let mut agent = Command::new(crate::self_exe()?)
        .args(["agent", "run", "--config"])
        .arg(&cfg)
        .env("LABWIRE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start the agent")?;
    let result = jobs(o, &rig, &files).await;
    let _ = agent.kill();
    let _ = agent.wait();
    let (totals, own) = result?;
    Ok(vec![
        Figure::new(
            "board",
            "agent's own time per board job",
            median(&own),
            "s",
            None,
        )
        .note(format!(
            "median of {} jobs on the U-Boot board (runs: {} s): dispatch, download, TFTP staging, power calls, console open, parsing, report",
            own.len(),
            spread(&own)
        )),
        Figure::new("board", "board job total", median(&totals), "s", None).note(format!(
            "the same jobs from submission to done (runs: {} s), the board's boot over TFTP and login included",
            spread(&totals)
        )),
    ])
}

/// Runs the jobs; returns each one's total and the agent's own share, in seconds.
async fn jobs(o: &Opts, rig: &Rig, files: &Path) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut c = rig.client().await?;
    let file = |f: &str| v1::Artifact {
        url: format!("file://{}", files.join(f).display()),
        sha256: String::new(),
    };
    let (mut totals, mut own) = (Vec::new(), Vec::new());
    for i in 0..o.board_jobs.max(1) {
        let spec = v1::JobSpec {
            name: format!("board-{i}"),
            criteria: Some(v1::Criteria {
                driver: "serial".into(),
                arch: "arm64".into(),
                ..Default::default()
            }),
            artifacts: [
                ("kernel".to_string(), file("Image")),
                ("ramdisk".to_string(), file("initramfs.cpio.gz")),
            ]
            .into(),
            commands: vec!["labwire-ktap-pass".into()],
            timeout_seconds: 300,
            ..Default::default()
        };
        let t0 = Instant::now();
        let id = c
            .nodes
            .submit_job(v1::SubmitJobRequest {
                spec: Some(spec),
                parent: 0,
                submitter: "labwire-bench".into(),
            })
            .await?
            .into_inner()
            .node
            .context("the coordinator answered without the job's node")?
            .id;
        let node = loop {
            let n = c
                .nodes
                .get_node(v1::GetNodeRequest { id })
                .await?
                .into_inner();
            if n.state == v1::NodeState::Done as i32 {
                break n;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(400),
                "job {id} not done after 400 s; see {}",
                rig.path("agent.log").display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let total = t0.elapsed().as_secs_f64();
        anyhow::ensure!(
            node.result == v1::NodeResult::Pass as i32,
            "job {id} did not pass: {:?}",
            node.data
        );
        let data = node
            .data
            .as_ref()
            .map(labwire_proto::convert::struct_to_map)
            .unwrap_or_default();
        let ms = |k: &str| {
            data.get(k)
                .and_then(|v| v.as_f64())
                .with_context(|| format!("job {id}: no `{k}` in its data"))
        };
        let board = (ms("commands_done_ms")? - ms("powered_on_ms")?) / 1000.0;
        totals.push(total);
        own.push(total - board);
    }
    Ok((totals, own))
}
