//! The `labwire-coordinator` command line: run the daemon, manage the CA, lab certificates
//! and client tokens, migrate the store, check config files. The arguments are here; each
//! subcommand is a function in a module of its own.

mod ca;
mod check;
mod migrate;
mod serve;
mod token;

pub use ca::{ca_init, ca_issue_agent};

use crate::config::CoordinatorConfig;
use clap::{Args, Parser, Subcommand};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use crate::setup::open_store;

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
        /// Scopes: read, submit, console, admin (comma-separated or repeated).
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

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Serve(args) => serve::serve(cfg, args).await,
        Command::Migrate { from } => migrate::run(&cfg, from.as_deref()).await,
        Command::Ca(cmd) => ca::run(&cfg, cmd),
        Command::Token(cmd) => token::run(&cfg, cmd),
        Command::CheckConfig { files } => check::check_config(&cfg, cli.config.as_deref(), &files),
    }
}
