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
/// (The spelling of `labwire_common::ErrorCode::QueueError`.)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::{JobStatus, NewJob, find_job};
    use crate::store::temp_store;
    use labwire_proto::v1;

    fn job(name: &str) -> NewJob {
        NewJob {
            spec: v1::JobSpec {
                name: name.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A node ended outside the queue (what an older version let a client do).
    fn damage(w: &mut Write<'_>, id: NodeId) -> Result<()> {
        w.update_node(
            id,
            NodeUpdate {
                state: Some(NodeState::Done),
                result: Some(NodeResult::Pass),
                ..Default::default()
            },
        )
        .map(|_| ())
    }

    #[test]
    fn a_bad_row_is_repaired_instead_of_failing_the_sweep() {
        let (_d, store) = temp_store();
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        let (bad, good) = store
            .write_blocking(move |w| {
                let bad = w.submit_job(job("bad"))?.0.id;
                let good = w.submit_job(job("good"))?.0.id;
                w.claim_for_test(bad, "lab-a", past)?;
                w.claim_for_test(good, "lab-a", past)?;
                damage(w, bad)?;
                Ok((bad, good))
            })
            .unwrap();
        let sweep = store.write_blocking(|w| w.sweep_expired_leases(3)).unwrap();
        assert_eq!(sweep.repaired, vec![bad]);
        assert_eq!(
            sweep.requeued.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![good],
            "the other row is swept as usual"
        );
        let (row, node) = store
            .read_blocking(move |c| Ok((find_job(c, bad)?.unwrap(), get_node(c, bad)?)))
            .unwrap();
        assert_eq!(row.status, JobStatus::Finished);
        assert_eq!(
            node.result,
            Some(NodeResult::Pass),
            "the node is left as it was"
        );
        // The next sweep has nothing left to trip on.
        store.write_blocking(|w| w.sweep_expired_leases(3)).unwrap();
    }

    #[test]
    fn the_start_up_pass_closes_entries_whose_node_ended() {
        let (_d, store) = temp_store();
        let (queued, fine) = store
            .write_blocking(|w| {
                let queued = w.submit_job(job("queued"))?.0.id;
                let fine = w.submit_job(job("fine"))?.0.id;
                damage(w, queued)?;
                Ok((queued, fine))
            })
            .unwrap();
        let closed = store.write_blocking(|w| w.repair_queue()).unwrap();
        assert_eq!(closed, vec![queued]);
        let status = store
            .read_blocking(move |c| Ok(find_job(c, fine)?.unwrap().status))
            .unwrap();
        assert_eq!(status, JobStatus::Queued);
        assert!(
            store
                .write_blocking(|w| w.repair_queue())
                .unwrap()
                .is_empty()
        );
    }
}
