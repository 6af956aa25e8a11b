//! labwire-bench: measures labwire's speed, scale and footprint against a real coordinator
//! process and simulated (or real) agents over real mutual TLS on 127.0.0.1, and prints one
//! table of figures with their targets (or JSON).
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
use report::Figure;
use std::path::PathBuf;

/// The scenarios, in the order `all` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Every scenario below, in this order.
    All,
    /// Time from a job's submission to the waiting agent receiving it.
    Dispatch,
    /// Full job cycles per second with many simulated agents.
    Throughput,
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
    /// A KTAP log through a pty into the agent's console engine and the parser.
    Serial,
}

impl Scenario {
    /// Every concrete scenario, in run order.
    pub const ALL: [Scenario; 8] = [
        Scenario::Dispatch,
        Scenario::Throughput,
        Scenario::Queries,
        Scenario::Events,
        Scenario::Footprint,
        Scenario::Idle,
        Scenario::Parsers,
        Scenario::Serial,
    ];
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
    /// Runs of each latency and throughput measurement; medians over them are reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Dispatch: jobs per run.
    #[arg(long, default_value_t = 200)]
    pub latency_jobs: usize,
    /// Throughput: simulated agents (each its own lab with one device).
    #[arg(long, default_value_t = 50)]
    pub agents: usize,
    /// Throughput: job cycles per run.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Throughput: child tests in each result.
    #[arg(long, default_value_t = 10)]
    pub tests: usize,
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
    /// Serial: MB of log sent through the pty at full speed per run.
    #[arg(long, default_value_t = 20)]
    pub console_mb: usize,
    /// Serial: how long the log is sent at 115200 baud to measure CPU.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub console_window: std::time::Duration,
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
    let mut all = Vec::new();
    let mut store = None;
    for s in list {
        let t = std::time::Instant::now();
        eprintln!("==> {s:?}");
        let figs = match s {
            Scenario::All => unreachable!("expanded above"),
            Scenario::Dispatch => scenarios::dispatch::run(opts).await,
            Scenario::Throughput => scenarios::throughput::run(opts).await,
            Scenario::Queries | Scenario::Events => {
                if store.is_none() {
                    store = Some(scenarios::bigstore::BigStore::build(opts.nodes).await?);
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
            Scenario::Serial => scenarios::serial::run(opts).await,
        }
        .with_context(|| format!("scenario {s:?} failed"))?;
        eprint!("{}", report::table(&figs));
        eprintln!("    ({s:?} took {:.1}s)", t.elapsed().as_secs_f64());
        all.extend(figs);
    }
    Ok(all)
}
