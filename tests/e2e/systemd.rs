//! The unit files under systemd/ pass `systemd-analyze verify` (with ExecStart pointing at the
//! binaries cargo built, since verify checks that the program exists), and say what the
//! daemons need: Type=notify with a watchdog, a dedicated user, state and config directories,
//! hardening, a raised limit on open files. The Debian packages install these very files
//! (tests/e2e/packages.rs checks them there).

use std::path::Path;
use std::process::Command;

fn check(unit: &str, binary: &str) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("systemd").join(unit)).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=",
        "ConfigurationDirectory=labwire",
        "User=labwire-",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=",
    ] {
        assert!(text.contains(needed), "{unit} lacks {needed}");
    }
    let dir = tempfile::tempdir().unwrap();
    let installed = format!(
        "/usr/bin/{}",
        Path::new(binary).file_name().unwrap().to_string_lossy()
    );
    assert!(text.contains(&installed), "{unit} should run {installed}");
    std::fs::write(dir.path().join(unit), text.replace(&installed, binary)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join(unit))
        .output()
        .expect("systemd-analyze is installed by scripts/test.sh (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {unit}:\n{stderr}"
    );
}

#[test]
fn coordinator_unit_verifies() {
    check(
        "labwire-coordinator.service",
        env!("CARGO_BIN_EXE_labwire-coordinator"),
    );
}

#[test]
fn agent_unit_verifies() {
    check("labwire-agent.service", env!("CARGO_BIN_EXE_labwire-agent"));
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/labwire-agent.service"),
    )
    .unwrap();
    assert!(
        text.contains("SupplementaryGroups=dialout"),
        "the agent needs the serial ports"
    );
}
