//! The trigger's record of the commits it has seen: one `checkout` node per tree, branch and
//! commit, created in the transaction that records the commit, so a commit seen again (also
//! after a restart) creates nothing.

use super::Write;
use super::db::params;
use super::nodes::NewNode;
use crate::error::Result;
use crate::model::{Node, NodeKind, NodeState};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::time::Duration;

/// A commit at the head of a watched branch.
#[derive(Debug, Clone)]
pub(crate) struct SeenCommit<'a> {
    /// The tree's name.
    pub(crate) tree: &'a str,
    /// The branch.
    pub(crate) branch: &'a str,
    /// The full commit hash.
    pub(crate) commit: &'a str,
    /// KernelCI's `kernel_revision` object for the checkout node's data.
    pub(crate) kernel_revision: Value,
}

impl Write<'_> {
    /// Creates the checkout node of `commit` (`available`, with the `timeout` and `holdoff`
    /// from now) unless this tree, branch and commit were seen before. Returns the new node,
    /// or `None`.
    pub(crate) fn record_commit(
        &mut self,
        commit: &SeenCommit<'_>,
        timeout: Duration,
        holdoff: Duration,
    ) -> Result<Option<Node>> {
        let seen: Option<i64> = self.tx.query_opt(
            "SELECT node_id FROM trigger_commits \
                 WHERE tree = ?1 AND branch = ?2 AND commit_hash = ?3",
            params![commit.tree, commit.branch, commit.commit],
            |r| r.get(0),
        )?;
        if seen.is_some() {
            return Ok(None);
        }
        let now = self.now;
        let after = |d: Duration| -> DateTime<Utc> {
            now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(365))
        };
        let mut data = Map::new();
        data.insert("kernel_revision".into(), commit.kernel_revision.clone());
        let mut n = NewNode::new(NodeKind::Checkout, "checkout");
        n.state = NodeState::Available;
        n.data = data;
        n.timeout = Some(after(timeout));
        n.holdoff = Some(after(holdoff));
        n.owner = "trigger".into();
        n.submitter = "trigger".into();
        let node = self.create_node(n)?;
        self.tx.execute(
            "INSERT INTO trigger_commits (tree, branch, commit_hash, node_id, seen) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                commit.tree,
                commit.branch,
                commit.commit,
                node.id.0,
                super::micros(now)
            ],
        )?;
        Ok(Some(node))
    }
}
