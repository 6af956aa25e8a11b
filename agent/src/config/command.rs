//! Commands in agent.yaml (argument lists, no shell) and their placeholders: each
//! placeholder is a whole argument and known, and no job value can become a script.

use crate::config::DeviceConfig;
use anyhow::bail;

/// The placeholders an argument may be, apart from `{params.NAME}` and `{device.NAME}`.
pub(crate) const JOB_PLACEHOLDERS: &[&str] = &["{job.id}", "{job.dir}", "{job.attempt}"];

/// Whether `arg` is a placeholder, and which.
pub(crate) fn placeholder(arg: &str) -> Option<(&str, &str)> {
    let inner = arg.strip_prefix('{')?.strip_suffix('}')?;
    let (ns, name) = inner.split_once('.')?;
    Some((ns, name))
}

/// Checks a command line: not empty, placeholders only as whole arguments and known, and no
/// job value where the program would run it as code ([`super::injection`]: the script of a
/// shell's `-c`, an interpreter's program text, through wrappers such as `env` or `sudo`).
/// `key` names the command (and its device); errors name the argument.
pub(crate) fn validate_command(
    key: &str,
    argv: &[String],
    device: &DeviceConfig,
) -> anyhow::Result<()> {
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
    if let Err(f) = super::injection::check(argv) {
        let arg = &argv[f.index];
        bail!(
            "{key}[{}] `{arg}`: {}; a job value must never become code on the lab host: pass it as a positional argument (`sh -c 'cmd \"$1\"' sh {{params.x}}`) or read the LABWIRE_PARAM_* variables",
            f.index,
            f.why
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
