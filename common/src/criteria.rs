//! What a job asks of a device (its criteria) and what a device offers, with the matching rule
//! that the coordinator (to pick a lab) and the agent (to pick a board) both apply.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The health of a device as its agent reports it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Working; jobs may run on it.
    #[default]
    Good,
    /// Not known yet (never used, or the back end does not say); jobs may run on it.
    Unknown,
    /// Failing or retired; no job is placed on it.
    Bad,
    /// Taken out of service by an admin; no job is placed on it.
    Maintenance,
    /// Retired by an admin for good; no job is placed on it.
    Retired,
}

impl Health {
    /// Whether a job may be placed on a device in this state.
    pub fn usable(self) -> bool {
        matches!(self, Health::Good | Health::Unknown)
    }

    /// The lower-case name (`good`, `bad`, `maintenance`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Good => "good",
            Health::Unknown => "unknown",
            Health::Bad => "bad",
            Health::Maintenance => "maintenance",
            Health::Retired => "retired",
        }
    }

    /// The health of a lower-case name, if it is one.
    pub fn parse(s: &str) -> Option<Health> {
        [
            Health::Good,
            Health::Unknown,
            Health::Bad,
            Health::Maintenance,
            Health::Retired,
        ]
        .into_iter()
        .find(|h| h.as_str() == s)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device as an agent advertises it: its name, device type, the driver that runs it, the
/// properties of its device type (arch, mach, boot_method, ...), features and tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceInfo {
    /// The device's name, unique in its lab.
    pub name: String,
    /// Its device type (KernelCI's platform `base_name`).
    pub device_type: String,
    /// The driver that runs jobs on it: `shell`, `serial`, `lava` or `labgrid`.
    pub driver: String,
    /// Device-type properties such as `arch`, `mach`, `boot_method`, `dtb`, `compatible`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Capabilities of the device type (`kvm`, `usb`, ...).
    #[serde(default)]
    pub features: Vec<String>,
    /// Free-form labels set by the lab admin.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Current health.
    #[serde(default)]
    pub health: Health,
    /// Why the device is in this health (a failed health check, a quarantine, an admin's
    /// reason); empty when good.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_reason: String,
    /// When its last health check ended, in seconds since the Unix epoch (0: never).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_check: i64,
    /// How many jobs in a row ended with an infrastructure error on it.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub failure_streak: u32,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// What a job requires of the device that runs it. Every field that is set must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Criteria {
    /// The device type, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// The architecture (`x86_64`, `arm64`, ...), compared with the `arch` property.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// The driver (runtime type): `shell`, `serial`, `lava` or `labgrid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Other properties the device type must have, each with this exact value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Features the device type must all have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Tags the device must all carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Only these devices (by name), if not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Device types not to use (earlier runs of a variant used them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid_device_types: Vec<String>,
    /// Devices (by name) not to use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid_devices: Vec<String>,
}

/// Why a device does not meet a job's criteria.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The device's health does not allow jobs.
    Health(Health),
    /// A field's wanted value differs from the device's.
    Field {
        /// The field (`device_type`, `arch`, a property name, ...).
        field: String,
        /// What the job wants.
        wanted: String,
        /// What the device has, if anything.
        found: Option<String>,
    },
    /// The device lacks a required feature or tag.
    Missing {
        /// `feature` or `tag`.
        what: &'static str,
        /// The missing value.
        value: String,
    },
    /// The job excludes this device or its type.
    Avoided(String),
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Health(h) => write!(f, "device health is {h}"),
            Mismatch::Field {
                field,
                wanted,
                found: Some(found),
            } => write!(f, "{field} is `{found}`, job wants `{wanted}`"),
            Mismatch::Field {
                field,
                wanted,
                found: None,
            } => write!(f, "device has no {field}, job wants `{wanted}`"),
            Mismatch::Missing { what, value } => write!(f, "device lacks {what} `{value}`"),
            Mismatch::Avoided(why) => write!(f, "job avoids {why}"),
        }
    }
}

impl Criteria {
    /// Checks the device against every criterion; the first one that fails is returned.
    pub fn check(&self, d: &DeviceInfo) -> Result<(), Mismatch> {
        if !d.health.usable() {
            return Err(Mismatch::Health(d.health));
        }
        let field = |field: &str, wanted: &Option<String>, found: Option<&String>| match wanted {
            Some(w) if found != Some(w) => Err(Mismatch::Field {
                field: field.to_string(),
                wanted: w.clone(),
                found: found.cloned(),
            }),
            _ => Ok(()),
        };
        field("device_type", &self.device_type, Some(&d.device_type))?;
        field("driver", &self.driver, Some(&d.driver))?;
        field("arch", &self.arch, d.properties.get("arch"))?;
        for (k, v) in &self.properties {
            field(k, &Some(v.clone()), d.properties.get(k))?;
        }
        for f in &self.features {
            if !d.features.contains(f) {
                return Err(Mismatch::Missing {
                    what: "feature",
                    value: f.clone(),
                });
            }
        }
        for t in &self.tags {
            if !d.tags.contains(t) {
                return Err(Mismatch::Missing {
                    what: "tag",
                    value: t.clone(),
                });
            }
        }
        if !self.devices.is_empty() && !self.devices.contains(&d.name) {
            return Err(Mismatch::Field {
                field: "device".into(),
                wanted: self.devices.join("|"),
                found: Some(d.name.clone()),
            });
        }
        if self.avoid_device_types.contains(&d.device_type) {
            return Err(Mismatch::Avoided(format!(
                "device type `{}`",
                d.device_type
            )));
        }
        if self.avoid_devices.contains(&d.name) {
            return Err(Mismatch::Avoided(format!("device `{}`", d.name)));
        }
        Ok(())
    }

    /// Whether the device meets every criterion.
    pub fn matches(&self, d: &DeviceInfo) -> bool {
        self.check(d).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu() -> DeviceInfo {
        DeviceInfo {
            name: "qemu-1".into(),
            device_type: "qemu-x86_64".into(),
            driver: "serial".into(),
            properties: [("arch".to_string(), "x86_64".to_string())].into(),
            features: vec!["kvm".into()],
            tags: vec!["fast".into()],
            health: Health::Good,
            ..Default::default()
        }
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, Criteria, Result<(), &str>)> = vec![
            ("empty matches all", Criteria::default(), Ok(())),
            (
                "device type",
                Criteria {
                    device_type: Some("qemu-x86_64".into()),
                    ..Default::default()
                },
                Ok(()),
            ),
            (
                "wrong arch",
                Criteria {
                    arch: Some("arm64".into()),
                    ..Default::default()
                },
                Err("arch is `x86_64`, job wants `arm64`"),
            ),
            (
                "missing property",
                Criteria {
                    properties: [("mach".to_string(), "rockchip".to_string())].into(),
                    ..Default::default()
                },
                Err("device has no mach, job wants `rockchip`"),
            ),
            (
                "tag",
                Criteria {
                    tags: vec!["slow".into()],
                    ..Default::default()
                },
                Err("device lacks tag `slow`"),
            ),
            (
                "avoid type",
                Criteria {
                    avoid_device_types: vec!["qemu-x86_64".into()],
                    ..Default::default()
                },
                Err("job avoids device type `qemu-x86_64`"),
            ),
            (
                "feature ok",
                Criteria {
                    features: vec!["kvm".into()],
                    ..Default::default()
                },
                Ok(()),
            ),
        ];
        for (name, c, want) in cases {
            let got = c.check(&qemu()).map_err(|m| m.to_string());
            assert_eq!(got, want.map_err(String::from), "{name}");
        }
    }

    #[test]
    fn bad_health_never_matches() {
        let mut d = qemu();
        d.health = Health::Bad;
        assert_eq!(
            Criteria::default().check(&d),
            Err(Mismatch::Health(Health::Bad))
        );
    }
}
