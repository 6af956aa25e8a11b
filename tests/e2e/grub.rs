//! End-to-end test of the `grub` boot preset on a real GRUB: an x86_64 QEMU PC (software
//! emulation) boots an image made with `grub-mkrescue` (tests/grub/mkiso.sh, the job's deploy
//! command, from the job's kernel and ramdisk), GRUB 2.06 on its serial port; the agent opens
//! GRUB's command line, types `linux`, `initrd` and `boot`, logs in and runs KTAP tests. The
//! serial port is the U-Boot board's cable (tests/uboot/board.sh), a pty the agent opens.

use crate::common;
use crate::uboot::{Boards, repo};

use common::*;
use labwire_proto::v1;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SETUP: &str = "scripts/setup.d/35-boardfarm.sh";

fn x86_board() -> PathBuf {
    for tool in [
        "/usr/bin/grub-mkrescue",
        "/usr/bin/xorriso",
        "/usr/bin/mformat",
    ] {
        assert!(Path::new(tool).exists(), "{tool} is missing: run {SETUP}");
    }
    assert!(
        Path::new("/usr/lib/grub/i386-pc").exists(),
        "grub-pc-bin is missing: run {SETUP}"
    );
    let dir = std::env::var("LABWIRE_BOARD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/labwire/board")
        });
    let st = Command::new(repo().join("tests/board/build.sh"))
        .arg(&dir)
        .status()
        .expect("run tests/board/build.sh");
    assert!(st.success(), "building the test board failed");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grub_preset_boots_through_a_real_grub() {
    let board = x86_board();
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 2s}\nretries: {max: 0}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("pc-lab");
    let run = rig.path("run-pc");
    let _boards = Boards(vec![run.clone()]);
    let sh = repo().join("tests/uboot/board.sh");
    let st = Command::new(&sh).arg("cable").arg(&run).status().unwrap();
    assert!(st.success(), "the serial cable");
    let b = rig.path("labs/pc-lab");
    let yaml = format!(
        r#"lab: pc-lab
coordinator:
  url: {url}
  ca: {b}/ca.pem
  cert: {b}/agent.pem
  key: {b}/agent.key
state_dir: {b}/state
artifacts: {{file_dirs: ["{board}"]}}
devices:
  - name: pc-grub
    device_type: x86-pc-grub
    tags: [grub]
    driver:
      type: serial
      console: {{tty: {{path: "{run}/ttyBOARD"}}}}
      deploy_command: ["{mkiso}", "{{artifacts.kernel}}", "{{artifacts.ramdisk}}", "{run}/board.iso"]
      power_on_command: ["{sh}", on-pc, "{run}", "{run}/board.iso"]
      power_off_command: ["{sh}", off, "{run}"]
      boot:
        preset: grub
        grub:
          commands: ["linux /boot/vmlinuz console=ttyS0,115200", "initrd /boot/initrd", boot]
        timeout: 150s
      login: {{username: root, password: labwire, shell_prompt: 'root@labwire-board:~# ', timeout: 90s}}
"#,
        url = rig.url(),
        b = b.display(),
        board = board.display(),
        run = run.display(),
        sh = sh.display(),
        mkiso = repo().join("tests/grub/mkiso.sh").display(),
    );
    std::fs::write(b.join("agent.yaml"), yaml).unwrap();
    let _agent = rig.start_agent("pc-lab");
    let mut c = rig.client().await;

    let file = |f: &str| v1::Artifact {
        url: format!("file://{}", board.join(f).display()),
        sha256: String::new(),
    };
    let spec = v1::JobSpec {
        name: "grub-ktap".into(),
        criteria: Some(v1::Criteria {
            driver: "serial".into(),
            arch: "x86_64".into(),
            tags: vec!["grub".into()],
            ..Default::default()
        }),
        artifacts: [
            ("kernel".to_string(), file("vmlinuz")),
            ("ramdisk".to_string(), file("initramfs.cpio.gz")),
        ]
        .into(),
        commands: vec!["labwire-ktap-pass".into()],
        timeout_seconds: 240,
        ..Default::default()
    };
    let id = submit_spec(&mut c, spec).await;
    let n = wait_node(&mut c, id, Duration::from_secs(300), is_done).await;
    let log = read_log(&mut c, id).await;
    let (root, kids) = labwire::commands::fetch_tree(&mut c, id).await.unwrap();
    let t = labwire::commands::render_tree(&root, &kids);
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{t}\n{log}");
    for want in ["GNU GRUB", "grub>", "Linux version", "ok 1 labwire_pass"] {
        assert!(log.contains(want), "missing `{want}` in\n{log}");
    }
    assert!(t.contains("labwire_pass [test]"), "{t}");
}
