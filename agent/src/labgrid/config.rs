//! The `labgrid:` list of agent.yaml: the Labgrid coordinators whose places the agent runs
//! jobs on, which places, and how their boards boot. Every key is documented in
//! `config/agent.yaml`.

use crate::config::{DeviceConfig, DriverConfig, validate_command};
use crate::device_types::Library;
use crate::driver::board::config::{
    BootConfig, LoginConfig, default_command_timeout, default_max_download, validate_boot_login,
};
use crate::serial::config::{ConsoleConfig, some_console, validate_console};
use anyhow::bail;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One Labgrid coordinator and the places of it that the agent may use. The agent follows
/// it over its gRPC protocol (places, resources, acquire, release) and powers boards with
/// `labgrid-client power`; each matching place that is free becomes a device of the lab.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabgridConfig {
    /// A name for this coordinator in logs (`labgrid:NAME`), unique in the file.
    pub name: String,
    /// The coordinator's address, `HOST:PORT` (as `labgrid-client -x` takes it).
    pub coordinator: String,
    /// The client program (for power) and any leading arguments. Default
    /// `[labgrid-client]`.
    #[serde(default = "default_labgrid_client")]
    pub client: Vec<String>,
    /// Extra environment for `labgrid-client power`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The Labgrid user the agent acquires places as (`LG_USERNAME`). Default `labwire-LAB`.
    /// Places held by this user and host when the agent starts are released then.
    #[serde(default)]
    pub user: Option<String>,
    /// The Labgrid host name the agent acquires places as (`LG_HOSTNAME`). Default: this
    /// host's name.
    #[serde(default)]
    pub host: Option<String>,
    /// No longer used (the agent follows the coordinator's update stream); accepted so that
    /// configs written for earlier versions load. Default `10s`.
    #[serde(default = "default_labgrid_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a job waits for a place that someone else holds before it fails with
    /// `place_unavailable`. Default `2m`.
    #[serde(default = "default_labgrid_acquire", with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// How long one request to the coordinator, or one `labgrid-client power` call, may
    /// take. Default `30s`.
    #[serde(default = "default_labgrid_command", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Which places to use, each with what it offers.
    pub places: Vec<LabgridPlaceConfig>,
}

/// Places of a Labgrid coordinator: one by name, or every place whose Labgrid tags include
/// `match_tags`; with the device type they offer and how their boards boot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabgridPlaceConfig {
    /// A place by its name. Exactly one of `name` and `match_tags`.
    #[serde(default)]
    pub name: Option<String>,
    /// Every place whose Labgrid tags (`labgrid-client set-tags`) include all of these.
    #[serde(default)]
    pub match_tags: BTreeMap<String, String>,
    /// The device type of the board(s), from the device-type library.
    pub device_type: String,
    /// labwire tags that jobs can require.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Settings for placeholders (`{device.NAME}`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// The settings whose values are secrets: masked in job logs.
    #[serde(default)]
    pub secret_settings: Vec<String>,
    /// Where the console is. Default: the place's serial port as Labgrid's exporter
    /// publishes it (its `NetworkSerialPort`, spoken as its `protocol` says: `rfc2217` as
    /// telnet, `raw` as plain TCP).
    #[serde(default, deserialize_with = "some_console")]
    pub console: Option<ConsoleConfig>,
    /// How the board is powered: `labgrid` (default: `labgrid-client power`; a place
    /// without a power resource is not offered) or `none` (a board that is always on: the
    /// power steps are skipped).
    #[serde(default)]
    pub power: PlacePower,
    /// Power-cycle at the start of a job (`labgrid-client power cycle`) instead of
    /// `power on`, for a board that may have been left on. Default false.
    #[serde(default)]
    pub power_cycle: bool,
    /// Run after the artifacts are downloaded and the place is acquired, before power-on.
    #[serde(default)]
    pub deploy_command: Option<Vec<String>>,
    /// Environment of the deploy command.
    #[serde(default)]
    pub command_env: BTreeMap<String, String>,
    /// How long the deploy command may take. Default `60s`.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How the board boots (as for the serial driver).
    #[serde(default)]
    pub boot: BootConfig,
    /// How to log in (as for the serial driver).
    #[serde(default)]
    pub login: LoginConfig,
    /// Largest artifact the agent downloads for these boards. Default 2 GiB.
    #[serde(default = "default_max_download")]
    pub max_download_bytes: u64,
}

/// How a place's board is powered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacePower {
    /// Through Labgrid (`labgrid-client power`).
    #[default]
    Labgrid,
    /// Not at all: the board is always on.
    None,
}

impl LabgridPlaceConfig {
    /// Whether a place with this name and these Labgrid tags is one of these.
    pub fn matches(&self, place: &str, tags: &BTreeMap<String, String>) -> bool {
        match &self.name {
            Some(n) => n == place,
            None => self.match_tags.iter().all(|(k, v)| tags.get(k) == Some(v)),
        }
    }

    /// The device entry of a place (for placeholders and the device list).
    pub fn device(&self, place: &str) -> DeviceConfig {
        DeviceConfig {
            name: place.to_string(),
            device_type: self.device_type.clone(),
            tags: self.tags.clone(),
            settings: self.settings.clone(),
            secret_settings: self.secret_settings.clone(),
            driver: DriverConfig::Labgrid(Box::new(self.clone())),
        }
    }
}

impl LabgridConfig {
    pub(crate) fn validate(&self, key: &str, lib: &Library) -> anyhow::Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.name.starts_with('.')
        {
            bail!(
                "{key}.name `{}`: expected letters, digits, `-`, `_` or `.` (it names the agent's journal file of this coordinator)",
                self.name
            );
        }
        let (host, port) = self.coordinator.rsplit_once(':').unwrap_or(("", ""));
        if host.is_empty() || port.parse::<u16>().is_err() {
            bail!(
                "{key}.coordinator `{}`: expected HOST:PORT (e.g. 127.0.0.1:20408)",
                self.coordinator
            );
        }
        if self.client.is_empty() || self.client[0].is_empty() {
            bail!("{key}.client: must name a program (e.g. [labgrid-client])");
        }
        for (what, v) in [("user", &self.user), ("host", &self.host)] {
            if let Some(v) = v
                && (v.is_empty() || v.contains('/') || v.contains(char::is_whitespace))
            {
                bail!("{key}.{what} `{v}`: expected a name without `/` or spaces");
            }
        }
        if self.poll_interval < Duration::from_secs(1) {
            bail!("{key}.poll_interval: expected at least 1s");
        }
        if self.command_timeout < Duration::from_secs(1) {
            bail!("{key}.command_timeout: expected at least 1s");
        }
        if self.places.is_empty() {
            bail!("{key}.places: name at least one place (by `name` or `match_tags`)");
        }
        for (i, p) in self.places.iter().enumerate() {
            let pkey = format!("{key}.places[{i}]");
            match (&p.name, p.match_tags.is_empty()) {
                (Some(n), true) if !n.is_empty() => {}
                (None, false) => {}
                _ => bail!("{pkey}: expected exactly one of `name` and `match_tags`"),
            }
            if lib.get(&p.device_type).is_none() {
                bail!(
                    "{pkey}.device_type: `{}` is not in the device-type library (known: {})",
                    p.device_type,
                    lib.names().join(", ")
                );
            }
            let d = p.device(p.name.as_deref().unwrap_or("place"));
            d.validate_secrets(&pkey)?;
            if let Some(c) = &p.console {
                validate_console(&format!("{pkey}.console"), c, &d)?;
            }
            if let Some(c) = &p.deploy_command {
                validate_command(&format!("{pkey}.deploy_command"), c, &d)?;
            }
            validate_boot_login(&pkey, &p.boot, &p.login, &d, false)?;
        }
        Ok(())
    }
}

fn default_labgrid_client() -> Vec<String> {
    vec!["labgrid-client".into()]
}
fn default_labgrid_poll() -> Duration {
    Duration::from_secs(10)
}
fn default_labgrid_acquire() -> Duration {
    Duration::from_secs(120)
}
fn default_labgrid_command() -> Duration {
    Duration::from_secs(30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    const BASE: &str = "lab: lab-a\ncoordinator: {url: 'https://127.0.0.1:7443', ca: ca.pem, cert: a.pem, key: a.key}\n";

    fn lg(extra: &str) -> String {
        format!("{BASE}labgrid:\n  - name: main\n    coordinator: 127.0.0.1:20408\n{extra}")
    }

    #[test]
    fn places_by_name_and_by_tags() {
        let cfg = AgentConfig::parse(&lg("    places:\n      - {name: b1, device_type: qemu-x86_64}\n      - {match_tags: {board: bbb}, device_type: beaglebone-black, tags: [x]}\n")).unwrap();
        let l = &cfg.labgrid[0];
        assert_eq!(l.client, ["labgrid-client"]);
        assert_eq!(l.acquire_timeout, Duration::from_secs(120));
        let tags: BTreeMap<String, String> = [("board".to_string(), "bbb".to_string())].into();
        assert!(l.places[0].matches("b1", &BTreeMap::new()));
        assert!(!l.places[0].matches("b10", &BTreeMap::new()));
        assert!(l.places[1].matches("anything", &tags));
        assert!(!l.places[1].matches("anything", &BTreeMap::new()));
        assert_eq!(l.places[1].device("p").driver.kind(), "labgrid");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "    places: []\n",
                "labgrid[0].places: name at least one place",
            ),
            (
                "    places:\n      - {device_type: qemu-x86_64}\n",
                "labgrid[0].places[0]: expected exactly one of `name` and `match_tags`",
            ),
            (
                "    places:\n      - {name: a, match_tags: {b: c}, device_type: qemu-x86_64}\n",
                "exactly one of",
            ),
            (
                "    places:\n      - {name: a, device_type: nope}\n",
                "labgrid[0].places[0].device_type: `nope`",
            ),
            (
                "    places:\n      - {name: a, device_type: qemu-x86_64, login: {shell_prompt: '('}}\n",
                "labgrid[0].places[0].login.shell_prompt",
            ),
            (
                "    places:\n      - {name: a, device_type: qemu-x86_64, deploy_command: [sh, -c, '{params.x}']}\n",
                "deploy_command[2] `{params.x}`: `sh -c` runs this argument as its script",
            ),
            (
                "    user: 'a/b'\n    places:\n      - {name: a, device_type: qemu-x86_64}\n",
                "labgrid[0].user `a/b`",
            ),
            (
                "    places:\n      - {name: a, device_type: qemu-x86_64, colour: red}\n",
                "unknown field `colour`",
            ),
        ];
        for (extra, want) in cases {
            let e = AgentConfig::parse(&lg(extra)).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(want), "{extra:?}: {msg}");
        }
        let e = AgentConfig::parse(&format!(
            "{BASE}labgrid:\n  - {{name: m, coordinator: nohost, places: [{{name: a, device_type: qemu-x86_64}}]}}\n"
        ))
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("labgrid[0].coordinator `nohost`"),
            "{e:#}"
        );
        // A labgrid driver cannot be written in devices: (the section makes those).
        let e = AgentConfig::parse(&format!(
            "{BASE}devices:\n  - {{name: h, device_type: lab-host, driver: {{type: labgrid}}}}\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("labgrid"), "{e:#}");
    }

    /// Both ways of writing a console load: the map of config/agent.yaml and the YAML tag.
    #[test]
    fn a_console_loads_as_a_map_and_as_a_tag() {
        for console in [
            "console: {tcp: {address: '127.0.0.1:7001'}}",
            "console: !tcp {address: '127.0.0.1:7001'}",
            "console:\n          tcp:\n            address: '127.0.0.1:7001'",
        ] {
            let cfg = AgentConfig::parse(&lg(&format!(
                "    places:\n      - name: b1\n        device_type: qemu-x86_64\n        power: none\n        {console}\n"
            )))
            .unwrap_or_else(|e| panic!("{console}: {e:#}"));
            let p = &cfg.labgrid[0].places[0];
            assert!(
                matches!(&p.console, Some(ConsoleConfig::Tcp { address }) if address == "127.0.0.1:7001"),
                "{console}: {:?}",
                p.console
            );
            assert_eq!(p.power, PlacePower::None);
        }
        let cfg = AgentConfig::parse(&lg(
            "    places:\n      - {name: b1, device_type: qemu-x86_64}\n",
        ))
        .unwrap();
        assert!(cfg.labgrid[0].places[0].console.is_none());
        assert_eq!(cfg.labgrid[0].places[0].power, PlacePower::Labgrid);
        let e = AgentConfig::parse(&lg(
            "    places:\n      - {name: b1, device_type: qemu-x86_64, power: pdu}\n",
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("power"), "{e:#}");
        let e = AgentConfig::parse(&format!(
            "{BASE}labgrid:\n  - {{name: ../x, coordinator: 'h:1', places: [{{name: a, device_type: qemu-x86_64}}]}}\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("labgrid[0].name `../x`"), "{e:#}");
    }

    /// The commented-out `labgrid:` example of config/agent.yaml is a valid config.
    #[test]
    fn the_shipped_labgrid_example_loads() {
        let text = include_str!("../../../config/agent.yaml");
        let start = text.find("\n# labgrid:\n").expect("a labgrid example") + 1;
        let block: String = text[start..]
            .lines()
            .map(|l| {
                let l = l
                    .strip_prefix("# ")
                    .or_else(|| l.strip_prefix('#'))
                    .unwrap_or(l);
                format!("{l}\n")
            })
            .collect();
        let cfg = AgentConfig::parse(&format!("{BASE}{block}")).unwrap();
        assert_eq!(cfg.labgrid[0].places.len(), 2);
        assert!(cfg.labgrid[0].places[1].power_cycle);
    }
}
