//! A coordinator for a benchmark: its folder, CA, admin token and lab certificates made
//! in-process with the coordinator library, and the daemon itself run as a separate process
//! (this binary re-executed as `labwire-bench coordinator serve`, which runs the same entry
//! point as `labwire-coordinator`), so that its memory and CPU can be read from `/proc`.
//!
//! The store is an SQLite file in the rig's folder, or a PostgreSQL database
//! ([`StoreChoice`]): then its URL is the config's `store:` and the schema is created by
//! `labwire-bench coordinator migrate` (the same code as `labwire-coordinator migrate`)
//! before anything else opens it, since a PostgreSQL store is never migrated on the way.

use crate::StoreChoice;
use crate::procstat::ProcStat;
use anyhow::Context;
use labwire_coordinator::config::CoordinatorConfig;
use labwire_coordinator::store::{Location, Schema, Store, redact};
use labwire_proto::v1::agent_service_client::AgentServiceClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A lab's client certificate and key (PEM).
#[derive(Clone)]
pub struct LabCert {
    /// The lab's name (the certificate's common name).
    pub lab: String,
    /// Certificate.
    pub cert_pem: String,
    /// Private key.
    pub key_pem: String,
}

/// A coordinator installation in a temporary folder, and its running process.
pub struct Rig {
    dir: tempfile::TempDir,
    cfg: CoordinatorConfig,
    /// The admin token (all scopes).
    pub admin_token: String,
    /// The CA certificate (PEM).
    pub ca_pem: Vec<u8>,
    port: u16,
    child: Option<Child>,
    /// The test server's database when the store is `--store postgres`; dropped (with the
    /// database) after the coordinator has stopped.
    _pg: Option<labwire_testpg::TestDb>,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a free port")?;
    Ok(l.local_addr()?.port())
}

impl Rig {
    /// Creates the folder, config, store (schema included), CA and admin token, with the
    /// store `store`. `extra_config` is appended to the coordinator's YAML config.
    pub fn new(store: &StoreChoice, extra_config: &str) -> anyhow::Result<Rig> {
        let dir = tempfile::Builder::new()
            .prefix("labwire-bench-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        let port = free_port()?;
        let (pg_url, pg) = match store {
            StoreChoice::Sqlite => (None, None),
            StoreChoice::TestPg => {
                let db = labwire_testpg::try_database()
                    .context("--store postgres: no database on the PostgreSQL test server")?;
                (Some(db.url.clone()), Some(db))
            }
            StoreChoice::Url(url) => {
                ensure_empty(url)?;
                (Some(url.clone()), None)
            }
        };
        // A JSON string is a YAML double-quoted scalar: the URL stays whole whatever its
        // password holds.
        let store_line = match &pg_url {
            Some(u) => format!("store: {}\n", serde_json::to_string(u)?),
            None => String::new(),
        };
        let cfg_path = dir.path().join("coordinator.yaml");
        std::fs::write(
            &cfg_path,
            format!(
                "listen: 127.0.0.1:{port}\ndata_dir: {}\npublic_url: https://127.0.0.1:{port}\n{store_line}{extra_config}",
                dir.path().join("coordinator").display()
            ),
        )?;
        let cfg = CoordinatorConfig::load(&cfg_path)?;
        if let Some(url) = &pg_url {
            migrate(&cfg_path)?;
            eprintln!("    store: {}", redact(url));
        }
        let admin_token = labwire_coordinator::cli::ca_init(
            &cfg,
            &["localhost".to_string()],
            &["127.0.0.1".parse()?],
        )?;
        let ca_pem = std::fs::read(cfg.pki_dir().join("ca.pem"))?;
        Ok(Rig {
            dir,
            cfg,
            admin_token,
            ca_pem,
            port,
            child: None,
            _pg: pg,
        })
    }

    /// The coordinator's URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A path in the rig's folder.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Opens the coordinator's store in this process (on SQLite, write only while the daemon
    /// is stopped: it has one writer).
    pub fn open_store(&self) -> anyhow::Result<Store> {
        labwire_coordinator::cli::open_store(&self.cfg)
    }

    /// Issues one certificate per lab named `{prefix}{i}` for i in 0..n and registers the
    /// fingerprints in the store, in one transaction (what `ca issue-agent` does per lab).
    pub fn issue_labs(&self, prefix: &str, n: usize) -> anyhow::Result<Vec<LabCert>> {
        let pki = self.cfg.pki_dir();
        let mut certs = Vec::with_capacity(n);
        let mut regs = Vec::with_capacity(n);
        for i in 0..n {
            let lab = format!("{prefix}{i}");
            let issued = labwire_coordinator::pki::issue_agent_cert(&pki, &lab)?;
            regs.push((lab.clone(), issued.fingerprint.clone(), issued.not_after));
            certs.push(LabCert {
                lab,
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
            });
        }
        let store = self.open_store()?;
        store.write_blocking(|w| {
            for (lab, fp, until) in &regs {
                w.register_lab_cert(lab, fp, Some(*until))?;
            }
            Ok(())
        })?;
        Ok(certs)
    }

    /// Writes a lab's bundle (certificate, key, CA) under the rig and returns its folder.
    pub fn write_bundle(&self, cert: &LabCert) -> anyhow::Result<PathBuf> {
        let out = self.path(&format!("labs/{}", cert.lab));
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("agent.pem"), &cert.cert_pem)?;
        labwire_coordinator::pki::write_private(&out.join("agent.key"), &cert.key_pem)?;
        std::fs::write(out.join("ca.pem"), &self.ca_pem)?;
        Ok(out)
    }

    /// Starts the coordinator process and waits until it listens.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let addr_file = self.path("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::File::create(self.path("coordinator.log"))?;
        let child = Command::new(crate::self_exe()?)
            .arg("coordinator")
            .arg("--config")
            .arg(self.path("coordinator.yaml"))
            .args(["serve", "--addr-file"])
            .arg(&addr_file)
            .env(
                "LABWIRE_LOG",
                std::env::var("LABWIRE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the coordinator")?;
        self.child = Some(child);
        wait_until(Duration::from_secs(60), "the coordinator to listen", || {
            addr_file.exists()
        })?;
        Ok(())
    }

    /// The coordinator's process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(|c| c.id())
            .context("the coordinator is not running")
    }

    /// The coordinator's memory and CPU counters now.
    pub fn stat(&self) -> anyhow::Result<ProcStat> {
        ProcStat::read(self.pid()?)
    }

    /// A client with the admin token.
    pub async fn client(&self) -> anyhow::Result<labwire::client::Clients> {
        labwire::client::connect(&self.url(), &self.ca_pem, &self.admin_token).await
    }

    /// An AgentService client over mutual TLS with a lab's certificate, on its own
    /// connection.
    pub async fn agent_client(
        &self,
        cert: &LabCert,
    ) -> anyhow::Result<AgentServiceClient<Channel>> {
        agent_client(&self.url(), &self.ca_pem, cert).await
    }

    /// Stops the coordinator (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we started and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The folder, kept (and returned) instead of removed, e.g. to read logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Refuses a user's PostgreSQL database that holds any table: the benchmark's figures are
/// for a fresh store, and an earlier run's schema would be taken as is, its data included.
fn ensure_empty(url: &str) -> anyhow::Result<()> {
    let loc = Location::Postgres(url.to_string());
    let store = Store::connect(
        &loc,
        labwire_coordinator::clock::Clock::system(),
        Schema::AsIs,
    )
    .with_context(|| format!("--store: cannot open {loc}"))?;
    let tables: i64 = store.read_blocking(|c| {
        c.query_row(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
            &[],
            |r| r.get(0),
        )
    })?;
    anyhow::ensure!(
        tables == 0,
        "--store {loc}: the database is not empty ({tables} tables); the benchmark needs an \
         empty database for each scenario's coordinator (one CREATE DATABASE per scenario)"
    );
    Ok(())
}

/// Creates the schema of a PostgreSQL store: `labwire-bench coordinator --config CFG
/// migrate`, which runs the same code as `labwire-coordinator migrate`.
fn migrate(cfg_path: &Path) -> anyhow::Result<()> {
    let out = Command::new(crate::self_exe()?)
        .arg("coordinator")
        .arg("--config")
        .arg(cfg_path)
        .arg("migrate")
        .env("LABWIRE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .context("cannot run `labwire-bench coordinator migrate`")?;
    anyhow::ensure!(
        out.status.success(),
        "`coordinator migrate` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// An AgentService client over mutual TLS with `cert`, on its own connection.
pub async fn agent_client(
    url: &str,
    ca_pem: &[u8],
    cert: &LabCert,
) -> anyhow::Result<AgentServiceClient<Channel>> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    let ch = Channel::from_shared(url.to_string())?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("lab {} cannot connect to {url}", cert.lab))?;
    Ok(AgentServiceClient::new(ch))
}

/// Polls `f` every 20 ms until it holds, or fails after `within`.
pub fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("timed out after {within:?} waiting for {what}")
}
