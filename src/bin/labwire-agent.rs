//! `labwire-agent`: parses the command line and runs it (see `labwire_agent::cli`).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    labwire::install_crypto();
    labwire::init_logging("info");
    let cli = labwire_agent::cli::Cli::parse();
    match labwire_agent::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("labwire-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
