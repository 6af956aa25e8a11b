//! `labwire-coordinator`: parses the command line and runs it (see `labwire_coordinator::cli`).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    labwire::install_crypto();
    labwire::init_logging("info");
    let cli = labwire_coordinator::cli::Cli::parse();
    match labwire_coordinator::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("labwire-coordinator: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
