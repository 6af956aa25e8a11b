//! The `labwire` command line: submit jobs, read nodes, trees, logs and events, look at labs
//! and jobs, cancel and revoke, and run the local demo.

use crate::client::{Clients, connect, read_ca};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use labwire_proto::convert;
use labwire_proto::v1;
use std::collections::HashMap;
use std::io::Write;
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
    pub conn: Conn,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the coordinator is and how to authenticate.
#[derive(Debug, Args)]
pub struct Conn {
    /// The coordinator's URL.
    #[arg(
        long,
        global = true,
        env = "LABWIRE_SERVER",
        default_value = "https://localhost:7443"
    )]
    pub server: String,
    /// The coordinator's CA certificate.
    #[arg(
        long,
        global = true,
        env = "LABWIRE_CA",
        default_value = "/etc/labwire/ca.pem"
    )]
    pub ca: PathBuf,
    /// The bearer token (or use --token-file).
    #[arg(long, global = true, env = "LABWIRE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, global = true, env = "LABWIRE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Client commands.
/// `labwire jobs ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// Tell, lab by lab, why the job was or was not placed there (admin).
    Explain {
        /// The job's node id.
        job: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a coordinator and an agent on this machine, run a job, show the results.
    Demo(crate::demo::DemoArgs),
    /// Queue a job.
    Submit(SubmitArgs),
    /// Print one node as JSON.
    Node {
        /// The node id.
        id: i64,
    },
    /// List nodes matching filters.
    Nodes(NodesArgs),
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
    /// Print events as JSON lines, from a sequence number; with --follow, keep printing.
    Events {
        /// Print events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Keep waiting for new events.
        #[arg(long)]
        follow: bool,
    },
    /// List labs (admin).
    Labs,
    /// List jobs with their queue state (admin); `jobs explain JOB` tells why a job is (not)
    /// placed in each lab.
    #[command(args_conflicts_with_subcommands = true)]
    Jobs {
        /// `explain JOB`.
        #[command(subcommand)]
        action: Option<JobsAction>,
        /// queued, leased or finished.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
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
    Report {
        /// The checkout node id.
        checkout: i64,
        /// text or markdown.
        #[arg(long, default_value = "text")]
        format: labwire_coordinator::report::Format,
    },
    /// Export results in another system's format.
    #[command(subcommand)]
    Export(ExportCommand),
}

/// Export formats.
#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Checkouts, builds and tests as KCIDB I/O schema v5 JSON.
    Kcidb {
        /// Only checkouts created at or after this time: RFC 3339 (2026-01-31T00:00:00Z) or
        /// an age (`2d`, `12h`). Default: all.
        #[arg(long)]
        since: Option<String>,
        /// The KCIDB origin (your CI system's name in KCIDB).
        #[arg(long, default_value = "labwire")]
        origin: String,
        /// The coordinator's HTTP base URL, to turn log paths into links.
        #[arg(long, env = "LABWIRE_HTTP_URL")]
        http_url: Option<String>,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// A `--since` value: RFC 3339 or an age before now.
pub fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let age = humantime::parse_duration(s).map_err(|_| {
        anyhow::anyhow!("--since `{s}`: expected RFC 3339 (2026-01-31T00:00:00Z) or an age (2d)")
    })?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(age)?)
}

async fn export_kcidb(
    c: &mut Clients,
    since: Option<&str>,
    opts: crate::kcidb::Options,
) -> anyhow::Result<(serde_json::Value, crate::kcidb::Skipped)> {
    crate::kcidb::check_origin(&opts.origin)?;
    let created_after = since.map(parse_since).transpose()?.map(convert::timestamp);
    let mut doc = crate::kcidb::Document::default();
    let mut skipped = crate::kcidb::Skipped::default();
    let mut cursor = 0;
    loop {
        let page = c
            .nodes
            .query_nodes(v1::QueryNodesRequest {
                kind: v1::NodeKind::Checkout as i32,
                created_after,
                limit: 100,
                cursor,
                ..Default::default()
            })
            .await?
            .into_inner();
        for n in &page.nodes {
            let (root, nodes) = crate::report::fetch_subtree(c, n.id).await?;
            crate::kcidb::add_checkout(&opts, &root, &nodes, &mut doc, &mut skipped);
        }
        if page.next_cursor == 0 {
            break;
        }
        cursor = page.next_cursor;
    }
    Ok((doc.to_json(), skipped))
}

/// Options of `submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job's name.
    #[arg(long)]
    pub name: String,
    /// Required device type.
    #[arg(long)]
    pub device_type: Option<String>,
    /// Required architecture.
    #[arg(long)]
    pub arch: Option<String>,
    /// Required driver (shell, serial, lava, labgrid).
    #[arg(long)]
    pub driver: Option<String>,
    /// Required tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A job parameter NAME=VALUE (repeatable).
    #[arg(long = "param", value_parser = parse_kv)]
    pub params: Vec<(String, String)>,
    /// A command to run on the device's shell (repeatable).
    #[arg(long = "command")]
    pub commands: Vec<String>,
    /// Priority (higher first).
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    /// Time limit in seconds.
    #[arg(long, default_value_t = 0)]
    pub timeout: u32,
    /// Parent node id.
    #[arg(long, default_value_t = 0)]
    pub parent: i64,
    /// Wait for the job to finish and print its tree; exit 1 unless it passed.
    #[arg(long)]
    pub wait: bool,
}

/// Options of `nodes`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// checkout, kbuild, job, test or process.
    #[arg(long)]
    pub kind: Option<String>,
    /// running, available, closing or done.
    #[arg(long)]
    pub state: Option<String>,
    /// pass, fail, skip or incomplete.
    #[arg(long)]
    pub result: Option<String>,
    /// Exact name.
    #[arg(long)]
    pub name: Option<String>,
    /// Parent id.
    #[arg(long, default_value_t = 0)]
    pub parent: i64,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Start after this id.
    #[arg(long, default_value_t = 0)]
    pub cursor: i64,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}`: expected NAME=VALUE"))
}

impl Conn {
    /// Connects with these settings.
    pub async fn connect(&self) -> anyhow::Result<Clients> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?,
            (None, None) => bail!("no token: pass --token, --token-file, or set LABWIRE_TOKEN"),
        };
        connect(&self.server, &read_ca(&self.ca)?, &token).await
    }
}

fn kind_enum(s: &str) -> anyhow::Result<i32> {
    Ok(match s {
        "checkout" => v1::NodeKind::Checkout,
        "kbuild" => v1::NodeKind::Kbuild,
        "job" => v1::NodeKind::Job,
        "test" => v1::NodeKind::Test,
        "process" => v1::NodeKind::Process,
        _ => bail!("--kind `{s}`: expected checkout, kbuild, job, test or process"),
    } as i32)
}

fn state_enum(s: &str) -> anyhow::Result<i32> {
    Ok(match s {
        "running" => v1::NodeState::Running,
        "available" => v1::NodeState::Available,
        "closing" => v1::NodeState::Closing,
        "done" => v1::NodeState::Done,
        _ => bail!("--state `{s}`: expected running, available, closing or done"),
    } as i32)
}

/// Short names of a node's state and result.
pub fn state_name(n: &v1::Node) -> &'static str {
    match v1::NodeState::try_from(n.state) {
        Ok(v1::NodeState::Running) => "running",
        Ok(v1::NodeState::Available) => "available",
        Ok(v1::NodeState::Closing) => "closing",
        Ok(v1::NodeState::Done) => "done",
        _ => "-",
    }
}

/// The node's result name, or `-`.
pub fn result_name(n: &v1::Node) -> &'static str {
    convert::result_from_proto(n.result).map_or("-", |r| r.as_str())
}

/// A node as JSON with KernelCI field names.
pub fn node_json(n: &v1::Node) -> serde_json::Value {
    let t = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .and_then(convert::from_timestamp)
            .map(|t| t.to_rfc3339())
    };
    serde_json::json!({
        "id": n.id, "kind": kind_name(n.kind), "name": n.name, "path": n.path,
        "group": n.group, "parent": if n.parent == 0 { None } else { Some(n.parent) },
        "state": state_name(n), "result": convert::result_from_proto(n.result).map(|r| r.as_str()),
        "artifacts": n.artifacts,
        "data": n.data.as_ref().map(convert::struct_to_map).unwrap_or_default(),
        "created": t(&n.created), "updated": t(&n.updated),
        "timeout": t(&n.timeout), "holdoff": t(&n.holdoff),
        "owner": n.owner, "submitter": n.submitter, "treeid": n.treeid,
        "retry_counter": n.retry_counter,
    })
}

fn kind_name(k: i32) -> &'static str {
    match v1::NodeKind::try_from(k) {
        Ok(v1::NodeKind::Checkout) => "checkout",
        Ok(v1::NodeKind::Kbuild) => "kbuild",
        Ok(v1::NodeKind::Job) => "job",
        Ok(v1::NodeKind::Test) => "test",
        Ok(v1::NodeKind::Process) => "process",
        _ => "-",
    }
}

/// Reads a node and all its descendants.
pub async fn fetch_tree(
    c: &mut Clients,
    id: i64,
) -> anyhow::Result<(v1::Node, HashMap<i64, Vec<v1::Node>>)> {
    let root = c
        .nodes
        .get_node(v1::GetNodeRequest { id })
        .await?
        .into_inner();
    let mut children: HashMap<i64, Vec<v1::Node>> = HashMap::new();
    let mut todo = vec![id];
    while let Some(parent) = todo.pop() {
        let mut cursor = 0;
        loop {
            let page = c
                .nodes
                .query_nodes(v1::QueryNodesRequest {
                    parent,
                    limit: 1000,
                    cursor,
                    ..Default::default()
                })
                .await?
                .into_inner();
            for n in &page.nodes {
                todo.push(n.id);
            }
            children.entry(parent).or_default().extend(page.nodes);
            if page.next_cursor == 0 {
                break;
            }
            cursor = page.next_cursor;
        }
    }
    Ok((root, children))
}

/// Renders a tree as text: name, state, result, and the error of failed nodes.
pub fn render_tree(root: &v1::Node, children: &HashMap<i64, Vec<v1::Node>>) -> String {
    fn line(out: &mut String, n: &v1::Node, prefix: &str, branch: &str) {
        let data = n
            .data
            .as_ref()
            .map(convert::struct_to_map)
            .unwrap_or_default();
        let mut extra = String::new();
        for k in ["lab", "device"] {
            if let Some(v) = data.get(k).and_then(|v| v.as_str()) {
                extra.push_str(&format!(" {k}={v}"));
            }
        }
        if let Some(code) = data.get("error_code").and_then(|v| v.as_str()) {
            extra.push_str(&format!(" error_code={code}"));
        }
        let label = format!("{prefix}{branch}{} [{}]", n.name, kind_name(n.kind));
        out.push_str(&format!(
            "{label:<48} {:<9} {:<10}{extra}\n",
            state_name(n),
            result_name(n)
        ));
    }
    fn walk(out: &mut String, id: i64, children: &HashMap<i64, Vec<v1::Node>>, prefix: &str) {
        let Some(kids) = children.get(&id) else {
            return;
        };
        for (i, k) in kids.iter().enumerate() {
            let last = i + 1 == kids.len();
            line(out, k, prefix, if last { "└─ " } else { "├─ " });
            walk(
                out,
                k.id,
                children,
                &format!("{prefix}{}", if last { "   " } else { "│  " }),
            );
        }
    }
    let mut out = String::new();
    line(&mut out, root, "", "");
    walk(&mut out, root.id, children, "");
    out
}

/// Waits for a node to be done, calling `tick` with its state as it changes.
pub async fn wait_done(
    c: &mut Clients,
    id: i64,
    mut tick: impl FnMut(&v1::Node),
) -> anyhow::Result<v1::Node> {
    // Follow the event stream from now; read the node first so nothing is missed.
    let mut stream = c
        .events
        .subscribe(v1::SubscribeRequest {
            after_seq: 0,
            kind: v1::NodeKind::Job as i32,
            catch_up_only: false,
        })
        .await?
        .into_inner();
    let node = c
        .nodes
        .get_node(v1::GetNodeRequest { id })
        .await?
        .into_inner();
    tick(&node);
    if node.state == v1::NodeState::Done as i32 {
        return Ok(node);
    }
    while let Some(ev) = stream.message().await? {
        if let Some(n) = ev.node
            && n.id == id
        {
            tick(&n);
            if n.state == v1::NodeState::Done as i32 {
                return Ok(n);
            }
        }
    }
    bail!("the event stream ended before job {id} was done")
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Demo(args) = cli.command {
        return crate::demo::run(args).await;
    }
    let mut c = cli.conn.connect().await?;
    match cli.command {
        Command::Demo(_) => unreachable!("handled above"),
        Command::Submit(a) => {
            let spec = v1::JobSpec {
                name: a.name,
                criteria: Some(v1::Criteria {
                    device_type: a.device_type.unwrap_or_default(),
                    arch: a.arch.unwrap_or_default(),
                    driver: a.driver.unwrap_or_default(),
                    tags: a.tags,
                    ..Default::default()
                }),
                params: a.params.into_iter().collect(),
                commands: a.commands,
                timeout_seconds: a.timeout,
                priority: a.priority,
                ..Default::default()
            };
            let node = c
                .nodes
                .submit_job(v1::SubmitJobRequest {
                    spec: Some(spec),
                    parent: a.parent,
                    submitter: String::new(),
                })
                .await?
                .into_inner()
                .node
                .context("the coordinator returned no node")?;
            println!("{}", node.id);
            if a.wait {
                let done = wait_done(&mut c, node.id, |_| {}).await?;
                let (root, kids) = fetch_tree(&mut c, done.id).await?;
                print!("{}", render_tree(&root, &kids));
                if done.result != v1::NodeResult::Pass as i32 {
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::Node { id } => {
            let n = c
                .nodes
                .get_node(v1::GetNodeRequest { id })
                .await?
                .into_inner();
            println!("{}", serde_json::to_string_pretty(&node_json(&n))?);
        }
        Command::Nodes(a) => {
            let req = v1::QueryNodesRequest {
                kind: a.kind.as_deref().map(kind_enum).transpose()?.unwrap_or(0),
                state: a.state.as_deref().map(state_enum).transpose()?.unwrap_or(0),
                result: match a.result.as_deref() {
                    None => 0,
                    Some(r) => convert::result_to_proto(Some(r.parse()?)) as i32,
                },
                name: a.name.unwrap_or_default(),
                parent: a.parent,
                limit: a.limit,
                cursor: a.cursor,
                ..Default::default()
            };
            let page = c.nodes.query_nodes(req).await?.into_inner();
            println!(
                "{:<8} {:<9} {:<40} {:<10} RESULT",
                "ID", "KIND", "NAME", "STATE"
            );
            for n in &page.nodes {
                println!(
                    "{:<8} {:<9} {:<40} {:<10} {}",
                    n.id,
                    kind_name(n.kind),
                    n.name,
                    state_name(n),
                    result_name(n)
                );
            }
            if page.next_cursor != 0 {
                eprintln!("more: --cursor {}", page.next_cursor);
            }
        }
        Command::Tree { id } => {
            let (root, kids) = fetch_tree(&mut c, id).await?;
            print!("{}", render_tree(&root, &kids));
        }
        Command::Log { job, attempt } => {
            let mut s = c
                .nodes
                .get_log(v1::GetLogRequest {
                    job,
                    attempt: attempt.unwrap_or(-1),
                })
                .await?
                .into_inner();
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = s.message().await? {
                out.write_all(&chunk.data)?;
            }
        }
        Command::Events { after, follow } => {
            let mut s = c
                .events
                .subscribe(v1::SubscribeRequest {
                    after_seq: after,
                    kind: 0,
                    catch_up_only: !follow,
                })
                .await?
                .into_inner();
            let mut out = std::io::stdout().lock();
            while let Some(ev) = s.message().await? {
                let node = ev.node.as_ref().map(node_json);
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"seq": ev.seq, "type": ev.r#type, "op": ev.op, "node": node})
                )?;
            }
        }
        Command::Labs => {
            let labs = c
                .admin
                .list_labs(v1::ListLabsRequest {})
                .await?
                .into_inner()
                .labs;
            println!(
                "{:<20} {:<10} {:<8} {:<6} {:<8} LAST SEEN",
                "LAB", "STATE", "DEVICES", "FREE", "IN FLIGHT"
            );
            for l in labs {
                let state = if l.revoked {
                    "revoked"
                } else if l.connected {
                    "connected"
                } else {
                    "offline"
                };
                let seen = l
                    .last_seen
                    .as_ref()
                    .and_then(convert::from_timestamp)
                    .map_or("-".into(), |t| t.to_rfc3339());
                println!(
                    "{:<20} {:<10} {:<8} {:<6} {:<8} {seen}",
                    l.name,
                    state,
                    l.devices.len(),
                    l.free_slots,
                    l.jobs_in_flight
                );
            }
        }
        Command::Jobs {
            action: Some(JobsAction::Explain { job }),
            ..
        } => {
            let r = c
                .admin
                .explain_job(v1::ExplainJobRequest { job })
                .await?
                .into_inner();
            let st = match v1::JobStatus::try_from(r.status) {
                Ok(v1::JobStatus::Queued) => "queued".to_string(),
                Ok(v1::JobStatus::Leased) => format!("leased to {} on {}", r.lab, r.device),
                Ok(v1::JobStatus::Finished) => {
                    format!("finished (last in {} on {})", r.lab, r.device)
                }
                _ => "unknown".to_string(),
            };
            println!("job {job}: {st}");
            println!("criteria:   {}", r.criteria);
            println!("attributes: {}", r.attributes);
            if r.labs.is_empty() {
                println!("no labs are known to the coordinator");
            }
            for l in r.labs {
                let mark = if l.eligible { "yes" } else { "no " };
                let score = l
                    .score
                    .map(|s| format!(" (score {s:.0}s)"))
                    .unwrap_or_default();
                println!("{mark} {}{score}", l.lab);
                for why in l.reasons {
                    println!("      {why}");
                }
            }
        }
        Command::Jobs { status, limit, .. } => {
            let status = match status.as_deref() {
                None => 0,
                Some("queued") => v1::JobStatus::Queued as i32,
                Some("leased") => v1::JobStatus::Leased as i32,
                Some("finished") => v1::JobStatus::Finished as i32,
                Some(s) => bail!("--status `{s}`: expected queued, leased or finished"),
            };
            let jobs = c
                .admin
                .list_jobs(v1::ListJobsRequest { status, limit })
                .await?
                .into_inner()
                .jobs;
            println!(
                "{:<8} {:<30} {:<9} {:<16} {:<16} {:<7} RESULT",
                "ID", "NAME", "STATUS", "LAB", "DEVICE", "ATTEMPT"
            );
            for j in jobs {
                let n = j.node.unwrap_or_default();
                let st = match v1::JobStatus::try_from(j.status) {
                    Ok(v1::JobStatus::Queued) => "queued",
                    Ok(v1::JobStatus::Leased) => "leased",
                    Ok(v1::JobStatus::Finished) => "finished",
                    _ => "-",
                };
                println!(
                    "{:<8} {:<30} {:<9} {:<16} {:<16} {:<7} {}",
                    n.id,
                    n.name,
                    st,
                    j.lease_owner,
                    j.device,
                    j.attempt,
                    result_name(&n)
                );
            }
        }
        Command::Cancel { job, reason } => {
            let n = c
                .admin
                .cancel_job(v1::CancelJobRequest { job, reason })
                .await?
                .into_inner();
            println!("job {job}: {}", n.node.map_or("-", |n| state_name(&n)));
        }
        Command::Revoke { lab } => {
            let r = c
                .admin
                .revoke_lab(v1::RevokeLabRequest { lab: lab.clone() })
                .await?
                .into_inner();
            println!(
                "lab `{lab}`: {} certificate(s) revoked, {} job(s) back in the queue",
                r.certificates, r.jobs_requeued
            );
        }
        Command::Report { checkout, format } => {
            print!("{}", crate::report::report(&mut c, checkout, format).await?);
        }
        Command::Export(ExportCommand::Kcidb {
            since,
            origin,
            http_url,
            output,
        }) => {
            let opts = crate::kcidb::Options {
                origin,
                http_base: http_url,
            };
            let (doc, skipped) = export_kcidb(&mut c, since.as_deref(), opts).await?;
            if !skipped.jobs_without_build.is_empty() {
                eprintln!(
                    "left out {} job(s) with no kbuild node above them (KCIDB tests belong to a build): {}",
                    skipped.jobs_without_build.len(),
                    skipped
                        .jobs_without_build
                        .iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let text = serde_json::to_string_pretty(&doc)?;
            match output {
                Some(f) => std::fs::write(&f, text + "\n")
                    .with_context(|| format!("cannot write {}", f.display()))?,
                None => println!("{text}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
