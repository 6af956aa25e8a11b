//! What the health alerter reads and records: the devices that are bad and the labs that
//! went silent, and every alert mailed (one row per incident), so that a restart neither
//! mails an incident again nor loses one, and a flapping device is mailed at most once per
//! `alerts.repeat_after`. See `pipeline::alerts`.

use super::db::{Connection, params};
use super::{Write, from_micros, micros};
use crate::error::Result;
use chrono::{DateTime, Utc};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlertKind {
    /// A device went `bad`.
    DeviceBad,
    /// A lab's agent has not called for `alerts.lab_unreachable_after`.
    LabUnreachable,
}

impl AlertKind {
    /// The stored name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AlertKind::DeviceBad => "device_bad",
            AlertKind::LabUnreachable => "lab_unreachable",
        }
    }
}

/// What identifies an incident's alert.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AlertKey<'a> {
    /// Device bad or lab unreachable.
    pub(crate) kind: AlertKind,
    /// The lab.
    pub(crate) lab: &'a str,
    /// The device (`""` for a lab).
    pub(crate) device: &'a str,
    /// The start of the incident.
    pub(crate) incident: DateTime<Utc>,
}

/// A device whose health is `bad`, as the alert mail describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadDevice {
    /// The lab.
    pub(crate) lab: String,
    /// The device.
    pub(crate) device: String,
    /// Its device type.
    pub(crate) device_type: String,
    /// Why it is bad.
    pub(crate) reason: String,
    /// Since when (the incident).
    pub(crate) since: DateTime<Utc>,
    /// Its last health check, `None`: never.
    pub(crate) last_check: Option<DateTime<Utc>>,
    /// Jobs in a row that ended with an infrastructure error.
    pub(crate) failure_streak: i64,
}

/// Every device that is `bad` now, in labs that are not revoked.
pub(crate) fn bad_devices(conn: &Connection) -> Result<Vec<BadDevice>> {
    let rows = conn.query_map(
        "SELECT h.lab, h.device, h.device_type, h.reason, h.since, h.last_check, \
         h.failure_streak FROM device_health h JOIN labs l ON l.name = h.lab \
         WHERE h.health = 'bad' AND l.revoked_at IS NULL ORDER BY h.lab, h.device",
        params![],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        },
    )?;
    Ok(rows
        .into_iter()
        .map(
            |(lab, device, device_type, reason, since, last_check, streak)| BadDevice {
                lab,
                device,
                device_type,
                reason,
                since: from_micros(since),
                last_check: (last_check > 0)
                    .then(|| DateTime::from_timestamp(last_check, 0))
                    .flatten(),
                failure_streak: streak,
            },
        )
        .collect())
}

/// The labs (not revoked) whose agent last called before `before`, with that call.
pub(crate) fn silent_labs(
    conn: &Connection,
    before: DateTime<Utc>,
) -> Result<Vec<(String, DateTime<Utc>)>> {
    let rows = conn.query_map(
        "SELECT name, last_seen FROM labs WHERE revoked_at IS NULL \
         AND last_seen IS NOT NULL AND last_seen < ?1 ORDER BY name",
        params![micros(before)],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
    )?;
    Ok(rows
        .into_iter()
        .map(|(lab, seen)| (lab, from_micros(seen)))
        .collect())
}

/// Whether the alert of this incident was mailed (or refused for good).
pub(crate) fn alerted(
    conn: &Connection,
    kind: AlertKind,
    lab: &str,
    device: &str,
    incident: DateTime<Utc>,
) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM health_alerts WHERE kind = ?1 AND lab = ?2 \
         AND device = ?3 AND incident = ?4)",
        params![kind.as_str(), lab, device, micros(incident)],
        |r| r.get(0),
    )
}

/// When the last alert of this kind about `lab`/`device` was sent, if ever.
pub(crate) fn last_alert(
    conn: &Connection,
    kind: AlertKind,
    lab: &str,
    device: &str,
) -> Result<Option<DateTime<Utc>>> {
    let t: Option<i64> = conn.query_row(
        "SELECT MAX(sent) FROM health_alerts WHERE kind = ?1 AND lab = ?2 AND device = ?3",
        params![kind.as_str(), lab, device],
        |r| r.get(0),
    )?;
    Ok(t.map(from_micros))
}

/// How many times `lab`/`device` went `bad` after `after` (its flaps since the last alert).
pub(crate) fn times_bad_since(
    conn: &Connection,
    lab: &str,
    device: &str,
    after: DateTime<Utc>,
) -> Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM device_health_log WHERE lab = ?1 AND device = ?2 \
         AND to_health = 'bad' AND at > ?3",
        params![lab, device, micros(after)],
        |r| r.get(0),
    )
}

/// One recorded alert (read by the tests).
#[cfg(test)]
pub(crate) fn alerts(conn: &Connection) -> Result<Vec<(String, String, String, String)>> {
    conn.query_map(
        "SELECT kind, lab, device, outcome FROM health_alerts ORDER BY id",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
}

impl Write<'_> {
    /// Records the alert of an incident: `sent`, or `refused` when the SMTP server refused
    /// it for good. An incident recorded before is left as it is.
    pub(crate) fn record_alert(
        &mut self,
        key: AlertKey<'_>,
        outcome: &str,
        recipients: &[String],
        subject: &str,
    ) -> Result<()> {
        self.tx.execute(
            "INSERT INTO health_alerts (kind, lab, device, incident, sent, outcome, \
             recipients, subject) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (kind, lab, device, incident) DO NOTHING",
            params![
                key.kind.as_str(),
                key.lab,
                key.device,
                micros(key.incident),
                micros(self.now),
                outcome,
                recipients.join(", "),
                subject
            ],
        )?;
        Ok(())
    }
}
