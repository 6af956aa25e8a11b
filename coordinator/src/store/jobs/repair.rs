//! Keeping the queue in line with its nodes. A queue entry that cannot be processed (its node
//! ended outside the queue, or its row is damaged) must never stop a sweep, a Register or a
//! revocation for everybody else: it is logged, left out and repaired (its entry closed, its
//! node ended when it had not). A pass at start-up closes the entries whose node had already
//! ended, which older versions let a client make (`PUT /node/{id}` on a job).

use super::super::Write;
use super::super::db::params;
use super::super::nodes::{NodeUpdate, get_node};
use crate::error::{Error, Result};
use crate::model::{NodeId, NodeState};
use labwire_common::NodeResult;
use serde_json::Map;

/// The error code of a job ended because its queue entry could not be processed.
pub(crate) const QUEUE_ERROR: &str = "queue_error";

impl Write<'_> {
    /// Runs `f` on the queue entry of `job` inside a savepoint. When it fails, what it did is
    /// undone, the failure is logged, and the entry is repaired ([`Write::repair_job`]):
    /// `None` then. Fails only when the repair itself fails.
    pub(crate) fn guarded<T>(
        &mut self,
        job: NodeId,
        f: impl FnOnce(&mut Write<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.savepoint(f) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                tracing::error!(job = %job, error = %e, "a queue entry could not be processed; it is left out and repaired");
                self.repair_job(job, &e)?;
                Ok(None)
            }
        }
    }

    /// Takes a job that could not be processed out of the queue for good: its entry is
    /// closed and, unless its node has ended already, the node ends `done`/`incomplete` with
    /// `error_code=queue_error` and the cause.
    pub(crate) fn repair_job(&mut self, job: NodeId, cause: &Error) -> Result<()> {
        self.finish_job_row(job)?;
        let ended = self.savepoint(|w| {
            let node = get_node(w.tx, job)?;
            if node.state == NodeState::Done {
                return Ok(());
            }
            let mut data = Map::new();
            data.insert("error_code".into(), QUEUE_ERROR.into());
            data.insert(
                "error_msg".into(),
                format!("the coordinator could not process the job's queue entry: {cause}").into(),
            );
            w.update_node(
                job,
                NodeUpdate {
                    state: Some(NodeState::Done),
                    result: Some(NodeResult::Incomplete),
                    data,
                    ..Default::default()
                },
            )?;
            Ok(())
        });
        if let Err(e) = ended {
            tracing::error!(job = %job, error = %e, "cannot end the node of a repaired queue entry");
        }
        Ok(())
    }

    /// Closes every queue entry (queued or leased) whose node has ended already. Returns the
    /// jobs closed. Run when the coordinator's services start.
    pub(crate) fn repair_queue(&mut self) -> Result<Vec<NodeId>> {
        let ids: Vec<i64> = self.tx.query_map(
            "SELECT j.node_id FROM jobs j JOIN nodes n ON n.id = j.node_id \
             WHERE j.status != 'finished' AND n.state = 'done' ORDER BY j.node_id",
            params![],
            |r| r.get(0),
        )?;
        let ids: Vec<NodeId> = ids.into_iter().map(NodeId).collect();
        for id in &ids {
            tracing::warn!(job = %id, "the job's node had ended outside the queue; its queue entry is closed");
            self.finish_job_row(*id)?;
        }
        Ok(ids)
    }
}
