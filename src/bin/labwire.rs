//! `labwire`: the command-line client (see `labwire::commands`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    labwire::install_crypto();
    labwire::init_logging("warn");
    let cli: labwire::commands::Cli = labwire::parse_args();
    labwire::exit_status("labwire", labwire::commands::run(cli).await)
}
