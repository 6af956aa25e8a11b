//! The dispatcher's in-memory picture: the queue in dispatch order, the agents waiting for
//! work, what each lab advertised, which devices hold leases, the run groups' usage and the
//! job statistics; and the estimates made from it (the criteria a run of a group must meet,
//! the expected start delay of a job in a lab).

use super::Assignment;
use super::REFUSAL_MEMORY;
use crate::model::{AttemptNo, LabName, NodeId, SessionId};
use crate::pipeline_config::{Variant, VariantMode};
use crate::store::JobRow;
use crate::store::jobs::{JobStats, signature};
use labwire_common::{Criteria, DeviceInfo};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The run time assumed for a job signature with no statistics yet.
const DEFAULT_RUN: Duration = Duration::from_secs(300);

/// An agent waiting for work (a long-polling AcquireJob).
pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) lab: LabName,
    pub(super) session: SessionId,
    pub(super) devices: Vec<DeviceInfo>,
    pub(super) tx: oneshot::Sender<Assignment>,
}

/// What a connected lab advertised.
#[derive(Debug, Clone)]
pub(super) struct LabView {
    pub(super) devices: Vec<DeviceInfo>,
    pub(super) free_slots: u32,
    pub(super) draining: bool,
    pub(super) last_seen: Instant,
}

#[derive(Default)]
pub(super) struct State {
    /// Queued jobs keyed by (priority descending, id ascending): dispatch order.
    pub(super) queue: BTreeMap<(Reverse<i32>, i64), JobRow>,
    /// Agents waiting for work by waiter id, so oldest first; a map, so that a long poll
    /// that runs out leaves it without a pass over every other waiter.
    pub(super) waiters: BTreeMap<u64, Waiter>,
    pub(super) next_waiter: u64,
    /// Labs by name, as last heard from.
    pub(super) labs: HashMap<LabName, LabView>,
    /// Leased jobs: job → (lab, device).
    pub(super) leased: HashMap<NodeId, (LabName, String)>,
    /// Run groups: group → (job, device type, device) of the runs that hold or held one.
    pub(super) groups: HashMap<String, Vec<(NodeId, String, String)>>,
    /// Labs that refused a job recently.
    pub(super) refused: HashMap<NodeId, Vec<(LabName, Instant)>>,
    /// Job statistics: (signature, lab) → stats.
    pub(super) stats: HashMap<(String, String), JobStats>,
    /// When the queue was last checked for runs with no variant left.
    pub(super) exhausted_check: Option<Instant>,
    /// The newest attempt this dispatcher knows of per job, so that a stale read of a job
    /// (see [`super::Dispatcher::sync`]) does not undo a newer lease.
    pub(super) attempts: HashMap<NodeId, AttemptNo>,
}

/// Why a run of a group cannot be placed.
#[derive(Debug, Clone)]
pub(super) enum VariantProblem {
    /// No device type (device) different from the earlier runs' is advertised.
    Exhausted(String),
}

/// The first of `devices` that meets `criteria`, preferring those not in `soft_avoid`
/// (`lab/device` of attempts that failed for an infrastructure reason).
pub(super) fn first_match(
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
    /// Jobs leased to `lab`.
    pub(super) fn in_flight(&self, lab: &str) -> u32 {
        self.leased
            .values()
            .filter(|(l, _)| l.as_str() == lab)
            .count() as u32
    }

    /// Whether a device of `lab` holds a lease.
    pub(super) fn busy(&self, lab: &str, device: &str) -> bool {
        self.leased
            .values()
            .any(|(l, d)| l.as_str() == lab && d == device)
    }

    /// Drops a job from the queue (any priority).
    pub(super) fn unqueue(&mut self, id: NodeId) {
        self.queue.retain(|_, q| q.id != id);
    }

    /// Puts a job in the queue, in dispatch order.
    pub(super) fn queue_job(&mut self, job: &JobRow) {
        self.queue
            .insert((Reverse(job.priority), job.id.0), job.clone());
    }

    /// The job's criteria with what its run group's other runs used taken out. With
    /// `settled` (every live lab had time to register since the start), a strict group with
    /// nothing different left is refused.
    pub(super) fn effective_criteria(
        &self,
        job: &JobRow,
        horizon: Duration,
        settled: bool,
    ) -> Result<Criteria, VariantProblem> {
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
            self.labs.iter().any(|(l, v)| {
                self.presence(l.as_str(), horizon).is_none()
                    && v.devices.iter().any(|d| crit.matches(d))
            })
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

    /// Whether `lab` refused `job` less than [`REFUSAL_MEMORY`] ago.
    pub(super) fn refused_by(&self, job: NodeId, lab: &str) -> bool {
        self.refused.get(&job).is_some_and(|v| {
            v.iter()
                .any(|(l, t)| l.as_str() == lab && t.elapsed() < REFUSAL_MEMORY)
        })
    }

    /// The mean run time of the job's signature in `lab` (another lab's, or a default, when
    /// `lab` has none).
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

    /// The names of the devices of `lab`'s waiting agents.
    pub(super) fn waiting_devices(&self, lab: &str) -> Vec<String> {
        self.waiters
            .values()
            .filter(|w| w.lab.as_str() == lab && !w.tx.is_closed())
            .flat_map(|w| w.devices.iter().map(|d| d.name.clone()))
            .collect()
    }

    /// Expected start delay in `lab` (seconds), if it has a matching device at all.
    pub(super) fn expected_delay(
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
