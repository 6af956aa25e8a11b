//! Lab-host commands of a board (power, deploy): an argument list, no shell, a time limit,
//! the output collected or written to the job log.

use crate::joblog::JobLog;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The output of a finished lab-host command.
pub(crate) struct CommandOutput {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// The exit status.
    pub status: std::process::ExitStatus,
}

/// Runs a program (no shell) with a time limit and collects its output; the program is
/// killed when the limit passes. Errors say which program and why.
pub(crate) async fn run_program(
    argv: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<CommandOutput, String> {
    run_program_without(argv, env, &[], timeout).await
}

/// [`run_program`] with the variables `remove` taken out of the inherited environment.
pub(crate) async fn run_program_without(
    argv: &[String],
    env: &BTreeMap<String, String>,
    remove: &[&str],
    timeout: Duration,
) -> Result<CommandOutput, String> {
    let Some(prog) = argv.first() else {
        return Err("the command is empty".into());
    };
    let mut cmd = tokio::process::Command::new(prog);
    for r in remove {
        cmd.env_remove(r);
    }
    let mut child = cmd
        .args(&argv[1..])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `{prog}`: {e}"))?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let collect = async {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut a).await;
            }
        };
        let read_err = async {
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_end(&mut b).await;
            }
        };
        tokio::join!(read_out, read_err);
        let st = child.wait().await;
        (a, b, st)
    };
    let (stdout, stderr, st) = tokio::time::timeout(timeout, collect).await.map_err(|_| {
        format!(
            "`{prog}` did not finish within {}",
            humantime::format_duration(timeout)
        )
    })?;
    let status = st.map_err(|e| format!("cannot wait for `{prog}`: {e}"))?;
    Ok(CommandOutput {
        stdout,
        stderr,
        status,
    })
}

/// Runs a configured command (no shell) with a time limit; its output goes to the job log.
pub(crate) async fn run_command(
    what: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
    log: &mut JobLog,
) -> Result<(), String> {
    log.note(&format!("{what}: {:?}", log.redact_args(argv)));
    let out = run_program(argv, env, timeout)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    for chunk in [&out.stdout, &out.stderr] {
        for line in String::from_utf8_lossy(chunk).lines() {
            log.note(&format!("{what}: {line}"));
        }
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{what}: `{}` failed ({})", argv[0], out.status))
    }
}
