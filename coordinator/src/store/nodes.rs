//! Node records: create, change (through the state machine), read and query. Every change
//! appends its event in the same transaction.

use super::db::{Backend, Connection, Row, Value as SqlValue, params};
use super::{PendingEvent, Write, corrupt, from_micros, micros};
use crate::error::{Error, Result};
use crate::model::{Node, NodeId, NodeKind, NodeState};
use chrono::{DateTime, Utc};
use labwire_common::NodeResult;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A node to create.
#[derive(Debug, Clone)]
pub struct NewNode {
    /// Kind.
    pub kind: NodeKind,
    /// Name (not empty).
    pub name: String,
    /// Parent, if any; must take children.
    pub parent: Option<NodeId>,
    /// Group.
    pub group: Option<String>,
    /// Initial state (usually running).
    pub state: NodeState,
    /// Initial result.
    pub result: Option<NodeResult>,
    /// Artifacts.
    pub artifacts: BTreeMap<String, String>,
    /// Data.
    pub data: Map<String, Value>,
    /// Timeout.
    pub timeout: Option<DateTime<Utc>>,
    /// Holdoff.
    pub holdoff: Option<DateTime<Utc>>,
    /// Owner (token name).
    pub owner: String,
    /// Submitter.
    pub submitter: String,
}

impl NewNode {
    /// A running node of `kind` named `name`, with everything else empty.
    pub fn new(kind: NodeKind, name: impl Into<String>) -> Self {
        NewNode {
            kind,
            name: name.into(),
            parent: None,
            group: None,
            state: NodeState::Running,
            result: None,
            artifacts: BTreeMap::new(),
            data: Map::new(),
            timeout: None,
            holdoff: None,
            owner: String::new(),
            submitter: String::new(),
        }
    }
}

/// A change to a node; `None` fields are kept.
#[derive(Debug, Clone, Default)]
pub struct NodeUpdate {
    /// New state (must be an allowed transition).
    pub state: Option<NodeState>,
    /// New result.
    pub result: Option<NodeResult>,
    /// Keys to set in `data`.
    pub data: Map<String, Value>,
    /// Artifacts to add or replace.
    pub artifacts: BTreeMap<String, String>,
    /// New retry counter.
    pub retry_counter: Option<i32>,
    /// New holdoff (a node that goes `available` takes children until then).
    pub holdoff: Option<DateTime<Utc>>,
}

/// Filters of a node query.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeFilter {
    /// Kind.
    pub(crate) kind: Option<NodeKind>,
    /// State.
    pub(crate) state: Option<NodeState>,
    /// Result.
    pub(crate) result: Option<NodeResult>,
    /// Exact name.
    pub(crate) name: Option<String>,
    /// Parent.
    pub(crate) parent: Option<NodeId>,
    /// Path prefix.
    pub(crate) path_prefix: Vec<String>,
    /// Group.
    pub(crate) group: Option<String>,
    /// Tree id.
    pub(crate) treeid: Option<String>,
    /// Created at or after.
    pub(crate) created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub(crate) created_before: Option<DateTime<Utc>>,
    /// Updated at or after.
    pub(crate) updated_after: Option<DateTime<Utc>>,
    /// Updated before.
    pub(crate) updated_before: Option<DateTime<Utc>>,
    /// Only ids greater than this.
    pub(crate) cursor: Option<NodeId>,
    /// At most this many (1..=1000).
    pub(crate) limit: usize,
}

const COLUMNS: &str = "id, kind, name, path, grp, parent, state, result, artifacts, data, \
                       created, updated, timeout, holdoff, owner, submitter, treeid, retry_counter";

fn node_from_row(r: &Row<'_>) -> Result<Node> {
    let kind: String = r.get(1)?;
    let path: String = r.get(3)?;
    let state: String = r.get(6)?;
    let result: Option<String> = r.get(7)?;
    let artifacts: String = r.get(8)?;
    let data: String = r.get(9)?;
    let id = NodeId(r.get(0)?);
    {
        Ok(Node {
            id,
            kind: kind.parse().map_err(|e| corrupt("node kind", e))?,
            name: r.get(2)?,
            path: serde_json::from_str(&path).map_err(|e| corrupt("node path", e))?,
            group: r.get(4)?,
            parent: r.get::<_, Option<i64>>(5)?.map(NodeId),
            state: state.parse().map_err(|e| corrupt("node state", e))?,
            result: result
                .map(|s| s.parse().map_err(|e| corrupt("node result", e)))
                .transpose()?,
            artifacts: serde_json::from_str(&artifacts)
                .map_err(|e| corrupt("node artifacts", e))?,
            data: serde_json::from_str(&data).map_err(|e| corrupt("node data", e))?,
            created: from_micros(r.get(10)?),
            updated: from_micros(r.get(11)?),
            timeout: r.get::<_, Option<i64>>(12)?.map(from_micros),
            holdoff: r.get::<_, Option<i64>>(13)?.map(from_micros),
            owner: r.get(14)?,
            submitter: r.get(15)?,
            treeid: r.get(16)?,
            retry_counter: r.get(17)?,
        })
    }
}

/// Reads one node, or `None`.
pub(crate) fn find_node(conn: &Connection, id: NodeId) -> Result<Option<Node>> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM nodes WHERE id = ?1"),
        params![id.0],
        node_from_row,
    )
}

/// Reads one node and, on PostgreSQL, locks its row until the transaction ends, so that two
/// replicas changing the same node do not overwrite each other's change.
fn find_node_for_update(conn: &Connection, id: NodeId) -> Result<Option<Node>> {
    match conn.backend() {
        Backend::Sqlite => find_node(conn, id),
        Backend::Postgres => conn.query_opt(
            &format!("SELECT {COLUMNS} FROM nodes WHERE id = ?1 FOR UPDATE"),
            params![id.0],
            node_from_row,
        ),
    }
}

/// Reads one node; [`Error::NodeNotFound`] if there is none.
pub(crate) fn get_node(conn: &Connection, id: NodeId) -> Result<Node> {
    find_node(conn, id)?.ok_or(Error::NodeNotFound(id))
}

/// Lists nodes matching `f`, in increasing id order.
pub(crate) fn query_nodes(conn: &Connection, f: &NodeFilter) -> Result<Vec<Node>> {
    let mut sql = format!("SELECT {COLUMNS} FROM nodes WHERE 1=1");
    let mut args: Vec<SqlValue> = Vec::new();
    let mut add = |clause: &str, v: SqlValue| {
        args.push(v);
        sql.push_str(&format!(" AND {clause} ?{}", args.len()));
    };
    if let Some(k) = f.kind {
        add("kind =", k.as_str().to_string().into());
    }
    if let Some(s) = f.state {
        add("state =", s.as_str().to_string().into());
    }
    if let Some(r) = f.result {
        add("result =", r.as_str().to_string().into());
    }
    if let Some(n) = &f.name {
        add("name =", n.clone().into());
    }
    if let Some(p) = f.parent {
        add("parent =", p.0.into());
    }
    if let Some(g) = &f.group {
        add("grp =", g.clone().into());
    }
    if let Some(t) = &f.treeid {
        add("treeid =", t.clone().into());
    }
    if let Some(t) = f.created_after {
        add("created >=", micros(t).into());
    }
    if let Some(t) = f.created_before {
        add("created <", micros(t).into());
    }
    if let Some(t) = f.updated_after {
        add("updated >=", micros(t).into());
    }
    if let Some(t) = f.updated_before {
        add("updated <", micros(t).into());
    }
    if let Some(c) = f.cursor {
        add("id >", c.0.into());
    }
    if !f.path_prefix.is_empty() {
        // The path is stored as a JSON array; a prefix of names is a prefix of its text
        // without the closing bracket.
        let prefix = serde_json::to_string(&f.path_prefix).map_err(|e| corrupt("path", e))?;
        let prefix = prefix.trim_end_matches(']').to_string();
        args.push(SqlValue::from(prefix.clone()));
        let n = args.len();
        sql.push_str(&format!(
            " AND (substr(path, 1, length(CAST(?{n} AS TEXT))) = CAST(?{n} AS TEXT)) \
             AND (length(path) = length(CAST(?{n} AS TEXT)) + 1 \
             OR substr(path, length(CAST(?{n} AS TEXT)) + 1, 1) = ',')"
        ));
    }
    sql.push_str(&format!(" ORDER BY id LIMIT {}", f.limit.clamp(1, 1000)));
    conn.query_map(&sql, &args, node_from_row)
}

/// Direct children of a node, in id order.
pub(crate) fn children(conn: &Connection, id: NodeId) -> Result<Vec<Node>> {
    conn.query_map(
        &format!("SELECT {COLUMNS} FROM nodes WHERE parent = ?1 ORDER BY id"),
        params![id.0],
        node_from_row,
    )
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Internal(format!("cannot encode JSON: {e}")))
}

impl Write<'_> {
    /// Creates a node and appends its `create` event.
    pub fn create_node(&mut self, n: NewNode) -> Result<Node> {
        crate::submit_limits::check_node(&n.name, n.group.as_deref(), &n.submitter)?;
        let (path, treeid) = match n.parent {
            Some(pid) => {
                let parent = find_node(self.tx, pid)?
                    .ok_or_else(|| Error::Invalid(format!("parent node {pid} does not exist")))?;
                if !parent.state.takes_children() {
                    return Err(Error::ParentClosed {
                        parent: pid,
                        state: parent.state,
                    });
                }
                let mut path = parent.path;
                path.push(n.name.clone());
                (path, parent.treeid)
            }
            None => (vec![n.name.clone()], String::new()),
        };
        let now = micros(self.now);
        // The new row comes back with RETURNING: no second read.
        let node = self.tx.query_row(
            &format!(
                "INSERT INTO nodes (kind, name, path, grp, parent, state, result, artifacts, data, \
             created, updated, timeout, holdoff, owner, submitter, treeid, retry_counter) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13, ?14, ?15, 0) \
             RETURNING {COLUMNS}"
            ),
            params![
                n.kind.as_str(),
                n.name,
                to_json(&path)?,
                n.group,
                n.parent.map(|p| p.0),
                n.state.as_str(),
                n.result.map(|r| r.as_str()),
                to_json(&n.artifacts)?,
                to_json(&n.data)?,
                now,
                n.timeout.map(micros),
                n.holdoff.map(micros),
                n.owner,
                n.submitter,
                treeid,
            ],
            node_from_row,
        )?;
        let node = if node.treeid.is_empty() {
            // A root starts its own tree, named after its id.
            self.tx.query_row(
                &format!("UPDATE nodes SET treeid = ?1 WHERE id = ?2 RETURNING {COLUMNS}"),
                params![node.id.0.to_string(), node.id.0],
                node_from_row,
            )?
        } else {
            node
        };
        self.append_event("create", None, None, &node)?;
        Ok(node)
    }

    /// Changes a node, checking the state machine, and appends its `update` event.
    /// A change that changes nothing appends nothing.
    pub fn update_node(&mut self, id: NodeId, u: NodeUpdate) -> Result<Node> {
        let before = find_node_for_update(self.tx, id)?.ok_or(Error::NodeNotFound(id))?;
        let mut after = before.clone();
        if let Some(to) = u.state {
            if !before.state.can_become(to) {
                return Err(Error::BadTransition {
                    node: id,
                    from: before.state,
                    to,
                });
            }
            after.state = to;
        } else if before.state == NodeState::Done
            && (u.result.is_some() || !u.data.is_empty() || !u.artifacts.is_empty())
        {
            return Err(Error::BadTransition {
                node: id,
                from: NodeState::Done,
                to: NodeState::Done,
            });
        }
        if let Some(r) = u.result {
            after.result = Some(r);
        }
        after.data.extend(u.data);
        after.artifacts.extend(u.artifacts);
        if let Some(c) = u.retry_counter {
            after.retry_counter = c;
        }
        if let Some(h) = u.holdoff {
            after.holdoff = Some(h);
        }
        if after == before {
            return Ok(before);
        }
        after.updated = self.now;
        self.tx.execute(
            "UPDATE nodes SET state = ?1, result = ?2, data = ?3, artifacts = ?4, \
             retry_counter = ?5, updated = ?6, holdoff = ?8 WHERE id = ?7",
            params![
                after.state.as_str(),
                after.result.map(|r| r.as_str()),
                to_json(&after.data)?,
                to_json(&after.artifacts)?,
                after.retry_counter,
                micros(after.updated),
                id.0,
                after.holdoff.map(micros)
            ],
        )?;
        self.append_event("update", Some(before.state), before.result, &after)?;
        Ok(after)
    }

    /// Appends a device health event (`data`: its JSON) to this transaction's events.
    pub(crate) fn append_device_event(&mut self, data: String) {
        self.append_device_event_op("health", data);
    }

    /// Appends a device event of kind `op` (`health`, or a reservation's `reserve`,
    /// `extend`, `release`, `expire`) to this transaction's events.
    pub(crate) fn append_device_event_op(&mut self, op: &'static str, data: String) {
        self.events.push(PendingEvent {
            time: micros(self.now),
            node_id: 0,
            kind: super::events::DEVICE_KIND,
            op,
            previous_state: None,
            previous_result: None,
            node: data,
        });
    }

    fn append_event(
        &mut self,
        op: &'static str,
        previous_state: Option<NodeState>,
        previous_result: Option<NodeResult>,
        node: &Node,
    ) -> Result<()> {
        self.events.push(PendingEvent {
            time: micros(self.now),
            node_id: node.id.0,
            kind: node.kind.as_str(),
            op,
            previous_state: previous_state.map(|s| s.as_str()),
            previous_result: previous_result.map(|r| r.as_str()),
            node: to_json(node)?,
        });
        Ok(())
    }
}

/// How many job nodes of a tree (`treeid`) have each result; unfinished ones count under
/// their state (`running`, ...). For the dashboard's checkout list.
pub(crate) fn job_counts(
    conn: &Connection,
    treeid: &str,
) -> Result<std::collections::BTreeMap<String, i64>> {
    let rows = conn.query_map(
        "SELECT COALESCE(result, state), COUNT(*) FROM nodes \
         WHERE treeid = ?1 AND kind = 'job' GROUP BY 1",
        params![treeid],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
    )?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;

    #[test]
    fn create_update_and_refuse() {
        let (_d, store) = temp_store();
        let node = store
            .write_blocking(|w| w.create_node(NewNode::new(NodeKind::Checkout, "checkout")))
            .unwrap();
        assert_eq!(node.path, vec!["checkout"]);
        assert_eq!(node.treeid, node.id.0.to_string());
        let child = store
            .write_blocking(move |w| {
                let mut n = NewNode::new(NodeKind::Kbuild, "kbuild-gcc");
                n.parent = Some(node.id);
                w.create_node(n)
            })
            .unwrap();
        assert_eq!(child.path, vec!["checkout", "kbuild-gcc"]);
        assert_eq!(child.treeid, node.treeid);
        let done = NodeUpdate {
            state: Some(NodeState::Done),
            result: Some(NodeResult::Pass),
            ..Default::default()
        };
        store
            .write_blocking(|w| w.update_node(child.id, done))
            .unwrap();
        let back = NodeUpdate {
            state: Some(NodeState::Running),
            ..Default::default()
        };
        let err = store
            .write_blocking(|w| w.update_node(child.id, back))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "node {}: state transition done -> running is not allowed",
                child.id
            )
        );
        // Closing parents take no children.
        let closing = NodeUpdate {
            state: Some(NodeState::Closing),
            ..Default::default()
        };
        store
            .write_blocking(|w| w.update_node(node.id, closing))
            .unwrap();
        let err = store
            .write_blocking(move |w| {
                let mut n = NewNode::new(NodeKind::Kbuild, "late");
                n.parent = Some(node.id);
                w.create_node(n)
            })
            .unwrap_err();
        assert!(matches!(err, Error::ParentClosed { .. }), "{err}");
    }

    #[test]
    fn query_filters_and_paging() {
        let (_d, store) = temp_store();
        let root = store
            .write_blocking(|w| w.create_node(NewNode::new(NodeKind::Checkout, "checkout")))
            .unwrap();
        for i in 0..25 {
            store
                .write_blocking(move |w| {
                    let mut n = NewNode::new(NodeKind::Test, format!("t{i}"));
                    n.parent = Some(root.id);
                    n.state = NodeState::Done;
                    n.result = Some(if i % 5 == 0 {
                        NodeResult::Fail
                    } else {
                        NodeResult::Pass
                    });
                    w.create_node(n)
                })
                .unwrap();
        }
        let fails = store
            .read_blocking(|c| {
                query_nodes(
                    c,
                    &NodeFilter {
                        result: Some(NodeResult::Fail),
                        limit: 100,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        assert_eq!(fails.len(), 5);
        let mut seen = 0;
        let mut cursor = None;
        loop {
            let page = store
                .read_blocking(move |c| {
                    query_nodes(
                        c,
                        &NodeFilter {
                            kind: Some(NodeKind::Test),
                            path_prefix: vec!["checkout".into()],
                            cursor,
                            limit: 10,
                            ..Default::default()
                        },
                    )
                })
                .unwrap();
            if page.is_empty() {
                break;
            }
            seen += page.len();
            cursor = page.last().map(|n| n.id);
        }
        assert_eq!(seen, 25);
        // A prefix must match whole names: "check" is not a prefix of ["checkout"].
        let none = store
            .read_blocking(|c| {
                query_nodes(
                    c,
                    &NodeFilter {
                        path_prefix: vec!["check".into()],
                        limit: 10,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        assert!(none.is_empty());
    }
}
