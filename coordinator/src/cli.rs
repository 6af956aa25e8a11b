//! The `labwire-coordinator` command line: run the daemon, manage the CA, lab certificates
//! and client tokens, check config files.

use crate::config::CoordinatorConfig;
use crate::pki;
use crate::store::Store;
use crate::store::labs::Scope;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// The default config file.
pub const DEFAULT_CONFIG: &str = "/etc/labwire/coordinator.yaml";

/// labwire-coordinator: the central daemon of labwire and its admin commands.
#[derive(Debug, Parser)]
#[command(name = "labwire-coordinator", version, about)]
pub struct Cli {
    /// The config file. When the default one does not exist, built-in defaults are used.
    #[arg(long, short, global = true, env = "LABWIRE_COORDINATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Coordinator commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator daemon.
    Serve(ServeArgs),
    /// Manage the certificate authority and lab certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Manage client tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create or upgrade the store's schema (`store:` in the config). SQLite stores are
    /// also migrated when the coordinator starts; PostgreSQL stores, which several replicas
    /// share, only by this command. With `--from sqlite://PATH`, also copies everything in
    /// that SQLite store into the (empty) store of the config: the way to move to PostgreSQL.
    Migrate {
        /// An SQLite store to copy into the config's store, e.g.
        /// `sqlite:///var/lib/labwire-coordinator/labwire.db`. Stop the coordinator first.
        #[arg(long)]
        from: Option<String>,
    },
    /// Validate config files: with none, the coordinator config and the scheduler and
    /// placement files it names; with files, those, each recognised by its top-level keys.
    /// Errors name the file, the line and the key.
    CheckConfig {
        /// Files to check.
        files: Vec<PathBuf>,
    },
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen here instead of the config's `listen` (e.g. 127.0.0.1:0 for any free port).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Write the address actually listened on to this file once the port is open.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// Serve the HTTP side here instead of the config's `http.listen` (e.g. 127.0.0.1:0).
    #[arg(long)]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Write the HTTP side's address to this file once its port is open.
    #[arg(long)]
    pub http_addr_file: Option<PathBuf>,
}

/// CA commands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA, the server certificate and a first admin token.
    Init {
        /// DNS names of the coordinator for its server certificate (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// IP addresses of the coordinator for its server certificate (repeatable).
        #[arg(long = "ip")]
        ip: Vec<IpAddr>,
        /// Write the admin token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Issue a lab's client certificate and write a folder to copy to the lab host.
    IssueAgent {
        /// The lab's name (becomes the certificate's common name).
        lab: String,
        /// The folder to write (default: ./LAB).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke every certificate of a lab; its agent is refused from the next call on.
    Revoke {
        /// The lab's name.
        lab: String,
    },
}

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (it is stored only as a hash).
    Create {
        /// A unique name for the token (who or what uses it).
        name: String,
        /// Scopes: read, submit, admin (comma-separated or repeated).
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// List tokens (names, scopes, dates; never secrets).
    List,
    /// Revoke a token by name.
    Revoke {
        /// The token's name.
        name: String,
    },
}

/// Loads the config named on the command line, or the default one, or built-in defaults.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<CoordinatorConfig> {
    match path {
        Some(p) => CoordinatorConfig::load(p),
        None if Path::new(DEFAULT_CONFIG).exists() => {
            CoordinatorConfig::load(Path::new(DEFAULT_CONFIG))
        }
        None => Ok(CoordinatorConfig::default()),
    }
}

/// Opens the config's store. An SQLite store is migrated on the way; a PostgreSQL one must
/// be up to date already (`labwire-coordinator migrate`).
pub fn open_store(cfg: &CoordinatorConfig) -> anyhow::Result<Store> {
    let loc = cfg.store_location();
    let schema = match loc {
        crate::store::Location::Sqlite(_) => crate::store::Schema::Migrate,
        crate::store::Location::Postgres(_) => crate::store::Schema::Check,
    };
    Store::connect(&loc, crate::clock::Clock::system(), schema)
        .with_context(|| format!("cannot open the store {loc}"))
}

/// Creates the CA, server certificate and admin token for `cfg`. Returns the token.
pub fn ca_init(cfg: &CoordinatorConfig, dns: &[String], ip: &[IpAddr]) -> anyhow::Result<String> {
    let files = pki::init_ca(&cfg.pki_dir(), dns, ip)?;
    let store = open_store(cfg)?;
    let token = store
        .write_blocking(|w| w.create_token("admin", &[Scope::Admin]))
        .context("cannot create the admin token")?;
    tracing::info!(ca = %files.ca_cert.display(), "CA created");
    Ok(token)
}

/// Issues a lab certificate, registers it and writes the bundle to `out`.
pub fn ca_issue_agent(
    cfg: &CoordinatorConfig,
    lab: &str,
    out: &Path,
) -> anyhow::Result<pki::Issued> {
    let issued = pki::issue_agent_cert(&cfg.pki_dir(), lab)?;
    let store = open_store(cfg)?;
    let fp = issued.fingerprint.clone();
    let not_after = issued.not_after;
    store.write_blocking(|w| w.register_lab_cert(lab, &fp, Some(not_after)))?;
    pki::write_agent_bundle(out, &cfg.pki_dir(), lab, &issued, &cfg.public_url)?;
    Ok(issued)
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Serve(args) => {
            let http = match args.http_listen.or(cfg.http.listen) {
                Some(a) => Some(
                    tokio::net::TcpListener::bind(a)
                        .await
                        .with_context(|| format!("cannot listen on {a} (HTTP side)"))?,
                ),
                None => None,
            };
            if let (Some(l), Some(f)) = (&http, &args.http_addr_file) {
                write_addr(f, l.local_addr()?)?;
            }
            let addr = args.listen.unwrap_or(cfg.listen);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            if let Some(f) = &args.addr_file {
                write_addr(f, listener.local_addr()?)?;
            }
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
            crate::server::serve_with_http(cfg, listener, http, shutdown).await
        }
        Command::Migrate { from } => {
            let loc = cfg.store_location();
            // Check the source before touching the target.
            let src = match from.as_deref().map(crate::store::Location::parse) {
                None => None,
                Some(Err(e)) => anyhow::bail!("--from: {e}"),
                Some(Ok(l @ crate::store::Location::Sqlite(_))) if l == loc => {
                    anyhow::bail!("--from {l} is the config's own store")
                }
                Some(Ok(crate::store::Location::Sqlite(path))) if !path.is_file() => {
                    anyhow::bail!("--from: no SQLite store at {}", path.display())
                }
                Some(Ok(l @ crate::store::Location::Sqlite(_))) => Some(l),
                Some(Ok(other)) => anyhow::bail!("--from {other}: expected sqlite://PATH"),
            };
            let store = Store::connect(
                &loc,
                crate::clock::Clock::system(),
                crate::store::Schema::AsIs,
            )
            .with_context(|| format!("cannot open the store {loc}"))?;
            let applied = store.read_blocking(crate::store::migrations::apply)?;
            if applied.is_empty() {
                println!("{loc}: schema up to date");
            } else {
                println!("{loc}: applied {}", applied.join(", "));
            }
            if let Some(src) = src {
                let source = Store::connect(
                    &src,
                    crate::clock::Clock::system(),
                    crate::store::Schema::Migrate,
                )
                .with_context(|| format!("cannot open {src}"))?;
                println!("copying {src} into {loc} (one transaction: all or nothing)");
                let target = store.clone();
                let copied = tokio::task::spawn_blocking(move || {
                    crate::store::copy::copy_all(&source, &target, |table, n, done| {
                        if done {
                            println!("  {table}: {n} rows");
                        } else {
                            println!("  {table}: {n} rows so far...");
                        }
                    })
                })
                .await??;
                println!("copied {copied} rows from {src} into {loc}");
            }
            Ok(())
        }
        Command::Ca(CaCommand::Init {
            dns,
            ip,
            token_file,
        }) => {
            let token = ca_init(&cfg, &dns, &ip)?;
            println!(
                "CA and server certificate written to {}",
                cfg.pki_dir().display()
            );
            match token_file {
                Some(f) => {
                    pki::write_private(&f, &token)?;
                    println!("admin token written to {}", f.display());
                }
                None => println!("admin token (shown once; keep it safe): {token}"),
            }
            Ok(())
        }
        Command::Ca(CaCommand::IssueAgent { lab, out }) => {
            let out = out.unwrap_or_else(|| PathBuf::from(&lab));
            let issued = ca_issue_agent(&cfg, &lab, &out)?;
            println!(
                "lab `{lab}`: certificate {} (valid until {}) written to {}/\n\
                 copy that folder to the lab host and put its files in /etc/labwire/ \
                 (install -m 0640 -g labwire-agent ...), add devices to agent.yaml, \
                 then `systemctl enable --now labwire-agent` (docs/install.md)",
                issued.fingerprint,
                issued.not_after.format("%Y-%m-%d"),
                out.display()
            );
            Ok(())
        }
        Command::Ca(CaCommand::Revoke { lab }) => {
            let store = open_store(&cfg)?;
            let n = store.write_blocking(|w| {
                w.requeue_lab_jobs(&lab)?;
                w.revoke_lab(&lab)
            })?;
            println!("lab `{lab}`: {n} certificate(s) revoked");
            Ok(())
        }
        Command::Token(TokenCommand::Create { name, scopes }) => {
            let scopes = scopes
                .iter()
                .map(|s| s.parse::<Scope>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let store = open_store(&cfg)?;
            let token = store.write_blocking(|w| w.create_token(&name, &scopes))?;
            println!("{token}");
            Ok(())
        }
        Command::Token(TokenCommand::List) => {
            let store = open_store(&cfg)?;
            let tokens = store.read_blocking(crate::store::labs::list_tokens)?;
            println!("{:<24} {:<20} {:<22} STATE", "NAME", "SCOPES", "CREATED");
            for t in tokens {
                println!(
                    "{:<24} {:<20} {:<22} {}",
                    t.name,
                    t.scopes
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    t.created.format("%Y-%m-%d %H:%M:%S"),
                    t.revoked_at.map_or("active".to_string(), |r| format!(
                        "revoked {}",
                        r.format("%Y-%m-%d")
                    ))
                );
            }
            Ok(())
        }
        Command::Token(TokenCommand::Revoke { name }) => {
            let store = open_store(&cfg)?;
            store.write_blocking(|w| w.revoke_token(&name))?;
            println!("token `{name}` revoked");
            Ok(())
        }
        Command::CheckConfig { files } => check_config(&cfg, cli.config.as_deref(), &files),
    }
}

/// What kind of config file a file is, by its top-level keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// coordinator.yaml
    Coordinator,
    /// A scheduler file in the KernelCI pipeline format.
    Pipeline,
    /// placement.yaml
    Placement,
}

/// Recognises a config file by its top-level keys.
pub fn config_kind(path: &Path) -> anyhow::Result<ConfigKind> {
    let text = crate::config::read_config_text(path)?;
    let v: yaml_serde::Value =
        yaml_serde::from_str(&text).with_context(|| format!("in {}", path.display()))?;
    let keys: Vec<&str> = v
        .as_mapping()
        .map(|m| m.keys().filter_map(|k| k.as_str()).collect())
        .unwrap_or_default();
    let any = |names: &[&str]| keys.iter().any(|k| names.contains(k));
    Ok(if any(&["jobs", "platforms", "runtimes", "scheduler"]) {
        ConfigKind::Pipeline
    } else if any(&["labs", "pins", "preferences", "defaults"]) {
        ConfigKind::Placement
    } else {
        ConfigKind::Coordinator
    })
}

/// `check-config`: with no file, the coordinator's config and the files it names; with
/// files, those (scheduler files are checked together, as the coordinator would load them).
fn check_config(
    cfg: &CoordinatorConfig,
    own: Option<&Path>,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let (mut pipeline, mut placement) = (Vec::new(), Vec::new());
    if files.is_empty() {
        println!(
            "{}: ok",
            own.map(|p| p.display().to_string())
                .unwrap_or_else(|| "coordinator config (defaults)".into())
        );
        pipeline.extend(cfg.pipeline.iter().cloned());
        placement.extend(cfg.placement.iter().cloned());
    }
    for f in files {
        match config_kind(f)? {
            ConfigKind::Coordinator => {
                let c = CoordinatorConfig::load(f)?;
                println!("{}: ok (coordinator config)", f.display());
                for p in c.pipeline.iter().chain(c.placement.iter()) {
                    if !p.exists() {
                        anyhow::bail!(
                            "{}: names {} which does not exist",
                            f.display(),
                            p.display()
                        );
                    }
                }
            }
            ConfigKind::Pipeline => pipeline.push(f.clone()),
            ConfigKind::Placement => placement.push(f.clone()),
        }
    }
    if !pipeline.is_empty() {
        let loaded = crate::pipeline_config::PipelineConfig::load_files(&pipeline)?;
        for w in &loaded.warnings {
            println!("note: {w}");
        }
        let c = &loaded.config;
        println!(
            "{}: ok (scheduler config: {} jobs, {} platforms, {} runtimes, {} scheduler entries)",
            pipeline
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            c.jobs.len(),
            c.platforms.len(),
            c.runtimes.len(),
            c.scheduler.len()
        );
    }
    for p in &placement {
        let pl = crate::placement::Placement::load(p)?;
        println!(
            "{}: ok (placement: {} labs, {} preferences, {} pins)",
            p.display(),
            pl.labs.len(),
            pl.preferences.len(),
            pl.pins.len()
        );
    }
    Ok(())
}

/// Writes a listening address to `f` atomically (tests and scripts read the port from it).
fn write_addr(f: &Path, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let tmp = f.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, f).with_context(|| format!("cannot write {}", f.display()))
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
}
