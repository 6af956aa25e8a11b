//! The agent's configuration file (`/etc/labwire/agent.yaml`): parsed with unknown keys
//! refused, defaults filled in, then one validation pass whose errors name the file, the key
//! and what was expected. `config/agent.yaml` in the sources documents every key.
//!
//! This module holds what every agent has (the lab, the coordinator link, the limits, the
//! device list); each driver's own settings sit next to the driver: [`ShellConfig`] in
//! `driver/shell.rs`, [`SerialConfig`] in `driver/serial.rs`, the boot and login of a board in
//! `driver/board/config.rs`, [`ConsoleConfig`] in `serial/config.rs`, [`LabgridConfig`] in
//! `labgrid/config.rs`, the `lava:` entries in `lava/config.rs`. Commands and their
//! placeholders are checked by [`command`].

pub(crate) mod command;
mod injection;
#[cfg(test)]
mod tests;

pub use crate::driver::board::config::{
    BootConfig, BootPreset, BootStep, GrubConfig, LoginConfig, UBootConfig,
};
pub use crate::driver::serial::SerialConfig;
pub use crate::driver::shell::ShellConfig;
pub use crate::fetch::ArtifactsConfig;
pub use crate::labgrid::config::{LabgridConfig, LabgridPlaceConfig};
pub use crate::secrets::Secret;
pub use crate::serial::config::ConsoleConfig;
pub use crate::state::StateConfig;
pub(crate) use command::{JOB_PLACEHOLDERS, placeholder, validate_command};

use crate::device_types::Library;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Config files larger than this are refused before parsing.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

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
    /// The upkeep of the state folder (how long job folders are kept).
    #[serde(default)]
    pub state: StateConfig,
    /// Where `file://` artifacts may come from.
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
    /// The lab's TFTP server, for boards that fetch their kernel over TFTP: the agent stages
    /// each job's files in a folder of its own under its root.
    #[serde(default)]
    pub tftp: Option<crate::tftp::TftpConfig>,
    /// Extra device-type directories (the built-in library is always loaded first).
    #[serde(default)]
    pub device_type_dirs: Vec<PathBuf>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Board health: when a device is quarantined.
    #[serde(default)]
    pub health: crate::health::HealthConfig,
    /// The lab's devices.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// LAVA servers whose device types this agent offers (one pooled device per type).
    #[serde(default)]
    pub lava: Vec<crate::lava::LavaConfig>,
    /// Labgrid coordinators whose places the agent runs jobs on.
    #[serde(default)]
    pub labgrid: Vec<LabgridConfig>,
}

/// The coordinator's address (or the addresses of its replicas) and the TLS files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorLink {
    /// `https://host:port` of the coordinator. Exactly one of `url` and `urls` is given.
    #[serde(default)]
    pub url: Option<String>,
    /// `https://host:port` of each replica of the coordinator (they share one database and one
    /// CA): the agent talks to one at a time and moves on to the next when it stops answering.
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    /// The coordinator's CA certificate (PEM).
    pub ca: PathBuf,
    /// This lab's client certificate (PEM).
    pub cert: PathBuf,
    /// This lab's private key (PEM).
    pub key: PathBuf,
}

impl CoordinatorLink {
    /// The coordinator's addresses, in the order the agent tries them, each with its key
    /// (`coordinator.url` or `coordinator.urls[N]`) for messages.
    pub fn addresses(&self) -> Vec<(String, &str)> {
        match (&self.url, &self.urls) {
            (Some(u), _) => vec![("coordinator.url".to_string(), u.as_str())],
            (None, Some(us)) => us
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("coordinator.urls[{i}]"), u.as_str()))
                .collect(),
            (None, None) => Vec::new(),
        }
    }

    /// Whether `other` dials the same addresses in the same order with the same TLS files
    /// (`url: X` and `urls: [X]` are the same link).
    pub fn same_link(&self, other: &CoordinatorLink) -> bool {
        let urls = |l: &CoordinatorLink| -> Vec<String> {
            l.addresses()
                .into_iter()
                .map(|(_, u)| u.to_string())
                .collect()
        };
        urls(self) == urls(other)
            && (&self.ca, &self.cert, &self.key) == (&other.ca, &other.cert, &other.key)
    }

    /// Exactly one of `url` and `urls`; every address an `https://HOST:PORT` URL, none twice.
    fn validate(&self) -> anyhow::Result<()> {
        match (&self.url, &self.urls) {
            (Some(_), Some(_)) => bail!(
                "coordinator: give either `url` (one coordinator) or `urls` (its replicas), not both"
            ),
            (None, None) => bail!(
                "coordinator: `url` (https://HOST:PORT) or `urls` (a list of them, one per replica) is required"
            ),
            (None, Some(us)) if us.is_empty() => {
                bail!("coordinator.urls: list at least one https://HOST:PORT")
            }
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        for (key, url) in self.addresses() {
            check_coordinator_url(&key, url)?;
            if !seen.insert(url) {
                bail!("{key} `{url}`: listed twice");
            }
        }
        Ok(())
    }
}

/// An address the agent dials: an `https://HOST:PORT` URL with a host.
fn check_coordinator_url(key: &str, url: &str) -> anyhow::Result<()> {
    let has_host = url::Url::parse(url)
        .ok()
        .is_some_and(|u| u.host_str().is_some_and(|h| !h.is_empty()));
    if !url.starts_with("https://") || !has_host {
        bail!("{key} `{url}`: expected https://HOST:PORT");
    }
    Ok(())
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
    /// The settings whose values are secrets (a PDU password): masked in job logs.
    #[serde(default)]
    pub secret_settings: Vec<String>,
    /// The driver and its settings.
    pub driver: DriverConfig,
}

impl DeviceConfig {
    /// The device's secrets: the values of its secret settings and its login password.
    pub fn secrets(&self) -> Vec<Secret> {
        let mut out: Vec<Secret> = self
            .secret_settings
            .iter()
            .filter_map(|k| self.settings.get(k))
            .map(|v| Secret(v.clone()))
            .collect();
        let login = match &self.driver {
            DriverConfig::Serial(s) => Some(&s.login),
            DriverConfig::Labgrid(p) => Some(&p.login),
            DriverConfig::Shell(_) => None,
        };
        out.extend(login.and_then(|l| l.password.clone()));
        out.retain(|s| !s.0.is_empty());
        out
    }

    /// Checks `secret_settings`: each names a setting. `key` names the device.
    pub(crate) fn validate_secrets(&self, key: &str) -> anyhow::Result<()> {
        for (i, k) in self.secret_settings.iter().enumerate() {
            if !self.settings.contains_key(k) {
                bail!("{key}.secret_settings[{i}]: `{k}` is not one of the device's settings");
            }
        }
        Ok(())
    }

    /// Warnings about the device's secrets: those too short to be masked everywhere.
    pub fn secret_warnings(&self, key: &str) -> Vec<String> {
        let short = |what: String, v: &str| {
            (v.len() < crate::secrets::MIN_MASKED_LEN).then(|| {
                format!(
                    "{key}.{what} is shorter than {} characters: it is masked in job logs only where the agent types or passes it (a password's echo, a command's argument), not wherever the board prints it",
                    crate::secrets::MIN_MASKED_LEN
                )
            })
        };
        let mut out: Vec<String> = self
            .secret_settings
            .iter()
            .filter_map(|k| short(format!("settings.{k}"), self.settings.get(k)?))
            .collect();
        let login = match &self.driver {
            DriverConfig::Serial(s) => Some(("driver.login.password", &s.login)),
            DriverConfig::Labgrid(p) => Some(("login.password", &p.login)),
            DriverConfig::Shell(_) => None,
        };
        if let Some((what, l)) = login
            && let Some(p) = &l.password
        {
            out.extend(short(what.to_string(), &p.0));
        }
        out
    }
}

/// The driver of a device, tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DriverConfig {
    /// Run a command on the lab host.
    Shell(ShellConfig),
    /// Power, boot, log in and test a board on its serial console.
    Serial(Box<SerialConfig>),
    /// A place of a Labgrid coordinator. Not written in `devices:`: the `labgrid:` section
    /// finds the places and makes their devices.
    #[serde(skip)]
    Labgrid(Box<LabgridPlaceConfig>),
}

impl DriverConfig {
    /// The driver's name, as advertised.
    pub fn kind(&self) -> &'static str {
        match self {
            DriverConfig::Shell(_) => "shell",
            DriverConfig::Serial(_) => "serial",
            DriverConfig::Labgrid(_) => "labgrid",
        }
    }
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

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if size > MAX_CONFIG_BYTES {
            bail!(
                "{}: {size} bytes is too big for a config file (at most {MAX_CONFIG_BYTES})",
                path.display()
            );
        }
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

    /// What a lab admin should know about the config that does not make it wrong (secrets
    /// too short to be masked everywhere); `check-config` prints these, the agent logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            out.extend(d.secret_warnings(&format!("devices[{i}] ({})", d.name)));
        }
        for (i, lg) in self.labgrid.iter().enumerate() {
            for (k, p) in lg.places.iter().enumerate() {
                let d = p.device(p.name.as_deref().unwrap_or("place"));
                out.extend(d.secret_warnings(&format!("labgrid[{i}].places[{k}]")));
            }
        }
        out
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
        self.coordinator.validate()?;
        if self.limits.max_jobs == Some(0) {
            bail!("limits.max_jobs: must be at least 1");
        }
        if self.limits.poll_wait < Duration::from_secs(1)
            || self.limits.poll_wait > Duration::from_secs(60)
        {
            bail!("limits.poll_wait: expected between 1s and 60s");
        }
        self.artifacts.validate()?;
        if let Some(t) = &self.tftp {
            t.validate()?;
        }
        self.health.validate()?;
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
            d.validate_secrets(&key)?;
            match &d.driver {
                DriverConfig::Shell(s) => {
                    validate_command(&format!("{key}.driver.command"), &s.command, d)?
                }
                DriverConfig::Serial(s) => crate::driver::serial::validate(
                    &format!("{key}.driver"),
                    s,
                    d,
                    self.tftp.is_some(),
                    lib.get(&d.device_type).and_then(|t| t.u_boot.as_ref()),
                )?,
                DriverConfig::Labgrid(_) => {
                    bail!("{key}.driver: labgrid places are listed in the `labgrid:` section")
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, lg) in self.labgrid.iter().enumerate() {
            lg.validate(&format!("labgrid[{i}]"), &lib)?;
            if !names.insert(lg.name.clone()) {
                bail!("labgrid[{i}].name: `{}` is used twice", lg.name);
            }
        }
        crate::lava::config::validate(&self.lava)?;
        Ok(())
    }
}
