//! The `labwire-agent` command line: run the daemon, check its config.

use crate::config::AgentConfig;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The default config file.
pub const DEFAULT_CONFIG: &str = "/etc/labwire/agent.yaml";

/// labwire-agent: the lab daemon of labwire.
#[derive(Debug, Parser)]
#[command(name = "labwire-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Agent commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent daemon.
    Run {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "LABWIRE_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Parse a console log (a file, or - for standard input) and print its results as JSON:
    /// KTAP/TAP, LAVA test signals, kernel messages, or a pattern of your own.
    Parse(labwire_parsers::cli::ParseArgs),
    /// Validate the config file and print the devices it defines.
    CheckConfig {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, env = "LABWIRE_AGENT_CONFIG")]
        config: PathBuf,
    },
}

/// Gives standard output a 1 MiB pipe buffer when it is a pipe. `parse --output jsonl`
/// writes hundreds of MB; through the default 64 KiB pipe the command and its reader wake
/// each other for every 64 KiB, which cost the command more CPU than its own writing
/// (docs/performance.md). Best effort: on anything but a pipe, or above the system's
/// `fs.pipe-max-size`, the call fails and nothing changes.
fn widen_stdout_pipe() {
    use nix::fcntl::{FcntlArg, fcntl};
    let _ = fcntl(std::io::stdout(), FcntlArg::F_SETPIPE_SZ(1 << 20));
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let cfg = AgentConfig::load(&config)?;
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone());
            crate::daemon::run(cfg, Some(config), shutdown).await
        }
        Command::Parse(args) => {
            widen_stdout_pipe();
            labwire_parsers::cli::run(&args)
        }
        Command::CheckConfig { config } => {
            let cfg = AgentConfig::load(&config)?;
            let sources = cfg.labgrid.len() + cfg.lava.len();
            labwire_common::outln!(
                "{}: ok (lab `{}`, {} device(s) in the file{})",
                config.display(),
                cfg.lab,
                cfg.devices.len(),
                if sources > 0 {
                    format!(", more from {sources} source(s) at run time")
                } else {
                    String::new()
                }
            )?;
            for d in &cfg.devices {
                labwire_common::outln!("  {} ({}, {})", d.name, d.device_type, d.driver.kind())?;
            }
            for lg in &cfg.labgrid {
                labwire_common::outln!(
                    "  from sources: labgrid:{} at {}: the free places of {} place entr{} (read when the agent runs)",
                    lg.name,
                    lg.coordinator,
                    lg.places.len(),
                    if lg.places.len() == 1 { "y" } else { "ies" }
                )?;
            }
            for l in &cfg.lava {
                labwire_common::outln!(
                    "  from sources: lava:{}: the devices of that LAVA server (read when the agent runs)",
                    l.name
                )?;
            }
            for w in cfg.warnings() {
                labwire_common::outln!("warning: {w}")?;
            }
            Ok(())
        }
    }
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
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        token.cancel();
    });
}
