//! labwire-bench: measures labwire's speed, scale and footprint against a real coordinator
//! process and simulated (or real) agents over real mutual TLS on 127.0.0.1, and prints one
//! table of figures with their targets (or JSON). The coordinator's store is an SQLite file
//! by default, or PostgreSQL with `--store` (see [`StoreChoice`]); every figure says which
//! store it was measured on.
//!
//! The coordinator and the agent run as separate processes started from this binary itself
//! (`labwire-bench coordinator ...` and `labwire-bench agent ...` run the same library entry
//! points as `labwire-coordinator` and `labwire-agent`), so one `cargo run --release -p
//! labwire-bench` builds everything it needs and their memory and CPU are read from `/proc`.

pub mod procstat;
pub mod report;
pub mod rig;
pub mod scenarios;
pub mod sim;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use labwire_coordinator::store::redact;
use report::Figure;
use std::path::PathBuf;

/// The scenarios, in the order `all` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Every scenario below, in this order.
    All,
    /// Time from a job's submission to the waiting agent receiving it.
    Dispatch,
    /// Time from an admin's cancel to the running agent hearing of it.
    Cancel,
    /// A borrowed board's console through the coordinator: keystroke-to-echo latency and
    /// relay throughput (real coordinator and agent, a pty as the board).
    Console,
    /// Full job cycles per second with many simulated agents.
    Throughput,
    /// A 150,000-test result stored while other labs keep calling.
    Bigresult,
    /// Node queries with filters on a large store.
    Queries,
    /// Replay of the stored events to a subscriber.
    Events,
    /// RSS and CPU of an idle real agent with many devices.
    Footprint,
    /// Coordinator memory and CPU with many idle, heartbeating agents.
    Idle,
    /// Parser MB/s and peak RSS on a large generated KTAP log.
    Parsers,
    /// The `labwire-agent parse` binary on the generated log: MB/s and peak RSS per output.
    ParseCmd,
    /// A KTAP log through a pty into the agent's console engine and the parser.
    Serial,
    /// The agent's own time per job on the U-Boot board of tests/uboot/ (not in `all`: it
    /// needs the board of scripts/setup.d/35-boardfarm.sh).
    Board,
}

impl Scenario {
    /// Every concrete scenario, in run order.
    pub const ALL: [Scenario; 12] = [
        Scenario::Dispatch,
        Scenario::Cancel,
        Scenario::Console,
        Scenario::Throughput,
        Scenario::Bigresult,
        Scenario::Queries,
        Scenario::Events,
        Scenario::Footprint,
        Scenario::Idle,
        Scenario::Parsers,
        Scenario::ParseCmd,
        Scenario::Serial,
    ];

    /// Whether the scenario runs a coordinator, and so measures its store too (the parser
    /// and serial scenarios do not).
    pub fn uses_store(self) -> bool {
        !matches!(
            self,
            Scenario::Parsers | Scenario::ParseCmd | Scenario::Serial
        )
    }
}

/// Where the coordinator's store lives during a benchmark (`--store`). Printed (also with
/// `{:?}`) without the password of a URL.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// `sqlite`: an SQLite file in the coordinator's temporary folder (the default).
    Sqlite,
    /// `postgres`: for each coordinator, a fresh database on the private PostgreSQL test
    /// server of `labwire-testpg` (started on 127.0.0.1 if it does not run; `fsync=off`),
    /// dropped afterwards.
    TestPg,
    /// `postgres://USER@HOST:PORT/DB`: a database of the user's own, which must be empty; it
    /// holds one coordinator's data, so one run may use it for one coordinator only, and the
    /// data stays there afterwards.
    Url(String),
}

impl StoreChoice {
    /// Parses `sqlite`, `postgres` or a `postgres://` (`postgresql://`) URL.
    pub fn parse(s: &str) -> Result<StoreChoice, String> {
        match s {
            "sqlite" => Ok(StoreChoice::Sqlite),
            "postgres" | "postgresql" => Ok(StoreChoice::TestPg),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                match labwire_coordinator::store::Location::parse(url)? {
                    labwire_coordinator::store::Location::Postgres(u) => Ok(StoreChoice::Url(u)),
                    other => Err(format!("`{other}` is not a PostgreSQL URL")),
                }
            }
            other => Err(format!(
                "`{}`: expected sqlite, postgres (a fresh database on the PostgreSQL test \
                 server) or postgres://USER@HOST:PORT/DATABASE (an empty database)",
                redact(other)
            )),
        }
    }

    /// The store's kind as figures carry it: `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreChoice::Sqlite => "sqlite",
            StoreChoice::TestPg | StoreChoice::Url(_) => "postgres",
        }
    }
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Sqlite => f.write_str("Sqlite"),
            StoreChoice::TestPg => f.write_str("TestPg"),
            StoreChoice::Url(u) => write!(f, "Url({:?})", redact(u)),
        }
    }
}

impl std::fmt::Display for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Sqlite => f.write_str("sqlite"),
            StoreChoice::TestPg => f.write_str("postgres"),
            StoreChoice::Url(u) => f.write_str(&redact(u)),
        }
    }
}

/// Command-line options. Defaults are the sizes of the targets.
#[derive(Debug, Clone, Parser)]
#[command(name = "labwire-bench", version, about)]
pub struct Opts {
    /// Scenarios to run (`all` for every one).
    #[arg(value_enum, required = true)]
    pub scenarios: Vec<Scenario>,
    /// Print the figures as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The coordinator's store: `sqlite` (a file in its temporary folder), `postgres` (a
    /// fresh database on the private PostgreSQL test server of labwire-testpg for each
    /// coordinator) or `postgres://USER@HOST:PORT/DB` (an empty database of your own, for
    /// one scenario: the parsers and serial scenarios use no store, queries and events share
    /// one).
    #[arg(long, default_value = "sqlite", value_parser = StoreChoice::parse)]
    pub store: StoreChoice,
    /// Runs of each latency and throughput measurement; medians over them are reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Dispatch: jobs per run.
    #[arg(long, default_value_t = 200)]
    pub latency_jobs: usize,
    /// Cancel: cancels per run.
    #[arg(long, default_value_t = 50)]
    pub cancels: usize,
    /// Throughput: simulated agents (each its own lab with one device).
    #[arg(long, default_value_t = 50)]
    pub agents: usize,
    /// Throughput: job cycles per run.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Throughput: child tests in each result.
    #[arg(long, default_value_t = 10)]
    pub tests: usize,
    /// Bigresult: tests in the big result (in suites of 500).
    #[arg(long, default_value_t = 150_000)]
    pub big_tests: usize,
    /// Queries and events: nodes in the store (every node change is one stored event).
    #[arg(long, default_value_t = 1_000_000)]
    pub nodes: usize,
    /// Queries: queries of each filter shape per run.
    #[arg(long, default_value_t = 20)]
    pub queries: usize,
    /// Idle: connected simulated agents (each its own lab).
    #[arg(long, default_value_t = 10_000)]
    pub idle_agents: usize,
    /// Idle and footprint: heartbeat interval of the coordinator (its default is 15 s).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat: std::time::Duration,
    /// Idle: how long coordinator CPU is measured once every agent is connected.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_window: std::time::Duration,
    /// Footprint: devices in the agent's config.
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// Footprint: how long agent CPU is measured once it is connected.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub footprint_window: std::time::Duration,
    /// Parsers: MB of generated KTAP log per run.
    #[arg(long, default_value_t = 200)]
    pub log_mb: usize,
    /// Serial and console: MB sent through the pty (and the console relay) at full speed per
    /// run.
    #[arg(long, default_value_t = 20)]
    pub console_mb: usize,
    /// Serial: how long the log is sent at 115200 baud to measure CPU.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub console_window: std::time::Duration,
    /// Board: jobs run one after the other on the U-Boot board.
    #[arg(long, default_value_t = 10)]
    pub board_jobs: usize,
}

/// The path of this binary, re-executed as the coordinator, the agent and the parser worker.
pub fn self_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the path of labwire-bench itself")
}

/// Runs the chosen scenarios, printing each one's figures to stderr as it finishes, and
/// returns them all.
pub async fn run(opts: &Opts) -> anyhow::Result<Vec<Figure>> {
    let list: Vec<Scenario> = if opts.scenarios.contains(&Scenario::All) {
        Scenario::ALL.to_vec()
    } else {
        opts.scenarios.clone()
    };
    check_store_use(&list, &opts.store)?;
    let mut all = Vec::new();
    let mut store = None;
    for s in list {
        let t = std::time::Instant::now();
        eprintln!("==> {s:?}");
        let figs = match s {
            Scenario::All => unreachable!("expanded above"),
            Scenario::Dispatch => scenarios::dispatch::run(opts).await,
            Scenario::Cancel => scenarios::cancel::run(opts).await,
            Scenario::Console => scenarios::console::run(opts).await,
            Scenario::Throughput => scenarios::throughput::run(opts).await,
            Scenario::Bigresult => scenarios::bigresult::run(opts).await,
            Scenario::Queries | Scenario::Events => {
                if store.is_none() {
                    store =
                        Some(scenarios::bigstore::BigStore::build(&opts.store, opts.nodes).await?);
                }
                let st = store.as_ref().context("store built above")?;
                if s == Scenario::Queries {
                    scenarios::queries::run(opts, st).await
                } else {
                    scenarios::events::run(opts, st).await
                }
            }
            Scenario::Footprint => scenarios::footprint::run(opts).await,
            Scenario::Idle => scenarios::idle::run(opts).await,
            Scenario::Parsers => scenarios::parsers::run(opts).await,
            Scenario::ParseCmd => scenarios::parse_cmd::run(opts).await,
            Scenario::Serial => scenarios::serial::run(opts).await,
            Scenario::Board => scenarios::board::run(opts).await,
        }
        .with_context(|| format!("scenario {s:?} failed"))?;
        let figs: Vec<Figure> = figs
            .into_iter()
            .map(|f| {
                if s.uses_store() {
                    f.store(opts.store.kind())
                } else {
                    f
                }
            })
            .collect();
        eprint!("{}", report::table(&figs));
        eprintln!("    ({s:?} took {:.1}s)", t.elapsed().as_secs_f64());
        all.extend(figs);
    }
    Ok(all)
}

/// Refuses a user's PostgreSQL database for more than one coordinator: each scenario's
/// coordinator needs an empty store (queries and events share one).
pub fn check_store_use(list: &[Scenario], store: &StoreChoice) -> anyhow::Result<()> {
    if let StoreChoice::Url(u) = store {
        let mut rigs: Vec<&str> = Vec::new();
        for s in list.iter().filter(|s| s.uses_store()) {
            let rig = match s {
                Scenario::Queries | Scenario::Events => "queries/events",
                Scenario::Dispatch => "dispatch",
                Scenario::Cancel => "cancel",
                Scenario::Console => "console",
                Scenario::Throughput => "throughput",
                Scenario::Bigresult => "bigresult",
                Scenario::Footprint => "footprint",
                Scenario::Idle => "idle",
                _ => "other",
            };
            if !rigs.contains(&rig) {
                rigs.push(rig);
            }
        }
        anyhow::ensure!(
            rigs.len() <= 1,
            "--store {}: one empty database holds one scenario's coordinator, and these \
             scenarios each start their own: {}; run them one at a time, each on an empty \
             database, or use --store postgres (a fresh database on the PostgreSQL test \
             server for each)",
            redact(u),
            rigs.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_choices_parse_and_a_user_database_serves_one_coordinator() {
        assert_eq!(StoreChoice::parse("sqlite"), Ok(StoreChoice::Sqlite));
        assert_eq!(StoreChoice::parse("postgres"), Ok(StoreChoice::TestPg));
        let url = "postgres://bench:secret@db.example.org:5432/labwire_bench";
        assert_eq!(StoreChoice::parse(url), Ok(StoreChoice::Url(url.into())));
        assert_eq!(StoreChoice::Url(url.into()).kind(), "postgres");
        let shown = format!(
            "{} {:?}",
            StoreChoice::Url(url.into()),
            StoreChoice::Url(url.into())
        );
        assert!(
            shown.contains("bench:***@db.example.org") && !shown.contains("secret"),
            "{shown}"
        );
        let e = StoreChoice::parse("mysql://u:pw@h/db").unwrap_err();
        assert!(
            e.contains("expected sqlite, postgres") && !e.contains("pw"),
            "{e}"
        );
        let e = StoreChoice::parse("postgres://u:pw@h:notaport/db").unwrap_err();
        assert!(!e.contains("pw"), "{e}");

        let opts = Opts::try_parse_from(["labwire-bench", "dispatch"]).unwrap();
        assert_eq!(opts.store, StoreChoice::Sqlite);
        let user = StoreChoice::Url(url.into());
        check_store_use(&[Scenario::Dispatch, Scenario::Parsers], &user).unwrap();
        check_store_use(&[Scenario::Queries, Scenario::Events], &user).unwrap();
        let e = check_store_use(&Scenario::ALL, &user)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "dispatch, cancel, console, throughput, bigresult, queries/events, footprint, idle"
            ),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
        check_store_use(&Scenario::ALL, &StoreChoice::TestPg).unwrap();
    }
}
