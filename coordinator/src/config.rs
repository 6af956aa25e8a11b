//! The coordinator's configuration file (`/etc/labwire/coordinator.yaml`): parsed with unknown
//! keys refused, defaults filled in, then checked by one validation pass whose errors name the
//! file and the key.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Config files larger than this are refused before parsing.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Reads a config file, refusing one larger than [`MAX_CONFIG_BYTES`].
pub fn read_config_text(path: &Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size > MAX_CONFIG_BYTES {
        bail!(
            "{}: {size} bytes is too big for a config file (at most {MAX_CONFIG_BYTES})",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The whole coordinator configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address of the gRPC port (agents and clients). Default `0.0.0.0:7443`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory for the database and the CA. Default `/var/lib/labwire-coordinator`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where the store lives: `sqlite://PATH` (one coordinator process) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (several replicas may share it). Default
    /// `sqlite://{data_dir}/labwire.db`.
    #[serde(default)]
    pub store: Option<String>,
    /// The URL agents and clients use to reach this coordinator; written into agent config
    /// skeletons and used as the CloudEvents `source`. Default `https://localhost:7443`.
    #[serde(default = "default_public_url")]
    pub public_url: String,
    /// TLS files.
    #[serde(default)]
    pub tls: TlsFiles,
    /// Leases and retries of jobs.
    #[serde(default)]
    pub leases: LeaseConfig,
    /// Several coordinator replicas on one PostgreSQL store.
    #[serde(default)]
    pub replicas: ReplicaConfig,
    /// The event log.
    #[serde(default)]
    pub events: EventConfig,
    /// Retries of jobs whose attempt failed for an infrastructure reason.
    #[serde(default)]
    pub retries: RetryConfig,
    /// Scheduler configuration files in the KernelCI pipeline format (`jobs:`,
    /// `platforms:`, `runtimes:`, `scheduler:`); relative paths are read from the folder of
    /// this file. None: no scheduler (jobs come from `labwire submit` only).
    #[serde(default)]
    pub pipeline: Vec<PathBuf>,
    /// The placement rules file (`placement.yaml`); relative to this file's folder.
    #[serde(default)]
    pub placement: Option<PathBuf>,
    /// The HTTP/JSON side.
    #[serde(default)]
    pub http: crate::pipeline::config::HttpConfig,
    /// The timeout service.
    #[serde(default)]
    pub timeouts: crate::pipeline::config::TimeoutConfig,
    /// The trigger.
    #[serde(default)]
    pub trigger: crate::pipeline::config::TriggerConfig,
    /// Reports.
    #[serde(default)]
    pub reports: crate::pipeline::config::ReportConfig,
    /// Health alerts to the labs' contacts.
    #[serde(default)]
    pub alerts: crate::pipeline::config::AlertConfig,
    /// Limits on the connections of each port (gRPC and HTTP).
    #[serde(default)]
    pub connections: crate::net::ConnectionLimits,
    /// Limits on stored result trees.
    #[serde(default)]
    pub results: crate::results::ResultsConfig,
    /// KernelCI interop: joining KernelCI as a pull lab, KernelCI's API read routes.
    #[serde(default)]
    pub kernelci: crate::pipeline::kernelci::config::KernelciConfig,
}

/// Retries of jobs that ended `incomplete` because the infrastructure failed. Test
/// failures and kernel problems (boot_timeout, login_failed, a panic) are never retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// At most this many retries of a job (its `retry_counter`). Default 2; 0 disables.
    #[serde(default = "default_max_retries")]
    pub max: u32,
    /// The error codes that are retried. Default: every infrastructure code
    /// ([`labwire_common::ErrorCode::infrastructure`]: infrastructure, agent_restart,
    /// download_failed, deploy_failed, power_failed, console_lost, place_unavailable,
    /// place_lost, lease_expired, invalid_config, lava_configuration, lava_bug, submit_error).
    #[serde(default = "default_retry_codes")]
    pub error_codes: Vec<String>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max: default_max_retries(),
            error_codes: default_retry_codes(),
        }
    }
}

impl RetryConfig {
    /// The store's view of it.
    pub(crate) fn policy(&self) -> crate::store::RetryPolicy {
        crate::store::RetryPolicy {
            max: self.max as i32,
            error_codes: self.error_codes.clone(),
        }
    }
}

fn default_retry_codes() -> Vec<String> {
    labwire_common::ErrorCode::infrastructure()
        .iter()
        .map(|c| c.to_string())
        .collect()
}

/// TLS files of the coordinator; each defaults to a file under `{data_dir}/pki/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The server certificate (PEM). Default `{data_dir}/pki/server.pem`.
    pub cert: Option<PathBuf>,
    /// The server key (PEM). Default `{data_dir}/pki/server.key`.
    pub key: Option<PathBuf>,
    /// The CA that signs agent certificates (PEM). Default `{data_dir}/pki/ca.pem`.
    pub client_ca: Option<PathBuf>,
}

/// How jobs are leased to agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// How long a lease lasts without a heartbeat. Default `60s`.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub duration: Duration,
    /// How often agents send heartbeats. Default `15s`; must be under a third of `duration`.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How many times a job whose lease expired goes back to the queue before it ends
    /// `incomplete` with `error_code=lease_expired`. Default 2.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// How often the liveness that heartbeats bring (lease renewals, the lab's last call)
    /// is written to the store, in one transaction; in between it is held in memory. Default
    /// `2s`, or a quarter of `duration` when that is shorter; at most a third of `duration`,
    /// so that a renewal is on disk long before its lease could run out there.
    #[serde(default, with = "humantime_serde")]
    pub write_interval: Option<Duration>,
}

impl LeaseConfig {
    /// How long after its last call a lab counts as silent (offline): two heartbeat
    /// intervals and 5 s.
    pub fn silent_after(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.heartbeat * 2 + Duration::from_secs(5))
            .unwrap_or(chrono::Duration::MAX)
    }

    /// How often held liveness is written: `write_interval`, or its default.
    pub fn write_every(&self) -> Duration {
        self.write_interval
            .unwrap_or_else(|| (self.duration / 4).min(Duration::from_secs(2)))
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            duration: default_lease(),
            heartbeat: default_heartbeat(),
            max_retries: default_max_retries(),
            write_interval: None,
        }
    }
}

/// Replicas: one of them (the leader) runs the services that must run once (scheduler,
/// trigger, timeouts, lease sweeps, event pruning, reports).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// How long the leader's claim lasts; it renews it every third of that. When the leader
    /// dies, another replica takes over after at most this long. Default `10s`. Keep the
    /// replicas' clocks in sync (NTP): the claim is compared with each replica's clock.
    #[serde(default = "default_leader_ttl", with = "humantime_serde")]
    pub leader_ttl: Duration,
}

fn default_leader_ttl() -> Duration {
    Duration::from_secs(10)
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            leader_ttl: default_leader_ttl(),
        }
    }
}

/// The event log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventConfig {
    /// How long events are kept; subscribers away longer must start again. Default `30d`.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            retention: default_retention(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7443))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/labwire-coordinator")
}
fn default_public_url() -> String {
    "https://localhost:7443".into()
}
fn default_lease() -> Duration {
    Duration::from_secs(60)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}
fn default_max_retries() -> u32 {
    2
}
fn default_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: default_listen(),
            data_dir: default_data_dir(),
            store: None,
            public_url: default_public_url(),
            tls: TlsFiles::default(),
            leases: LeaseConfig::default(),
            replicas: ReplicaConfig::default(),
            events: EventConfig::default(),
            retries: RetryConfig::default(),
            pipeline: Vec::new(),
            placement: None,
            http: Default::default(),
            timeouts: Default::default(),
            trigger: Default::default(),
            reports: Default::default(),
            alerts: Default::default(),
            connections: Default::default(),
            results: Default::default(),
            kernelci: Default::default(),
        }
    }
}

impl CoordinatorConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = read_config_text(path)?;
        let mut cfg = Self::parse(&text).with_context(|| format!("in {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in cfg.pipeline.iter_mut().chain(cfg.placement.iter_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: CoordinatorConfig = yaml_serde::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.leases.duration < Duration::from_secs(1) {
            bail!("leases.duration must be at least 1s");
        }
        if self.leases.heartbeat.is_zero() || self.leases.heartbeat * 3 > self.leases.duration {
            bail!(
                "leases.heartbeat ({}) must be more than 0 and at most a third of leases.duration ({})",
                humantime::format_duration(self.leases.heartbeat),
                humantime::format_duration(self.leases.duration)
            );
        }
        if let Some(w) = self.leases.write_interval
            && (w < Duration::from_millis(10) || w * 3 > self.leases.duration)
        {
            bail!(
                "leases.write_interval ({}) must be at least 10ms and at most a third of leases.duration ({})",
                humantime::format_duration(w),
                humantime::format_duration(self.leases.duration)
            );
        }
        if self.replicas.leader_ttl < Duration::from_secs(1) {
            bail!("replicas.leader_ttl must be at least 1s");
        }
        if let Some(s) = &self.store {
            crate::store::Location::parse(s).map_err(anyhow::Error::msg)?;
        }
        if !(self.public_url.starts_with("https://")) {
            bail!("public_url `{}` must start with https://", self.public_url);
        }
        crate::pipeline::config::validate(&self.timeouts, &self.trigger, &self.reports)?;
        crate::pipeline::config::validate_alerts(&self.alerts, &self.reports)?;
        self.connections.validate()?;
        self.results.validate()?;
        self.kernelci.validate()?;
        Ok(())
    }

    /// Where the store lives (`store:`, else the SQLite file in `data_dir`).
    pub fn store_location(&self) -> crate::store::Location {
        match self.store.as_deref().map(crate::store::Location::parse) {
            Some(Ok(l)) => l,
            // `validate` refused anything else when the file was loaded; a config built in
            // code with a bad value falls back to the default file.
            _ => crate::store::Location::Sqlite(self.data_dir.join("labwire.db")),
        }
    }

    /// The directory of the CA and server certificate.
    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }

    /// The server certificate file.
    pub fn cert_path(&self) -> PathBuf {
        self.tls
            .cert
            .clone()
            .unwrap_or_else(|| self.pki_dir().join("server.pem"))
    }

    /// The server key file.
    pub fn key_path(&self) -> PathBuf {
        self.tls
            .key
            .clone()
            .unwrap_or_else(|| self.pki_dir().join("server.key"))
    }

    /// The client CA file.
    pub fn client_ca_path(&self) -> PathBuf {
        self.tls
            .client_ca
            .clone()
            .unwrap_or_else(|| self.pki_dir().join("ca.pem"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c =
            CoordinatorConfig::parse("data_dir: /tmp/x\nleases: {duration: 30s, heartbeat: 5s}\n")
                .unwrap();
        assert_eq!(
            c.store_location(),
            crate::store::Location::Sqlite(PathBuf::from("/tmp/x/labwire.db"))
        );
        assert_eq!(c.leases.duration, Duration::from_secs(30));
        let e = CoordinatorConfig::parse("listen: 1.2.3.4:5\nbogus: 1\n").unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `bogus`"), "{e:#}");
        let e = CoordinatorConfig::parse("leases: {duration: 30s, heartbeat: 20s}\n").unwrap_err();
        assert!(format!("{e:#}").contains("leases.heartbeat"), "{e:#}");
        let e = CoordinatorConfig::parse("leases: {duration: soon}\n").unwrap_err();
        assert!(format!("{e:#}").contains("leases.duration"), "{e:#}");
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_shipped_example_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/coordinator.yaml");
        let cfg = super::CoordinatorConfig::load(std::path::Path::new(path)).unwrap();
        assert_eq!(cfg.leases.max_retries, 2);
    }
}
