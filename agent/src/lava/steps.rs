//! The run steps of labwire's test definition in a LAVA job: LAVA's test shell runs the job's
//! commands on the board, their output stays raw in the log for labwire's own parser (KTAP,
//! kselftest's TAP, kernel messages: one parser for every driver), and each command's exit
//! status goes to LAVA as one test case (`command-N`, `kunit`, `kselftest-NAME`) of the suite
//! `commands`.
//!
//! The steps are lines of one shell script (LAVA's `run.sh`), so the commands share one
//! shell as on the serial driver's console: `cd` and variables carry over. The parameters
//! are exported first as `LABWIRE_PARAM_<NAME>`, and `{params.NAME}` in a command becomes
//! the value as one quoted word. Each command runs as the condition of an `if` (where
//! `run.sh`'s `set -e` does not apply) inside `{ ...; }`, and the branch taken reports it:
//! `lava-test-case NAME --result pass`, or `--result fail --measurement STATUS --units
//! exit-status`.

use super::results::EXIT_STATUS_UNIT;
use crate::placeholders::{expand_board_command, shell_quote};
use std::collections::{BTreeMap, HashMap};

/// Where kselftest is installed on the board (`run_kselftest.sh` of a kselftest tarball).
pub(crate) const KSELFTEST_DIR: &str = "/opt/kselftest";

/// One step: runs `body` and reports its exit status as test case `name`.
fn reported(name: &str, body: &str) -> String {
    format!(
        "if {{ {body}\n}}; then lava-test-case {name} --result pass; else lava-test-case {name} --result fail --measurement $? --units {EXIT_STATUS_UNIT}; fi"
    )
}

/// A test-case name LAVA accepts made from free text (a kselftest collection).
fn case_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The run steps for a job: exports, then KUnit (job parameter `kunit`), kselftest
/// collections (parameter `kselftest`, names separated by spaces), the commands. Empty when
/// there is nothing to run (a boot-only job). A command naming a parameter the job does not
/// set is an error.
pub(crate) fn build(
    job: i64,
    params: &BTreeMap<String, String>,
    commands: &[String],
) -> Result<Vec<String>, String> {
    let kunit = params.contains_key("kunit");
    let kselftest: Vec<&str> = params
        .get("kselftest")
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    if !kunit && kselftest.is_empty() && commands.is_empty() {
        return Ok(Vec::new());
    }
    let mut exports = vec![format!("export LABWIRE_JOB_ID={job}")];
    for (k, v) in params {
        exports.push(format!(
            "export LABWIRE_PARAM_{}={}",
            k.to_ascii_uppercase(),
            shell_quote(v)
        ));
    }
    let mut steps = vec![exports.join("\n")];
    if kunit {
        // Each suite's debugfs results file is one KTAP test: a version line and a plan make
        // it a document the parser reads with its nesting.
        steps.push(reported(
            "kunit",
            "mount -t debugfs none /sys/kernel/debug 2>/dev/null; lw_found=; for r in /sys/kernel/debug/kunit/*/results; do [ -e \"$r\" ] || continue; lw_found=1; echo 'KTAP version 1'; echo '1..1'; cat \"$r\"; done; [ -n \"$lw_found\" ]",
        ));
    }
    for c in kselftest {
        steps.push(reported(
            &format!("kselftest-{}", case_name(c)),
            &format!(
                "( cd {KSELFTEST_DIR} && ./run_kselftest.sh -c {} )",
                shell_quote(c)
            ),
        ));
    }
    let map: HashMap<String, String> = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (i, c) in commands.iter().enumerate() {
        let cmd = expand_board_command(c, &map)?;
        steps.push(reported(&format!("command-{}", i + 1), &cmd));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn params(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Runs steps as LAVA's run.sh would (`set -e`), with a stand-in `lava-test-case` that
    /// prints what it was given.
    fn run(steps: &[String]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("lava-test-case");
        std::fs::write(&fake, "#!/bin/sh\necho \"CASE $*\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = format!("set -e\n{}\necho END\n", steps.join("\n"));
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", dir.path().to_string_lossy()),
            )
            .current_dir(dir.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn commands_share_a_shell_and_report_their_exit_status() {
        let steps = build(
            7,
            &params(&[("msg", "it's $(touch pwned)")]),
            &[
                "cd /; echo \"$LABWIRE_PARAM_MSG\"".into(),
                "pwd; false; exit_is_not_called=1; (exit 3)".into(),
                "printf '%s\\n' {params.msg}".into(),
                "echo $LABWIRE_JOB_ID".into(),
            ],
        )
        .unwrap();
        let out = run(&steps);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "it's $(touch pwned)",
                "CASE command-1 --result pass",
                "/",
                "CASE command-2 --result fail --measurement 3 --units exit-status",
                "it's $(touch pwned)",
                "CASE command-3 --result pass",
                "7",
                "CASE command-4 --result pass",
                "END",
            ],
            "{out}"
        );
        assert!(!std::path::Path::new("/pwned").exists());
    }

    #[test]
    fn kunit_and_kselftest_steps_and_errors() {
        assert!(build(1, &params(&[]), &[]).unwrap().is_empty());
        let steps = build(
            1,
            &params(&[("kunit", "1"), ("kselftest", "timers net/forwarding x'y")]),
            &[],
        )
        .unwrap();
        assert_eq!(steps.len(), 5, "{steps:?}");
        assert!(steps[1].contains("lava-test-case kunit"));
        assert!(steps[3].contains("lava-test-case kselftest-net_forwarding "));
        assert!(steps[4].contains(r"-c 'x'\''y'"), "{}", steps[4]);
        // No kselftest on this host: each collection fails with its status, the next runs.
        let out = run(&steps[2..]);
        assert_eq!(out.matches("--result fail").count(), 3, "{out}");
        let e = build(1, &params(&[]), &["echo {params.nope}".into()]).unwrap_err();
        assert!(e.contains("`nope`"), "{e}");
    }
}
