//! Results for people and other systems: `report` (a checkout's summary), `export kcidb`
//! (KCIDB I/O schema v5 JSON) and `export junit` (a job's tests as JUnit XML).

use crate::client::Clients;
use crate::output::{out, outln};
use anyhow::Context;
use clap::Subcommand;
use labwire_proto::convert;
use labwire_proto::v1;
use std::path::PathBuf;

/// Export formats.
#[derive(Debug, Subcommand)]
pub(super) enum ExportCommand {
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
    /// A job's tests as JUnit XML, for CI systems that read it (GitLab, Jenkins): a
    /// testsuite per test directly under the job, a testcase per leaf test.
    Junit {
        /// The job's node id.
        job: i64,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// `labwire report CHECKOUT`: the checkout's summary as text or markdown, or as JSON.
pub(super) async fn report(
    c: &mut Clients,
    checkout: i64,
    format: labwire_coordinator::report::Format,
    json: bool,
) -> anyhow::Result<()> {
    let r = crate::report::build(c, checkout).await?;
    if json {
        return super::read::print_json(&crate::report::to_json(&r));
    }
    out!("{}", r.render(format))
}

/// `labwire export ...`.
pub(super) async fn export(c: &mut Clients, e: ExportCommand) -> anyhow::Result<()> {
    let (since, origin, http_url, output) = match e {
        ExportCommand::Kcidb {
            since,
            origin,
            http_url,
            output,
        } => (since, origin, http_url, output),
        ExportCommand::Junit { job, output } => return junit(c, job, output).await,
    };
    let opts = crate::kcidb::Options {
        origin,
        http_base: http_url,
    };
    let (doc, skipped) = export_kcidb(c, since.as_deref(), opts).await?;
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
        Some(f) => {
            std::fs::write(&f, text + "\n").with_context(|| format!("cannot write {}", f.display()))
        }
        None => outln!("{text}"),
    }
}

/// `labwire export junit JOB`: the job's tests as JUnit XML.
async fn junit(c: &mut Clients, job: i64, output: Option<PathBuf>) -> anyhow::Result<()> {
    let (root, kids) = super::fetch_tree(c, job).await?;
    if root.kind != v1::NodeKind::Job as i32 {
        anyhow::bail!("node {job} is not a job");
    }
    let tests = test_nodes(root.id, &kids);
    let mut xml = Vec::new();
    labwire_parsers::junit::write(&mut xml, &format!("{} ({job})", root.name), &tests)
        .context("cannot write JUnit XML")?;
    match output {
        Some(f) => std::fs::write(&f, xml).with_context(|| format!("cannot write {}", f.display())),
        None => Ok(crate::output::write_bytes(&xml)?),
    }
}

/// The tests below node `id` as a result tree, in id order (the order they were found). A
/// test without a result counts as `incomplete`.
fn test_nodes(
    id: i64,
    kids: &std::collections::HashMap<i64, Vec<v1::Node>>,
) -> Vec<labwire_common::TestNode> {
    let Some(children) = kids.get(&id) else {
        return Vec::new();
    };
    let mut children: Vec<&v1::Node> = children.iter().collect();
    children.sort_by_key(|n| n.id);
    children
        .into_iter()
        .map(|n| {
            let data = n
                .data
                .as_ref()
                .map(convert::struct_to_map)
                .unwrap_or_default();
            let text = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_string);
            labwire_common::TestNode {
                name: n.name.clone(),
                result: convert::result_from_proto(n.result)
                    .unwrap_or(labwire_common::NodeResult::Incomplete),
                // Recursion is bounded: the coordinator stores trees at most 32 levels deep.
                tests: test_nodes(n.id, kids),
                log_excerpt: text("log_excerpt"),
                measurement: data.get("measurement").and_then(|v| v.as_f64()),
                units: text("units"),
                error: text("error_msg"),
            }
        })
        .collect()
}

/// A `--since` value: RFC 3339 or an age before now.
fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let age = humantime::parse_duration(s).map_err(|_| {
        anyhow::anyhow!("--since `{s}`: expected RFC 3339 (2026-01-31T00:00:00Z) or an age (2d)")
    })?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(age)?)
}

/// Every checkout created since `since`, with its tree, as one KCIDB document.
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
