//! The `labwire` command line: submit jobs, read nodes, trees, logs and events, look at labs
//! and jobs, cancel and revoke, report and export, and run the local demo. One function per
//! subcommand, in a module per family: [`submit`], [`read`] (nodes, trees, logs, events),
//! [`admin`] (labs, jobs, cancel, revoke), [`export`] (report, KCIDB).

mod admin;
mod borrow;
mod console;
mod device;
mod export;
mod generate;
mod jobfile;
mod lab_report;
mod read;
mod submit;

pub use read::{fetch_tree, render_tree, result_name};
pub(crate) use submit::wait_done;

use crate::client::{Clients, connect, read_ca};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// labwire: the command-line client of a labwire coordinator.
#[derive(Debug, Parser)]
#[command(
    name = "labwire",
    version,
    about = "labwire: the command-line client of a labwire coordinator, and a local demo"
)]
pub struct Cli {
    /// Connection settings.
    #[command(flatten)]
    conn: Conn,
    /// Print data as JSON (fields in docs/cli.md) instead of text: nodes, node, tree, labs,
    /// jobs, jobs explain, events, report, submit, cancel.
    #[arg(long, global = true)]
    json: bool,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Where the coordinator is and how to authenticate.
#[derive(Debug, Args)]
struct Conn {
    /// The coordinator's URL.
    #[arg(
        long,
        global = true,
        env = "LABWIRE_SERVER",
        default_value = "https://localhost:7443"
    )]
    server: String,
    /// The coordinator's CA certificate.
    #[arg(
        long,
        global = true,
        env = "LABWIRE_CA",
        default_value = "/etc/labwire/ca.pem"
    )]
    ca: PathBuf,
    /// The bearer token (or use --token-file).
    #[arg(long, global = true, env = "LABWIRE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, global = true, env = "LABWIRE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

impl Conn {
    /// Connects with these settings.
    async fn connect(&self) -> anyhow::Result<Clients> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?,
            (None, None) => bail!("no token: pass --token, --token-file, or set LABWIRE_TOKEN"),
        };
        connect(&self.server, &read_ca(&self.ca)?, &token).await
    }
}

/// Client commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Start a coordinator and an agent on this machine, run a job, show the results.
    Demo(crate::demo::DemoArgs),
    /// Queue a job.
    Submit(submit::SubmitArgs),
    /// Print one node as JSON (always JSON).
    Node {
        /// The node id.
        id: i64,
    },
    /// List nodes matching filters.
    Nodes(read::NodesArgs),
    /// Print a node and its descendants as a tree.
    Tree {
        /// The root node id.
        id: i64,
    },
    /// Write a job's log to standard output.
    Log {
        /// The job id.
        job: i64,
        /// The attempt (default: the one that produced the result).
        #[arg(long)]
        attempt: Option<i32>,
    },
    /// Print events as JSON lines (always JSON), from a sequence number; with --follow, keep
    /// printing.
    Events {
        /// Print events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
    },
    /// List labs (admin); with --devices, each lab's devices.
    Labs {
        /// List every lab's devices: type, driver, health, busy, tags.
        #[arg(long)]
        devices: bool,
    },
    /// List jobs with their queue state (admin); `jobs explain JOB` tells why a job is (not)
    /// placed in each lab.
    #[command(args_conflicts_with_subcommands = true)]
    Jobs {
        /// `explain JOB`.
        #[command(subcommand)]
        action: Option<admin::JobsAction>,
        /// queued, leased or finished.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Device health (admin): `device list`, `device maintenance LAB/DEVICE`, `device
    /// retire LAB/DEVICE`, `device resume LAB/DEVICE`.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Borrow a board (console scope): it leaves the pool when its current job ends (or at
    /// once with --now) and comes back when you release it or the lease runs out.
    Reserve(borrow::ReserveArgs),
    /// End your reservation of a board now (console scope; an admin may end anyone's).
    Release {
        /// LAB/DEVICE.
        target: String,
    },
    /// A reserved board's console in this terminal (console scope; its owner or an admin
    /// types, others watch). `~.` after a newline leaves. With stdin piped, bytes go as
    /// they are.
    Console(console::ConsoleArgs),
    /// Switch a reserved board's power: on, off or reset (its owner or an admin).
    Power {
        /// LAB/DEVICE.
        target: String,
        /// on, off or reset.
        action: String,
    },
    /// List the live reservations (console scope).
    Reservations {
        /// Only this lab.
        lab: Option<String>,
    },
    /// Cancel a job (admin).
    Cancel {
        /// The job id.
        job: i64,
        /// Why.
        #[arg(long, default_value = "cancelled from the command line")]
        reason: String,
    },
    /// Revoke a lab's certificates (admin).
    Revoke {
        /// The lab.
        lab: String,
    },
    /// Print a checkout's summary: tree, branch, describe, commit; each job's result, tests
    /// and failures; then the failing tests.
    ///
    /// `labwire report lab LAB --since 7d` (admin): a lab's availability report.
    #[command(args_conflicts_with_subcommands = true)]
    Report {
        /// The checkout node id.
        checkout: Option<i64>,
        /// `lab LAB`: a lab's report instead.
        #[command(subcommand)]
        what: Option<ReportCommand>,
        /// text or markdown.
        #[arg(long, default_value = "text")]
        format: labwire_coordinator::report::Format,
    },
    /// Export results in another system's format.
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Print a shell completion script for one of the three binaries.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
        /// The binary.
        #[arg(long, value_enum, default_value = "labwire")]
        bin: generate::Binary,
    },
    /// Write the man pages of the three binaries and their subcommands into a folder.
    Man {
        /// The folder (created if missing).
        dir: PathBuf,
    },
}

/// `labwire report ...` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(super) enum ReportCommand {
    /// A lab's report over a period: per device and device type, the time good, bad, in
    /// maintenance, retired and offline, jobs, infrastructure-failure rate, mean boot time;
    /// the worst first.
    Lab(lab_report::LabReportArgs),
}

/// Runs a parsed command line. A command whose standard output is closed by its reader
/// (`labwire jobs | head -1`) stops there and exits 0.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match dispatch(cli).await {
        Err(e) if crate::output::closed(&e) => Ok(ExitCode::SUCCESS),
        r => r,
    }
}

/// Calls the subcommand's function.
async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => return crate::demo::run(args).await,
        Command::Submit(a) if a.dry_run() => return submit::dry_run(&a),
        Command::Completions { shell, bin } => {
            generate::completions(shell, bin)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { dir } => {
            generate::man(&dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let c = &mut cli.conn.connect().await?;
    let json = cli.json;
    match cli.command {
        Command::Demo(_) | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled above")
        }
        Command::Submit(a) => return submit::submit(c, a, json).await,
        Command::Node { id } => read::node(c, id).await?,
        Command::Nodes(a) => read::nodes(c, a, json).await?,
        Command::Tree { id } => read::tree(c, id, json).await?,
        Command::Log { job, attempt } => {
            if json {
                bail!("`log` writes the job's log as it is; --json does not apply");
            }
            read::log(c, job, attempt).await?
        }
        Command::Events { after, follow } => read::events(c, after, follow).await?,
        Command::Labs { devices } => admin::labs(c, devices, json).await?,
        Command::Jobs {
            action: Some(admin::JobsAction::Explain { job }),
            ..
        } => admin::explain(c, job, json).await?,
        Command::Jobs { status, limit, .. } => {
            admin::jobs(c, status.as_deref(), limit, json).await?
        }
        Command::Device(d) => device::device(c, d, json).await?,
        Command::Reserve(a) => borrow::reserve(c, a, json).await?,
        Command::Release { target } => borrow::release(c, target, json).await?,
        Command::Reservations { lab } => borrow::list(c, lab, json).await?,
        Command::Console(a) => return console::console(c, a).await,
        Command::Power { target, action } => console::power(c, target, action).await?,
        Command::Cancel { job, reason } => admin::cancel(c, job, reason, json).await?,
        Command::Revoke { lab } => admin::revoke(c, lab, json).await?,
        Command::Report {
            what: Some(ReportCommand::Lab(a)),
            ..
        } => lab_report::lab_report(c, a, json).await?,
        Command::Report {
            checkout: Some(checkout),
            format,
            ..
        } => export::report(c, checkout, format, json).await?,
        Command::Report { .. } => anyhow::bail!("report: expected CHECKOUT or `lab LAB`"),
        Command::Export(e) => export::export(c, e).await?,
    }
    Ok(ExitCode::SUCCESS)
}
