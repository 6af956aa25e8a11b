//! Board health: what each lab's agent reports of its devices' health, the admin's say over
//! it (maintenance, retired) and the health that counts (the admin's, else the agent's), and
//! the log of every change of the health that counts. The admin's say lives here, so it
//! survives restarts of both daemons: every advertisement of a lab goes through
//! [`Write::report_health`], which lays it over what the agent says.

use super::db::params;
#[cfg(test)]
use super::from_micros;
use super::{Write, corrupt, micros};
use crate::error::{Error, Result};
use crate::model::LabName;
#[cfg(test)]
use chrono::{DateTime, Utc};
use labwire_common::{DeviceInfo, Health};

/// The longest reason an agent's report keeps (bytes).
const MAX_REASON: usize = 500;

/// One device's health as stored.
#[derive(Debug, Clone)]
pub(crate) struct HealthRow {
    /// Its device type.
    pub(crate) device_type: String,
    /// The health that counts.
    pub(crate) health: Health,
    /// The health its agent reported.
    pub(crate) reported: Health,
    /// The admin's say, if any (maintenance or retired).
    pub(crate) admin: Option<Health>,
}

/// One change of a device's health (read by the tests; the lab report, not built yet, is
/// to read them too).
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct HealthChange {
    /// The lab.
    pub(crate) lab: String,
    /// The device.
    pub(crate) device: String,
    /// Its device type.
    pub(crate) device_type: String,
    /// When.
    pub(crate) at: DateTime<Utc>,
    /// The health before (`None`: the device was first heard of).
    pub(crate) from: Option<Health>,
    /// The health after.
    pub(crate) to: Health,
    /// Why.
    pub(crate) reason: String,
}

fn health(s: &str) -> Result<Health> {
    Health::parse(s).ok_or_else(|| corrupt("device health", format!("`{s}`")))
}

const ROW_COLUMNS: &str = "device_type, health, reported, admin";

fn row(r: &super::db::Row<'_>) -> Result<HealthRow> {
    Ok(HealthRow {
        device_type: r.get(0)?,
        health: health(&r.get::<_, String>(1)?)?,
        reported: health(&r.get::<_, String>(2)?)?,
        admin: r
            .get::<_, Option<String>>(3)?
            .as_deref()
            .map(health)
            .transpose()?,
    })
}

/// The names of the devices of `lab` the coordinator has heard of.
pub(crate) fn device_names(conn: &super::db::Connection, lab: &str) -> Result<Vec<String>> {
    conn.query_map(
        "SELECT device FROM device_health WHERE lab = ?1 ORDER BY device",
        params![lab],
        |r| r.get(0),
    )
}

/// One device's health that counts, as every replica should see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Counted {
    /// The device.
    pub(crate) device: String,
    /// The health that counts.
    pub(crate) health: Health,
    /// Its reason.
    pub(crate) reason: String,
    /// An admin resumed it and its agent has not heard yet.
    pub(crate) resumed: bool,
}

/// The health that counts of every device of `lab`.
pub(crate) fn counted(conn: &super::db::Connection, lab: &str) -> Result<Vec<Counted>> {
    let rows = conn.query_map(
        "SELECT device, health, reason, resumed FROM device_health \
         WHERE lab = ?1 ORDER BY device",
        params![lab],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        },
    )?;
    rows.into_iter()
        .map(|(device, h, reason, resumed)| {
            Ok(Counted {
                device,
                health: health(&h)?,
                reason,
                resumed: resumed != 0,
            })
        })
        .collect()
}

/// The health changes of `lab`'s devices after `since`, oldest first.
#[cfg(test)]
pub(crate) fn health_log(
    conn: &super::db::Connection,
    lab: &str,
    since: DateTime<Utc>,
) -> Result<Vec<HealthChange>> {
    let rows = conn.query_map(
        "SELECT lab, device, device_type, at, from_health, to_health, reason \
         FROM device_health_log WHERE lab = ?1 AND at > ?2 ORDER BY at, id",
        params![lab, micros(since)],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        },
    )?;
    rows.into_iter()
        .map(|(lab, device, device_type, at, from, to, reason)| {
            Ok(HealthChange {
                lab,
                device,
                device_type,
                at: from_micros(at),
                from: from.as_deref().map(health).transpose()?,
                to: health(&to)?,
                reason,
            })
        })
        .collect()
}

/// The health that counts and its reason: the admin's say over the agent's.
fn effective(
    admin: Option<Health>,
    admin_reason: &str,
    reported: Health,
    reason: &str,
) -> (Health, String) {
    match admin {
        Some(a) => (a, admin_reason.to_string()),
        None => (reported, reason.to_string()),
    }
}

/// The admin's reason and the agent's, as stored.
struct Reasons {
    admin: String,
    reported: String,
}

impl Write<'_> {
    fn health_row(&self, lab: &str, device: &str) -> Result<Option<(HealthRow, Reasons)>> {
        self.conn().query_opt(
            &format!(
                "SELECT {ROW_COLUMNS}, admin_reason, reported_reason FROM device_health \
                 WHERE lab = ?1 AND device = ?2"
            ),
            params![lab, device],
            |r| {
                Ok((
                    row(r)?,
                    Reasons {
                        admin: r.get(4)?,
                        reported: r.get(5)?,
                    },
                ))
            },
        )
    }

    fn log_change(
        &mut self,
        lab: &str,
        device: &str,
        device_type: &str,
        from: Option<Health>,
        to: Health,
        reason: &str,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO device_health_log (lab, device, device_type, at, from_health, \
             to_health, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                lab,
                device,
                device_type,
                micros(self.now()),
                from.map(Health::as_str),
                to.as_str(),
                reason
            ],
        )?;
        // A change (not a device first heard of) is an event on the log, in order with the
        // node events, for the readers that ask for device events (`/events/stream`).
        if let Some(from) = from {
            let data = serde_json::json!({
                "lab": lab,
                "device": device,
                "device_type": device_type,
                "from": from.as_str(),
                "to": to.as_str(),
                "reason": reason,
            });
            self.append_device_event(data.to_string());
        }
        tracing::info!(lab, device, from = from.map_or("-", Health::as_str), to = %to, reason, "device health changed");
        Ok(())
    }

    /// Records the health an agent reports of its devices and returns the devices with the
    /// health that counts (an admin's maintenance or retirement over the agent's word).
    /// Every change of the health that counts is logged.
    pub(crate) fn report_health(
        &mut self,
        lab: &LabName,
        devices: &[DeviceInfo],
    ) -> Result<Vec<DeviceInfo>> {
        let now = micros(self.now());
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            let old = self.health_row(lab.as_str(), &d.name)?;
            let (admin, admin_reason) = old
                .as_ref()
                .map(|(r, rs)| (r.admin, rs.admin.clone()))
                .unwrap_or((None, String::new()));
            // An agent's reason is kept to one printable line of a bounded size.
            let agent_reason: String = d
                .health_reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let agent_reason = labwire_common::names::shorten(&agent_reason, MAX_REASON);
            let (h, reason) = effective(admin, &admin_reason, d.health, &agent_reason);
            let changed = old.as_ref().map(|(r, _)| r.health) != Some(h);
            self.conn().execute(
                "INSERT INTO device_health (lab, device, device_type, health, reason, reported, \
                 last_check, failure_streak, since, reported_reason) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (lab, device) DO UPDATE SET device_type = excluded.device_type, \
                 health = excluded.health, reason = excluded.reason, \
                 reported = excluded.reported, reported_reason = excluded.reported_reason, \
                 last_check = excluded.last_check, \
                 failure_streak = excluded.failure_streak, \
                 since = CASE WHEN device_health.health = excluded.health \
                         THEN device_health.since ELSE excluded.since END",
                params![
                    lab,
                    &d.name,
                    &d.device_type,
                    h.as_str(),
                    &reason,
                    d.health.as_str(),
                    d.last_check,
                    i64::from(d.failure_streak),
                    now,
                    &*agent_reason
                ],
            )?;
            if changed {
                let from = old.as_ref().map(|(r, _)| r.health);
                self.log_change(lab.as_str(), &d.name, &d.device_type, from, h, &reason)?;
            }
            let mut d = d.clone();
            d.health = h;
            d.health_reason = reason;
            out.push(d);
        }
        Ok(out)
    }

    /// The devices of `lab` an admin resumed since its agent last heard of it: the agent
    /// clears its own quarantine of them. Taken once.
    pub(crate) fn take_resumed(&mut self, lab: &LabName) -> Result<Vec<String>> {
        let names = self.conn().query_map(
            "SELECT device FROM device_health WHERE lab = ?1 AND resumed = 1 ORDER BY device",
            params![lab],
            |r| r.get(0),
        )?;
        if !names.is_empty() {
            self.conn().execute(
                "UPDATE device_health SET resumed = 0 WHERE lab = ?1 AND resumed = 1",
                params![lab],
            )?;
        }
        Ok(names)
    }

    /// Sets (or, with `None`, clears) the admin's say over a device: maintenance or
    /// retired. Returns the health before and after. The lab's stored advertisement is
    /// changed too, so that every coordinator on the store places by it.
    pub(crate) fn set_admin_health(
        &mut self,
        lab: &str,
        device: &str,
        admin: Option<Health>,
        reason: &str,
    ) -> Result<(Health, Health)> {
        let Some((old, reasons)) = self.health_row(lab, device)? else {
            let known = device_names(self.conn(), lab)?;
            return Err(Error::NotFound(if known.is_empty() {
                format!("lab `{lab}` has advertised no devices (is its agent connected?)")
            } else {
                format!(
                    "lab `{lab}` has no device `{device}` (its devices: {})",
                    known.join(", ")
                )
            }));
        };
        let reason = if admin.is_none() {
            String::new()
        } else {
            reason.to_string()
        };
        let (h, why) = effective(admin, &reason, old.reported, &reasons.reported);
        self.conn().execute(
            "UPDATE device_health SET admin = ?3, admin_reason = ?4, health = ?5, reason = ?6, \
             since = CASE WHEN health = ?5 THEN since ELSE ?7 END, resumed = ?8 \
             WHERE lab = ?1 AND device = ?2",
            params![
                lab,
                device,
                admin.map(Health::as_str),
                &reason,
                h.as_str(),
                &why,
                micros(self.now()),
                i64::from(admin.is_none())
            ],
        )?;
        if h != old.health {
            let why = if why.is_empty() && admin.is_none() {
                "resumed by an admin".to_string()
            } else {
                why.clone()
            };
            self.log_change(lab, device, &old.device_type, Some(old.health), h, &why)?;
        }
        // Every replica hears of it (`store::watch`) and updates its picture of the lab, and
        // the one its agent is connected to tells the agent of a resume at once
        // (`server::follow::watch_admin_health`).
        self.labs_changed = true;
        if self.conn().backend() == super::db::Backend::Postgres {
            self.conn().execute(
                "SELECT pg_notify(?1, ?2)",
                params![super::watch::LABS_CHANNEL, lab],
            )?;
        }
        // The stored advertisement, which placement on every replica reads.
        let devices: Option<String> = self.conn().query_opt(
            "SELECT devices FROM labs WHERE name = ?1",
            params![lab],
            |r| r.get(0),
        )?;
        if let Some(devices) = devices {
            let mut list: Vec<DeviceInfo> =
                serde_json::from_str(&devices).map_err(|e| corrupt("lab devices", e))?;
            for d in list.iter_mut().filter(|d| d.name == device) {
                d.health = h;
                d.health_reason = why.clone();
            }
            let json = serde_json::to_string(&list).map_err(|e| corrupt("lab devices", e))?;
            self.conn().execute(
                "UPDATE labs SET devices = ?2 WHERE name = ?1",
                params![lab, json],
            )?;
        }
        Ok((old.health, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;

    fn dev(name: &str, h: Health, reason: &str) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            device_type: "qemu-x86_64".into(),
            driver: "serial".into(),
            health: h,
            health_reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn admin_say_over_the_agents_and_the_log() {
        let (_d, store) = temp_store();
        let lab = LabName::new("lab-a");
        store
            .write_blocking(|w| w.register_lab_cert("lab-a", "aa", None))
            .unwrap();
        let out = store
            .write_blocking(|w| w.report_health(&lab, &[dev("b1", Health::Good, "")]))
            .unwrap();
        assert_eq!(out[0].health, Health::Good);
        let e = store
            .write_blocking(|w| w.set_admin_health("lab-a", "nope", Some(Health::Maintenance), "x"))
            .unwrap_err();
        assert!(e.to_string().contains("no device `nope`"), "{e}");
        let (from, to) = store
            .write_blocking(|w| {
                w.set_admin_health("lab-a", "b1", Some(Health::Maintenance), "new PSU")
            })
            .unwrap();
        assert_eq!((from, to), (Health::Good, Health::Maintenance));
        // The agent says good again (it restarted): maintenance holds, with the admin's reason.
        let out = store
            .write_blocking(|w| w.report_health(&lab, &[dev("b1", Health::Good, "")]))
            .unwrap();
        assert_eq!(out[0].health, Health::Maintenance);
        assert_eq!(out[0].health_reason, "new PSU");
        // The agent finds it bad meanwhile; resuming shows the agent's word.
        store
            .write_blocking(|w| w.report_health(&lab, &[dev("b1", Health::Bad, "panic")]))
            .unwrap();
        let (_, to) = store
            .write_blocking(|w| w.set_admin_health("lab-a", "b1", None, ""))
            .unwrap();
        assert_eq!(to, Health::Bad);
        // Its agent hears of the resume once.
        let r = store.write_blocking(|w| w.take_resumed(&lab)).unwrap();
        assert_eq!(r, vec!["b1".to_string()]);
        assert!(
            store
                .write_blocking(|w| w.take_resumed(&lab))
                .unwrap()
                .is_empty()
        );
        let log = store
            .read_blocking(|c| health_log(c, "lab-a", from_micros(0)))
            .unwrap();
        let seen: Vec<(Option<Health>, Health)> = log.iter().map(|c| (c.from, c.to)).collect();
        assert_eq!(
            seen,
            vec![
                (None, Health::Good),
                (Some(Health::Good), Health::Maintenance),
                (Some(Health::Maintenance), Health::Bad),
            ]
        );
        assert_eq!(log[1].reason, "new PSU");
        assert!(log.iter().all(|c| c.lab == "lab-a"
            && c.device == "b1"
            && c.device_type == "qemu-x86_64"
            && c.at.timestamp() > 0));
        let (row, reasons) = store
            .write_blocking(|w| w.health_row("lab-a", "b1"))
            .unwrap()
            .unwrap();
        assert_eq!(row.health, Health::Bad);
        assert_eq!(reasons.reported, "panic");
        assert_eq!(row.admin, None);
        // A hostile agent's reason: one bounded printable line.
        let long = format!("line\nbreak\u{1b}[31m{}", "x".repeat(10_000));
        let out = store
            .write_blocking(|w| w.report_health(&lab, &[dev("b1", Health::Bad, &long)]))
            .unwrap();
        assert!(
            out[0].health_reason.len() <= MAX_REASON,
            "{}",
            out[0].health_reason.len()
        );
        assert!(!out[0].health_reason.chars().any(char::is_control));
    }
}
