//! Dispatch: hands each queued job to exactly one waiting agent, in the lab where it is
//! expected to start soonest among the labs that placement allows.
//!
//! Agents long-poll with the devices they have free; a job submitted while an agent waits
//! reaches it at once (the submitting task completes the agent's wait), so there is no
//! polling interval. The queue lives in the store; this module keeps an in-memory copy in
//! dispatch order ([`state`]), and every hand-out is a lease written to the store before the
//! agent sees it.
//!
//! For one job and one lab, in order: placement (pins, allow/deny rules, the lab's limit on
//! jobs in flight, a recent refusal by that lab: [`rules`]), the run group's variant (later
//! runs avoid the device types or devices earlier runs used), a matching device; then, when
//! several labs qualify, the lab with the lowest expected start delay minus its preference
//! bonus.
//!
//! Everything else that changes the queue goes through the [`JobQueue`] ([`queue`]), which
//! writes the store and then tells the dispatcher; the dispatcher's own methods that follow a
//! queue change are private to this module, so no caller can forget one half.

mod explain;
pub(crate) mod links;
pub(crate) mod liveness;
pub(crate) mod queue;
pub(crate) mod reserved;
mod rules;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use queue::JobQueue;

use crate::error::Result;
use crate::model::{LabName, NodeId, SessionId};
use crate::placement::Placement;
use crate::store::jobs::LeaseTerms;
use crate::store::{Claim, JobRow, JobStatus, Store};
use labwire_common::{Criteria, DeviceInfo};
use state::{LabView, State, VariantProblem, Waiter};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, oneshot};

/// How long a lab that refused a job is not offered it again.
const REFUSAL_MEMORY: Duration = Duration::from_secs(60);

/// A job handed to an agent, with the device it was matched to.
#[derive(Debug)]
pub(crate) struct Assignment {
    /// The lease just granted.
    pub(crate) claim: Claim,
    /// The free device the job's criteria matched first.
    pub(crate) device: String,
}

/// The dispatcher.
pub(crate) struct Dispatcher {
    store: Store,
    lease: Duration,
    /// Labs not heard from for this long are not considered connected.
    horizon: Duration,
    started: Instant,
    placement: std::sync::RwLock<Arc<Placement>>,
    state: Mutex<State>,
    /// Heartbeats' liveness, held until it is written in a batch.
    pub(crate) liveness: liveness::Liveness,
    /// The agents' open session streams: the way to a lab between two of its calls.
    pub(crate) links: links::Links,
    /// Labs with a device an admin resumed through this replica: their next heartbeat
    /// reads the store for it (a heartbeat otherwise writes nothing).
    resumes: std::sync::Mutex<std::collections::HashSet<LabName>>,
    /// The devices reserved now: no job is placed on them.
    pub(crate) reserved: reserved::Reserved,
}

impl Dispatcher {
    /// Loads the queue, the leases and the statistics from the store.
    pub(crate) async fn load(
        store: Store,
        lease: Duration,
        heartbeat: Duration,
        placement: Placement,
    ) -> Result<Self> {
        let now = store.clock().now();
        let (jobs, leased, stats, reservations) = store
            .read(move |c| {
                Ok((
                    crate::store::jobs::queued_jobs(c)?,
                    crate::store::jobs::list_jobs(c, Some(JobStatus::Leased), usize::MAX >> 1)?,
                    crate::store::jobs::job_stats(c)?,
                    crate::store::reservations::live(c, None, now)?,
                ))
            })
            .await?;
        let reserved = reserved::Reserved::default();
        reserved.replace(reservations.into_iter().map(|r| (r.lab, r.device)));
        let mut state = State {
            stats,
            ..Default::default()
        };
        let mut groups = Vec::new();
        for j in jobs {
            if let Some(g) = &j.group {
                groups.push(g.id.clone());
            }
            state.queue_job(&j);
        }
        for j in leased {
            state.attempts.insert(j.id, j.attempt);
            if let (Some(lab), Some(dev)) = (&j.lease_owner, &j.device) {
                state
                    .leased
                    .insert(j.id, (LabName::new(lab.clone()), dev.clone()));
            }
            if let Some(g) = &j.group {
                groups.push(g.id.clone());
            }
        }
        groups.sort();
        groups.dedup();
        for g in groups {
            let usage = store
                .read({
                    let g = g.clone();
                    move |c| crate::store::jobs::group_usage(c, &g)
                })
                .await?;
            state.groups.insert(g, usage);
        }
        Ok(Dispatcher {
            store,
            lease,
            horizon: heartbeat * 3,
            started: Instant::now(),
            placement: std::sync::RwLock::new(Arc::new(placement)),
            state: Mutex::new(state),
            liveness: Default::default(),
            links: Default::default(),
            resumes: Default::default(),
            reserved,
        })
    }

    /// The placement rules in force.
    pub(crate) fn placement(&self) -> Arc<Placement> {
        match self.placement.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// How many jobs wait in the queue.
    #[cfg(test)]
    pub(crate) async fn queue_len(&self) -> usize {
        self.state.lock().await.queue.len()
    }

    /// Records what a lab's agent advertised (at register and heartbeat).
    pub(crate) async fn update_lab(
        &self,
        lab: &LabName,
        devices: Option<Vec<DeviceInfo>>,
        free_slots: u32,
        draining: bool,
    ) {
        let mut st = self.state.lock().await;
        let v = st.labs.entry(lab.clone()).or_insert_with(|| LabView {
            devices: Vec::new(),
            free_slots,
            draining,
            last_seen: Instant::now(),
        });
        if let Some(d) = devices {
            v.devices = d;
        }
        v.free_slots = free_slots;
        v.draining = draining;
        v.last_seen = Instant::now();
    }

    /// Sets a device's health in this replica's picture of its lab (an admin's maintenance,
    /// retirement or resume), and in what its waiting agents offer, so that no job is placed
    /// on it from now on.
    pub(crate) async fn set_device_health(
        &self,
        lab: &LabName,
        device: &str,
        health: labwire_common::Health,
        reason: &str,
    ) {
        let mut st = self.state.lock().await;
        let patch = |d: &mut DeviceInfo| {
            if d.name == device {
                d.health = health;
                d.health_reason = reason.to_string();
            }
        };
        if let Some(v) = st.labs.get_mut(lab) {
            v.devices.iter_mut().for_each(patch);
        }
        for w in st.waiters.values_mut().filter(|w| &w.lab == lab) {
            w.devices.iter_mut().for_each(patch);
        }
    }

    /// Notes that an admin resumed a device of `lab`, for its agent's next heartbeat.
    pub(crate) fn note_resume(&self, lab: &LabName) {
        if let Ok(mut r) = self.resumes.lock() {
            r.insert(lab.clone());
        }
    }

    /// Whether a resume of a device of `lab` waits for its agent; taken once.
    pub(crate) fn take_resume(&self, lab: &LabName) -> bool {
        self.resumes
            .lock()
            .map(|mut r| r.remove(lab))
            .unwrap_or(false)
    }

    /// Splits the attempts an agent of `lab` says it runs into those this dispatcher knows
    /// are leased to it (renewed in memory) and the others (which the store must decide:
    /// lost, or leased through another replica that this one has not heard of yet).
    pub(crate) async fn held_by(
        &self,
        lab: &LabName,
        running: &[(NodeId, crate::model::AttemptNo)],
    ) -> (
        Vec<(NodeId, crate::model::AttemptNo)>,
        Vec<(NodeId, crate::model::AttemptNo)>,
    ) {
        let st = self.state.lock().await;
        running.iter().partition(|(job, attempt)| {
            st.leased.get(job).is_some_and(|(l, _)| l == lab)
                && st.attempts.get(job) == Some(attempt)
        })
    }

    /// Takes in what the labs connected to other coordinator replicas last advertised (the
    /// store's `labs` rows, which every heartbeat updates), so that placement compares them
    /// too. A lab this replica heard from more recently keeps its own view; a lab not heard
    /// from within the horizon is left out.
    pub(crate) async fn refresh_remote_labs(&self, rows: &[crate::store::labs::LabAdvert]) {
        let now = chrono::Utc::now();
        let mut st = self.state.lock().await;
        for row in rows {
            let Ok(age) = (now - row.last_seen).to_std() else {
                continue;
            };
            if age >= self.horizon {
                continue;
            }
            let Some(at) = Instant::now().checked_sub(age) else {
                continue;
            };
            if st
                .labs
                .get(row.name.as_str())
                .is_some_and(|v| v.last_seen >= at)
            {
                continue;
            }
            let Ok(devices) = serde_json::from_value::<Vec<DeviceInfo>>(row.devices.clone()) else {
                continue;
            };
            st.labs.insert(
                LabName::new(row.name.clone()),
                LabView {
                    devices,
                    free_slots: row.free_slots,
                    draining: false,
                    last_seen: at,
                },
            );
        }
    }

    /// Reloads the job statistics from the store (run now and then).
    pub(crate) async fn refresh_stats(&self) -> Result<()> {
        let stats = self.store.read(crate::store::jobs::job_stats).await?;
        self.state.lock().await.stats = stats;
        Ok(())
    }

    /// The device type of a device of `lab`, as its agent last advertised it.
    pub(crate) async fn device_type(&self, lab: &LabName, device: &str) -> Option<String> {
        let st = self.state.lock().await;
        st.labs
            .get(lab)
            .and_then(|v| v.devices.iter().find(|d| d.name == device))
            .map(|d| d.device_type.clone())
    }

    /// Writes the lease of `id` to `device` of the waiting agent; `None` when the job is no
    /// longer queued (cancelled, leased by another replica, ended).
    async fn claim(
        &self,
        id: NodeId,
        lab: &LabName,
        session: &SessionId,
        device: &DeviceInfo,
    ) -> Result<Option<Claim>> {
        let until = chrono::Utc::now()
            + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(60));
        let (lab, session, name, dt) = (
            lab.clone(),
            session.clone(),
            device.name.clone(),
            device.device_type.clone(),
        );
        self.store
            .write(move |w| {
                w.claim_job(
                    id,
                    &LeaseTerms {
                        lab: &lab,
                        session: &session,
                        device: &name,
                        device_type: &dt,
                        until,
                    },
                )
            })
            .await
    }

    /// Records a lease in memory. A run of a group gets its effective criteria (with the
    /// exclusions) in the spec it is sent, so that the agent honours them too.
    fn note_claim(
        st: &mut State,
        claim: &mut Claim,
        lab: &LabName,
        device: &DeviceInfo,
        crit: &Criteria,
    ) {
        if claim.job.group.is_some() {
            claim.job.spec.criteria = Some(labwire_proto::convert::criteria_to_proto(crit));
        }
        st.attempts.insert(claim.job.id, claim.job.attempt);
        st.leased
            .insert(claim.job.id, (lab.clone(), device.name.clone()));
        if let Some(g) = &claim.job.group {
            let v = st.groups.entry(g.id.clone()).or_default();
            v.retain(|(id, _, _)| *id != claim.job.id);
            v.push((
                claim.job.id,
                device.device_type.clone(),
                device.name.clone(),
            ));
        }
    }

    /// Offers a queued job (new, or back from an expired lease) to the waiting agents; if none
    /// should take it, it waits in the queue. Returns the lease it had here before, if any:
    /// (lab, attempt).
    async fn enqueue(&self, job: &JobRow) -> Option<(LabName, crate::model::AttemptNo)> {
        let placement = self.placement();
        let mut st = self.state.lock().await;
        let before = st.leased.remove(&job.id).map(|(lab, _)| {
            (
                lab,
                st.attempts.get(&job.id).copied().unwrap_or(job.attempt),
            )
        });
        self.offer(&mut st, &placement, job).await;
        before
    }

    /// [`Dispatcher::enqueue`]'s offer, under the state lock.
    async fn offer(&self, st: &mut State, placement: &Placement, job: &JobRow) {
        if let Some(g) = &job.group
            && let Some(v) = st.groups.get_mut(&g.id)
        {
            v.retain(|(id, _, _)| *id != job.id);
        }
        st.waiters.retain(|_, w| !w.tx.is_closed());
        // Candidate waiters, best lab first.
        let mut tried: Vec<u64> = Vec::new();
        loop {
            let mut pick: Option<(u64, DeviceInfo, Criteria)> = None;
            for (&i, w) in st.waiters.iter() {
                if tried.contains(&w.id) {
                    continue;
                }
                let Some((crit, dev)) = self.fit(st, placement, job, w.lab.as_str(), &w.devices)
                else {
                    continue;
                };
                if !self.best_lab(st, placement, job, &crit, w.lab.as_str()) {
                    continue;
                }
                pick = Some((i, dev, crit));
                break;
            }
            let Some((i, device, crit)) = pick else { break };
            let Some(w) = st.waiters.remove(&i) else {
                break;
            };
            tried.push(w.id);
            match self.claim(job.id, &w.lab, &w.session, &device).await {
                Ok(Some(mut claim)) => {
                    let attempt = claim.job.attempt;
                    Self::note_claim(st, &mut claim, &w.lab, &device, &crit);
                    let Err(back) = w.tx.send(Assignment {
                        claim,
                        device: device.name.clone(),
                    }) else {
                        return;
                    };
                    // The agent stopped waiting just now: take the lease back.
                    let lab = w.lab.clone();
                    let id = back.claim.job.id;
                    st.leased.remove(&id);
                    let res = self
                        .store
                        .write(move |wr| wr.release_job(&lab, id, attempt, "agent stopped waiting"))
                        .await;
                    match res {
                        Ok(row) => {
                            if let Some(g) = &row.group
                                && let Some(v) = st.groups.get_mut(&g.id)
                            {
                                v.retain(|(jid, _, _)| *jid != id);
                            }
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(job = %id, error = %e, "could not give back an undelivered job");
                            return;
                        }
                    }
                }
                // Not queued any more (cancelled, ended, leased by another replica).
                Ok(None) => return,
                Err(e) => {
                    // The lab was revoked meanwhile: try the next waiter.
                    tracing::debug!(job = %job.id, lab = %w.lab, error = %e, "claim refused");
                    if matches!(e, crate::error::Error::PermissionDenied(_)) {
                        continue;
                    }
                    return;
                }
            }
        }
        st.queue_job(job);
    }

    /// Brings the in-memory queue and leases in line with a job as the store has it now,
    /// after another process changed it (another coordinator replica on PostgreSQL, or an
    /// admin command such as `ca revoke`; it is harmless for this replica's own changes). A
    /// queued job joins the queue (and is offered to the waiting agents), a leased one counts
    /// against its lab, a finished one is dropped.
    async fn sync(&self, row: &JobRow) {
        {
            let mut st = self.state.lock().await;
            if st.attempts.get(&row.id).is_some_and(|a| *a > row.attempt) {
                return; // read before a lease this dispatcher already knows of
            }
            st.attempts.insert(row.id, row.attempt);
            match row.status {
                JobStatus::Queued => {
                    if st
                        .queue
                        .contains_key(&(std::cmp::Reverse(row.priority), row.id.0))
                    {
                        return;
                    }
                }
                JobStatus::Leased => {
                    st.unqueue(row.id);
                    let (lab, device) = (
                        LabName::new(row.lease_owner.clone().unwrap_or_default()),
                        row.device.clone().unwrap_or_default(),
                    );
                    if let Some(g) = &row.group {
                        let v = st.groups.entry(g.id.clone()).or_default();
                        v.retain(|(id, _, _)| *id != row.id);
                        v.push((
                            row.id,
                            row.device_type.clone().unwrap_or_default(),
                            device.clone(),
                        ));
                    }
                    st.leased.insert(row.id, (lab, device));
                    return;
                }
                JobStatus::Finished => {
                    st.unqueue(row.id);
                    st.leased.remove(&row.id);
                    st.refused.remove(&row.id);
                    st.attempts.remove(&row.id);
                    return;
                }
            }
        }
        let _ = self.enqueue(row).await;
    }

    /// Remembers that `lab` refused `job`, so that it goes to another lab first.
    async fn refused(&self, job: NodeId, lab: &LabName) {
        let mut st = self.state.lock().await;
        let v = st.refused.entry(job).or_default();
        v.retain(|(_, t)| t.elapsed() < REFUSAL_MEMORY);
        v.push((lab.clone(), Instant::now()));
    }

    /// Records which device (of which type, when known) the agent really started the job on.
    async fn started(&self, job: NodeId, lab: &LabName, device: &str, device_type: Option<&str>) {
        let mut st = self.state.lock().await;
        st.leased.insert(job, (lab.clone(), device.to_string()));
        if let Some(e) = st
            .groups
            .values_mut()
            .flat_map(|v| v.iter_mut())
            .find(|e| e.0 == job)
        {
            e.2 = device.to_string();
            if let Some(dt) = device_type {
                e.1 = dt.to_string();
            }
        }
    }

    /// Drops a job from the in-memory queue and leases (it finished, was cancelled or
    /// failed).
    /// Returns the lease it had here, if any: (lab, attempt).
    async fn forget(&self, id: NodeId) -> Option<(LabName, crate::model::AttemptNo)> {
        let mut st = self.state.lock().await;
        st.unqueue(id);
        let lab = st.leased.remove(&id).map(|(lab, _)| lab);
        st.refused.remove(&id);
        let attempt = st.attempts.remove(&id);
        lab.zip(attempt)
    }

    /// Forgets a lab whose certificates were revoked: its waiting agents stop waiting (their
    /// AcquireJob returns empty; their next call is refused) and placement no longer counts
    /// on it.
    async fn forget_lab(&self, lab: &LabName) {
        self.links.drop_lab(lab);
        let mut st = self.state.lock().await;
        st.labs.remove(lab);
        st.waiters.retain(|_, w| &w.lab != lab);
    }

    /// Fails the queued runs whose variant cannot be met any more (strict mode).
    async fn fail_exhausted(&self, st: &mut State) {
        // Runs of groups only; the whole queue is looked at no more than once a second.
        if self.started.elapsed() < self.horizon
            || st.groups.is_empty()
            || st
                .exhausted_check
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        st.exhausted_check = Some(Instant::now());
        let doomed: Vec<(NodeId, String)> = st
            .queue
            .values()
            .filter_map(|j| match st.effective_criteria(j, self.horizon, true) {
                Err(VariantProblem::Exhausted(m)) => Some((j.id, m)),
                Ok(_) => None,
            })
            .collect();
        for (id, msg) in doomed {
            st.unqueue(id);
            let res = self
                .store
                .write(move |w| {
                    w.fail_queued_job(id, labwire_common::ErrorCode::NoVariant.as_str(), &msg)
                })
                .await;
            if let Err(e) = res {
                tracing::warn!(job = %id, error = %e, "could not fail a run with no variant left");
            } else {
                tracing::warn!(job = %id, "run failed: no different device type or device is left");
            }
        }
    }

    /// Waits up to `wait` for a job that one of `devices` can run, and leases it to the
    /// agent session.
    pub(crate) async fn acquire(
        &self,
        lab: &LabName,
        session: &SessionId,
        devices: Vec<DeviceInfo>,
        wait: Duration,
    ) -> Result<Option<Assignment>> {
        let placement = self.placement();
        let (rx, waiter_id) = {
            let mut st = self.state.lock().await;
            self.fail_exhausted(&mut st).await;
            // First, the queue in dispatch order. An entry whose claim is refused (the job
            // was cancelled meanwhile) is dropped and the next one is tried.
            loop {
                let found = st.queue.iter().find_map(|(key, q)| {
                    let (crit, d) = self.fit(&st, &placement, q, lab.as_str(), &devices)?;
                    self.best_lab(&st, &placement, q, &crit, lab.as_str())
                        .then_some((*key, q.id, d, crit))
                });
                let Some((key, id, device, crit)) = found else {
                    break;
                };
                st.queue.remove(&key);
                match self.claim(id, lab, session, &device).await? {
                    Some(mut claim) => {
                        Self::note_claim(&mut st, &mut claim, lab, &device, &crit);
                        return Ok(Some(Assignment {
                            claim,
                            device: device.name,
                        }));
                    }
                    None => continue,
                }
            }
            if wait.is_zero() {
                return Ok(None);
            }
            let (tx, rx) = oneshot::channel();
            st.next_waiter += 1;
            let id = st.next_waiter;
            st.waiters.insert(
                id,
                Waiter {
                    id,
                    lab: lab.clone(),
                    session: session.clone(),
                    devices,
                    tx,
                },
            );
            (rx, id)
        };
        let mut rx = rx;
        match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(a)) => Ok(Some(a)),
            Ok(Err(_)) => Ok(None),
            Err(_) => {
                // Timed out: leave the list, unless an assignment raced in.
                let mut st = self.state.lock().await;
                if st.waiters.remove(&waiter_id).is_none() {
                    drop(st);
                    return Ok(rx.try_recv().ok());
                }
                Ok(None)
            }
        }
    }
}
