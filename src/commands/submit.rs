//! `labwire submit`: queue a job described by options and/or a job file ([`super::jobfile`]);
//! with `--wait`, follow it to the end and print its tree; with `--dry-run`, only check it.

use super::jobfile::{ArtifactRef, JobFile, Parser};
use super::read::{fetch_tree, print_json, render_tree, tree_json};
use crate::client::Clients;
use crate::output::{out, outln};
use anyhow::{Context, bail};
use clap::Args;
use labwire_proto::v1;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `submit`.
#[derive(Debug, Args)]
pub(super) struct SubmitArgs {
    /// A job file (YAML, or JSON when it ends in .json; `-` for standard input) with the
    /// job's fields; the options below add to it or replace them. See docs/cli.md.
    #[arg(long = "file", short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// The job's name (required unless the job file has one).
    #[arg(long)]
    name: Option<String>,
    /// Required device type.
    #[arg(long)]
    device_type: Option<String>,
    /// Required architecture.
    #[arg(long)]
    arch: Option<String>,
    /// Required driver (shell, serial, lava, labgrid).
    #[arg(long)]
    driver: Option<String>,
    /// Only this device, by name (repeatable: any of them).
    #[arg(long = "device", value_name = "NAME")]
    devices: Vec<String>,
    /// Required tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// A file to fetch before the run, ROLE=URL or ROLE=URL#SHA256 (repeatable; roles such
    /// as kernel, ramdisk, dtb, modules, rootfs). URL is http://, https:// or file://.
    #[arg(long = "artifact", value_name = "ROLE=URL[#SHA256]", value_parser = parse_artifact)]
    artifacts: Vec<(String, ArtifactRef)>,
    /// The parser that reads the log.
    #[arg(long, value_enum)]
    parser: Option<Parser>,
    /// A job parameter NAME=VALUE (repeatable).
    #[arg(long = "param", value_parser = parse_kv)]
    params: Vec<(String, String)>,
    /// A command to run on the device's shell (repeatable; after the job file's).
    #[arg(long = "command")]
    commands: Vec<String>,
    /// Priority (higher first).
    #[arg(long)]
    priority: Option<i32>,
    /// Time limit: seconds or a duration (10m).
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<u32>,
    /// When the job fails, keep its board reserved for you, powered and logged in, this
    /// long (a duration such as 30m; 1m to 24h).
    #[arg(long, value_parser = parse_timeout, value_name = "DURATION")]
    hold_on_failure: Option<u32>,
    /// Parent node id.
    #[arg(long)]
    parent: Option<i64>,
    /// Check the job and print it as a job file (JSON) instead of submitting it.
    #[arg(long, conflicts_with = "wait")]
    dry_run: bool,
    /// Wait for the job to finish and print its tree; exit 1 unless it passed.
    #[arg(long)]
    wait: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}`: expected NAME=VALUE"))
}

fn parse_artifact(s: &str) -> Result<(String, ArtifactRef), String> {
    let (role, url) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected ROLE=URL or ROLE=URL#SHA256"))?;
    if role.is_empty() {
        return Err(format!("`{s}`: the role is empty"));
    }
    Ok((role.to_string(), ArtifactRef::parse(url)?))
}

fn parse_timeout(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}`: expected seconds or a duration (10m): {e}"))?;
    u32::try_from(d.as_secs()).map_err(|_| format!("`{s}` is too long"))
}

impl SubmitArgs {
    /// The job: the job file (if any) with the command line's options applied.
    fn job(&self) -> anyhow::Result<JobFile> {
        let mut j = match &self.file {
            Some(f) => JobFile::load(f)?,
            None => JobFile::default(),
        };
        let c = &mut j.criteria;
        for (field, value) in [
            (&mut c.device_type, &self.device_type),
            (&mut c.arch, &self.arch),
            (&mut c.driver, &self.driver),
        ] {
            if value.is_some() {
                field.clone_from(value);
            }
        }
        c.devices.extend(self.devices.iter().cloned());
        c.tags.extend(self.tags.iter().cloned());
        if let Some(n) = &self.name {
            j.name.clone_from(n);
        }
        j.artifacts.extend(self.artifacts.iter().cloned());
        j.params.extend(self.params.iter().cloned());
        j.commands.extend(self.commands.iter().cloned());
        if self.parser.is_some() {
            j.parser = self.parser;
        }
        if let Some(p) = self.priority {
            j.priority = p;
        }
        if self.timeout.is_some() {
            j.timeout = self.timeout;
        }
        if self.parent.is_some() {
            j.parent = self.parent;
        }
        if self.hold_on_failure.is_some() {
            j.hold_on_failure = self.hold_on_failure;
        }
        Ok(j)
    }

    /// Whether only a check is asked for (no connection needed).
    pub(super) fn dry_run(&self) -> bool {
        self.dry_run
    }
}

/// `labwire submit --dry-run`: checks the job and prints it as a JSON job file.
pub(super) fn dry_run(a: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let job = a.job()?;
    job.to_spec()?;
    outln!("{}", serde_json::to_string_pretty(&job)?)?;
    Ok(ExitCode::SUCCESS)
}

/// `labwire submit`: prints the new job's id; with `--wait`, its tree once it is done. With
/// `json`: `{"id": ID}`, or with `--wait` the job's tree as `labwire tree --json` prints it.
pub(super) async fn submit(c: &mut Clients, a: SubmitArgs, json: bool) -> anyhow::Result<ExitCode> {
    let job = a.job()?;
    let spec = job.to_spec()?;
    let node = c
        .nodes
        .submit_job(v1::SubmitJobRequest {
            spec: Some(spec),
            parent: job.parent.unwrap_or(0),
            submitter: String::new(),
        })
        .await?
        .into_inner()
        .node
        .context("the coordinator returned no node")?;
    if !json {
        outln!("{}", node.id)?;
    } else if !a.wait {
        print_json(&serde_json::json!({"id": node.id}))?;
    }
    if a.wait {
        let done = wait_done(c, node.id, |_| {}).await?;
        let (root, kids) = fetch_tree(c, done.id).await?;
        if json {
            print_json(&tree_json(&root, &kids))?;
        } else {
            out!("{}", render_tree(&root, &kids))?;
        }
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
