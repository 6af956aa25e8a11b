//! Result reports: an attempt's final result applied once (its test tree becomes test nodes,
//! the job node ends), or, for an infrastructure failure with retries left, the job back in
//! the queue.

use super::super::db::params;
use super::super::nodes::{NewNode, NodeUpdate, get_node};
use super::super::{QueueChange, Write, micros};
use super::{KBUILD_HOLDOFF, RETRY_DEVICES, ReportOutcome, RetryPolicy, get_job};
use crate::error::{Error, Result};
use crate::model::{AttemptNo, LabName, Node, NodeId, NodeKind, NodeState};
use labwire_common::{NodeResult, TestNode};
use serde_json::{Map, Value, json};

fn insert_tests(w: &mut Write<'_>, parent: &Node, tests: &[TestNode]) -> Result<()> {
    for t in tests {
        let mut n = NewNode::new(NodeKind::Test, t.name.clone());
        n.parent = Some(parent.id);
        n.state = NodeState::Done;
        n.result = Some(t.result);
        n.group = parent.group.clone();
        n.owner = parent.owner.clone();
        n.submitter = parent.submitter.clone();
        if let Some(x) = &t.log_excerpt {
            n.data.insert("log_excerpt".into(), x.clone().into());
        }
        if let Some(m) = t.measurement {
            n.data.insert("measurement".into(), m.into());
        }
        if let Some(u) = &t.units {
            n.data.insert("units".into(), u.clone().into());
        }
        if let Some(e) = &t.error {
            n.data.insert("error_msg".into(), e.clone().into());
        }
        // A suite node stays open for its children, then closes.
        if !t.tests.is_empty() {
            n.state = NodeState::Running;
        }
        let node = w.create_node(n)?;
        if !t.tests.is_empty() {
            insert_tests(w, &node, &t.tests)?;
            w.update_node(
                node.id,
                NodeUpdate {
                    state: Some(NodeState::Done),
                    ..Default::default()
                },
            )?;
        }
    }
    Ok(())
}

/// An attempt's final result, as the agent holding its lease reports it.
#[derive(Debug, Clone)]
pub(crate) struct ResultReport {
    /// The lab reporting.
    pub(crate) lab: LabName,
    /// The job.
    pub(crate) job: NodeId,
    /// The attempt the result is of.
    pub(crate) attempt: AttemptNo,
    /// The job's result.
    pub(crate) result: NodeResult,
    /// Why it is `incomplete` (an error code), or empty.
    pub(crate) error_code: String,
    /// The error's message, or empty.
    pub(crate) error_msg: String,
    /// The test results, as a tree.
    pub(crate) tests: Vec<TestNode>,
    /// More node data (the coordinator's own keys already taken out).
    pub(crate) extra: Map<String, Value>,
}

impl Write<'_> {
    /// Applies an attempt's final result: the result tree becomes test nodes, the job node
    /// goes `done` (a `kbuild` that passed goes `available`, to take its tests as children).
    /// A second report of the same attempt by the same lab is a no-op. An attempt that
    /// ended `incomplete` with one of `retry.error_codes` goes back to the queue instead, up
    /// to `retry.max` times: its tests are not kept (only the final attempt counts), its
    /// summary is added to the node's `data.attempts`, and the next attempt prefers another
    /// device.
    pub(crate) fn report_result(
        &mut self,
        report: ResultReport,
        retry: &RetryPolicy,
    ) -> Result<ReportOutcome> {
        let ResultReport {
            lab: lab_name,
            job,
            attempt,
            result,
            error_code,
            error_msg,
            tests,
            extra,
        } = report;
        let (lab, error_code, error_msg, tests) = (
            lab_name.as_str(),
            error_code.as_str(),
            error_msg.as_str(),
            tests.as_slice(),
        );
        let reported_by: Option<String> = self.tx.query_opt(
            "SELECT lab FROM job_reports WHERE job = ?1 AND attempt = ?2",
            params![job.0, attempt],
            |r| r.get(0),
        )?;
        if reported_by.as_deref() == Some(lab) {
            return Ok(ReportOutcome::Duplicate);
        }
        let row = self.leased_to(&lab_name, job, attempt)?;
        let node = get_node(self.tx, job)?;
        self.tx.execute(
            "INSERT INTO job_reports (job, attempt, lab, reported) VALUES (?1, ?2, ?3, ?4)",
            params![job.0, attempt, lab, micros(self.now)],
        )?;
        self.record_stats(&row, lab)?;
        let mut history = node
            .data
            .get("attempts")
            .and_then(|a| a.as_array().cloned())
            .unwrap_or_default();
        history.push(json!({
            "attempt": attempt, "lab": lab, "device": row.device, "result": result,
            "error_code": error_code, "error_msg": error_msg,
        }));
        if result == NodeResult::Incomplete
            && node.retry_counter < retry.max
            && retry.error_codes.iter().any(|c| c == error_code)
        {
            let mut attrs = row.attrs.clone();
            if let Some(d) = &row.device {
                attrs
                    .lists
                    .entry(RETRY_DEVICES.into())
                    .or_default()
                    .push(format!("{lab}/{d}"));
            }
            self.tx.execute(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_session = NULL, \
                 lease_expires = NULL, device = NULL, device_type = NULL, queued_at = ?2, \
                 attrs = ?3 WHERE node_id = ?1",
                params![
                    job.0,
                    micros(self.now),
                    serde_json::to_string(&attrs).map_err(|e| Error::Internal(e.to_string()))?
                ],
            )?;
            let mut data = Map::new();
            data.insert("attempts".into(), Value::Array(history));
            data.insert("lab".into(), Value::Null);
            data.insert("device".into(), Value::Null);
            data.insert(
                "last_error".into(),
                format!("attempt {attempt} on `{lab}`: {error_code}: {error_msg}").into(),
            );
            self.update_node(
                job,
                NodeUpdate {
                    data,
                    retry_counter: Some(node.retry_counter + 1),
                    ..Default::default()
                },
            )?;
            let row = get_job(self.tx, job)?;
            self.queue_changed(QueueChange::Queued(Box::new(row.clone())));
            return Ok(ReportOutcome::Retried(Box::new(row)));
        }
        insert_tests(self, &node, tests)?;
        self.finish_job_row(job)?;
        if result == NodeResult::Fail
            && error_code.is_empty()
            && let Some(device) = &row.device
        {
            self.hold_after_failure(lab, device, &node, row.spec.hold_on_failure_seconds)?;
        }
        let mut data = extra;
        if !error_code.is_empty() {
            data.insert("error_code".into(), error_code.into());
        }
        if !error_msg.is_empty() {
            data.insert("error_msg".into(), error_msg.into());
        }
        data.insert("attempt".into(), attempt.into());
        if history.len() > 1 {
            data.insert("attempts".into(), Value::Array(history));
        }
        let mut artifacts = std::collections::BTreeMap::new();
        artifacts.insert("log".into(), format!("/logs/{job}/{attempt}"));
        // A build that passed takes its tests as children for a while (KernelCI's holdoff);
        // the timeout service closes it afterwards.
        let (state, holdoff) = if node.kind == NodeKind::Kbuild && result == NodeResult::Pass {
            (NodeState::Available, Some(self.now + KBUILD_HOLDOFF))
        } else {
            (NodeState::Done, None)
        };
        let node = self.update_node(
            job,
            NodeUpdate {
                state: Some(state),
                result: Some(result),
                data,
                artifacts,
                holdoff,
                ..Default::default()
            },
        )?;
        Ok(ReportOutcome::Applied(Box::new(node)))
    }
}
