//! `GET /metrics`: the coordinator's figures in the Prometheus text format (version 0.0.4),
//! read from the store at each scrape, so they survive restarts and agree with what the API
//! shows. Written out here rather than through a metrics crate: every figure is a snapshot
//! of the store (counts, a histogram made by one query, [`crate::store::metrics`]), which
//! the crates' in-process instruments do not model.

use super::ApiError;
use super::routes::authorize;
use crate::shared::SharedRef;
use crate::store::labs::Scope;
use crate::store::metrics::{Snapshot, snapshot};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use std::fmt::Write;

/// Upper bounds (seconds) of the dispatch latency histogram's buckets.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders the text exposition.
fn render(s: &Snapshot, labs_connected: usize) -> String {
    let mut o = String::new();
    head(
        &mut o,
        "labwire_queue_length",
        "gauge",
        "Jobs waiting for an agent.",
    );
    let queued = s
        .jobs
        .iter()
        .find(|(st, _)| st == "queued")
        .map_or(0, |(_, n)| *n);
    let _ = writeln!(o, "labwire_queue_length {queued}");
    head(&mut o, "labwire_jobs", "gauge", "Jobs by queue state.");
    for st in ["queued", "leased", "finished"] {
        let n = s.jobs.iter().find(|(x, _)| x == st).map_or(0, |(_, n)| *n);
        let _ = writeln!(o, "labwire_jobs{{status=\"{st}\"}} {n}");
    }
    head(&mut o, "labwire_nodes", "gauge", "Nodes by kind and state.");
    for (kind, state, n) in &s.nodes {
        let _ = writeln!(o, "labwire_nodes{{kind=\"{kind}\",state=\"{state}\"}} {n}");
    }
    head(
        &mut o,
        "labwire_dispatch_latency_seconds",
        "histogram",
        "Time from queueing to lease of each job's latest lease.",
    );
    for (b, n) in LATENCY_BUCKETS.iter().zip(&s.latency_buckets) {
        let _ = writeln!(
            o,
            "labwire_dispatch_latency_seconds_bucket{{le=\"{b}\"}} {n}"
        );
    }
    let _ = writeln!(
        o,
        "labwire_dispatch_latency_seconds_bucket{{le=\"+Inf\"}} {}\n\
         labwire_dispatch_latency_seconds_sum {}\n\
         labwire_dispatch_latency_seconds_count {}",
        s.latency_count,
        s.latency_sum_us as f64 / 1e6,
        s.latency_count
    );
    head(
        &mut o,
        "labwire_labs_connected",
        "gauge",
        "Labs whose agent was heard from within two heartbeats.",
    );
    let _ = writeln!(o, "labwire_labs_connected {labs_connected}");
    head(
        &mut o,
        "labwire_events_written_total",
        "counter",
        "Node events appended to the event log (the newest sequence number).",
    );
    let _ = writeln!(o, "labwire_events_written_total {}", s.last_seq);
    o
}

/// `GET /metrics` (token with the `read` scope).
pub(super) async fn metrics(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Scope::Read).await?;
    let snap = shared.store.read(|c| snapshot(c, LATENCY_BUCKETS)).await?;
    let body = render(&snap, shared.connected_labs().len());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
