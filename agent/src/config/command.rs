//! Commands in agent.yaml (argument lists, no shell) and their placeholders: each
//! placeholder is a whole argument and known, and no job value can become a script.

use crate::config::DeviceConfig;
use anyhow::bail;
use std::path::Path;

/// The placeholders an argument may be, apart from `{params.NAME}` and `{device.NAME}`.
pub const JOB_PLACEHOLDERS: &[&str] = &["{job.id}", "{job.dir}", "{job.attempt}"];

const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ash", "ksh", "busybox"];

/// Whether `arg` is a placeholder, and which.
pub fn placeholder(arg: &str) -> Option<(&str, &str)> {
    let inner = arg.strip_prefix('{')?.strip_suffix('}')?;
    let (ns, name) = inner.split_once('.')?;
    Some((ns, name))
}

/// Checks a command line: not empty, placeholders only as whole arguments and known, and no
/// placeholder as the script of a shell's `-c` (that would put a job parameter into a shell
/// unquoted).
pub fn validate_command(key: &str, argv: &[String], device: &DeviceConfig) -> anyhow::Result<()> {
    if argv.is_empty() || argv[0].is_empty() {
        bail!("{key}: must name a program");
    }
    for (i, arg) in argv.iter().enumerate() {
        if let Some((ns, name)) = placeholder(arg) {
            let name = name.strip_suffix('?').unwrap_or(name);
            match ns {
                "params" | "artifacts" if !name.is_empty() => {}
                "device" if device.settings.contains_key(name) || name == "name" => {}
                "device" => bail!(
                    "{key}[{i}]: `{arg}` names no setting of this device (settings: {})",
                    device
                        .settings
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "job" if JOB_PLACEHOLDERS.contains(&arg.as_str()) => {}
                _ => bail!(
                    "{key}[{i}]: `{arg}` is not a placeholder (expected {{params.NAME}}, {{params.NAME?}}, {{artifacts.NAME}}, {{device.NAME}}, {})",
                    JOB_PLACEHOLDERS.join(", ")
                ),
            }
        } else if arg.contains("{params.") {
            bail!(
                "{key}[{i}]: `{arg}`: placeholders must be whole arguments, so that a job parameter is never split or re-parsed"
            );
        }
    }
    let prog = Path::new(&argv[0])
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    if SHELLS.contains(&prog)
        && let Some(c) = argv.iter().position(|a| a == "-c")
        && let Some(script) = argv.get(c + 1)
        && placeholder(script).is_some()
    {
        bail!(
            "{key}: the script of `{prog} -c` must not be a placeholder; pass parameters as positional arguments (`sh -c 'cmd \"$1\"' sh {{params.x}}`) or read LABWIRE_PARAM_* variables"
        );
    }
    Ok(())
}

/// Checks a regular expression from the config; errors name the key.
pub(crate) fn validate_regex(key: &str, re: &str) -> anyhow::Result<()> {
    if re.is_empty() {
        bail!("{key}: must not be empty");
    }
    regex::bytes::Regex::new(re)
        .map_err(|e| anyhow::anyhow!("{key}: `{re}` is not a valid regular expression: {e}"))?;
    Ok(())
}
