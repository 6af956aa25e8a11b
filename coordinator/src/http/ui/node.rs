//! `GET /ui/node/{id}`: one node with its path, facts (timings, revision, error,
//! artifacts), its tree (the first [`TREE_LIMIT`] nodes, breadth first), and for a job the
//! head of its log with the failing lines and tests linked.

use super::links::{Artifact, artifacts};
use super::log::{INLINE_LIMIT, Line, highlight, read_head};
use super::view::{NodeView, Time, data_str, revision, secs};
use super::{Page, fail, last_seq, page_auth, show};
use crate::http::ApiError;
use crate::model::{Node, NodeId, NodeKind, NodeState};
use crate::shared::SharedRef;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use labwire_common::NodeResult;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Most nodes a node page shows in its tree.
const TREE_LIMIT: usize = 2000;
/// Deepest level of the tree a page shows.
const TREE_DEPTH: usize = 32;

/// One fact about the node: text, a time, or its artifacts.
#[derive(Serialize)]
struct Fact {
    label: String,
    text: Option<String>,
    time: Option<Time>,
    artifacts: Option<Vec<Artifact>>,
}

impl Fact {
    fn text(label: &str, text: impl Into<String>) -> Fact {
        Fact {
            label: label.into(),
            text: Some(text.into()),
            time: None,
            artifacts: None,
        }
    }
    fn time(label: &str, t: &chrono::DateTime<chrono::Utc>) -> Fact {
        Fact {
            label: label.into(),
            text: None,
            time: Some(t.into()),
            artifacts: None,
        }
    }
}

/// A node of the tree with its children.
#[derive(Serialize)]
struct TreeItem {
    node: NodeView,
    /// For a failing leaf test: the job whose log has its line.
    log_job: Option<i64>,
    children: Vec<TreeItem>,
}

/// The log section of a job's page.
#[derive(Serialize)]
struct LogView<'a> {
    /// None: no log yet.
    lines: Option<Vec<Line<'a>>>,
    end_anchors: Vec<i64>,
    failing: usize,
    cut: bool,
}

/// What the page reads from the store.
struct Loaded {
    node: Node,
    ancestors: Vec<Node>,
    /// Parent → children, breadth first from the node.
    tree: BTreeMap<NodeId, Vec<Node>>,
    /// The head of the job's log and whether it was cut (jobs only).
    log: Option<(String, bool)>,
}

fn load(c: &crate::store::Connection, id: NodeId) -> crate::error::Result<Loaded> {
    let node = crate::store::nodes::get_node(c, id)?;
    let mut ancestors = Vec::new();
    let mut up = node.parent;
    while let Some(p) = up {
        let n = crate::store::nodes::get_node(c, p)?;
        up = n.parent;
        ancestors.push(n);
        if ancestors.len() > 64 {
            break;
        }
    }
    ancestors.reverse();
    // Breadth-first, so a cut tree still shows its upper levels.
    let mut tree: BTreeMap<NodeId, Vec<Node>> = BTreeMap::new();
    let mut todo = VecDeque::from([id]);
    let mut count = 0;
    while let Some(p) = todo.pop_front() {
        if count >= TREE_LIMIT {
            break;
        }
        let kids = crate::store::nodes::children(c, p)?;
        count += kids.len();
        todo.extend(kids.iter().map(|k| k.id));
        tree.insert(p, kids);
    }
    let log = match node.kind {
        NodeKind::Job => match crate::store::jobs::log_attempt(c, id)? {
            Some(a) => Some(read_head(c, id, a, INLINE_LIMIT)?),
            None => None,
        },
        _ => None,
    };
    Ok(Loaded {
        node,
        ancestors,
        tree,
        log,
    })
}

/// `GET /ui/node/{id}`.
pub(super) async fn page(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Page {
    let who = page_auth(&shared, &headers).await?;
    let id = match id.parse::<i64>() {
        Ok(n) if n > 0 => NodeId(n),
        _ => return Err(fail(ApiError::invalid(format!("`{id}` is not a node id")))),
    };
    let seq = last_seq(&shared).await;
    let l = shared
        .store
        .read(move |c| load(c, id))
        .await
        .map_err(fail)?;
    let node = &l.node;

    let failing: Vec<&Node> = l
        .tree
        .values()
        .flatten()
        .filter(|n| n.result == Some(NodeResult::Fail) && is_leaf(&l.tree, n.id))
        .collect();
    let total: usize = l.tree.values().map(Vec::len).sum();
    // Failing tests link to their line in the log of the nearest job at or above them.
    let root_job = std::iter::once(node)
        .chain(l.ancestors.iter().rev())
        .find(|n| n.kind == NodeKind::Job)
        .map(|n| n.id);
    let tree = items(&l.tree, node.id, root_job, 0);
    let log = (node.kind == NodeKind::Job).then(|| match &l.log {
        None => LogView {
            lines: None,
            end_anchors: Vec::new(),
            failing: 0,
            cut: false,
        },
        Some((text, cut)) => {
            let names: Vec<(NodeId, &str)> =
                failing.iter().map(|n| (n.id, n.name.as_str())).collect();
            let (lines, end_anchors, nfail) = highlight(text, &names);
            LogView {
                lines: Some(lines),
                end_anchors,
                failing: nfail,
                cut: *cut,
            }
        }
    });
    let excerpt = data_str(node, "log_excerpt").map(|x| highlight(x, &[]).0);
    let test_job = (node.kind == NodeKind::Test)
        .then(|| l.ancestors.iter().rev().find(|a| a.kind == NodeKind::Job))
        .flatten()
        .map(|j| j.id.0);
    let title = format!("{} {}", node.kind.as_str(), node.name);
    Ok(show(
        "node.html",
        &title,
        &who,
        seq,
        minijinja::context! {
            crumbs => l.ancestors.iter().map(NodeView::from).collect::<Vec<_>>(),
            node => NodeView::from(node),
            facts => facts(node),
            excerpt => excerpt,
            test_job => test_job,
            total => total,
            failing => failing.len(),
            tree => tree,
            cut_tree => total >= TREE_LIMIT,
            tree_limit => TREE_LIMIT,
            log => log,
        },
    ))
}

/// Whether `id` has no children in the tree read.
fn is_leaf(tree: &BTreeMap<NodeId, Vec<Node>>, id: NodeId) -> bool {
    tree.get(&id).is_none_or(|k| k.is_empty())
}

/// The children of `at` as tree items, down to [`TREE_DEPTH`]; `job` is the nearest job at
/// or above `at`, where failing leaf tests below find their log line.
fn items(
    tree: &BTreeMap<NodeId, Vec<Node>>,
    at: NodeId,
    job: Option<NodeId>,
    depth: usize,
) -> Vec<TreeItem> {
    let Some(kids) = tree.get(&at) else {
        return Vec::new();
    };
    kids.iter()
        .map(|k| {
            let failing_leaf = k.kind == NodeKind::Test
                && k.result == Some(NodeResult::Fail)
                && is_leaf(tree, k.id);
            let below = if k.kind == NodeKind::Job {
                Some(k.id)
            } else {
                job
            };
            TreeItem {
                node: NodeView::from(k),
                log_job: job.filter(|_| failing_leaf).map(|j| j.0),
                children: if depth + 1 < TREE_DEPTH {
                    items(tree, k.id, below, depth + 1)
                } else {
                    Vec::new()
                },
            }
        })
        .collect()
}

/// Identity, timings, what the data says about where and why, the revision, artifacts.
fn facts(node: &Node) -> Vec<Fact> {
    let mut f = vec![
        Fact::text("id", node.id.0.to_string()),
        Fact::text("path", node.path.join(" / ")),
        Fact::time("created", &node.created),
        Fact::time("updated", &node.updated),
    ];
    if node.state == NodeState::Done {
        let d = (node.updated - node.created).num_milliseconds() as f64;
        f.push(Fact::text("duration", secs(d)));
    }
    for (k, label) in [
        ("error_code", "error code"),
        ("error_msg", "error"),
        ("lab", "lab"),
        ("device", "device"),
        ("device_type", "device type"),
        ("runtime", "runtime"),
        ("platform", "platform"),
    ] {
        if let Some(v) = data_str(node, k) {
            f.push(Fact::text(label, v));
        }
    }
    for (k, v) in revision(node) {
        f.push(Fact::text(&k, v));
    }
    if node.retry_counter > 0 {
        f.push(Fact::text("retries", node.retry_counter.to_string()));
    }
    if !node.artifacts.is_empty() {
        f.push(Fact {
            label: "artifacts".into(),
            text: None,
            time: None,
            artifacts: Some(artifacts(node)),
        });
    }
    f
}
