//! `labwire`: the command-line client (see `labwire::commands`).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    labwire::install_crypto();
    labwire::init_logging("warn");
    let cli = labwire::commands::Cli::parse();
    match labwire::commands::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("labwire: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
