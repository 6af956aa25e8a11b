//! What the report mailer reads and records: a checkout with every node of its tree, and
//! which checkouts' reports were mailed (so a restart neither loses nor repeats one).

use super::db::{Connection, params};
use super::nodes::{NodeFilter, get_node, query_nodes};
use super::{Write, micros};
use crate::error::Result;
use crate::model::{Node, NodeId};

/// The checkout and every other node of its tree.
pub(crate) fn checkout_tree(conn: &Connection, checkout: NodeId) -> Result<(Node, Vec<Node>)> {
    let root = get_node(conn, checkout)?;
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = query_nodes(
            conn,
            &NodeFilter {
                treeid: Some(root.treeid.clone()),
                cursor,
                limit: 1000,
                ..Default::default()
            },
        )?;
        let full = page.len() == 1000;
        cursor = page.last().map(|n| n.id);
        out.extend(page.into_iter().filter(|n| n.id != root.id));
        if !full {
            break;
        }
    }
    Ok((root, out))
}

/// Whether the report of `checkout` was mailed.
pub(crate) fn report_mailed(conn: &Connection, checkout: NodeId) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM mailed_reports WHERE checkout = ?1)",
        params![checkout.0],
        |r| r.get(0),
    )
}

impl Write<'_> {
    /// Records that the report of `checkout` was mailed.
    pub(crate) fn record_report_mailed(&mut self, checkout: NodeId) -> Result<()> {
        self.tx.execute(
            "INSERT INTO mailed_reports (checkout, sent) VALUES (?1, ?2) \
             ON CONFLICT (checkout) DO NOTHING",
            params![checkout.0, micros(self.now)],
        )?;
        Ok(())
    }
}
