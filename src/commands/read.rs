//! Reading commands: `node`, `nodes`, `tree`, `log`, `events`, and the tree helpers the
//! report, the demo and the tests share.

use crate::client::Clients;
use crate::output::{out, outln, write_bytes};
use anyhow::bail;
use clap::Args;
use labwire_proto::convert;
use labwire_proto::v1;
use std::collections::HashMap;

/// Options of `nodes`.
#[derive(Debug, Args)]
pub(super) struct NodesArgs {
    /// checkout, kbuild, job, test or process.
    #[arg(long)]
    kind: Option<String>,
    /// running, available, closing or done.
    #[arg(long)]
    state: Option<String>,
    /// pass, fail, skip or incomplete.
    #[arg(long)]
    result: Option<String>,
    /// Exact name.
    #[arg(long)]
    name: Option<String>,
    /// Parent id.
    #[arg(long, default_value_t = 0)]
    parent: i64,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Start after this id.
    #[arg(long, default_value_t = 0)]
    cursor: i64,
}

/// `labwire node ID`: the node as JSON.
pub(super) async fn node(c: &mut Clients, id: i64) -> anyhow::Result<()> {
    let n = c
        .nodes
        .get_node(v1::GetNodeRequest { id })
        .await?
        .into_inner();
    outln!("{}", serde_json::to_string_pretty(&node_json(&n))?)
}

/// `labwire nodes`: one page of matching nodes as a table, the next cursor on stderr; with
/// `json`, `{"nodes": [NODE...], "next_cursor": ID or null}`.
pub(super) async fn nodes(c: &mut Clients, a: NodesArgs, json: bool) -> anyhow::Result<()> {
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
    if json {
        let nodes: Vec<_> = page.nodes.iter().map(node_json).collect();
        let next = (page.next_cursor != 0).then_some(page.next_cursor);
        return print_json(&serde_json::json!({"nodes": nodes, "next_cursor": next}));
    }
    outln!(
        "{:<8} {:<9} {:<40} {:<10} RESULT",
        "ID",
        "KIND",
        "NAME",
        "STATE"
    )?;
    for n in &page.nodes {
        outln!(
            "{:<8} {:<9} {:<40} {:<10} {}",
            n.id,
            kind_name(n.kind),
            n.name,
            state_name(n),
            result_name(n)
        )?;
    }
    if page.next_cursor != 0 {
        eprintln!("more: --cursor {}", page.next_cursor);
    }
    Ok(())
}

/// `labwire tree ID`: the node and its descendants; with `json`, the node as JSON with its
/// children under `children`, recursively.
pub(super) async fn tree(c: &mut Clients, id: i64, json: bool) -> anyhow::Result<()> {
    let (root, kids) = fetch_tree(c, id).await?;
    if json {
        return print_json(&tree_json(&root, &kids));
    }
    out!("{}", render_tree(&root, &kids))
}

/// Prints a JSON value, pretty, on standard output.
pub(super) fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?)
}

/// A tree as JSON: each node's fields (see [`node_json`]) plus `children`, in id order.
pub(super) fn tree_json(
    root: &v1::Node,
    children: &HashMap<i64, Vec<v1::Node>>,
) -> serde_json::Value {
    // Iterative, children first, so that a deep tree cannot exhaust the stack.
    let mut order = vec![root];
    let mut i = 0;
    while i < order.len() {
        if let Some(kids) = children.get(&order[i].id) {
            order.extend(kids.iter());
        }
        i += 1;
    }
    let mut built: HashMap<i64, serde_json::Value> = HashMap::new();
    for n in order.iter().rev() {
        let mut v = node_json(n);
        let mut kids: Vec<&v1::Node> = children
            .get(&n.id)
            .map(|k| k.iter().collect())
            .unwrap_or_default();
        kids.sort_by_key(|k| k.id);
        let kids: Vec<serde_json::Value> =
            kids.iter().filter_map(|k| built.remove(&k.id)).collect();
        v["children"] = serde_json::Value::Array(kids);
        built.insert(n.id, v);
    }
    built.remove(&root.id).unwrap_or_default()
}

/// `labwire log JOB`: the log, byte for byte, as it streams in.
pub(super) async fn log(c: &mut Clients, job: i64, attempt: Option<i32>) -> anyhow::Result<()> {
    let mut s = c
        .nodes
        .get_log(v1::GetLogRequest {
            job,
            attempt: attempt.unwrap_or(-1),
        })
        .await?
        .into_inner();
    while let Some(chunk) = s.message().await? {
        write_bytes(&chunk.data)?;
    }
    Ok(())
}

/// `labwire events`: events as JSON lines; with `follow`, until interrupted.
pub(super) async fn events(c: &mut Clients, after: i64, follow: bool) -> anyhow::Result<()> {
    let mut s = c
        .events
        .subscribe(v1::SubscribeRequest {
            after_seq: after,
            kind: 0,
            catch_up_only: !follow,
        })
        .await?
        .into_inner();
    while let Some(ev) = s.message().await? {
        let node = ev.node.as_ref().map(node_json);
        outln!(
            "{}",
            serde_json::json!({"seq": ev.seq, "type": ev.r#type, "op": ev.op, "node": node})
        )?;
    }
    Ok(())
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

/// The short name of a node's state, or `-`.
pub(crate) fn state_name(n: &v1::Node) -> &'static str {
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
pub(super) fn node_json(n: &v1::Node) -> serde_json::Value {
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

/// Reads a node and all its descendants: the node, and each node's children by parent id.
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
