//! `labwire-bench`: parses the command line and runs the scenarios (see the library). Also
//! runs, as hidden first arguments, the coordinator (`coordinator ...`), the agent
//! (`agent ...`) and the parser worker (`parse-worker ...`) that the scenarios start as
//! separate processes.

use clap::Parser;
use labwire_bench::{Opts, report};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    labwire::install_crypto();
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("coordinator") => {
            labwire::init_logging("info");
            let cli = labwire_coordinator::cli::Cli::parse_from(&args[1..]);
            labwire_coordinator::cli::run(cli).await
        }
        Some("agent") => {
            labwire::init_logging("info");
            let cli = labwire_agent::cli::Cli::parse_from(&args[1..]);
            labwire_agent::cli::run(cli).await
        }
        Some("parse-worker") => labwire_bench::scenarios::parsers::worker(&args[2..]),
        _ => {
            let opts = Opts::parse();
            match labwire_bench::run(&opts).await {
                Ok(figs) if opts.json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&figs).unwrap_or_default()
                    );
                    Ok(())
                }
                Ok(figs) => {
                    print!("{}", report::table(&figs));
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("labwire-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
