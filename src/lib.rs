//! The `labwire` package: the command-line client for people and scripts (`labwire`), the
//! local demo, and the thin `main`s of the coordinator and agent daemons. Shared start-up
//! code (TLS crypto provider, logging) lives here so that every binary starts the same way.
//!
//! What other crates use (the binaries, the end-to-end tests, labwire-bench) is public:
//! [`client`], [`commands::Cli`] and [`commands::run`], the tree helpers of [`commands`], and
//! the start-up functions below. Everything else is `pub(crate)`.

pub mod client;
pub mod commands;
mod demo;
mod demo_uboot;
mod kcidb;
pub mod output;
mod report;

use std::io::IsTerminal;

/// The version all three binaries print: the package version and, when built from a git
/// checkout, the revision (`0.1.0 (git 1a2b3c4d5e6f)`; see `build.rs`).
pub const VERSION: &str = env!("LABWIRE_VERSION");

/// Parses the command line of a binary, with [`VERSION`] as its `--version`. Exits with
/// clap's message on a bad command line.
pub fn parse_args<C: clap::Parser>() -> C {
    let matches = C::command().version(VERSION).get_matches();
    C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The exit status of a binary whose command returned `r`: a command whose standard output
/// was closed by its reader (`| head`) ends quietly with success; any other error is printed
/// after `name: error:`.
pub fn exit_status(
    name: &str,
    r: anyhow::Result<std::process::ExitCode>,
) -> std::process::ExitCode {
    match r {
        Ok(code) => code,
        Err(e) if output::closed(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A closed standard error leaves nowhere to say it.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{name}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Installs the process-wide rustls crypto provider (ring). Every binary and TLS test calls
/// this first: the workspace uses one provider only.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sets up logging: human-readable on a terminal, JSON lines otherwise (for journald and log
/// collectors). The filter comes from `LABWIRE_LOG` (default `info`).
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LABWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
