//! `labwire-agent`: parses the command line and runs it (see `labwire_agent::cli`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    labwire::install_crypto();
    labwire::init_logging("info");
    let cli: labwire_agent::cli::Cli = labwire::parse_args();
    let r = labwire_agent::cli::run(cli).await;
    labwire::exit_status("labwire-agent", r.map(|()| std::process::ExitCode::SUCCESS))
}
