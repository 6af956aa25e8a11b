//! The agent's configuration file (`/etc/labwire/agent.yaml`): parsed with unknown keys
//! refused, defaults filled in, then one validation pass whose errors name the file, the key
//! and what was expected. `config/agent.yaml` in the sources documents every key.

use crate::device_types::Library;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The lab's name; must equal the common name of the client certificate.
    pub lab: String,
    /// How to reach the coordinator.
    pub coordinator: CoordinatorLink,
    /// Where the agent keeps its outbox, journal and job folders.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Extra device-type directories (the built-in library is always loaded first).
    #[serde(default)]
    pub device_type_dirs: Vec<PathBuf>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// The lab's devices.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
}

/// The coordinator's address and the TLS files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorLink {
    /// `https://host:port` of the coordinator.
    pub url: String,
    /// The coordinator's CA certificate (PEM).
    pub ca: PathBuf,
    /// This lab's client certificate (PEM).
    pub cert: PathBuf,
    /// This lab's private key (PEM).
    pub key: PathBuf,
}

/// Concurrency and time limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// At most this many jobs at once over all devices. Default: one per device.
    #[serde(default)]
    pub max_jobs: Option<usize>,
    /// A job's time limit when it does not set one. Default `1h`.
    #[serde(default = "default_job_timeout", with = "humantime_serde")]
    pub job_timeout: Duration,
    /// On SIGTERM, how long running jobs may go on before they are stopped. Default `5m`.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a long poll for work waits. Default `20s`.
    #[serde(default = "default_poll_wait", with = "humantime_serde")]
    pub poll_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_jobs: None,
            job_timeout: default_job_timeout(),
            drain_timeout: default_drain_timeout(),
            poll_wait: default_poll_wait(),
        }
    }
}

/// One device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Name, unique in the lab.
    pub name: String,
    /// Its device type, from the device-type library.
    pub device_type: String,
    /// Labels that jobs can require.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form settings for command placeholders (`{device.NAME}`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// The driver and its settings.
    pub driver: DriverConfig,
}

/// The driver of a device, tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DriverConfig {
    /// Run a command on the lab host.
    Shell(ShellConfig),
}

impl DriverConfig {
    /// The driver's name, as advertised.
    pub fn kind(&self) -> &'static str {
        match self {
            DriverConfig::Shell(_) => "shell",
        }
    }
}

/// The shell driver: runs `command` on the lab host; its output is the job's log, its exit
/// code the job's result.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// The program and its arguments; no shell is involved unless you name one. An argument
    /// that is exactly `{params.NAME}`, `{device.NAME}`, `{job.id}` or `{job.dir}` is
    /// replaced by that value, whole. Job parameters are also in the environment as
    /// `LABWIRE_PARAM_<NAME>`.
    pub command: Vec<String>,
    /// Working directory. Default: the job's own folder.
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How many jobs may run at once on this device. Default 1.
    #[serde(default = "one")]
    pub max_jobs: usize,
}

fn one() -> usize {
    1
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/labwire-agent")
}
fn default_job_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_poll_wait() -> Duration {
    Duration::from_secs(20)
}

/// The placeholders an argument may be, apart from `{params.NAME}` and `{device.NAME}`.
pub const JOB_PLACEHOLDERS: &[&str] = &["{job.id}", "{job.dir}", "{job.attempt}"];

const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ash", "ksh", "busybox"];

/// Whether `arg` is a placeholder, and which.
pub fn placeholder(arg: &str) -> Option<(&str, &str)> {
    let inner = arg.strip_prefix('{')?.strip_suffix('}')?;
    let (ns, name) = inner.split_once('.')?;
    Some((ns, name))
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and validates config text (device types are checked against the library).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: AgentConfig = yaml_serde::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The device-type library this config uses.
    pub fn library(&self) -> anyhow::Result<Library> {
        Library::load(&self.device_type_dirs)
    }

    /// Checks what parsing cannot; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.lab.is_empty() {
            bail!("lab: must not be empty");
        }
        if !self.coordinator.url.starts_with("https://") {
            bail!(
                "coordinator.url `{}`: expected https://HOST:PORT",
                self.coordinator.url
            );
        }
        if self.limits.max_jobs == Some(0) {
            bail!("limits.max_jobs: must be at least 1");
        }
        if self.limits.poll_wait < Duration::from_secs(1)
            || self.limits.poll_wait > Duration::from_secs(60)
        {
            bail!("limits.poll_wait: expected between 1s and 60s");
        }
        let lib = self.library()?;
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let key = format!("devices[{i}] ({})", d.name);
            if d.name.is_empty() {
                bail!("devices[{i}].name: must not be empty");
            }
            if !seen.insert(d.name.clone()) {
                bail!("{key}.name: `{}` is used by two devices", d.name);
            }
            if lib.get(&d.device_type).is_none() {
                bail!(
                    "{key}.device_type: `{}` is not in the device-type library (known: {})",
                    d.device_type,
                    lib.names().join(", ")
                );
            }
            match &d.driver {
                DriverConfig::Shell(s) => {
                    validate_command(&format!("{key}.driver.command"), &s.command, d)?
                }
            }
        }
        Ok(())
    }
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
            match ns {
                "params" if !name.is_empty() => {}
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
                    "{key}[{i}]: `{arg}` is not a placeholder (expected {{params.NAME}}, {{device.NAME}}, {})",
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "lab: lab-a\ncoordinator: {url: 'https://127.0.0.1:7443', ca: ca.pem, cert: a.pem, key: a.key}\n";

    #[test]
    fn good_config() {
        let cfg = AgentConfig::parse(&format!(
            "{BASE}devices:\n  - name: host\n    device_type: lab-host\n    driver: {{type: shell, command: [sh, -c, 'echo \"$1\"', sh, '{{params.msg}}']}}\n"
        ))
        .unwrap();
        assert_eq!(cfg.devices[0].driver.kind(), "shell");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("bogus: 1\n", "unknown field `bogus`"),
            (
                "devices:\n  - {name: h, device_type: nope, driver: {type: shell, command: [true]}}\n",
                "devices[0] (h).device_type: `nope`",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: telnet}}\n",
                "unknown variant `telnet`",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: [true], colour: red}}\n",
                "unknown field `colour`",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: [echo, 'x{params.a}']}}\n",
                "whole arguments",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: [sh, -c, '{params.a}']}}\n",
                "must not be a placeholder",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: [echo, '{device.port}']}}\n",
                "names no setting",
            ),
            ("limits: {job_timeout: forever}\n", "limits.job_timeout"),
        ];
        for (extra, want) in cases {
            let e = AgentConfig::parse(&format!("{BASE}{extra}")).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(want), "{extra:?}: {msg}");
        }
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_shipped_example_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.yaml");
        let cfg = super::AgentConfig::load(std::path::Path::new(path)).unwrap();
        assert_eq!(cfg.devices.len(), 1);
    }
}
