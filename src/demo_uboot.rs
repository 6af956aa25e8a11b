//! The demo's U-Boot board: when `qemu-system-aarch64` is installed and the board's files are
//! in `~/.cache/labwire/uboot-board` (made by `scripts/setup.d/35-boardfarm.sh`), the demo adds
//! the board farm's path: an arm64 QEMU board whose U-Boot fetches the job's kernel and
//! ramdisk over TFTP from the folder the agent staged, boots them with `booti`, and runs the
//! job's tests. The board's scripts are tests/uboot/ (README there).

use crate::output::say;
use labwire_proto::v1;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The U-Boot board of one demo run; powered off and its serial cable stopped when dropped.
pub(crate) struct UBootBoard {
    /// The device's entry for agent.yaml (and the `tftp:` section).
    pub yaml: String,
    /// The board's files (file:// artifacts come from here).
    pub dir: PathBuf,
    run: PathBuf,
    script: PathBuf,
}

impl Drop for UBootBoard {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("off")
            .arg(&self.run)
            .stdout(Stdio::null())
            .status();
        if let Ok(pid) = std::fs::read_to_string(self.run.join("cable.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // The cable's loop leads its own process group (board.sh starts it with setsid).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The board, when QEMU for arm64 and the board's files are there; else says how to get them.
pub(crate) fn prepare(root: &Path) -> Option<UBootBoard> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = repo.join("tests/uboot/board.sh");
    let qemu = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-aarch64").is_file()))
        .unwrap_or(false);
    let dir = std::env::var_os("LABWIRE_UBOOT_BOARD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/labwire/uboot-board")
        });
    if !qemu || !dir.join("board.stamp").is_file() || !script.is_file() {
        say!(
            "==> no U-Boot board: to see a board farm's path too (U-Boot fetching the job's kernel\n    \
             over TFTP from the folder the agent staged), run scripts/setup.d/35-boardfarm.sh\n    \
             (qemu-system-arm, and Debian's u-boot-qemu, arm64 kernel and busybox in {})",
            dir.display()
        );
        return None;
    }
    let run = root.join("uboot-run");
    let tftp = root.join("tftp");
    if std::fs::create_dir_all(&tftp).is_err() {
        return None;
    }
    let ok = Command::new(&script)
        .arg("cable")
        .arg(&run)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        say!("==> the U-Boot board's serial cable did not start (socat missing?); skipping it");
        return None;
    }
    let yaml = format!(
        "  - name: demo-uboot\n\
         \x20   device_type: qemu-arm64-uboot\n\
         \x20   tags: [demo]\n\
         \x20   driver:\n\
         \x20     type: serial\n\
         \x20     console: {{tty: {{path: '{run}/ttyBOARD'}}}}\n\
         \x20     power_on_command: ['{s}', 'on', '{run}', '{tftp}']\n\
         \x20     power_off_command: ['{s}', 'off', '{run}']\n\
         \x20     boot: {{preset: u-boot, u_boot: {{bootargs: 'console=ttyAMA0,115200'}}, timeout: 150s}}\n\
         \x20     login: {{username: root, password: labwire, shell_prompt: 'root@labwire-board:~# ', timeout: 90s}}\n\
         tftp: {{root: '{tftp}', server: 10.0.2.2}}\n",
        run = run.display(),
        tftp = tftp.display(),
        s = script.display(),
    );
    Some(UBootBoard {
        yaml,
        dir,
        run,
        script,
    })
}

/// The demo's job for the U-Boot board.
pub(crate) fn job(dir: &Path) -> v1::JobSpec {
    let file = |f: &str| v1::Artifact {
        url: format!("file://{}", dir.join(f).display()),
        sha256: String::new(),
    };
    v1::JobSpec {
        name: "demo-uboot-kunit".into(),
        criteria: Some(v1::Criteria {
            driver: "serial".into(),
            arch: "arm64".into(),
            tags: vec!["demo".into()],
            ..Default::default()
        }),
        artifacts: [
            ("kernel".to_string(), file("Image")),
            ("ramdisk".to_string(), file("initramfs.cpio.gz")),
        ]
        .into(),
        commands: vec!["uname -m".into(), "labwire-ktap-pass".into()],
        timeout_seconds: 300,
        ..Default::default()
    }
}
