//! Every example config under `config/` loads with the check-config command of the program
//! that reads it; a broken file is refused with its name, the line and the key.

use crate::common;

use common::{AGENT, COORDINATOR};
use std::process::Command;

fn run(program: &str, args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("run check-config");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn check(program: &str, files: &[std::path::PathBuf]) -> (bool, String) {
    let mut args: Vec<&std::ffi::OsStr> = vec!["check-config".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    run(program, &args)
}

#[test]
fn every_example_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // The agent's config is the one with a `lab:` key; the coordinator's check-config
        // recognises its own, scheduler and placement files by their keys.
        let (ok, out) = if text.lines().any(|l| l.starts_with("lab:")) {
            run(
                AGENT,
                &[
                    "check-config".as_ref(),
                    "--config".as_ref(),
                    path.as_os_str(),
                ],
            )
        } else {
            check(COORDINATOR, std::slice::from_ref(&path))
        };
        assert!(ok, "{} does not load:\n{out}", path.display());
        seen += 1;
    }
    assert!(
        seen >= 4,
        "expected the example configs under config/, saw {seen}"
    );
}

#[test]
fn a_broken_scheduler_file_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pipeline.yaml");
    std::fs::write(
        &f,
        "jobs:\n  baseline:\n    kind: job\nscheduler:\n  - job: baseline\n    event:\n      channel: node\n      stat: available\n",
    )
    .unwrap();
    let (ok, out) = check(COORDINATOR, std::slice::from_ref(&f));
    assert!(!ok);
    assert!(out.contains("pipeline.yaml"), "{out}");
    assert!(out.contains("line 8"), "{out}");
    assert!(out.contains("scheduler[0].event.stat"), "{out}");

    let p = dir.path().join("placement.yaml");
    std::fs::write(&p, "labs:\n  lab-a:\n    rules:\n      tree: android\n").unwrap();
    let (ok, out) = check(COORDINATOR, std::slice::from_ref(&p));
    assert!(!ok);
    assert!(
        out.contains("placement.yaml") && out.contains("labs.lab-a.rules"),
        "{out}"
    );
}
