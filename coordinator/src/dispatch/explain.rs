//! `explain`: lab by lab, whether and why a job can (not) be placed there now, in the words of
//! the same rules dispatch applies ([`super::rules`]).

use super::Dispatcher;
use super::rules::Refusal;
use crate::store::JobRow;
use labwire_common::DeviceInfo;

/// What [`Dispatcher::explain`] says about one lab.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    /// The lab.
    pub(crate) lab: String,
    /// Whether the job may be placed there now.
    pub(crate) eligible: bool,
    /// Why (not), one sentence each.
    pub(crate) reasons: Vec<String>,
    /// Expected start delay minus preference bonus, in seconds (lower is better).
    pub(crate) score: Option<f64>,
}

impl Dispatcher {
    /// Tells, lab by lab, whether and why `job` can (not) be placed there. `labs` are
    /// every lab the coordinator knows (connected or not).
    pub(crate) async fn explain(&self, job: &JobRow, labs: &[String]) -> Vec<Verdict> {
        let placement = self.placement();
        let st = self.state.lock().await;
        let crit = st.effective_criteria(job, self.horizon, true);
        let mut out = Vec::new();
        for lab in labs {
            let mut refusals: Vec<Refusal> = st.presence(lab, self.horizon).into_iter().collect();
            refusals.extend(st.refusals(&placement, lab, job));
            let mut reasons: Vec<String> = refusals.iter().map(Refusal::to_string).collect();
            let mut score = None;
            let view = st.labs.get(lab.as_str());
            let bonus = placement.bonus(lab, &job.attrs);
            let mut names = Vec::new();
            match (&crit, view) {
                (Err(p), _) => reasons.push(Refusal::from(p.clone()).to_string()),
                (Ok(c), Some(v)) => {
                    let matching: Vec<&DeviceInfo> =
                        v.devices.iter().filter(|d| c.matches(d)).collect();
                    if matching.is_empty() {
                        reasons.push(no_match(c, &v.devices));
                    } else {
                        names = matching.iter().map(|d| d.name.clone()).collect();
                        let waiting = st.waiting_devices(lab);
                        score = st
                            .expected_delay(job, c, lab, v, &waiting)
                            .map(|d| d - f64::from(bonus));
                    }
                }
                (Ok(_), None) => {}
            }
            let eligible = reasons.is_empty();
            if eligible {
                reasons.push(format!(
                    "can run on {} (expected start in {:.0}s, preference bonus {bonus}s)",
                    names.join(", "),
                    score.unwrap_or(0.0) + f64::from(bonus),
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

/// Why none of a lab's devices matches: the devices that would fit but are out of service
/// (bad, in maintenance, retired) with their reasons, or else the first few devices, each
/// with its mismatch.
fn no_match(c: &labwire_common::Criteria, devices: &[DeviceInfo]) -> String {
    if devices.is_empty() {
        return "the lab advertises no devices".into();
    }
    let out_of_service: Vec<String> = devices
        .iter()
        .filter(|d| !d.health.usable())
        .filter(|d| {
            let mut healthy = (*d).clone();
            healthy.health = labwire_common::Health::Good;
            c.matches(&healthy)
        })
        .take(8)
        .map(|d| {
            if d.health_reason.is_empty() {
                format!("{} is {}", d.name, d.health)
            } else {
                format!("{} is {}: {}", d.name, d.health, d.health_reason)
            }
        })
        .collect();
    if !out_of_service.is_empty() {
        return format!(
            "every device that fits is out of service, so the lab counts as one without \
             them ({})",
            out_of_service.join("; ")
        );
    }
    let why: Vec<String> = devices
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
    format!("no device matches ({})", why.join("; "))
}
