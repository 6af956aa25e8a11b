//! Node queries over the API on the big store: six filter shapes, each with a limit of 100,
//! timed one at a time from the client (TLS, token check, SQLite, encoding included).

use super::bigstore::{BigStore, JOBS, TESTS};
use crate::Opts;
use crate::report::{Figure, Goal, median, ms, quantile, spread};
use labwire_proto::v1;
use std::time::Instant;

/// Makes the i-th query of a filter shape.
type MakeQuery<'a> = Box<dyn Fn(usize) -> v1::QueryNodesRequest + 'a>;

/// Runs the scenario.
pub async fn run(o: &Opts, big: &BigStore) -> anyhow::Result<Vec<Figure>> {
    let mut c = big.rig.client().await?;
    let checkout_trees: Vec<String> = {
        let mut out = Vec::new();
        for id in big.sample_checkouts.iter().take(50) {
            let n = c
                .nodes
                .get_node(v1::GetNodeRequest { id: id.0 })
                .await?
                .into_inner();
            out.push(n.treeid);
        }
        out
    };
    let mid_cursor = (big.nodes / 2) as i64;
    let shapes: Vec<(&str, MakeQuery)> = vec![
        (
            "failed tests",
            Box::new(|_| v1::QueryNodesRequest {
                kind: v1::NodeKind::Test as i32,
                result: v1::NodeResult::Fail as i32,
                ..Default::default()
            }),
        ),
        (
            "done jobs of a group",
            Box::new(|i| v1::QueryNodesRequest {
                kind: v1::NodeKind::Job as i32,
                state: v1::NodeState::Done as i32,
                group: JOBS[i % JOBS.len()].into(),
                ..Default::default()
            }),
        ),
        (
            "tests by name",
            Box::new(|i| v1::QueryNodesRequest {
                kind: v1::NodeKind::Test as i32,
                name: format!("test_{}", i % TESTS),
                ..Default::default()
            }),
        ),
        (
            "failed tests, second half",
            Box::new(move |_| v1::QueryNodesRequest {
                kind: v1::NodeKind::Test as i32,
                result: v1::NodeResult::Fail as i32,
                cursor: mid_cursor,
                ..Default::default()
            }),
        ),
        (
            "one tree",
            Box::new(|i| v1::QueryNodesRequest {
                treeid: checkout_trees[i % checkout_trees.len()].clone(),
                ..Default::default()
            }),
        ),
        (
            "children of a job",
            Box::new(|i| v1::QueryNodesRequest {
                parent: big.sample_jobs[i % big.sample_jobs.len()].0,
                ..Default::default()
            }),
        ),
    ];
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    let mut per_shape: Vec<Vec<f64>> = vec![Vec::new(); shapes.len()];
    for run in 0..=o.runs.max(1) {
        let mut lat = Vec::new();
        for (s, (_, make)) in shapes.iter().enumerate() {
            for i in 0..o.queries.max(1) {
                let mut req = make(i + run * 7);
                req.limit = 100;
                let t = Instant::now();
                let got = c.nodes.query_nodes(req).await?.into_inner();
                let d = ms(t.elapsed());
                anyhow::ensure!(!got.nodes.is_empty(), "query shape {s} found nothing");
                if run > 0 {
                    lat.push(d);
                    per_shape[s].push(d);
                }
            }
        }
        if run > 0 {
            p50s.push(quantile(&lat, 0.5));
            p99s.push(quantile(&lat, 0.99));
        }
    }
    let shapes_note = shapes
        .iter()
        .zip(&per_shape)
        .map(|((name, _), v)| format!("{name} {:.2}", median(v)))
        .collect::<Vec<_>>()
        .join(", ");
    let size = format!(
        "{} nodes, limit 100, {} queries of 6 shapes per run",
        big.nodes,
        o.queries * 6
    );
    Ok(vec![
        Figure::new(
            "queries",
            "query p50",
            median(&p50s),
            "ms",
            Some(Goal::Below(5.0)),
        )
        .note(format!(
            "median of {} runs, {size} (runs: {} ms); p50 per shape in ms: {shapes_note}",
            p50s.len(),
            spread(&p50s)
        )),
        {
            let (worst, name) = shapes
                .iter()
                .zip(&per_shape)
                .map(|((name, _), v)| (median(v), *name))
                .fold((0.0, ""), |a, b| if b.0 > a.0 { b } else { a });
            Figure::new(
                "queries",
                "slowest shape p50",
                worst,
                "ms",
                Some(Goal::Below(5.0)),
            )
            .note(format!("`{name}`, all runs together"))
        },
        Figure::new("queries", "query p99", median(&p99s), "ms", None).note(format!(
            "median of {} runs (runs: {} ms)",
            p99s.len(),
            spread(&p99s)
        )),
    ])
}
