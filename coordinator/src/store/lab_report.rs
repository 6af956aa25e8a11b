//! The lab report (`labwire report lab LAB --since 7d`): each device's time good, bad, in
//! maintenance, retired and offline over a period (from `device_health_log`, the lab's
//! earlier silences in `lab_silences` and its last seen time), the jobs it ran, the share of them that ended with an infrastructure
//! error code and the mean boot time (the agent's `login_ms`); the same totals per device
//! type; the worst devices first.

use super::db::{Connection, params};
use super::{corrupt, from_micros, micros};
use crate::error::Result;
use chrono::{DateTime, Duration, Utc};
use labwire_common::{ErrorCode, Health};
use std::collections::BTreeMap;

/// One device's (or one device type's) figures over the period.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Availability {
    /// The device (or, in the per-type totals, the device type).
    pub(crate) name: String,
    /// Its device type.
    pub(crate) device_type: String,
    /// Seconds `good` (or `unknown`).
    pub(crate) good_s: i64,
    /// Seconds `bad`.
    pub(crate) bad_s: i64,
    /// Seconds in maintenance.
    pub(crate) maintenance_s: i64,
    /// Seconds retired.
    pub(crate) retired_s: i64,
    /// Seconds offline: not yet heard of, or its lab silent.
    pub(crate) offline_s: i64,
    /// Jobs that ended on it in the period.
    pub(crate) jobs: i64,
    /// Of those, the ones that ended with an infrastructure error code.
    pub(crate) infra_failures: i64,
    /// The sum of the boot times (ms) of the jobs that have one, and how many.
    pub(crate) boot_ms_sum: i64,
    /// How many jobs had a boot time.
    pub(crate) boot_samples: i64,
}

impl Availability {
    /// All the seconds of the period.
    pub(crate) fn total_s(&self) -> i64 {
        self.good_s + self.bad_s + self.maintenance_s + self.retired_s + self.offline_s
    }

    /// The share of the period spent `good`, 0..=1.
    pub(crate) fn availability(&self) -> f64 {
        match self.total_s() {
            0 => 0.0,
            t => self.good_s as f64 / t as f64,
        }
    }

    /// The share of jobs that ended with an infrastructure error, 0..=1.
    pub(crate) fn infra_rate(&self) -> f64 {
        match self.jobs {
            0 => 0.0,
            j => self.infra_failures as f64 / j as f64,
        }
    }

    /// The mean boot time in milliseconds, if any job had one.
    pub(crate) fn boot_ms_mean(&self) -> Option<f64> {
        (self.boot_samples > 0).then(|| self.boot_ms_sum as f64 / self.boot_samples as f64)
    }

    fn add(&mut self, o: &Availability) {
        self.good_s += o.good_s;
        self.bad_s += o.bad_s;
        self.maintenance_s += o.maintenance_s;
        self.retired_s += o.retired_s;
        self.offline_s += o.offline_s;
        self.jobs += o.jobs;
        self.infra_failures += o.infra_failures;
        self.boot_ms_sum += o.boot_ms_sum;
        self.boot_samples += o.boot_samples;
    }

    fn credit(&mut self, h: Option<Health>, us: i64) {
        let s = us / 1_000_000;
        match h {
            None => self.offline_s += s,
            Some(Health::Good | Health::Unknown) => self.good_s += s,
            Some(Health::Bad) => self.bad_s += s,
            Some(Health::Maintenance) => self.maintenance_s += s,
            Some(Health::Retired) => self.retired_s += s,
        }
    }
}

/// The lab report's figures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LabReport {
    /// The start of the period.
    pub(crate) from: DateTime<Utc>,
    /// Its end (now).
    pub(crate) to: DateTime<Utc>,
    /// When the lab was last seen.
    pub(crate) last_seen: Option<DateTime<Utc>>,
    /// Per device, the worst first (least time good, then most infrastructure failures).
    pub(crate) devices: Vec<Availability>,
    /// Per device type, the worst first.
    pub(crate) device_types: Vec<Availability>,
    /// One line per change in the period, oldest first: (device, when, to).
    pub(crate) changes: Vec<(String, DateTime<Utc>, Health)>,
    /// Per device, its period cut in spans of one health (`None`: offline), in order, for
    /// the dashboard's timeline.
    pub(crate) timelines: BTreeMap<String, Vec<Span>>,
}

/// A stretch of time in one health.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Span {
    /// Its start.
    pub(crate) from: DateTime<Utc>,
    /// Its end.
    pub(crate) to: DateTime<Utc>,
    /// The health (`None`: offline).
    pub(crate) health: Option<Health>,
}

/// Adds a span to a timeline, merged with the last one when the health is the same.
fn push_span(t: &mut Vec<Span>, from: i64, to: i64, health: Option<Health>) {
    if to <= from {
        return;
    }
    match t.last_mut() {
        Some(l) if l.health == health && micros(l.to) == from => l.to = from_micros(to),
        _ => t.push(Span {
            from: from_micros(from),
            to: from_micros(to),
            health,
        }),
    }
}

/// `spans` with the times in `off` (sorted, not overlapping) made offline.
fn offline_during(spans: Vec<Span>, off: &[(i64, i64)]) -> Vec<Span> {
    let mut out = Vec::with_capacity(spans.len());
    for s in spans {
        let (mut a, b) = (micros(s.from), micros(s.to));
        for &(x, y) in off {
            if y <= a || x >= b {
                continue;
            }
            push_span(&mut out, a, x.max(a), s.health);
            push_span(&mut out, x.max(a), y.min(b), None);
            a = y.min(b);
        }
        push_span(&mut out, a, b, s.health);
    }
    out
}

/// Sorts the worst first.
fn worst_first(v: &mut [Availability]) {
    v.sort_by(|a, b| {
        a.availability()
            .total_cmp(&b.availability())
            .then(b.infra_rate().total_cmp(&a.infra_rate()))
            .then(a.name.cmp(&b.name))
    });
}

/// The report of `lab` over `(from, to]`. A lab not seen for `offline_after` counts as
/// offline from then on; `None` when the lab is unknown.
pub(crate) fn lab_report(
    conn: &Connection,
    lab: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    offline_after: Duration,
) -> Result<Option<LabReport>> {
    let Some(last_seen) = conn.query_opt(
        "SELECT last_seen FROM labs WHERE name = ?1",
        params![lab],
        |r| r.get::<_, Option<i64>>(0),
    )?
    else {
        return Ok(None);
    };
    let last_seen = last_seen.map(from_micros);
    // The health is known up to the lab's silence; offline after it.
    let end = match last_seen {
        Some(t) => (t + offline_after).clamp(from, to),
        None => from,
    };
    let mut devices: BTreeMap<String, Availability> = BTreeMap::new();
    for (name, device_type) in conn.query_map(
        "SELECT device, device_type FROM device_health WHERE lab = ?1",
        params![lab],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
    )? {
        devices.insert(
            name.clone(),
            Availability {
                name,
                device_type,
                ..Default::default()
            },
        );
    }
    let log = conn.query_map(
        "SELECT device, at, to_health FROM device_health_log \
         WHERE lab = ?1 AND at <= ?2 ORDER BY at, id",
        params![lab, micros(to)],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        },
    )?;
    // Per device: the health at the cursor and the cursor (micros).
    let mut walk: BTreeMap<String, (Option<Health>, i64)> = BTreeMap::new();
    let (from_us, end_us) = (micros(from), micros(end));
    let mut changes = Vec::new();
    let mut timelines: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for (device, at, h) in log {
        let h = Health::parse(&h).ok_or_else(|| corrupt("device health", format!("`{h}`")))?;
        if at > micros(from) {
            changes.push((device.clone(), from_micros(at), h));
        }
        let (cur, cursor) = walk.entry(device.clone()).or_insert((None, from_us));
        let at_c = at.clamp(from_us, end_us);
        if at_c > *cursor {
            devices.entry(device.clone()).or_default();
            push_span(
                timelines.entry(device.clone()).or_default(),
                *cursor,
                at_c,
                *cur,
            );
            *cursor = at_c;
        }
        *cur = Some(h);
    }
    // The lab's earlier silences: offline from `offline_after` after its last call before
    // each until its next call.
    let offline_after_us = offline_after.num_microseconds().unwrap_or(i64::MAX);
    let silences: Vec<(i64, i64)> = conn
        .query_map(
            "SELECT started, ended FROM lab_silences WHERE lab = ?1 AND ended > ?2 \
             AND started < ?3 ORDER BY started, id",
            params![lab, from_us, end_us],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?
        .into_iter()
        .map(|(s, e)| {
            (
                s.saturating_add(offline_after_us).clamp(from_us, end_us),
                e.clamp(from_us, end_us),
            )
        })
        .filter(|(s, e)| s < e)
        .collect();
    for (name, a) in devices.iter_mut() {
        a.name.clone_from(name);
        let (cur, cursor) = walk.get(name).copied().unwrap_or((None, from_us));
        let t = timelines.entry(name.clone()).or_default();
        push_span(t, cursor, end_us, cur);
        push_span(t, end_us.max(cursor), micros(to), None);
        *t = offline_during(std::mem::take(t), &silences);
        for s in t.iter() {
            a.credit(s.health, micros(s.to) - micros(s.from));
        }
    }
    let jobs = conn.query_map(
        "SELECT j.device, n.data FROM jobs j JOIN nodes n ON n.id = j.node_id \
         WHERE j.lease_owner = ?1 AND j.status = 'finished' AND j.device IS NOT NULL \
         AND j.finished_at > ?2 AND j.finished_at <= ?3",
        params![lab, micros(from), micros(to)],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
    )?;
    for (device, data) in jobs {
        let Some(a) = devices.get_mut(&device) else {
            continue;
        };
        let data: serde_json::Value =
            serde_json::from_str(&data).map_err(|e| corrupt("node data", e))?;
        a.jobs += 1;
        if data
            .get("error_code")
            .and_then(|v| v.as_str())
            .is_some_and(|c| ErrorCode::parse(c).is_infrastructure())
        {
            a.infra_failures += 1;
        }
        if let Some(ms) = data.get("login_ms").and_then(|v| v.as_i64()) {
            a.boot_ms_sum += ms;
            a.boot_samples += 1;
        }
    }
    let mut types: BTreeMap<String, Availability> = BTreeMap::new();
    for a in devices.values() {
        let t = types
            .entry(a.device_type.clone())
            .or_insert_with(|| Availability {
                name: a.device_type.clone(),
                device_type: a.device_type.clone(),
                ..Default::default()
            });
        t.add(a);
    }
    let mut devices: Vec<_> = devices.into_values().collect();
    let mut device_types: Vec<_> = types.into_values().collect();
    worst_first(&mut devices);
    worst_first(&mut device_types);
    Ok(Some(LabReport {
        from,
        to,
        last_seen,
        devices,
        device_types,
        changes,
        timelines,
    }))
}

#[cfg(test)]
#[path = "lab_report_tests.rs"]
mod tests;
