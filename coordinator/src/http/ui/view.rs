//! What the dashboard's templates are given: plain serialisable values made from nodes and
//! times (the templates escape them), and the small formatting rules the pages share.

use crate::model::{Node, NodeState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// A point in time: machine-readable, for people, and how long ago.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Time {
    /// RFC 3339, for the `datetime` attribute.
    iso: String,
    /// `2026-01-31 12:00:00 UTC`.
    text: String,
    /// `42s ago`, `5m ago`, `3h ago`.
    ago: String,
}

impl From<&DateTime<Utc>> for Time {
    fn from(t: &DateTime<Utc>) -> Self {
        Time {
            iso: t.to_rfc3339(),
            text: t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            ago: ago(t),
        }
    }
}

/// How long ago `t` was, coarsely.
fn ago(t: &DateTime<Utc>) -> String {
    let s = (Utc::now() - *t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

/// A duration in milliseconds as `12.3s` or `4.5m`.
pub(super) fn secs(ms: f64) -> String {
    let s = ms / 1000.0;
    if s < 120.0 {
        format!("{s:.1}s")
    } else {
        format!("{:.1}m", s / 60.0)
    }
}

/// A node as pages show it: identity, state and result (the badges), and how long it ran.
#[derive(Debug, Clone, Serialize)]
pub(super) struct NodeView {
    pub id: i64,
    pub kind: &'static str,
    pub name: String,
    pub state: &'static str,
    /// Empty when there is none yet.
    pub result: &'static str,
    /// Set for a finished node that is not a test.
    pub duration: Option<String>,
}

impl From<&Node> for NodeView {
    fn from(n: &Node) -> Self {
        let duration = (n.kind != crate::model::NodeKind::Test && n.state == NodeState::Done)
            .then(|| secs((n.updated - n.created).num_milliseconds() as f64));
        NodeView {
            id: n.id.0,
            kind: n.kind.as_str(),
            name: n.name.clone(),
            state: n.state.as_str(),
            result: n.result.map(|r| r.as_str()).unwrap_or(""),
            duration,
        }
    }
}

/// A string field of a node's data.
pub(super) fn data_str<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    n.data.get(key).and_then(|v| v.as_str())
}

/// A node's `data.kernel_revision` (tree, branch, commit, describe...) as text.
pub(super) fn revision(n: &Node) -> BTreeMap<String, String> {
    n.data
        .get("kernel_revision")
        .and_then(|v| v.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
