//! The job queue's rule over its nodes: the state and result of a node that has a queue entry
//! (a job: `job` nodes, and the `kbuild` and `process` jobs the scheduler creates) move only
//! through the queue: SubmitJob, the agent's reports, CancelJob, timeouts and lease expiry.
//! A client's change (`PUT /node/{id}`, gRPC UpdateNode) to such a node may still add data
//! and artifacts (for other pipeline services), but not the keys the queue keeps.
//!
//! Without this rule, a submit token that set a leased job `done` left its queue entry
//! leased, and every later lease sweep (run by every agent's Register) failed on that row.

use super::super::Write;
use super::super::nodes::NodeUpdate;
use super::find_job;
use crate::error::{Error, Result};
use crate::model::{Node, NodeId};

/// Data keys the job queue keeps on a job node; a client cannot set them.
pub(crate) const QUEUE_KEYS: &[&str] = &[
    "attempt",
    "attempts",
    "commands",
    "criteria",
    "device",
    "error_code",
    "error_msg",
    "inputs",
    "lab",
    "last_error",
    "last_rejection",
    "log_length",
    "params",
    "priority",
    "run_group",
    "runtime",
    "scheduler",
    "timeout_seconds",
];

/// Artifacts the job queue keeps on a job node (the log it stores).
const QUEUE_ARTIFACTS: &[&str] = &["log"];

impl Write<'_> {
    /// Changes a node as a client asked, through the node state machine. A node with a queue
    /// entry refuses a change of its state or result, or of a key the queue keeps, with
    /// [`Error::Refused`] naming the rule.
    pub(crate) fn update_node_for_client(&mut self, id: NodeId, u: NodeUpdate) -> Result<Node> {
        if find_job(self.tx, id)?.is_some() {
            let rule = |what: String| {
                Error::Refused(format!(
                    "node {id} is a job: {what} changes only through the job queue \
                     (SubmitJob, the agent's reports, CancelJob, timeouts, lease expiry); \
                     to stop it, cancel it (`labwire cancel {id}` or CancelJob)"
                ))
            };
            if u.state.is_some() || u.result.is_some() {
                return Err(rule("its state and result".into()));
            }
            if u.retry_counter.is_some() || u.holdoff.is_some() {
                return Err(rule("its retry counter and holdoff".into()));
            }
            if let Some(k) = u.data.keys().find(|k| QUEUE_KEYS.contains(&k.as_str())) {
                return Err(rule(format!("data.{k}")));
            }
            if let Some(k) = u
                .artifacts
                .keys()
                .find(|k| QUEUE_ARTIFACTS.contains(&k.as_str()))
            {
                return Err(rule(format!("artifacts.{k}")));
            }
        }
        self.update_node(id, u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeKind, NodeState};
    use crate::store::jobs::NewJob;
    use crate::store::{NewNode, temp_store};
    use labwire_common::NodeResult;
    use labwire_proto::v1;
    use serde_json::json;

    fn data(v: serde_json::Value) -> NodeUpdate {
        NodeUpdate {
            data: v.as_object().cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn clients_cannot_move_a_job_but_may_annotate_it() {
        let (_d, store) = temp_store();
        let id = store
            .write_blocking(|w| {
                w.submit_job(NewJob {
                    spec: v1::JobSpec {
                        name: "j".into(),
                        ..Default::default()
                    },
                    ..Default::default()
                })
            })
            .unwrap()
            .0
            .id;
        let refused = |u: NodeUpdate| {
            store
                .write_blocking(move |w| w.update_node_for_client(id, u))
                .unwrap_err()
                .to_string()
        };
        let e = refused(NodeUpdate {
            state: Some(NodeState::Done),
            result: Some(NodeResult::Pass),
            ..Default::default()
        });
        assert!(
            e.contains("state and result") && e.contains("CancelJob"),
            "{e}"
        );
        let e = refused(data(json!({"error_code": "forged"})));
        assert!(e.contains("data.error_code"), "{e}");
        let mut u = NodeUpdate::default();
        u.artifacts.insert("log".into(), "http://elsewhere".into());
        assert!(refused(u).contains("artifacts.log"));
        let n = store
            .write_blocking(move |w| w.update_node_for_client(id, data(json!({"triage": "x"}))))
            .unwrap();
        assert_eq!(n.state, NodeState::Running);
        assert_eq!(n.data["triage"], "x");
        // Nodes without a queue entry follow the state machine alone.
        let checkout = store
            .write_blocking(|w| w.create_node(NewNode::new(NodeKind::Checkout, "c")))
            .unwrap()
            .id;
        let done = NodeUpdate {
            state: Some(NodeState::Done),
            ..Default::default()
        };
        store
            .write_blocking(move |w| w.update_node_for_client(checkout, done))
            .unwrap();
    }
}
