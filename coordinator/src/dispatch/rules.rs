//! The placement rules, written once: why a lab may not take a job now ([`Refusal`]). The
//! dispatcher's choice of a device (`fit`), its choice between labs (`best_lab`) and
//! `explain` all ask [`State::presence`] and [`State::refusals`], so what explain says is
//! what dispatch does.

use super::Dispatcher;
use super::state::{State, VariantProblem, first_match};
use crate::placement::Placement;
use crate::store::JobRow;
use crate::store::jobs::RETRY_DEVICES;
use labwire_common::{Criteria, DeviceInfo};
use std::fmt;
use std::time::Duration;

/// Why a lab may not take a job now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// The lab's agent has not connected since this coordinator started.
    NeverConnected,
    /// The lab's agent was last heard from this long ago (more than three heartbeats).
    Silent(Duration),
    /// The lab's agent is shutting down.
    Draining,
    /// A placement rule (a pin, an allow or deny list) keeps the job out of the lab.
    Placement(String),
    /// The lab holds as many jobs as its `max_in_flight`.
    InFlight {
        /// Jobs the lab holds.
        held: u32,
        /// Its limit.
        max: u32,
    },
    /// The lab refused this job a short while ago.
    RefusedRecently,
    /// The job's run group has nothing left that its earlier runs did not use (strict mode).
    NoVariant(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NeverConnected => {
                f.write_str("the lab's agent has not connected since the coordinator started")
            }
            Refusal::Silent(d) => write!(
                f,
                "the lab's agent was last heard from {}s ago",
                d.as_secs()
            ),
            Refusal::Draining => f.write_str("the lab's agent is shutting down"),
            Refusal::Placement(m) | Refusal::NoVariant(m) => f.write_str(m),
            Refusal::InFlight { held, max } => {
                write!(f, "the lab holds {held} jobs, its max_in_flight is {max}")
            }
            Refusal::RefusedRecently => {
                f.write_str("the lab refused this job less than a minute ago")
            }
        }
    }
}

impl From<VariantProblem> for Refusal {
    fn from(p: VariantProblem) -> Refusal {
        match p {
            VariantProblem::Exhausted(m) => Refusal::NoVariant(m),
        }
    }
}

impl State {
    /// Whether `lab`'s agent can be offered work at all: it connected, was heard from within
    /// `horizon`, and is not shutting down. `None` when it can.
    pub(super) fn presence(&self, lab: &str, horizon: Duration) -> Option<Refusal> {
        match self.labs.get(lab) {
            None => Some(Refusal::NeverConnected),
            Some(v) if v.last_seen.elapsed() >= horizon => {
                Some(Refusal::Silent(v.last_seen.elapsed()))
            }
            Some(v) if v.draining => Some(Refusal::Draining),
            Some(_) => None,
        }
    }

    /// Every placement rule that keeps `job` out of `lab` now: the placement file's rules,
    /// the lab's limit of jobs in flight, and a recent refusal of the job by the lab. Empty
    /// when the lab may take it (given a matching device).
    pub(super) fn refusals(&self, placement: &Placement, lab: &str, job: &JobRow) -> Vec<Refusal> {
        let mut out = Vec::new();
        if let Err(d) = placement.allows(lab, &job.attrs) {
            out.push(Refusal::Placement(d.to_string()));
        }
        if let Some(max) = placement.max_in_flight(lab) {
            let held = self.in_flight(lab);
            if held >= max {
                out.push(Refusal::InFlight { held, max });
            }
        }
        if self.refused_by(job.id, lab) {
            out.push(Refusal::RefusedRecently);
        }
        out
    }
}

impl Dispatcher {
    /// Whether `lab`, which is asking for work now, may take `job` on one of `devices`: the
    /// criteria it is sent with and the device, or `None`.
    pub(super) fn fit(
        &self,
        st: &State,
        placement: &Placement,
        job: &JobRow,
        lab: &str,
        devices: &[DeviceInfo],
    ) -> Option<(Criteria, DeviceInfo)> {
        if !st.refusals(placement, lab, job).is_empty() {
            return None;
        }
        let crit = st.effective_criteria(job, self.horizon, true).ok()?;
        let soft = job
            .attrs
            .lists
            .get(RETRY_DEVICES)
            .cloned()
            .unwrap_or_default();
        // A reserved device takes no job, whatever its agent offers (it may not have heard).
        let free: Vec<DeviceInfo>;
        let devices = if devices.iter().any(|d| self.reserved.contains(lab, &d.name)) {
            free = devices
                .iter()
                .filter(|d| !self.reserved.contains(lab, &d.name))
                .cloned()
                .collect();
            &free[..]
        } else {
            devices
        };
        let name = first_match(&crit, &soft, lab, devices)?;
        let d = devices.iter().find(|d| d.name == name).cloned()?;
        Some((crit, d))
    }

    /// Scores `lab` for `job` against every other lab that may take it: `true` if no other
    /// lab is expected to start it sooner (after preference bonuses).
    pub(super) fn best_lab(
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
        let mine = -f64::from(placement.bonus(lab, &job.attrs));
        for (l, v) in &st.labs {
            if l.as_str() == lab
                || st.presence(l.as_str(), self.horizon).is_some()
                || !st.refusals(placement, l.as_str(), job).is_empty()
            {
                continue;
            }
            let waiting = st.waiting_devices(l.as_str());
            if let Some(delay) = st.expected_delay(job, crit, l.as_str(), v, &waiting)
                && delay - f64::from(placement.bonus(l.as_str(), &job.attrs)) < mine
            {
                return false;
            }
        }
        true
    }
}
