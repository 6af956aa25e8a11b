//! The job queue as the rest of the coordinator sees it. Every change of the queue is a store
//! transaction followed by the dispatcher hearing of it: a job (back) in the queue is offered
//! to the waiting agents at once, a job that ended is forgotten. [`JobQueue::write`] is the
//! one place that pairs the two: it passes on every [`QueueChange`] the transaction noted,
//! whichever store operation made it (submit, requeue, cancel, report, sweeps, timeouts,
//! revocation, repair), so no caller can forget the dispatcher. The dispatcher's own methods
//! for these changes are private to [`crate::dispatch`].
//!
//! What another process changes (a replica on PostgreSQL, `labwire-coordinator ca revoke`)
//! reaches the dispatcher through [`JobQueue::follow`] and [`JobQueue::lab_revoked`], called
//! by the tasks that watch the store's notifications.

use super::Dispatcher;
use crate::error::Result;
use crate::model::{AttemptNo, LabName, Node, NodeId};
use crate::store::Write;
use crate::store::jobs::ResultReport;
use crate::store::timeouts::TimeoutSweep;
use crate::store::{JobRow, LeaseSweep, NewJob, QueueChange, ReportOutcome, RetryPolicy, Store};
use std::collections::HashMap;
use std::sync::Arc;

/// The job queue: the store's queue and the dispatcher's copy of it, changed together.
#[derive(Clone)]
pub(crate) struct JobQueue {
    store: Store,
    dispatcher: Arc<Dispatcher>,
}

impl JobQueue {
    /// The queue over `store`, followed by `dispatcher`.
    pub(crate) fn new(store: Store, dispatcher: Arc<Dispatcher>) -> JobQueue {
        JobQueue { store, dispatcher }
    }

    /// Runs `f` in one store transaction; once it committed, tells the dispatcher of every
    /// queue change it made, in order.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Write<'_>) -> Result<T> + Send + 'static,
    {
        Ok(self.write_noting(f).await?.0)
    }

    /// Like [`JobQueue::write`]; then every lab whose lease the changes ended is told at once,
    /// on its session streams, to stop that attempt (`reason`: why, for its log). An agent
    /// without a stream hears it at its next heartbeat.
    pub(crate) async fn write_and_cancel<T, F>(&self, reason: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Write<'_>) -> Result<T> + Send + 'static,
    {
        let (out, ended) = self.write_noting(f).await?;
        let mut by_lab: HashMap<LabName, Vec<(NodeId, AttemptNo)>> = HashMap::new();
        for (job, lab, attempt) in ended {
            by_lab.entry(lab).or_default().push((job, attempt));
        }
        for (lab, jobs) in by_lab {
            let streams = self.dispatcher.links.cancel(&lab, &jobs, reason);
            tracing::debug!(lab = %lab, jobs = jobs.len(), streams, reason, "cancel sent to the lab");
        }
        Ok(out)
    }

    /// [`JobQueue::write`], returning also the leases the changes ended: (job, lab, attempt).
    async fn write_noting<T, F>(&self, f: F) -> Result<(T, Vec<(NodeId, LabName, AttemptNo)>)>
    where
        T: Send + 'static,
        F: FnOnce(&mut Write<'_>) -> Result<T> + Send + 'static,
    {
        let (out, changes) = self.store.write_queue(f).await?;
        let mut ended = Vec::new();
        for change in changes {
            let (id, before) = match change {
                QueueChange::Queued(row) => (row.id, self.dispatcher.enqueue(&row).await),
                QueueChange::Ended(id) => (id, self.dispatcher.forget(id).await),
            };
            if let Some((lab, attempt)) = before {
                ended.push((id, lab, attempt));
            }
        }
        Ok((out, ended))
    }

    /// Queues a job (SubmitJob): its node and queue entry, then an offer to the waiting
    /// agents.
    pub(crate) async fn submit(&self, job: NewJob) -> Result<(Node, JobRow)> {
        self.write(move |w| w.submit_job(job)).await
    }

    /// Cancels a job (CancelJob): it leaves the queue and its node ends `incomplete`.
    pub(crate) async fn cancel(&self, id: NodeId, reason: String) -> Result<Node> {
        self.write_and_cancel("cancelled", move |w| w.cancel_job(id, &reason))
            .await
    }

    /// A lab's agent refuses a job it was handed: the job goes back to the queue, and to
    /// other labs first.
    pub(crate) async fn reject(
        &self,
        lab: LabName,
        job: NodeId,
        attempt: AttemptNo,
        reason: String,
    ) -> Result<()> {
        // Remembered first, so that the offer that follows the requeue skips this lab.
        self.dispatcher.refused(job, &lab).await;
        self.write(move |w| w.release_job(&lab, job, attempt, &reason))
            .await
            .map(|_| ())
    }

    /// A lab's agent started a job on a device.
    pub(crate) async fn start(
        &self,
        lab: LabName,
        job: NodeId,
        attempt: AttemptNo,
        device: String,
    ) -> Result<()> {
        let device_type = self.dispatcher.device_type(&lab, &device).await;
        let (lab2, device2, dt2) = (lab.clone(), device.clone(), device_type.clone());
        self.write(move |w| w.start_job(&lab2, job, attempt, &device2, dt2.as_deref()))
            .await?;
        self.dispatcher
            .started(job, &lab, &device, device_type.as_deref())
            .await;
        Ok(())
    }

    /// Applies an attempt's final result (or puts the job back in the queue for a retry).
    pub(crate) async fn report(
        &self,
        report: ResultReport,
        retry: RetryPolicy,
    ) -> Result<ReportOutcome> {
        self.write(move |w| w.report_result(report, &retry)).await
    }

    /// Puts the expired leases back in the queue (or ends their jobs), except those renewed
    /// in memory and not written yet.
    pub(crate) async fn sweep_leases(&self, max_retries: i32) -> Result<LeaseSweep> {
        let renewed = self.dispatcher.liveness.renewed(chrono::Utc::now());
        self.write_and_cancel("lease_lost", move |w| {
            w.sweep_expired_leases_except(max_retries, &renewed)
        })
        .await
    }

    /// Applies the timeout, holdoff and closing rules; a job that timed out leaves the queue.
    pub(crate) async fn sweep_timeouts(&self) -> Result<TimeoutSweep> {
        self.write_and_cancel("timeout", |w| w.sweep_timeouts())
            .await
    }

    /// Closes the queue entries whose node had ended already (run when the services start).
    pub(crate) async fn repair(&self) -> Result<Vec<NodeId>> {
        self.write(|w| w.repair_queue()).await
    }

    /// Revokes a lab (RevokeLab): its leased jobs go back to the queue, its certificates are
    /// revoked, and the dispatcher forgets it. Returns the number of certificates revoked and
    /// the jobs requeued.
    pub(crate) async fn revoke(&self, lab: LabName) -> Result<(usize, Vec<JobRow>)> {
        let l2 = lab.clone();
        let out = self
            .write(move |w| {
                let jobs = w.requeue_lab_jobs(&l2)?;
                let n = w.revoke_lab(l2.as_str())?;
                Ok((n, jobs))
            })
            .await?;
        self.dispatcher.forget_lab(&lab).await;
        Ok(out)
    }

    /// Another process revoked `lab` (`labwire-coordinator ca revoke`, another replica): the
    /// dispatcher forgets the lab, any job still leased to it goes back to the queue, and the
    /// jobs that process put back in the queue are offered again at once. Returns how many
    /// jobs are queued.
    pub(crate) async fn lab_revoked(&self, lab: &LabName) -> Result<usize> {
        self.dispatcher.forget_lab(lab).await;
        let l2 = lab.clone();
        self.write(move |w| w.requeue_lab_jobs(&l2)).await?;
        let queued = self.store.read(crate::store::jobs::queued_jobs).await?;
        for row in &queued {
            self.dispatcher.sync(row).await;
        }
        Ok(queued.len())
    }

    /// Another process changed a job (a replica on PostgreSQL): brings the dispatcher in line
    /// with the job as the store has it now.
    pub(crate) async fn follow(&self, row: &JobRow) {
        self.dispatcher.sync(row).await;
    }
}
