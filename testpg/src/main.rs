//! `labwire-testpg`: the shared PostgreSQL test server from a shell.
//!
//! - `labwire-testpg stop`: stops the server if it runs (`scripts/test.sh` at the end of a run);
//! - `labwire-testpg url`: starts it if needed and prints the URL of a new, empty database
//!   that is kept (until the server next starts), for trying things by hand.

use std::process::ExitCode;

const USAGE: &str = "usage: labwire-testpg stop | url\n  \
    stop  stop the shared PostgreSQL test server if it runs\n  \
    url   print the URL of a new, empty database on it (starting it if needed)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let folder = labwire_testpg::folder();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["stop"] => match labwire_testpg::stop() {
            Ok(true) => {
                println!("stopped the PostgreSQL test server in {}", folder.display());
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!(
                    "no PostgreSQL test server was running in {}",
                    folder.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("labwire-testpg stop: {e}");
                ExitCode::FAILURE
            }
        },
        ["url"] => match labwire_testpg::try_database() {
            Ok(db) => {
                println!("{}", db.keep());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("labwire-testpg url: {e}");
                ExitCode::FAILURE
            }
        },
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
