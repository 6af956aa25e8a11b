//! Dispatch: hands each queued job to exactly one waiting agent, in the lab where it is
//! expected to start soonest among the labs that placement allows.
//!
//! Agents long-poll with the devices they have free; a job submitted while an agent waits
//! reaches it at once (the submitting task completes the agent's wait), so there is no
//! polling interval. The queue lives in the store; this module keeps an in-memory copy in
//! dispatch order, the waiting agents, what each connected lab advertised, which devices
//! hold leases, and the job statistics. Every hand-out is a lease written to the store
//! before the agent sees it.
//!
//! For one job and one lab, in order: placement (pins, allow/deny rules, the lab's limit on
//! jobs in flight), a recent refusal by that lab, the run group's variant (later runs avoid
//! the device types or devices earlier runs used), a matching device; then, when several
//! labs qualify, the lab with the lowest expected start delay minus its preference bonus.

use crate::error::Result;
use crate::model::NodeId;
use crate::pipeline_config::{Variant, VariantMode};
use crate::placement::Placement;
use crate::store::jobs::{JobStats, RETRY_DEVICES, signature};
use crate::store::{Claim, JobRow, JobStatus, Store};
use labwire_common::{Criteria, DeviceInfo};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, oneshot};

/// How long a lab that refused a job is not offered it again.
const REFUSAL_MEMORY: Duration = Duration::from_secs(60);
/// The run time assumed for a job signature with no statistics yet.
const DEFAULT_RUN: Duration = Duration::from_secs(300);

/// A job handed to an agent, with the device it was matched to.
#[derive(Debug)]
pub struct Assignment {
    /// The lease just granted.
    pub claim: Claim,
    /// The free device the job's criteria matched first.
    pub device: String,
}

struct Waiter {
    id: u64,
    lab: String,
    session: String,
    devices: Vec<DeviceInfo>,
    tx: oneshot::Sender<Assignment>,
}

/// What a connected lab advertised.
#[derive(Debug, Clone)]
struct LabView {
    devices: Vec<DeviceInfo>,
    free_slots: u32,
    draining: bool,
    last_seen: Instant,
}

#[derive(Default)]
struct State {
    /// Queued jobs keyed by (priority descending, id ascending): dispatch order.
    queue: BTreeMap<(Reverse<i32>, i64), JobRow>,
    /// Agents waiting for work, oldest first.
    waiters: Vec<Waiter>,
    next_waiter: u64,
    /// Labs by name, as last heard from.
    labs: HashMap<String, LabView>,
    /// Leased jobs: job → (lab, device).
    leased: HashMap<NodeId, (String, String)>,
    /// Run groups: group → (job, device type, device) of the runs that hold or held one.
    groups: HashMap<String, Vec<(NodeId, String, String)>>,
    /// Labs that refused a job recently.
    refused: HashMap<NodeId, Vec<(String, Instant)>>,
    /// Job statistics: (signature, lab) → stats.
    stats: HashMap<(String, String), JobStats>,
    /// When the queue was last checked for runs with no variant left.
    exhausted_check: Option<Instant>,
    /// The newest attempt this dispatcher knows of per job, so that a stale read of a job
    /// (see [`Dispatcher::sync`]) does not undo a newer lease.
    attempts: HashMap<NodeId, i32>,
}

/// What [`Dispatcher::explain`] says about one lab.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The lab.
    pub lab: String,
    /// Whether the job may be placed there now.
    pub eligible: bool,
    /// Why (not), one sentence each.
    pub reasons: Vec<String>,
    /// Expected start delay minus preference bonus, in seconds (lower is better).
    pub score: Option<f64>,
}

/// The dispatcher.
pub struct Dispatcher {
    store: Store,
    lease: Duration,
    /// Labs not heard from for this long are not considered connected.
    horizon: Duration,
    started: Instant,
    placement: std::sync::RwLock<Arc<Placement>>,
    state: Mutex<State>,
}

/// Why a run of a group cannot be placed.
enum VariantProblem {
    /// No device type (device) different from the earlier runs' is advertised.
    Exhausted(String),
}

fn first_match(
    criteria: &Criteria,
    soft_avoid: &[String],
    lab: &str,
    devices: &[DeviceInfo],
) -> Option<String> {
    let ok = |d: &&DeviceInfo| criteria.matches(d);
    let avoided = |d: &&DeviceInfo| soft_avoid.contains(&format!("{lab}/{}", d.name));
    devices
        .iter()
        .filter(ok)
        .find(|d| !avoided(d))
        .or_else(|| devices.iter().find(ok))
        .map(|d| d.name.clone())
}

impl State {
    fn in_flight(&self, lab: &str) -> u32 {
        self.leased.values().filter(|(l, _)| l == lab).count() as u32
    }

    fn busy(&self, lab: &str, device: &str) -> bool {
        self.leased.values().any(|(l, d)| l == lab && d == device)
    }

    fn connected(&self, horizon: Duration) -> impl Iterator<Item = (&String, &LabView)> {
        self.labs
            .iter()
            .filter(move |(_, v)| !v.draining && v.last_seen.elapsed() < horizon)
    }

    /// The job's criteria with what its run group's other runs used taken out.
    fn effective_criteria(
        &self,
        job: &JobRow,
        horizon: Duration,
        settled: bool,
    ) -> std::result::Result<Criteria, VariantProblem> {
        let mut c = job.criteria.clone();
        let Some(g) = &job.group else { return Ok(c) };
        let used: Vec<&(NodeId, String, String)> = self
            .groups
            .get(&g.id)
            .map(|v| v.iter().filter(|(id, _, _)| *id != job.id).collect())
            .unwrap_or_default();
        if used.is_empty() {
            return Ok(c);
        }
        let base = c.clone();
        match g.variant {
            Variant::DeviceType => c
                .avoid_device_types
                .extend(used.iter().map(|(_, dt, _)| dt.clone())),
            Variant::Device => c
                .avoid_devices
                .extend(used.iter().map(|(_, _, d)| d.clone())),
        }
        let exists = |crit: &Criteria| {
            self.connected(horizon)
                .any(|(_, v)| v.devices.iter().any(|d| crit.matches(d)))
        };
        if exists(&c) {
            return Ok(c);
        }
        match g.mode {
            VariantMode::Permissive => Ok(base),
            // Only once every live lab had time to register after a restart.
            VariantMode::Strict if settled && exists(&base) => {
                let what = match g.variant {
                    Variant::DeviceType => "device type",
                    Variant::Device => "device",
                };
                let mut names: Vec<String> = used
                    .iter()
                    .map(|(_, dt, d)| match g.variant {
                        Variant::DeviceType => dt.clone(),
                        Variant::Device => d.clone(),
                    })
                    .collect();
                names.sort();
                names.dedup();
                Err(VariantProblem::Exhausted(format!(
                    "no connected lab offers a {what} other than those earlier runs used ({}); \
                     runs.mode is strict",
                    names.join(", ")
                )))
            }
            VariantMode::Strict => Ok(c),
        }
    }

    fn refused_by(&self, job: NodeId, lab: &str) -> bool {
        self.refused.get(&job).is_some_and(|v| {
            v.iter()
                .any(|(l, t)| l == lab && t.elapsed() < REFUSAL_MEMORY)
        })
    }

    fn mean_run(&self, job: &JobRow, lab: &str) -> Duration {
        let sig = signature(job);
        if let Some(s) = self.stats.get(&(sig.clone(), lab.to_string())) {
            return Duration::from_millis(s.run_ms as u64);
        }
        // Another lab's figure is better than none.
        let others: Vec<f64> = self
            .stats
            .iter()
            .filter(|((s, _), _)| *s == sig)
            .map(|(_, v)| v.run_ms)
            .collect();
        if others.is_empty() {
            DEFAULT_RUN
        } else {
            Duration::from_millis((others.iter().sum::<f64>() / others.len() as f64) as u64)
        }
    }

    /// Expected start delay in `lab` (seconds), if it has a matching device at all.
    fn expected_delay(
        &self,
        job: &JobRow,
        crit: &Criteria,
        lab: &str,
        v: &LabView,
        waiting: &[String],
    ) -> Option<f64> {
        let matching: Vec<&DeviceInfo> = v.devices.iter().filter(|d| crit.matches(d)).collect();
        if matching.is_empty() {
            return None;
        }
        let free_now = waiting
            .iter()
            .any(|d| matching.iter().any(|m| &m.name == d))
            || (v.free_slots > 0 && matching.iter().any(|d| !self.busy(lab, &d.name)));
        if free_now {
            return Some(0.0);
        }
        // All matching devices busy: about half a run, times the jobs queued ahead of this
        // one that could use the same devices, shared over those devices.
        let ahead = self
            .queue
            .values()
            .take(1000)
            .take_while(|q| q.id != job.id)
            .filter(|q| matching.iter().any(|d| q.criteria.matches(d)))
            .count();
        let half = self.mean_run(job, lab).as_secs_f64() / 2.0;
        Some(half * (1.0 + ahead as f64 / matching.len() as f64))
    }
}

impl Dispatcher {
    /// Loads the queue, the leases and the statistics from the store.
    pub async fn load(
        store: Store,
        lease: Duration,
        heartbeat: Duration,
        placement: Placement,
    ) -> Result<Self> {
        let (jobs, leased, stats) = store
            .read(|c| {
                Ok((
                    crate::store::jobs::queued_jobs(c)?,
                    crate::store::jobs::list_jobs(
                        c,
                        Some(crate::store::JobStatus::Leased),
                        usize::MAX >> 1,
                    )?,
                    crate::store::jobs::job_stats(c)?,
                ))
            })
            .await?;
        let mut state = State {
            stats,
            ..Default::default()
        };
        let mut groups = Vec::new();
        for j in jobs {
            if let Some(g) = &j.group {
                groups.push(g.id.clone());
            }
            state.queue.insert((Reverse(j.priority), j.id.0), j);
        }
        for j in leased {
            if let (Some(lab), Some(dev)) = (&j.lease_owner, &j.device) {
                state.leased.insert(j.id, (lab.clone(), dev.clone()));
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
        })
    }

    /// The placement rules in force.
    pub fn placement(&self) -> Arc<Placement> {
        match self.placement.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// How many jobs wait in the queue.
    pub async fn queue_len(&self) -> usize {
        self.state.lock().await.queue.len()
    }

    /// Records what a lab's agent advertised (at register and heartbeat).
    pub async fn update_lab(
        &self,
        lab: &str,
        devices: Option<Vec<DeviceInfo>>,
        free_slots: u32,
        draining: bool,
    ) {
        let mut st = self.state.lock().await;
        let v = st.labs.entry(lab.to_string()).or_insert_with(|| LabView {
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

    /// Takes in what the labs connected to other coordinator replicas last advertised (the
    /// store's `labs` rows, which every heartbeat updates), so that placement compares them
    /// too. A lab this replica heard from more recently keeps its own view; a lab not heard
    /// from within the horizon is left out.
    pub async fn refresh_remote_labs(&self, rows: &[crate::store::labs::LabAdvert]) {
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
            if st.labs.get(&row.name).is_some_and(|v| v.last_seen >= at) {
                continue;
            }
            let Ok(devices) = serde_json::from_value::<Vec<DeviceInfo>>(row.devices.clone()) else {
                continue;
            };
            st.labs.insert(
                row.name.clone(),
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
    pub async fn refresh_stats(&self) -> Result<()> {
        let stats = self.store.read(crate::store::jobs::job_stats).await?;
        self.state.lock().await.stats = stats;
        Ok(())
    }

    async fn claim(
        &self,
        id: NodeId,
        lab: &str,
        session: &str,
        device: &DeviceInfo,
    ) -> Result<Claim> {
        let until = chrono::Utc::now()
            + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(60));
        let (lab, session, name, dt) = (
            lab.to_string(),
            session.to_string(),
            device.name.clone(),
            device.device_type.clone(),
        );
        self.store
            .write(move |w| w.claim_job(id, &lab, &session, &name, &dt, until))
            .await
    }

    /// Records a lease in memory. A run of a group gets its effective criteria (with the
    /// exclusions) in the spec it is sent, so that the agent honours them too.
    fn note_claim(
        st: &mut State,
        claim: &mut Claim,
        lab: &str,
        device: &DeviceInfo,
        crit: &Criteria,
    ) {
        if claim.job.group.is_some() {
            claim.job.spec.criteria = Some(labwire_proto::convert::criteria_to_proto(crit));
        }
        st.attempts.insert(claim.job.id, claim.job.attempt);
        st.leased
            .insert(claim.job.id, (lab.to_string(), device.name.clone()));
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

    /// Whether `lab` may take `job` on one of `devices` now: the device, or why not.
    fn fit(
        &self,
        st: &State,
        placement: &Placement,
        job: &JobRow,
        lab: &str,
        devices: &[DeviceInfo],
    ) -> std::result::Result<(Criteria, DeviceInfo), String> {
        placement
            .allows(lab, &job.attrs)
            .map_err(|d| d.to_string())?;
        if let Some(max) = placement.max_in_flight(lab)
            && st.in_flight(lab) >= max
        {
            return Err(format!("the lab holds {max} jobs, its max_in_flight"));
        }
        if st.refused_by(job.id, lab) {
            return Err("the lab refused this job less than a minute ago".into());
        }
        let crit = match st.effective_criteria(job, self.horizon, true) {
            Ok(c) => c,
            Err(VariantProblem::Exhausted(m)) => return Err(m),
        };
        let soft = job
            .attrs
            .lists
            .get(RETRY_DEVICES)
            .cloned()
            .unwrap_or_default();
        let name = first_match(&crit, &soft, lab, devices)
            .ok_or_else(|| "no free device matches".to_string())?;
        let d = devices
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .ok_or("device vanished")?;
        Ok((crit, d))
    }

    /// Scores `lab` for `job` against every other connected lab that placement allows:
    /// `true` if no other lab is expected to start it sooner (after preference bonuses).
    fn best_lab(
        &self,
        st: &State,
        placement: &Placement,
        job: &JobRow,
        crit: &Criteria,
        lab: &str,
    ) -> bool {
        // The asking lab can start the job now, the soonest possible; only a preference
        // bonus can make another lab better.
        if placement.preferences.is_empty() {
            return true;
        }
        let waiting = |l: &str| -> Vec<String> {
            st.waiters
                .iter()
                .filter(|w| w.lab == l && !w.tx.is_closed())
                .flat_map(|w| w.devices.iter().map(|d| d.name.clone()))
                .collect()
        };
        let mine = -f64::from(placement.bonus(lab, &job.attrs));
        let score = |l: &str, v: &LabView| -> Option<f64> {
            let delay = st.expected_delay(job, crit, l, v, &waiting(l))?;
            Some(delay - f64::from(placement.bonus(l, &job.attrs)))
        };
        for (l, v) in st.connected(self.horizon) {
            if l == lab || placement.allows(l, &job.attrs).is_err() || st.refused_by(job.id, l) {
                continue;
            }
            if let Some(max) = placement.max_in_flight(l)
                && st.in_flight(l) >= max
            {
                continue;
            }
            if let Some(s) = score(l, v)
                && s < mine
            {
                return false;
            }
        }
        true
    }

    /// Offers a queued job (new, or back from an expired lease) to the waiting agents; if none
    /// should take it, it waits in the queue.
    pub async fn enqueue(&self, job: &JobRow) {
        let placement = self.placement();
        let mut st = self.state.lock().await;
        st.leased.remove(&job.id);
        if let Some(g) = &job.group
            && let Some(v) = st.groups.get_mut(&g.id)
        {
            v.retain(|(id, _, _)| *id != job.id);
        }
        st.waiters.retain(|w| !w.tx.is_closed());
        // Candidate waiters, best lab first.
        let mut tried: Vec<u64> = Vec::new();
        loop {
            let mut pick: Option<(usize, DeviceInfo, Criteria)> = None;
            for (i, w) in st.waiters.iter().enumerate() {
                if tried.contains(&w.id) {
                    continue;
                }
                let Ok((crit, dev)) = self.fit(&st, &placement, job, &w.lab, &w.devices) else {
                    continue;
                };
                if !self.best_lab(&st, &placement, job, &crit, &w.lab) {
                    continue;
                }
                pick = Some((i, dev, crit));
                break;
            }
            let Some((i, device, crit)) = pick else { break };
            let w = st.waiters.remove(i);
            tried.push(w.id);
            match self.claim(job.id, &w.lab, &w.session, &device).await {
                Ok(mut claim) => {
                    let attempt = claim.job.attempt;
                    Self::note_claim(&mut st, &mut claim, &w.lab, &device, &crit);
                    if let Err(back) = w.tx.send(Assignment {
                        claim,
                        device: device.name.clone(),
                    }) {
                        // The agent stopped waiting just now: take the lease back.
                        let lab = w.lab.clone();
                        let id = back.claim.job.id;
                        st.leased.remove(&id);
                        let res = self
                            .store
                            .write(move |wr| {
                                wr.release_job(&lab, id, attempt, "agent stopped waiting")
                            })
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
                    return;
                }
                Err(e) => {
                    // Not queued any more (cancelled) or the lab was revoked meanwhile.
                    tracing::debug!(job = %job.id, lab = %w.lab, error = %e, "claim refused");
                    if matches!(e, crate::error::Error::PermissionDenied(_)) {
                        continue;
                    }
                    return;
                }
            }
        }
        st.queue
            .insert((Reverse(job.priority), job.id.0), job.clone());
    }

    /// Brings the in-memory queue and leases in line with a job as the store has it now,
    /// after another coordinator replica changed it (on PostgreSQL, the server follows the
    /// event log and calls this for every job event; it is harmless for this replica's own
    /// changes). A queued job joins the queue (and is offered to the waiting agents), a
    /// leased one counts against its lab, a finished one is dropped.
    pub async fn sync(&self, row: &JobRow) {
        {
            let mut st = self.state.lock().await;
            if st.attempts.get(&row.id).is_some_and(|a| *a > row.attempt) {
                return; // read before a lease this dispatcher already knows of
            }
            st.attempts.insert(row.id, row.attempt);
            match row.status {
                JobStatus::Queued => {
                    if st.queue.contains_key(&(Reverse(row.priority), row.id.0)) {
                        return;
                    }
                }
                JobStatus::Leased => {
                    st.queue.retain(|_, q| q.id != row.id);
                    let (lab, device) = (
                        row.lease_owner.clone().unwrap_or_default(),
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
                    st.queue.retain(|_, q| q.id != row.id);
                    st.leased.remove(&row.id);
                    st.refused.remove(&row.id);
                    st.attempts.remove(&row.id);
                    return;
                }
            }
        }
        self.enqueue(row).await;
    }

    /// Remembers that `lab` refused `job`, so that it goes to another lab first.
    pub async fn refused(&self, job: NodeId, lab: &str) {
        let mut st = self.state.lock().await;
        let v = st.refused.entry(job).or_default();
        v.retain(|(_, t)| t.elapsed() < REFUSAL_MEMORY);
        v.push((lab.to_string(), Instant::now()));
    }

    /// The device type of a device of `lab`, as its agent last advertised it.
    pub async fn device_type(&self, lab: &str, device: &str) -> Option<String> {
        let st = self.state.lock().await;
        st.labs
            .get(lab)
            .and_then(|v| v.devices.iter().find(|d| d.name == device))
            .map(|d| d.device_type.clone())
    }

    /// Records which device (of which type, when known) the agent really started the job on.
    pub async fn started(&self, job: NodeId, lab: &str, device: &str, device_type: Option<&str>) {
        let mut st = self.state.lock().await;
        st.leased.insert(job, (lab.to_string(), device.to_string()));
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

    /// The job's lease ended (a result came).
    pub async fn finished(&self, _lab: &str, job: NodeId) {
        let mut st = self.state.lock().await;
        st.leased.remove(&job);
        st.refused.remove(&job);
        st.attempts.remove(&job);
    }

    /// Drops a job from the in-memory queue and leases (it was cancelled or failed).
    pub async fn forget(&self, id: NodeId) {
        let mut st = self.state.lock().await;
        st.queue.retain(|_, q| q.id != id);
        st.leased.remove(&id);
        st.refused.remove(&id);
        st.attempts.remove(&id);
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
            st.queue.retain(|_, q| q.id != id);
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
    pub async fn acquire(
        &self,
        lab: &str,
        session: &str,
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
                    let (crit, d) = self.fit(&st, &placement, q, lab, &devices).ok()?;
                    self.best_lab(&st, &placement, q, &crit, lab)
                        .then_some((*key, q.id, d, crit))
                });
                let Some((key, id, device, crit)) = found else {
                    break;
                };
                st.queue.remove(&key);
                match self.claim(id, lab, session, &device).await {
                    Ok(mut claim) => {
                        Self::note_claim(&mut st, &mut claim, lab, &device, &crit);
                        return Ok(Some(Assignment {
                            claim,
                            device: device.name,
                        }));
                    }
                    Err(crate::error::Error::LeaseLost(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            if wait.is_zero() {
                return Ok(None);
            }
            let (tx, rx) = oneshot::channel();
            st.next_waiter += 1;
            let id = st.next_waiter;
            st.waiters.push(Waiter {
                id,
                lab: lab.to_string(),
                session: session.to_string(),
                devices,
                tx,
            });
            (rx, id)
        };
        let mut rx = rx;
        match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(a)) => Ok(Some(a)),
            Ok(Err(_)) => Ok(None),
            Err(_) => {
                // Timed out: leave the list, unless an assignment raced in.
                let mut st = self.state.lock().await;
                let before = st.waiters.len();
                st.waiters.retain(|w| w.id != waiter_id);
                if st.waiters.len() == before {
                    drop(st);
                    return Ok(rx.try_recv().ok());
                }
                Ok(None)
            }
        }
    }

    /// Tells, lab by lab, whether and why `job` can (not) be placed there. `labs` are
    /// every lab the coordinator knows (connected or not).
    pub async fn explain(&self, job: &JobRow, labs: &[String]) -> Vec<Verdict> {
        let placement = self.placement();
        let st = self.state.lock().await;
        let crit = st.effective_criteria(job, self.horizon, true);
        let mut out = Vec::new();
        for lab in labs {
            let mut reasons = Vec::new();
            let mut score = None;
            let view = st.labs.get(lab);
            match view {
                None => reasons.push(
                    "the lab's agent has not connected since the coordinator started".to_string(),
                ),
                Some(v) if v.last_seen.elapsed() >= self.horizon => reasons.push(format!(
                    "the lab's agent was last heard from {}s ago",
                    v.last_seen.elapsed().as_secs()
                )),
                Some(v) if v.draining => reasons.push("the lab's agent is shutting down".into()),
                Some(_) => {}
            }
            if let Err(d) = placement.allows(lab, &job.attrs) {
                reasons.push(d.to_string());
            }
            if let Some(max) = placement.max_in_flight(lab) {
                let n = st.in_flight(lab);
                if n >= max {
                    reasons.push(format!(
                        "the lab holds {n} jobs, its max_in_flight is {max}"
                    ));
                }
            }
            if st.refused_by(job.id, lab) {
                reasons.push("the lab refused this job less than a minute ago".into());
            }
            match (&crit, view) {
                (Err(VariantProblem::Exhausted(m)), _) => reasons.push(m.clone()),
                (Ok(c), Some(v)) => {
                    let matching: Vec<&DeviceInfo> =
                        v.devices.iter().filter(|d| c.matches(d)).collect();
                    if matching.is_empty() {
                        if v.devices.is_empty() {
                            reasons.push("the lab advertises no devices".into());
                        } else {
                            let why: Vec<String> = v
                                .devices
                                .iter()
                                .take(8)
                                .map(|d| {
                                    format!(
                                        "{}: {}",
                                        d.name,
                                        c.check(d).err().map(|m| m.to_string()).unwrap_or_default()
                                    )
                                })
                                .collect();
                            reasons.push(format!("no device matches ({})", why.join("; ")));
                        }
                    } else {
                        let waiting: Vec<String> = st
                            .waiters
                            .iter()
                            .filter(|w| &w.lab == lab)
                            .flat_map(|w| w.devices.iter().map(|d| d.name.clone()))
                            .collect();
                        score = st
                            .expected_delay(job, c, lab, v, &waiting)
                            .map(|d| d - f64::from(placement.bonus(lab, &job.attrs)));
                    }
                }
                (Ok(_), None) => {}
            }
            let eligible = reasons.is_empty();
            if eligible {
                let names: Vec<String> = view
                    .map(|v| {
                        v.devices
                            .iter()
                            .filter(|d| crit.as_ref().is_ok_and(|c| c.matches(d)))
                            .map(|d| d.name.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                reasons.push(format!(
                    "can run on {} (expected start in {:.0}s, preference bonus {}s)",
                    names.join(", "),
                    score.unwrap_or(0.0) + f64::from(placement.bonus(lab, &job.attrs)),
                    placement.bonus(lab, &job.attrs)
                ));
            }
            out.push(Verdict {
                lab: lab.clone(),
                eligible,
                reasons,
                score,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewJob, RunGroup, temp_store};
    use labwire_common::{Health, NodeResult};
    use labwire_proto::v1;

    fn device(name: &str, dt: &str) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            device_type: dt.into(),
            driver: "shell".into(),
            health: Health::Good,
            ..Default::default()
        }
    }

    fn job(name: &str, group: Option<RunGroup>) -> NewJob {
        NewJob {
            spec: v1::JobSpec {
                name: name.into(),
                ..Default::default()
            },
            group,
            ..Default::default()
        }
    }

    async fn setup(placement: &str) -> (crate::store::TestStore, Store, Dispatcher) {
        let (dir, store) = temp_store();
        for lab in ["lab-a", "lab-b"] {
            let l = lab.to_string();
            store
                .write_blocking(move |w| w.touch_lab(&l, None, None))
                .unwrap();
        }
        let d = Dispatcher::load(
            store.clone(),
            Duration::from_secs(60),
            // Labs count as connected for three heartbeats (0.6 s): long enough for a loaded
            // machine's store calls (PostgreSQL included), short for the strict-variant wait.
            Duration::from_millis(200),
            Placement::parse(placement).unwrap(),
        )
        .await
        .unwrap();
        (dir, store, d)
    }

    async fn submit(store: &Store, d: &Dispatcher, j: NewJob) -> NodeId {
        let (node, row) = store.write(move |w| w.submit_job(j)).await.unwrap();
        d.enqueue(&row).await;
        node.id
    }

    async fn poll(d: &Dispatcher, lab: &str, devs: &[DeviceInfo]) -> Option<Assignment> {
        d.acquire(lab, "s", devs.to_vec(), Duration::ZERO)
            .await
            .unwrap()
    }

    /// Labs connected to another replica come from the store's `labs` rows; another
    /// replica's job and lease changes come through `sync`.
    #[tokio::test]
    async fn other_replicas_labs_and_jobs_are_seen() {
        let (_d, store, d) = setup("").await;
        let json = serde_json::to_value(vec![device("c1", "x")]).unwrap();
        store
            .write(move |w| {
                w.register_lab_cert("lab-c", "fp-c", None)?;
                w.touch_lab("lab-c", Some(&json), Some(1))
            })
            .await
            .unwrap();
        let rows = store.read(crate::store::labs::adverts).await.unwrap();
        d.refresh_remote_labs(&rows).await;
        let id = submit(&store, &d, job("one", None)).await;
        let row = store
            .read(move |c| crate::store::jobs::find_job(c, id))
            .await
            .unwrap()
            .unwrap();
        let v = d.explain(&row, &["lab-c".into()]).await;
        assert!(v[0].eligible, "{v:?}");
        // Another replica leases it: this one counts the lease and no longer offers the job.
        let until = chrono::Utc::now() + chrono::Duration::seconds(60);
        let leased = store
            .write(move |w| w.claim_job(id, "lab-c", "s", "c1", "x", until))
            .await
            .unwrap();
        d.sync(&leased.job).await;
        assert_eq!(d.queue_len().await, 0);
        // A stale read from before the lease changes nothing.
        d.sync(&row).await;
        assert_eq!(d.queue_len().await, 0);
        // It goes back to the queue there: here it is offered again.
        let again = store
            .write(move |w| w.release_job("lab-c", id, 1, "test"))
            .await
            .unwrap();
        d.sync(&again).await;
        assert_eq!(d.queue_len().await, 1);
        assert_eq!(
            poll(&d, "lab-c", &[device("c1", "x")])
                .await
                .unwrap()
                .claim
                .job
                .id,
            id
        );
    }

    #[tokio::test]
    async fn max_in_flight_limits_a_lab() {
        let (_d, store, d) = setup("labs:\n  lab-a: {max_in_flight: 1}\n").await;
        let devs = [device("a1", "x"), device("a2", "x")];
        d.update_lab("lab-a", Some(devs.to_vec()), 2, false).await;
        let j1 = submit(&store, &d, job("one", None)).await;
        let j2 = submit(&store, &d, job("two", None)).await;
        assert_eq!(poll(&d, "lab-a", &devs).await.unwrap().claim.job.id, j1);
        assert!(
            poll(&d, "lab-a", &devs[1..]).await.is_none(),
            "limit of 1 in flight"
        );
        let row = store
            .read(move |c| crate::store::jobs::find_job(c, j2))
            .await
            .unwrap()
            .unwrap();
        let v = d.explain(&row, &["lab-a".into()]).await;
        assert!(
            v[0].reasons.iter().any(|r| r.contains("max_in_flight")),
            "{v:?}"
        );
        d.finished("lab-a", j1).await;
        assert_eq!(
            poll(&d, "lab-a", &devs[1..]).await.unwrap().claim.job.id,
            j2
        );
    }

    #[tokio::test]
    async fn a_preferred_busy_lab_waits_for_its_job_unless_its_runs_are_too_long() {
        let pl = "preferences:\n  - rules: {job: ['pref*']}\n    labs: {lab-a: 300}\n";
        let (_d, store, d) = setup(pl).await;
        let a = [device("a1", "x")];
        let b = [device("b1", "x")];
        d.update_lab("lab-a", Some(a.to_vec()), 1, false).await;
        d.update_lab("lab-b", Some(b.to_vec()), 1, false).await;
        // lab-a's only device is busy with a first job.
        submit(&store, &d, job("pref-1", None)).await;
        assert!(poll(&d, "lab-a", &a).await.is_some());
        // lab-b could start pref-2 now, but lab-a is expected within half a default run
        // (150 s), less than its 300 s bonus: the job waits for lab-a.
        let j2 = submit(&store, &d, job("pref-2", None)).await;
        assert!(poll(&d, "lab-b", &b).await.is_none(), "lab-a is preferred");
        let row = store
            .read(move |c| crate::store::jobs::find_job(c, j2))
            .await
            .unwrap()
            .unwrap();
        let v = d.explain(&row, &["lab-a".into(), "lab-b".into()]).await;
        assert!(v[0].score.unwrap() < v[1].score.unwrap(), "{v:?}");
        // Once statistics say pref-2 runs 20 minutes in lab-a, lab-b is sooner.
        store
            .write_blocking(|w| {
                w.conn().execute(
                    "INSERT INTO job_stats (signature, lab, runs, wait_ms_avg, run_ms_avg, updated) \
                     VALUES ('pref-2', 'lab-a', 5, 0, 1200000, 0)",
                    crate::store::db::params![],
                )?;
                Ok(())
            })
            .unwrap();
        d.refresh_stats().await.unwrap();
        assert_eq!(poll(&d, "lab-b", &b).await.unwrap().claim.job.id, j2);
    }

    #[tokio::test]
    async fn runs_avoid_earlier_device_types_strict_fails_permissive_reuses() {
        let (_d, store, d) = setup("").await;
        let devs = [device("x1", "type-x"), device("y1", "type-y")];
        d.update_lab("lab-a", Some(devs.to_vec()), 2, false).await;
        let group = |id: &str, mode| {
            Some(RunGroup {
                id: id.into(),
                variant: Variant::DeviceType,
                mode,
            })
        };
        let s1 = submit(&store, &d, job("s", group("g1", VariantMode::Strict))).await;
        let s2 = submit(&store, &d, job("s", group("g1", VariantMode::Strict))).await;
        let s3 = submit(&store, &d, job("s", group("g1", VariantMode::Strict))).await;
        let a1 = poll(&d, "lab-a", &devs).await.unwrap();
        assert_eq!(a1.claim.job.id, s1);
        let a2 = poll(&d, "lab-a", &devs).await.unwrap();
        assert_eq!(a2.claim.job.id, s2);
        assert_ne!(
            a1.device, a2.device,
            "the second run avoids the first's device type"
        );
        // The spec sent to the agent carries the exclusion.
        let sent = a2.claim.job.spec.criteria.unwrap();
        assert_eq!(
            sent.avoid_device_types,
            vec![if a1.device == "x1" {
                "type-x"
            } else {
                "type-y"
            }]
        );
        // Nothing is left for the third run: strict mode fails it (after the settling time).
        tokio::time::sleep(Duration::from_millis(700)).await;
        d.update_lab("lab-a", Some(devs.to_vec()), 2, false).await;
        assert!(poll(&d, "lab-a", &devs).await.is_none());
        let n3 = store
            .read(move |c| crate::store::nodes::get_node(c, s3))
            .await
            .unwrap();
        assert_eq!(n3.result, Some(NodeResult::Incomplete));
        assert_eq!(n3.data["error_code"], "no_variant");

        let p1 = submit(&store, &d, job("p", group("g2", VariantMode::Permissive))).await;
        let p2 = submit(&store, &d, job("p", group("g2", VariantMode::Permissive))).await;
        // Now the lab has one device type only.
        let only = [device("x1", "type-x")];
        d.update_lab("lab-a", Some(only.to_vec()), 2, false).await;
        d.finished("lab-a", s1).await;
        d.finished("lab-a", s2).await;
        assert_eq!(poll(&d, "lab-a", &only).await.unwrap().claim.job.id, p1);
        let again = poll(&d, "lab-a", &only).await.unwrap();
        assert_eq!(
            again.claim.job.id, p2,
            "permissive mode reuses the device type"
        );
    }
}
