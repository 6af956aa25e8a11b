//! `labwire submit`: queue a job; with `--wait`, follow it to the end and print its tree.

use super::read::{fetch_tree, render_tree};
use crate::client::Clients;
use crate::output::{out, outln};
use anyhow::{Context, bail};
use clap::Args;
use labwire_proto::v1;
use std::process::ExitCode;

/// Options of `submit`.
#[derive(Debug, Args)]
pub(super) struct SubmitArgs {
    /// The job's name.
    #[arg(long)]
    name: String,
    /// Required device type.
    #[arg(long)]
    device_type: Option<String>,
    /// Required architecture.
    #[arg(long)]
    arch: Option<String>,
    /// Required driver (shell, serial, lava, labgrid).
    #[arg(long)]
    driver: Option<String>,
    /// Required tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// A job parameter NAME=VALUE (repeatable).
    #[arg(long = "param", value_parser = parse_kv)]
    params: Vec<(String, String)>,
    /// A command to run on the device's shell (repeatable).
    #[arg(long = "command")]
    commands: Vec<String>,
    /// Priority (higher first).
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Time limit in seconds.
    #[arg(long, default_value_t = 0)]
    timeout: u32,
    /// Parent node id.
    #[arg(long, default_value_t = 0)]
    parent: i64,
    /// Wait for the job to finish and print its tree; exit 1 unless it passed.
    #[arg(long)]
    wait: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}`: expected NAME=VALUE"))
}

/// `labwire submit`: prints the new job's id; with `--wait`, its tree once it is done.
pub(super) async fn submit(c: &mut Clients, a: SubmitArgs) -> anyhow::Result<ExitCode> {
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
    outln!("{}", node.id)?;
    if a.wait {
        let done = wait_done(c, node.id, |_| {}).await?;
        let (root, kids) = fetch_tree(c, done.id).await?;
        out!("{}", render_tree(&root, &kids))?;
        if done.result != v1::NodeResult::Pass as i32 {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for a node to be done, calling `tick` with its state as it changes.
pub(crate) async fn wait_done(
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
