//! Leases: a queued job claimed by a lab's agent session, renewed by heartbeats, given back,
//! expired by the sweep (back in the queue, or ended past the retry limit), and every check
//! that only the agent holding the current attempt acts on a job.

use super::super::db::{Backend, params};
use super::super::nodes::{NodeUpdate, get_node};
use super::super::{QueueChange, Write, micros};
use super::{Claim, JOB_COLUMNS, JobRow, JobStatus, LeaseSweep, get_job, job_from_row};
use crate::error::{Error, Result};
use crate::model::{AttemptNo, LabName, NodeId, NodeState, SessionId};
use chrono::{DateTime, Utc};
use labwire_common::NodeResult;
use serde_json::{Map, Value};

/// The terms of a lease: which agent session of which lab takes a job, on which device (of
/// which type), until when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseTerms<'a> {
    /// The lab.
    pub(crate) lab: &'a LabName,
    /// Its agent session.
    pub(crate) session: &'a SessionId,
    /// The device the job was matched to.
    pub(crate) device: &'a str,
    /// That device's type.
    pub(crate) device_type: &'a str,
    /// When the lease runs out unless renewed.
    pub(crate) until: DateTime<Utc>,
}

impl Write<'_> {
    /// Leases a queued job to a lab's agent session, starting a new attempt. `None` when the
    /// job is not queued (any more), another replica is leasing it right now, or its node
    /// had ended (the entry is then closed). A revoked lab is refused.
    pub(crate) fn claim_job(
        &mut self,
        id: NodeId,
        terms: &LeaseTerms<'_>,
    ) -> Result<Option<Claim>> {
        let LeaseTerms {
            lab,
            session,
            device,
            device_type,
            until: lease_until,
        } = *terms;
        let revoked: Option<Option<i64>> = self.tx.query_opt(
            "SELECT revoked_at FROM labs WHERE name = ?1",
            params![lab],
            |r| r.get(0),
        )?;
        if matches!(revoked, Some(Some(_))) {
            return Err(Error::PermissionDenied(format!("lab `{lab}` is revoked")));
        }
        // Only a queued job is leased. On PostgreSQL the row is locked first with SKIP
        // LOCKED: when another replica is leasing it right now, that claim wins and this one
        // fails at once (and the dispatcher tries its next job) instead of waiting. The
        // leased row comes back with RETURNING.
        let which = match self.tx.backend() {
            Backend::Sqlite => "?1 AND status = 'queued'",
            Backend::Postgres => {
                "(SELECT node_id FROM jobs WHERE node_id = ?1 AND status = 'queued' \
                 FOR UPDATE SKIP LOCKED)"
            }
        };
        let job = self.tx.query_opt(
            &format!(
                "UPDATE jobs SET status = 'leased', lease_owner = ?2, lease_session = ?3, \
                     lease_expires = ?4, attempt = attempt + 1, device = ?5, leased_at = ?6, \
                     device_type = ?7 WHERE node_id = {which} RETURNING {JOB_COLUMNS}"
            ),
            params![
                id.0,
                lab,
                session,
                micros(lease_until),
                device,
                micros(self.now),
                device_type
            ],
            job_from_row,
        )?;
        let Some(job) = job else {
            return Ok(None);
        };
        let mut data = Map::new();
        data.insert("lab".into(), lab.as_str().into());
        data.insert("device".into(), device.into());
        let node = match self.update_node(
            id,
            NodeUpdate {
                data,
                ..Default::default()
            },
        ) {
            Ok(n) => n,
            // The node ended outside the queue (a bad row from before job nodes were kept
            // to the queue's own changes): close the entry instead of leasing it.
            Err(Error::BadTransition {
                from: NodeState::Done,
                ..
            }) => {
                tracing::warn!(job = %id, "a queued job's node had ended already; its queue entry is closed");
                self.finish_job_row(id)?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(Some(Claim { job, node }))
    }

    /// The queue entry of `job`, checked to be the current attempt leased to `lab`.
    pub(super) fn leased_to(
        &self,
        lab: &LabName,
        job: NodeId,
        attempt: AttemptNo,
    ) -> Result<JobRow> {
        let row = get_job(self.tx, job)?;
        if row.status != JobStatus::Leased
            || row.lease_owner.as_deref() != Some(lab.as_str())
            || row.attempt != attempt
        {
            return Err(Error::LeaseLost(format!(
                "job {job} attempt {attempt} is not leased to lab `{lab}` (now {}{})",
                row.status.as_str(),
                match (&row.lease_owner, row.status) {
                    (Some(o), JobStatus::Leased) =>
                        format!(", attempt {} leased to `{o}`", row.attempt),
                    _ => String::new(),
                }
            )));
        }
        Ok(row)
    }

    /// Gives a leased attempt back to the queue without counting a retry (the agent refused
    /// it, or never received it).
    pub(crate) fn release_job(
        &mut self,
        lab: &LabName,
        job: NodeId,
        attempt: AttemptNo,
        reason: &str,
    ) -> Result<JobRow> {
        self.leased_to(lab, job, attempt)?;
        self.tx.execute(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_session = NULL, \
             lease_expires = NULL, device = NULL, device_type = NULL, queued_at = ?2 WHERE node_id = ?1",
            params![job.0, micros(self.now)],
        )?;
        let mut data = Map::new();
        data.insert("lab".into(), Value::Null);
        data.insert("device".into(), Value::Null);
        data.insert("last_rejection".into(), format!("{lab}: {reason}").into());
        self.update_node(
            job,
            NodeUpdate {
                data,
                ..Default::default()
            },
        )?;
        let row = get_job(self.tx, job)?;
        self.queue_changed(QueueChange::Queued(Box::new(row.clone())));
        Ok(row)
    }

    /// Extends the leases of the listed attempts held by `lab`. Returns the attempts that are
    /// not (or no longer) leased to it: the agent must stop them.
    pub(crate) fn renew_leases(
        &mut self,
        lab: &LabName,
        running: &[(NodeId, AttemptNo)],
        until: DateTime<Utc>,
    ) -> Result<Vec<(NodeId, AttemptNo)>> {
        let mut lost = Vec::new();
        for &(job, attempt) in running {
            let n = self.tx.execute(
                "UPDATE jobs SET lease_expires = ?4 WHERE node_id = ?1 AND attempt = ?2 \
                     AND lease_owner = ?3 AND status = 'leased'",
                params![job.0, attempt, lab, micros(until)],
            )?;
            if n == 0 {
                lost.push((job, attempt));
            }
        }
        Ok(lost)
    }

    /// Puts every lease that ran out before now back in the queue (retry_counter + 1), or,
    /// past `max_retries`, ends the job `done`/`incomplete` with `error_code=lease_expired`.
    /// A row that cannot be processed (its node ended outside the queue, damaged data) does
    /// not fail the sweep: it is logged, left out and repaired ([`Write::guarded`]).
    pub(crate) fn sweep_expired_leases(&mut self, max_retries: i32) -> Result<LeaseSweep> {
        self.sweep_expired_leases_except(max_retries, &[])
    }

    /// Like [`Write::sweep_expired_leases`], leaving `renewed` alone: leases this
    /// coordinator renewed in memory and has not written yet (`dispatch::liveness`).
    pub(crate) fn sweep_expired_leases_except(
        &mut self,
        max_retries: i32,
        renewed: &[NodeId],
    ) -> Result<LeaseSweep> {
        let expired: Vec<i64> = self.tx.query_map(
            "SELECT node_id FROM jobs WHERE status = 'leased' AND lease_expires < ?1",
            params![micros(self.now)],
            |r| r.get(0),
        )?;
        let mut sweep = LeaseSweep::default();
        for id in expired
            .into_iter()
            .map(NodeId)
            .filter(|id| !renewed.contains(id))
        {
            match self.guarded(id, |w| w.expire_lease(id, max_retries))? {
                Some(Some(row)) => sweep.requeued.push(row),
                Some(None) => sweep.failed.push(id),
                None => sweep.repaired.push(id),
            }
        }
        Ok(sweep)
    }

    /// Ends one expired lease: the job back in the queue (`Some`), or, out of retries, ended
    /// (`None`).
    fn expire_lease(&mut self, id: NodeId, max_retries: i32) -> Result<Option<JobRow>> {
        let row = get_job(self.tx, id)?;
        let node = get_node(self.tx, id)?;
        let lab = row.lease_owner.clone().unwrap_or_default();
        if node.retry_counter < max_retries {
            self.tx.execute(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_session = NULL, \
                 lease_expires = NULL, device = NULL, device_type = NULL, queued_at = ?2 WHERE node_id = ?1",
                params![id.0, micros(self.now)],
            )?;
            let mut data = Map::new();
            data.insert("lab".into(), Value::Null);
            data.insert("device".into(), Value::Null);
            data.insert(
                "last_error".into(),
                format!("lease of attempt {} held by `{lab}` expired", row.attempt).into(),
            );
            self.update_node(
                id,
                NodeUpdate {
                    data,
                    retry_counter: Some(node.retry_counter + 1),
                    ..Default::default()
                },
            )?;
            let row = get_job(self.tx, id)?;
            self.queue_changed(QueueChange::Queued(Box::new(row.clone())));
            Ok(Some(row))
        } else {
            self.finish_job_row(id)?;
            let mut data = Map::new();
            data.insert(
                "error_code".into(),
                labwire_common::ErrorCode::LeaseExpired.as_str().into(),
            );
            data.insert(
                "error_msg".into(),
                format!(
                    "the lease held by `{lab}` expired and the job ran out of retries ({max_retries})"
                )
                .into(),
            );
            self.update_node(
                id,
                NodeUpdate {
                    state: Some(NodeState::Done),
                    result: Some(NodeResult::Incomplete),
                    data,
                    ..Default::default()
                },
            )?;
            Ok(None)
        }
    }

    /// Records that the job started on a device (of a device type, when known).
    pub(crate) fn start_job(
        &mut self,
        lab: &LabName,
        job: NodeId,
        attempt: AttemptNo,
        device: &str,
        device_type: Option<&str>,
    ) -> Result<()> {
        self.leased_to(lab, job, attempt)?;
        self.tx.execute(
            "UPDATE jobs SET device = ?2, started_at = ?3, device_type = COALESCE(?4, device_type) \
             WHERE node_id = ?1",
            params![job.0, device, micros(self.now), device_type],
        )?;
        let mut data = Map::new();
        data.insert("device".into(), device.into());
        self.update_node(
            job,
            NodeUpdate {
                data,
                ..Default::default()
            },
        )?;
        Ok(())
    }

    /// Gives every job leased to `lab` back to the queue (the lab was revoked). A row that
    /// cannot be given back is repaired instead ([`Write::guarded`]).
    pub(crate) fn requeue_lab_jobs(&mut self, lab: &LabName) -> Result<Vec<JobRow>> {
        let ids: Vec<i64> = self.tx.query_map(
            "SELECT node_id FROM jobs WHERE status = 'leased' AND lease_owner = ?1",
            params![lab],
            |r| r.get(0),
        )?;
        let mut out = Vec::new();
        for id in ids.into_iter().map(NodeId) {
            let released = self.guarded(id, |w| {
                let attempt = get_job(w.tx, id)?.attempt;
                w.release_job(lab, id, attempt, "lab revoked")
            })?;
            out.extend(released);
        }
        Ok(out)
    }

    /// Makes every lease of `lab` except those of `keep` expire now (the lab's agent started
    /// again and no longer holds them); the next sweep puts them back in the queue.
    pub(crate) fn expire_lab_leases_except(
        &mut self,
        lab: &LabName,
        keep: &[NodeId],
    ) -> Result<usize> {
        let held: Vec<i64> = self.tx.query_map(
            "SELECT node_id FROM jobs WHERE status = 'leased' AND lease_owner = ?1",
            params![lab],
            |r| r.get(0),
        )?;
        let mut n = 0;
        for id in held.into_iter().filter(|id| !keep.contains(&NodeId(*id))) {
            n += self.tx.execute(
                "UPDATE jobs SET lease_expires = 0 WHERE node_id = ?1 AND status = 'leased'",
                params![id],
            )?;
        }
        Ok(n)
    }

    /// Gives every lease a grace period of `lease` from now: run at start-up so that agents
    /// have time to reconnect after a coordinator outage before their jobs are taken away.
    pub(crate) fn extend_all_leases(&mut self, until: DateTime<Utc>) -> Result<usize> {
        self.tx.execute(
            "UPDATE jobs SET lease_expires = ?1 WHERE status = 'leased' AND lease_expires < ?1",
            params![micros(until)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::{NewJob, ReportOutcome};
    use crate::store::nodes::get_node;
    use crate::store::temp_store;
    use labwire_common::{NodeResult, TestNode};
    use labwire_proto::v1;

    fn spec(name: &str) -> v1::JobSpec {
        v1::JobSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn lease_cycle_and_stale_reports() {
        let (_d, store) = temp_store();
        let (node, _) = store
            .write_blocking(|w| {
                w.submit_job(NewJob {
                    spec: spec("j"),
                    parent: None,
                    submitter: "me".into(),
                    owner: "admin".into(),
                    ..Default::default()
                })
            })
            .unwrap();
        let id = node.id;
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        let claim = store
            .write_blocking(move |w| w.claim_for_test(id, "lab-a", past))
            .unwrap()
            .unwrap();
        assert_eq!(claim.job.attempt, AttemptNo(1));
        // Claiming twice is refused.
        assert!(
            store
                .write_blocking(move |w| w.claim_for_test(id, "lab-b", past))
                .unwrap()
                .is_none()
        );
        let sweep = store.write_blocking(|w| w.sweep_expired_leases(3)).unwrap();
        assert_eq!(sweep.requeued.len(), 1);
        let later = chrono::Utc::now() + chrono::Duration::seconds(60);
        let claim = store
            .write_blocking(move |w| w.claim_for_test(id, "lab-b", later))
            .unwrap()
            .unwrap();
        assert_eq!(claim.job.attempt, AttemptNo(2));
        assert_eq!(claim.node.retry_counter, 1);
        // The first lab's late report is refused.
        let err = store
            .write_blocking(move |w| w.report_for_test("lab-a", id, 1, NodeResult::Pass, vec![]))
            .unwrap_err();
        assert!(matches!(err, Error::LeaseLost(_)), "{err}");
        // The holder's report applies once; a repeat is a duplicate.
        let tests = vec![TestNode::group(
            "suite",
            vec![TestNode::leaf("t1", NodeResult::Pass)],
        )];
        let t2 = tests.clone();
        let out = store
            .write_blocking(move |w| w.report_for_test("lab-b", id, 2, NodeResult::Pass, t2))
            .unwrap();
        assert!(matches!(out, ReportOutcome::Applied(_)));
        let out = store
            .write_blocking(move |w| w.report_for_test("lab-b", id, 2, NodeResult::Pass, tests))
            .unwrap();
        assert!(matches!(out, ReportOutcome::Duplicate));
        let kids = store
            .read_blocking(move |c| crate::store::nodes::children(c, id))
            .unwrap();
        assert_eq!(kids.len(), 1);
        assert_eq!(kids[0].state, NodeState::Done);
    }

    #[test]
    fn retries_run_out() {
        let (_d, store) = temp_store();
        let (node, _) = store
            .write_blocking(|w| {
                w.submit_job(NewJob {
                    spec: spec("j"),
                    parent: None,
                    submitter: String::new(),
                    owner: String::new(),
                    ..Default::default()
                })
            })
            .unwrap();
        let id = node.id;
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        for round in 0..2 {
            store
                .write_blocking(move |w| w.claim_for_test(id, "lab", past))
                .unwrap();
            let sweep = store.write_blocking(|w| w.sweep_expired_leases(1)).unwrap();
            if round == 0 {
                assert_eq!(sweep.requeued.len(), 1);
            } else {
                assert_eq!(sweep.failed, vec![id]);
            }
        }
        let node = store.read_blocking(move |c| get_node(c, id)).unwrap();
        assert_eq!(node.state, NodeState::Done);
        assert_eq!(node.result, Some(NodeResult::Incomplete));
        assert_eq!(node.error_code(), Some("lease_expired"));
    }
}
