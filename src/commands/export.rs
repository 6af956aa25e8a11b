//! Results for people and other systems: `report` (a checkout's summary) and `export kcidb`
//! (KCIDB I/O schema v5 JSON).

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
}

/// `labwire report CHECKOUT`: the checkout's summary as text or markdown.
pub(super) async fn report(
    c: &mut Clients,
    checkout: i64,
    format: labwire_coordinator::report::Format,
) -> anyhow::Result<()> {
    out!("{}", crate::report::report(c, checkout, format).await?)
}

/// `labwire export ...`.
pub(super) async fn export(c: &mut Clients, e: ExportCommand) -> anyhow::Result<()> {
    let ExportCommand::Kcidb {
        since,
        origin,
        http_url,
        output,
    } = e;
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
