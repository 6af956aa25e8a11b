//! Board health on the agent: each device's health as the agent sees it (good, or bad with
//! the reason), its infrastructure-failure streak and the time of its last health check,
//! kept in `STATE_DIR/health.json` so that a quarantine survives an agent restart. A device
//! whose last `health.quarantine_after` jobs ended with infrastructure error codes is
//! quarantined (bad) by itself and offered no more; it comes back after a passing health
//! check (`health.checks`, run by `daemon::health_check`), or, without one, when an admin
//! resumes it (`labwire device resume`). The coordinator lays an admin's maintenance or
//! retirement over what the agent reports.

use labwire_common::{ErrorCode, Health};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `health:` section of agent.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// A device whose last this many jobs ended with infrastructure error codes is
    /// quarantined (bad); 0 never quarantines. Default 3.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
    /// How often each device with a health check is checked again (0s: only at agent
    /// start, after a resume and after a quarantine). Default 24h.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// The health checks: one per device type or per device (a device's own wins).
    #[serde(default)]
    pub checks: Vec<HealthCheck>,
}

/// One health check: a small job the agent runs itself on a device, through the device's
/// own driver (power, boot, login, commands).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// The device it checks, or
    #[serde(default)]
    pub device: Option<String>,
    /// every device of this type.
    #[serde(default)]
    pub device_type: Option<String>,
    /// The commands run after the login; each must exit 0.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Artifacts by role (kernel, ramdisk, ...): URLs fetched under the agent's usual rules.
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
    /// Job parameters, as a submitter would give them.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The time limit of the check. Default 10m.
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            quarantine_after: default_quarantine_after(),
            interval: default_interval(),
            checks: Vec::new(),
        }
    }
}

fn default_quarantine_after() -> u32 {
    3
}

fn default_interval() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(600)
}

impl HealthConfig {
    /// Checks the values; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.quarantine_after > 1000 {
            anyhow::bail!(
                "health.quarantine_after: expected 0 (never) to 1000 jobs, got {}",
                self.quarantine_after
            );
        }
        if !self.interval.is_zero() && self.interval < Duration::from_secs(60) {
            anyhow::bail!(
                "health.interval: expected 0s (never) or at least 1m, got {:?}",
                self.interval
            );
        }
        for (i, c) in self.checks.iter().enumerate() {
            let key = format!("health.checks[{i}]");
            match (&c.device, &c.device_type) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => anyhow::bail!("{key}: give exactly one of `device` and `device_type`"),
            }
            if c.timeout.is_zero() || c.timeout > Duration::from_secs(24 * 3600) {
                anyhow::bail!("{key}.timeout: expected 1s to 24h, got {:?}", c.timeout);
            }
            for (role, url) in &c.artifacts {
                crate::fetch::check_role(role)
                    .map_err(|e| anyhow::anyhow!("{key}.artifacts: role `{role}`: {e}"))?;
                if url.is_empty() {
                    anyhow::bail!("{key}.artifacts.{role}: empty URL");
                }
            }
        }
        for (i, a) in self.checks.iter().enumerate() {
            for b in &self.checks[..i] {
                if (a.device.is_some() && a.device == b.device)
                    || (a.device_type.is_some() && a.device_type == b.device_type)
                {
                    anyhow::bail!("health.checks[{i}]: a second check for the same device or type");
                }
            }
        }
        Ok(())
    }

    /// The check for a device: its own, else its type's.
    pub fn check_for(&self, device: &str, device_type: &str) -> Option<&HealthCheck> {
        self.checks
            .iter()
            .find(|c| c.device.as_deref() == Some(device))
            .or_else(|| {
                self.checks
                    .iter()
                    .find(|c| c.device_type.as_deref() == Some(device_type))
            })
    }
}

/// One device's health as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceHealth {
    /// Good or bad.
    pub health: Health,
    /// Why it is bad; empty when good.
    #[serde(default)]
    pub reason: String,
    /// When its last health check ended (seconds since the epoch; 0: never).
    #[serde(default)]
    pub last_check: i64,
    /// Jobs in a row that ended with an infrastructure error.
    #[serde(default)]
    pub failure_streak: u32,
}

impl Default for DeviceHealth {
    fn default() -> Self {
        DeviceHealth {
            health: Health::Good,
            reason: String::new(),
            last_check: 0,
            failure_streak: 0,
        }
    }
}

/// The health of every device, kept in a file of the state folder.
#[derive(Debug)]
pub struct HealthBook {
    path: PathBuf,
    devices: BTreeMap<String, DeviceHealth>,
}

impl HealthBook {
    /// Reads `STATE_DIR/health.json`; a missing file is an empty book, a damaged one is
    /// logged and replaced.
    pub fn open(state_dir: &Path) -> HealthBook {
        let path = state_dir.join("health.json");
        let devices = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(file = %path.display(), error = %e, "damaged health file; starting with every device good");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the health file; starting with every device good");
                BTreeMap::new()
            }
        };
        HealthBook { path, devices }
    }

    /// A device's health (good when never heard of).
    pub fn get(&self, device: &str) -> DeviceHealth {
        self.devices.get(device).cloned().unwrap_or_default()
    }

    /// Records how a job on `device` ended. An infrastructure error code lengthens the
    /// streak and, at `quarantine_after`, makes the device bad; any other end clears the
    /// streak. Returns whether anything changed (the device list is advertised again).
    pub fn job_ended(
        &mut self,
        device: &str,
        error: Option<(&ErrorCode, &str)>,
        quarantine_after: u32,
    ) -> bool {
        let before = self.get(device);
        let mut h = before.clone();
        match error {
            Some((code, msg)) if code.is_infrastructure() => {
                h.failure_streak = h.failure_streak.saturating_add(1);
                if quarantine_after > 0 && h.failure_streak >= quarantine_after && h.health.usable()
                {
                    h.health = Health::Bad;
                    h.reason = format!(
                        "quarantined: the last {} jobs ended with infrastructure errors \
                         (last: {code}: {})",
                        h.failure_streak,
                        labwire_common::names::shorten(msg, 200)
                    );
                    tracing::warn!(device, reason = %h.reason, "device quarantined");
                }
            }
            _ => h.failure_streak = 0,
        }
        self.set(device, h, &before)
    }

    /// An admin resumed the device: it is good again and its streak starts over.
    pub fn resume(&mut self, device: &str) -> bool {
        let before = self.get(device);
        if before.health != Health::Good || before.failure_streak > 0 {
            tracing::info!(device, "device resumed by an admin");
        }
        let h = DeviceHealth {
            last_check: before.last_check,
            ..Default::default()
        };
        self.set(device, h, &before)
    }

    /// An admin resumed a device that has a health check: its streak starts over, but a
    /// quarantined device stays bad until the check (run next) passes.
    pub fn resume_pending_check(&mut self, device: &str) -> bool {
        let before = self.get(device);
        let mut h = before.clone();
        h.failure_streak = 0;
        if !h.health.usable() {
            h.reason = format!(
                "resumed by an admin; bad until a health check passes (was: {})",
                labwire_common::names::shorten(&before.reason, 200)
            );
        }
        self.set(device, h, &before)
    }

    /// A health check ended at `now` (seconds since the epoch): passing makes the device
    /// good, failing makes it bad with `failure` as the reason.
    pub fn check_ended(&mut self, device: &str, failure: Option<String>, now: i64) -> bool {
        let before = self.get(device);
        let h = match failure {
            None => DeviceHealth {
                last_check: now,
                ..Default::default()
            },
            Some(reason) => DeviceHealth {
                health: Health::Bad,
                reason,
                last_check: now,
                failure_streak: before.failure_streak,
            },
        };
        self.set(device, h, &before)
    }

    fn set(&mut self, device: &str, h: DeviceHealth, before: &DeviceHealth) -> bool {
        if &h == before {
            return false;
        }
        if h == DeviceHealth::default() {
            self.devices.remove(device);
        } else {
            self.devices.insert(device.to_string(), h);
        }
        if let Err(e) = self.save() {
            tracing::error!(file = %self.path.display(), error = %e, "cannot write the health file");
        }
        true
    }

    /// Writes the book: a private temporary file renamed over the old one.
    fn save(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = crate::state::private_create().open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&self.devices).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_infrastructure_failures_quarantine_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = HealthBook::open(dir.path());
        let power = ErrorCode::PowerFailed;
        assert!(b.job_ended("b1", Some((&power, "power_on_command exited 1")), 3));
        // A kernel panic is not the lab's fault: the streak starts over.
        assert!(b.job_ended("b1", Some((&ErrorCode::KernelPanic, "panic")), 3));
        assert_eq!(b.get("b1").failure_streak, 0);
        for _ in 0..2 {
            b.job_ended("b1", Some((&power, "power_on_command exited 1")), 3);
        }
        assert_eq!(b.get("b1").health, Health::Good);
        b.job_ended("b1", Some((&power, "power_on_command exited 1")), 3);
        let h = b.get("b1");
        assert_eq!((h.health, h.failure_streak), (Health::Bad, 3));
        assert!(h.reason.contains("power_failed"), "{}", h.reason);
        // A restart keeps it; a passing job cannot run on it, only a resume clears it.
        let mut b = HealthBook::open(dir.path());
        assert_eq!(b.get("b1").health, Health::Bad);
        assert!(b.resume("b1"));
        assert_eq!(b.get("b1"), DeviceHealth::default());
        assert!(!b.resume("b1"));
        // 0: never quarantined.
        for _ in 0..5 {
            b.job_ended("b2", Some((&power, "x")), 0);
        }
        assert_eq!(b.get("b2").health, Health::Good);
    }

    #[test]
    fn checks_are_validated_and_a_device_s_own_check_wins() {
        let parse = |y: &str| -> anyhow::Result<HealthConfig> {
            let c: HealthConfig = yaml_serde::from_str(y)?;
            c.validate()?;
            Ok(c)
        };
        let c =
            parse("checks:\n- {device_type: t, commands: [a]}\n- {device: d1, commands: [b]}\n")
                .unwrap();
        assert_eq!(c.check_for("d1", "t").unwrap().commands, ["b"]);
        assert_eq!(c.check_for("d2", "t").unwrap().commands, ["a"]);
        assert!(c.check_for("d2", "u").is_none());
        for (y, want) in [
            (
                "checks: [{commands: [a]}]",
                "exactly one of `device` and `device_type`",
            ),
            ("checks: [{device: a, device_type: t}]", "exactly one"),
            ("checks: [{device: a, timeout: 0s}]", "checks[0].timeout"),
            ("interval: 5s", "health.interval"),
            ("checks: [{device: a}, {device: a}]", "a second check"),
            (
                "checks: [{device: a, artifacts: {'../x': 'file:///k'}}]",
                "role `../x`",
            ),
        ] {
            let e = format!("{:#}", parse(y).unwrap_err());
            assert!(e.contains(want), "{y}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut b = HealthBook::open(dir.path());
        assert!(b.check_ended("d1", Some("health check failed: x".into()), 5));
        assert!(b.resume_pending_check("d1"));
        assert_eq!(b.get("d1").health, Health::Bad);
        assert!(b.check_ended("d1", None, 9));
        let h = b.get("d1");
        assert_eq!(
            (h.health, h.last_check, h.reason.as_str()),
            (Health::Good, 9, "")
        );
    }

    #[test]
    fn a_damaged_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("health.json"), b"{not json").unwrap();
        let b = HealthBook::open(dir.path());
        assert_eq!(b.get("b1"), DeviceHealth::default());
    }
}
