//! `GET /ui/checkouts`: the latest checkouts (at most 100), filtered by tree and branch, each
//! with its revision and the results of the jobs below it.

use super::view::{NodeView, Time, revision};
use super::{Page, fail, last_seq, page_auth, show};
use crate::model::{Node, NodeKind};
use crate::shared::SharedRef;
use crate::store::NodeFilter;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::Serialize;
use std::collections::HashMap;

/// Most checkouts the page lists.
const SHOWN: usize = 100;

/// The page's query: `?tree=...&branch=...` (empty: all).
#[derive(serde::Deserialize, Default)]
pub(super) struct CheckoutFilter {
    #[serde(default)]
    tree: String,
    #[serde(default)]
    branch: String,
}

/// One filter of the form: its values and the one picked.
#[derive(Serialize)]
struct Select {
    name: &'static str,
    values: Vec<String>,
    current: String,
}

/// One checkout's row.
#[derive(Serialize)]
struct Row {
    node: NodeView,
    tree: String,
    branch: String,
    /// The first 12 characters of the commit.
    commit: String,
    describe: String,
    pass: i64,
    fail: i64,
    incomplete: i64,
    /// Jobs without a final result yet.
    unfinished: i64,
    created: Time,
}

/// What the page reads from the store.
struct Loaded {
    picked: Vec<Node>,
    trees: Vec<String>,
    branches: Vec<String>,
    counts: HashMap<crate::model::NodeId, std::collections::BTreeMap<String, i64>>,
}

fn load(c: &crate::store::Connection, f: &CheckoutFilter) -> crate::error::Result<Loaded> {
    let mut all = Vec::new();
    let mut filter = NodeFilter {
        kind: Some(NodeKind::Checkout),
        limit: 1000,
        ..Default::default()
    };
    loop {
        let page = crate::store::nodes::query_nodes(c, &filter)?;
        let full = page.len() == filter.limit;
        filter.cursor = page.last().map(|n| n.id);
        all.extend(page);
        if !full {
            break;
        }
    }
    let distinct = |key: &str| {
        let mut v: Vec<String> = all.iter().filter_map(|n| revision(n).remove(key)).collect();
        v.sort();
        v.dedup();
        v
    };
    let (trees, branches) = (distinct("tree"), distinct("branch"));
    let picked: Vec<Node> = all
        .into_iter()
        .rev()
        .filter(|n| {
            let r = revision(n);
            (f.tree.is_empty() || r.get("tree") == Some(&f.tree))
                && (f.branch.is_empty() || r.get("branch") == Some(&f.branch))
        })
        .take(SHOWN)
        .collect();
    let mut counts = HashMap::new();
    for n in &picked {
        counts.insert(n.id, crate::store::nodes::job_counts(c, &n.treeid)?);
    }
    Ok(Loaded {
        picked,
        trees,
        branches,
        counts,
    })
}

/// `GET /ui/checkouts`.
pub(super) async fn page(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Query(f): Query<CheckoutFilter>,
) -> Page {
    let who = page_auth(&shared, &headers).await?;
    let seq = last_seq(&shared).await;
    let (l, f) = shared
        .store
        .read(move |c| Ok((load(c, &f)?, f)))
        .await
        .map_err(fail)?;
    let rows: Vec<Row> = l
        .picked
        .iter()
        .map(|n| {
            let r = revision(n);
            let get = |k: &str| r.get(k).cloned().unwrap_or_default();
            let counts = l.counts.get(&n.id).cloned().unwrap_or_default();
            let count = |k: &str| counts.get(k).copied().unwrap_or(0);
            let unfinished = counts
                .iter()
                .filter(|(k, _)| !["pass", "fail", "incomplete", "skip"].contains(&k.as_str()))
                .map(|(_, v)| v)
                .sum();
            Row {
                node: NodeView::from(n),
                tree: get("tree"),
                branch: get("branch"),
                commit: get("commit").chars().take(12).collect(),
                describe: get("describe"),
                pass: count("pass"),
                fail: count("fail"),
                incomplete: count("incomplete"),
                unfinished,
                created: (&n.created).into(),
            }
        })
        .collect();
    let filters = [
        Select {
            name: "tree",
            values: l.trees,
            current: f.tree,
        },
        Select {
            name: "branch",
            values: l.branches,
            current: f.branch,
        },
    ];
    Ok(show(
        "checkouts.html",
        "Checkouts",
        &who,
        seq,
        minijinja::context! { filters => filters, rows => rows },
    ))
}
