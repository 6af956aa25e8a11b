//! `labwire report CHECKOUT`: the per-checkout summary of the KernelCI e-mail report, read
//! over gRPC and rendered by the coordinator's report module (the same text the coordinator
//! mails), as text or markdown, or as JSON.

use crate::client::Clients;
use anyhow::{Context, bail};
use labwire_coordinator::model::{Node, NodeKind};
use labwire_coordinator::report::Report;
use labwire_proto::v1;

/// A node and every node of its tree below it, as coordinator model nodes. A root node's
/// tree is read with one paged query by tree id; any other node's by walking children.
pub(crate) async fn fetch_subtree(c: &mut Clients, id: i64) -> anyhow::Result<(Node, Vec<Node>)> {
    let root = c
        .nodes
        .get_node(v1::GetNodeRequest { id })
        .await
        .with_context(|| format!("cannot read node {id}"))?
        .into_inner();
    let mut all = Vec::new();
    if root.parent == 0 {
        let mut cursor = 0;
        loop {
            let page = c
                .nodes
                .query_nodes(v1::QueryNodesRequest {
                    treeid: root.treeid.clone(),
                    limit: 1000,
                    cursor,
                    ..Default::default()
                })
                .await?
                .into_inner();
            all.extend(page.nodes.into_iter().filter(|n| n.id != id));
            if page.next_cursor == 0 {
                break;
            }
            cursor = page.next_cursor;
        }
    } else {
        let (_, kids) = crate::commands::fetch_tree(c, id).await?;
        all.extend(kids.into_values().flatten());
    }
    let root = Node::from_proto(&root).map_err(anyhow::Error::msg)?;
    let nodes = all
        .iter()
        .map(Node::from_proto)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    Ok((root, nodes))
}

/// The report of checkout `id`.
pub(crate) async fn build(c: &mut Clients, id: i64) -> anyhow::Result<Report> {
    let (root, nodes) = fetch_subtree(c, id).await?;
    if root.kind != NodeKind::Checkout {
        bail!("node {id} is a {}, not a checkout", root.kind);
    }
    Ok(Report::build(&root, &nodes))
}

/// A report as JSON (the fields of `labwire report --json`, see docs/cli.md).
pub(crate) fn to_json(r: &Report) -> serde_json::Value {
    let result = |r: &Option<labwire_common::NodeResult>| r.map(|r| r.as_str());
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    serde_json::json!({
        "checkout": r.checkout.0, "state": r.state.as_str(),
        "tree": r.tree, "branch": r.branch, "describe": some(&r.describe),
        "commit": r.commit, "url": some(&r.url),
        "builds": r.builds.iter().map(|(name, res)| serde_json::json!({
            "name": name, "result": result(res),
        })).collect::<Vec<_>>(),
        "jobs": r.jobs.iter().map(|j| serde_json::json!({
            "id": j.id.0, "name": j.name, "state": j.state.as_str(), "result": result(&j.result),
            "error_code": j.error_code, "place": j.place, "tests": j.total,
            "failures": j.failures,
        })).collect::<Vec<_>>(),
        "failures": r.failures.iter().map(|f| serde_json::json!({
            "job": f.job, "path": f.path, "result": f.result.as_str(),
        })).collect::<Vec<_>>(),
    })
}
