//! The node model of KernelCI (kinds, states and their allowed transitions, the node record)
//! and its conversion to and from the protobuf messages.

use chrono::{DateTime, Utc};
use labwire_common::NodeResult;
use labwire_proto::{convert, v1};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The id of a node (and of the job a job node stands for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub i64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A lab's name: the common name of its certificates, and the key of its queue leases.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LabName(String);

impl LabName {
    /// A lab name as stored or as read from a certificate (checked when the certificate was
    /// issued, see `pki::validate_lab_name`).
    pub fn new(name: impl Into<String>) -> LabName {
        LabName(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for LabName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<LabName> for String {
    fn from(l: LabName) -> String {
        l.0
    }
}

/// Which lease of a job: 1 for the first, one more for each lease after. An agent names it
/// in every call on the job, so that a late call about an older lease is refused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct AttemptNo(pub i32);

impl fmt::Display for AttemptNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<AttemptNo> for Value {
    fn from(a: AttemptNo) -> Value {
        a.0.into()
    }
}

/// The id of an agent session: one per connected agent process, handed out at Register.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// A session id as an agent sent it back.
    pub fn new(id: impl Into<String>) -> SessionId {
        SessionId(id.into())
    }

    /// A fresh random session id.
    pub fn random() -> SessionId {
        use rand::RngCore;
        let mut id = [0u8; 12];
        rand::rng().fill_bytes(&mut id);
        SessionId(hex::encode(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The kind of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A source tree at one commit.
    Checkout,
    /// A kernel build.
    Kbuild,
    /// A test job run by a lab.
    Job,
    /// A test or test suite inside a job.
    Test,
    /// Any other processing step.
    Process,
}

/// The state of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Work is going on.
    Running,
    /// Own work finished; may still take children until its holdoff.
    Available,
    /// Takes no new children; waits for the existing ones.
    Closing,
    /// Finished; final.
    Done,
}

macro_rules! string_enum {
    ($t:ty, $what:literal, $($v:ident = $s:literal),+) => {
        impl $t {
            /// The lowercase name.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)+
                    other => Err(format!(
                        concat!("`{}` is not a ", $what, " (expected one of: {})"),
                        other,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(
    NodeKind,
    "node kind",
    Checkout = "checkout",
    Kbuild = "kbuild",
    Job = "job",
    Test = "test",
    Process = "process"
);
string_enum!(
    NodeState,
    "node state",
    Running = "running",
    Available = "available",
    Closing = "closing",
    Done = "done"
);

impl NodeState {
    /// Whether the state machine allows going from `self` to `to`. Staying in the same state
    /// is allowed for every state but `done`.
    pub fn can_become(self, to: NodeState) -> bool {
        use NodeState::*;
        match (self, to) {
            (Done, _) => false,
            (a, b) if a == b => true,
            (Running, Available | Closing | Done) => true,
            (Available, Closing | Done) => true,
            (Closing, Done) => true,
            _ => false,
        }
    }

    /// Whether a node in this state accepts new children.
    pub fn takes_children(self) -> bool {
        matches!(self, NodeState::Running | NodeState::Available)
    }
}

/// A node of the CI tree with the KernelCI field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique id.
    pub id: NodeId,
    /// What it is.
    pub kind: NodeKind,
    /// Short name.
    pub name: String,
    /// Names from the root down to this node.
    pub path: Vec<String>,
    /// Free-form group.
    pub group: Option<String>,
    /// The parent, if any.
    pub parent: Option<NodeId>,
    /// Current state.
    pub state: NodeState,
    /// Result once known.
    pub result: Option<NodeResult>,
    /// Named artifact URLs.
    pub artifacts: BTreeMap<String, String>,
    /// Free-form data (`error_code`, `error_msg`, job details).
    pub data: Map<String, Value>,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Last change.
    pub updated: DateTime<Utc>,
    /// When the node times out.
    pub timeout: Option<DateTime<Utc>>,
    /// When an available node stops taking children.
    pub holdoff: Option<DateTime<Utc>>,
    /// The owner (token name).
    pub owner: String,
    /// Who submitted the work.
    pub submitter: String,
    /// The tree the node belongs to.
    pub treeid: String,
    /// How many times the node's job went back to the queue.
    pub retry_counter: i32,
}

impl NodeKind {
    /// The protobuf enum.
    pub fn to_proto(self) -> v1::NodeKind {
        match self {
            Self::Checkout => v1::NodeKind::Checkout,
            Self::Kbuild => v1::NodeKind::Kbuild,
            Self::Job => v1::NodeKind::Job,
            Self::Test => v1::NodeKind::Test,
            Self::Process => v1::NodeKind::Process,
        }
    }

    /// From the protobuf enum; `None` for UNSPECIFIED or unknown values.
    pub fn from_proto(k: i32) -> Option<Self> {
        match v1::NodeKind::try_from(k).ok()? {
            v1::NodeKind::Unspecified => None,
            v1::NodeKind::Checkout => Some(Self::Checkout),
            v1::NodeKind::Kbuild => Some(Self::Kbuild),
            v1::NodeKind::Job => Some(Self::Job),
            v1::NodeKind::Test => Some(Self::Test),
            v1::NodeKind::Process => Some(Self::Process),
        }
    }
}

impl NodeState {
    /// The protobuf enum.
    pub fn to_proto(self) -> v1::NodeState {
        match self {
            Self::Running => v1::NodeState::Running,
            Self::Available => v1::NodeState::Available,
            Self::Closing => v1::NodeState::Closing,
            Self::Done => v1::NodeState::Done,
        }
    }

    /// From the protobuf enum; `None` for UNSPECIFIED or unknown values.
    pub fn from_proto(s: i32) -> Option<Self> {
        match v1::NodeState::try_from(s).ok()? {
            v1::NodeState::Unspecified => None,
            v1::NodeState::Running => Some(Self::Running),
            v1::NodeState::Available => Some(Self::Available),
            v1::NodeState::Closing => Some(Self::Closing),
            v1::NodeState::Done => Some(Self::Done),
        }
    }
}

impl Node {
    /// The node as its protobuf message.
    pub fn to_proto(&self) -> v1::Node {
        v1::Node {
            id: self.id.0,
            kind: self.kind.to_proto() as i32,
            name: self.name.clone(),
            path: self.path.clone(),
            group: self.group.clone().unwrap_or_default(),
            parent: self.parent.map_or(0, |p| p.0),
            state: self.state.to_proto() as i32,
            result: convert::result_to_proto(self.result) as i32,
            artifacts: self.artifacts.clone().into_iter().collect(),
            data: Some(convert::map_to_struct(&self.data)),
            created: Some(convert::timestamp(self.created)),
            updated: Some(convert::timestamp(self.updated)),
            timeout: self.timeout.map(convert::timestamp),
            holdoff: self.holdoff.map(convert::timestamp),
            owner: self.owner.clone(),
            submitter: self.submitter.clone(),
            treeid: self.treeid.clone(),
            retry_counter: self.retry_counter,
        }
    }

    /// A node from its protobuf message (as a client reads it); names the field that does
    /// not convert.
    pub fn from_proto(n: &v1::Node) -> Result<Node, String> {
        let time = |field: &str, t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .map(|t| {
                    convert::from_timestamp(t)
                        .ok_or_else(|| format!("node {}: {field} is out of range", n.id))
                })
                .transpose()
        };
        Ok(Node {
            id: NodeId(n.id),
            kind: NodeKind::from_proto(n.kind)
                .ok_or_else(|| format!("node {}: unknown kind {}", n.id, n.kind))?,
            name: n.name.clone(),
            path: n.path.clone(),
            group: (!n.group.is_empty()).then(|| n.group.clone()),
            parent: (n.parent != 0).then_some(NodeId(n.parent)),
            state: NodeState::from_proto(n.state)
                .ok_or_else(|| format!("node {}: unknown state {}", n.id, n.state))?,
            result: convert::result_from_proto(n.result),
            artifacts: n.artifacts.clone().into_iter().collect(),
            data: n
                .data
                .as_ref()
                .map(convert::struct_to_map)
                .unwrap_or_default(),
            created: time("created", &n.created)?.unwrap_or_default(),
            updated: time("updated", &n.updated)?.unwrap_or_default(),
            timeout: time("timeout", &n.timeout)?,
            holdoff: time("holdoff", &n.holdoff)?,
            owner: n.owner.clone(),
            submitter: n.submitter.clone(),
            treeid: n.treeid.clone(),
            retry_counter: n.retry_counter,
        })
    }

    /// The `data.error_code` value, if any.
    pub fn error_code(&self) -> Option<&str> {
        self.data.get("error_code").and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use NodeState::*;
        let all = [Running, Available, Closing, Done];
        let allowed = [
            (Running, Available),
            (Running, Closing),
            (Running, Done),
            (Available, Closing),
            (Available, Done),
            (Closing, Done),
        ];
        for from in all {
            for to in all {
                let want = allowed.contains(&(from, to)) || (from == to && from != Done);
                assert_eq!(from.can_become(to), want, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn names() {
        assert_eq!("closing".parse::<NodeState>().unwrap(), NodeState::Closing);
        let e = "build".parse::<NodeKind>().unwrap_err();
        assert!(e.contains("`build` is not a node kind"), "{e}");
    }
}
