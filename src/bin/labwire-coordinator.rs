//! `labwire-coordinator`: parses the command line and runs it (see `labwire_coordinator::cli`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    labwire::install_crypto();
    labwire::init_logging("info");
    let cli: labwire_coordinator::cli::Cli = labwire::parse_args();
    let r = labwire_coordinator::cli::run(cli).await;
    labwire::exit_status(
        "labwire-coordinator",
        r.map(|()| std::process::ExitCode::SUCCESS),
    )
}
