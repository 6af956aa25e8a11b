//! Reservations: a device lent to a person under a lease that ends by itself. A live
//! reservation (`ended` NULL, at most one per device) keeps the device out of the pool; it
//! ends when its owner (or an admin) releases it or when its lease runs out
//! ([`Write::expire_reservations`], swept by the coordinator). Every change appends a device
//! event (`org.labwire.device.reserved`, `.reservation_extended`, `.released`,
//! `.reservation_expired`) in the same transaction. Ended rows stay as the device's history.

use super::db::{Connection, Row, params};
use super::{Write, from_micros, micros};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};

/// One reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reservation {
    /// Row id.
    pub(crate) id: i64,
    /// The lab.
    pub(crate) lab: String,
    /// The device's name in the lab.
    pub(crate) device: String,
    /// Who holds it (the token's name).
    pub(crate) owner: String,
    /// Why.
    pub(crate) reason: String,
    /// When it was made.
    pub(crate) created: DateTime<Utc>,
    /// When its lease runs out.
    pub(crate) expires: DateTime<Utc>,
}

/// Who asks for a change of a reservation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    /// The token's name.
    pub(crate) name: &'a str,
    /// Whether the token has the admin scope (may extend or release anyone's).
    pub(crate) admin: bool,
}

const COLUMNS: &str = "id, lab, device, owner, reason, created, expires";

fn row(r: &Row<'_>) -> Result<Reservation> {
    Ok(Reservation {
        id: r.get(0)?,
        lab: r.get(1)?,
        device: r.get(2)?,
        owner: r.get(3)?,
        reason: r.get(4)?,
        created: from_micros(r.get(5)?),
        expires: from_micros(r.get(6)?),
    })
}

/// The live reservations whose lease still runs at `now` (of `lab` only, if given), by lab
/// and device. A lease that ran out and is not swept yet is left out: its device counts as
/// free.
pub(crate) fn live(
    conn: &Connection,
    lab: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<Reservation>> {
    conn.query_map(
        &format!(
            "SELECT {COLUMNS} FROM reservations WHERE ended IS NULL AND expires > ?1 \
             AND (CAST(?2 AS TEXT) IS NULL OR lab = ?2) ORDER BY lab, device"
        ),
        params![micros(now), lab],
        row,
    )
}

/// A reservation of the past or present: when and how it ended (`released`, `expired`).
#[cfg(test)]
pub(crate) type Past = (Reservation, Option<DateTime<Utc>>, Option<String>);

/// Every reservation of one device, newest first, at most `limit` (its history; read by
/// the tests so far).
#[cfg(test)]
pub(crate) fn history(
    conn: &Connection,
    lab: &str,
    device: &str,
    limit: usize,
) -> Result<Vec<Past>> {
    conn.query_map(
        &format!(
            "SELECT {COLUMNS}, ended, end_reason FROM reservations WHERE lab = ?1 \
             AND device = ?2 ORDER BY id DESC LIMIT ?3"
        ),
        params![lab, device, limit as i64],
        |r| {
            Ok((
                row(r)?,
                r.get::<_, Option<i64>>(7)?.map(from_micros),
                r.get(8)?,
            ))
        },
    )
}

impl Write<'_> {
    /// The live row of a device, whether or not its lease ran out.
    fn live_row(&self, lab: &str, device: &str) -> Result<Option<Reservation>> {
        self.conn().query_opt(
            &format!(
                "SELECT {COLUMNS} FROM reservations WHERE lab = ?1 AND device = ?2 \
                 AND ended IS NULL"
            ),
            params![lab, device],
            row,
        )
    }

    /// Ends a live row (`released` or `expired`) and appends its event; `false` if another
    /// transaction ended it first.
    fn end(&mut self, r: &Reservation, how: &'static str, by: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE reservations SET ended = ?1, end_reason = ?2 WHERE id = ?3 AND ended IS NULL",
            params![micros(self.now()), how, r.id],
        )?;
        if n == 1 {
            let op = if how == "expired" {
                "expire"
            } else {
                "release"
            };
            self.reservation_event(op, r, by);
        }
        Ok(n == 1)
    }

    fn reservation_event(&mut self, op: &'static str, r: &Reservation, by: &str) {
        let data = serde_json::json!({
            "lab": r.lab,
            "device": r.device,
            "owner": r.owner,
            "reason": r.reason,
            "created": r.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "expires": r.expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "by": by,
        });
        self.append_device_event_op(op, data.to_string());
        tracing::info!(lab = %r.lab, device = %r.device, owner = %r.owner, op, by, "reservation changed");
    }

    /// Reserves `device` of `lab` for `owner` until `until`. Refused while someone holds a
    /// live lease on it (the owner is told to extend instead); a lease that ran out and is
    /// not swept yet is ended (`expired`) first.
    pub(crate) fn reserve(
        &mut self,
        lab: &str,
        device: &str,
        owner: &str,
        reason: &str,
        until: DateTime<Utc>,
    ) -> Result<Reservation> {
        self.reserve_as(lab, device, owner, reason, until, owner)
    }

    /// [`Write::reserve`], the event naming `by` as who made it.
    fn reserve_as(
        &mut self,
        lab: &str,
        device: &str,
        owner: &str,
        reason: &str,
        until: DateTime<Utc>,
        by: &str,
    ) -> Result<Reservation> {
        if let Some(old) = self.live_row(lab, device)? {
            if old.expires > self.now() {
                let until = old
                    .expires
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                return Err(if old.owner == owner {
                    Error::AlreadyExists(format!(
                        "{lab}/{device} is reserved by you until {until}; \
                         use `labwire reserve --extend` to keep it longer"
                    ))
                } else {
                    Error::Refused(format!(
                        "{lab}/{device} is reserved by `{}` until {until}",
                        old.owner
                    ))
                });
            }
            self.end(&old, "expired", "coordinator")?;
        }
        let now = micros(self.now());
        let id: i64 = self.conn().query_row(
            "INSERT INTO reservations (lab, device, owner, reason, created, expires) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            params![lab, device, owner, reason, now, micros(until)],
            |r| r.get(0),
        )?;
        let r = Reservation {
            id,
            lab: lab.to_string(),
            device: device.to_string(),
            owner: owner.to_string(),
            reason: reason.to_string(),
            created: from_micros(now),
            expires: from_micros(micros(until)),
        };
        self.reservation_event("reserve", &r, by);
        Ok(r)
    }

    /// Holds the device of a job that failed (`hold_on_failure_seconds`, 0: none) for the
    /// token that submitted it (the node's `owner`, never its free-text `submitter`):
    /// a reservation "held after job N failed", made in the result's transaction. A device
    /// someone holds already, or a job without an owner, is not held (logged).
    pub(crate) fn hold_after_failure(
        &mut self,
        lab: &str,
        device: &str,
        job: &crate::model::Node,
        seconds: u32,
    ) -> Result<()> {
        if seconds == 0 {
            return Ok(());
        }
        if job.owner.is_empty() {
            tracing::warn!(job = %job.id, lab, device, "the failed job has no owner; its board is not held");
            return Ok(());
        }
        let until = self.now() + chrono::Duration::seconds(i64::from(seconds));
        let reason = format!("held after job {} failed", job.id);
        match self.reserve_as(lab, device, &job.owner, &reason, until, "coordinator") {
            Ok(r) => {
                tracing::info!(job = %job.id, lab, device, owner = %r.owner, until = %r.expires, "the failed job's board is held for its submitter");
                Ok(())
            }
            Err(e @ (Error::AlreadyExists(_) | Error::Refused(_))) => {
                tracing::info!(job = %job.id, lab, device, error = %e, "the failed job's board is reserved already; not held");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The live reservation of a device that `who` may change, or why not.
    fn owned(&self, lab: &str, device: &str, who: Caller<'_>) -> Result<Reservation> {
        let r = self
            .live_row(lab, device)?
            .filter(|r| r.expires > self.now())
            .ok_or_else(|| Error::NotFound(format!("{lab}/{device} is not reserved")))?;
        if r.owner != who.name && !who.admin {
            return Err(Error::PermissionDenied(format!(
                "{lab}/{device} is reserved by `{}`; only they or an admin may change it",
                r.owner
            )));
        }
        Ok(r)
    }

    /// Moves the end of a live reservation to `until` (its owner or an admin).
    pub(crate) fn extend_reservation(
        &mut self,
        lab: &str,
        device: &str,
        who: Caller<'_>,
        until: DateTime<Utc>,
    ) -> Result<Reservation> {
        let mut r = self.owned(lab, device, who)?;
        self.conn().execute(
            "UPDATE reservations SET expires = ?1 WHERE id = ?2 AND ended IS NULL",
            params![micros(until), r.id],
        )?;
        r.expires = from_micros(micros(until));
        self.reservation_event("extend", &r, who.name);
        Ok(r)
    }

    /// Ends a live reservation now (its owner or an admin).
    pub(crate) fn release_reservation(
        &mut self,
        lab: &str,
        device: &str,
        who: Caller<'_>,
    ) -> Result<Reservation> {
        let r = self.owned(lab, device, who)?;
        self.end(&r, "released", who.name)?;
        Ok(r)
    }

    /// Ends every live reservation whose lease ran out; returns those this transaction
    /// ended (another replica's sweep may have taken some).
    pub(crate) fn expire_reservations(&mut self) -> Result<Vec<Reservation>> {
        let due = self.conn().query_map(
            &format!(
                "SELECT {COLUMNS} FROM reservations WHERE ended IS NULL AND expires <= ?1 \
                 ORDER BY id"
            ),
            params![micros(self.now())],
            row,
        )?;
        let mut out = Vec::new();
        for r in due {
            if self.end(&r, "expired", "coordinator")? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::store::temp_store_with_clock;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("a time")
    }

    #[test]
    fn a_lease_belongs_to_its_owner_and_ends_by_itself() {
        let clock = Clock::manual(at(0));
        let (_t, store) = temp_store_with_clock(clock.clone());
        let ana = Caller {
            name: "ana",
            admin: false,
        };
        let bob = Caller {
            name: "bob",
            admin: false,
        };
        let r = store
            .write_blocking(|w| w.reserve("lab", "b1", "ana", "bisect", at(60)))
            .expect("reserved");
        assert_eq!((r.owner.as_str(), r.expires), ("ana", at(60)));
        // Nobody else may take it, the owner is told to extend.
        let e = store
            .write_blocking(|w| w.reserve("lab", "b1", "bob", "", at(60)))
            .expect_err("held");
        assert!(e.to_string().contains("reserved by `ana`"), "{e}");
        let e = store
            .write_blocking(|w| w.reserve("lab", "b1", "ana", "", at(60)))
            .expect_err("held");
        assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
        let e = store
            .write_blocking(|w| w.release_reservation("lab", "b1", bob))
            .expect_err("not bob's");
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
        let r = store
            .write_blocking(|w| w.extend_reservation("lab", "b1", ana, at(120)))
            .expect("extended");
        assert_eq!(r.expires, at(120));
        // Before the end nothing expires; after it the sweep ends it once.
        clock.set(at(119));
        assert!(
            store
                .write_blocking(|w| w.expire_reservations())
                .expect("sweep")
                .is_empty()
        );
        let live_now = store
            .read_blocking(|c| live(c, Some("lab"), at(119)))
            .expect("live");
        assert_eq!(live_now.len(), 1);
        clock.set(at(120));
        let gone = store
            .write_blocking(|w| w.expire_reservations())
            .expect("sweep");
        assert_eq!(gone.len(), 1);
        assert!(
            store
                .write_blocking(|w| w.expire_reservations())
                .expect("sweep")
                .is_empty()
        );
        assert!(
            store
                .read_blocking(|c| live(c, None, at(120)))
                .expect("live")
                .is_empty()
        );
        // Free again: bob takes it, an admin releases it.
        store
            .write_blocking(|w| w.reserve("lab", "b1", "bob", "", at(200)))
            .expect("bob's now");
        store
            .write_blocking(|w| {
                w.release_reservation(
                    "lab",
                    "b1",
                    Caller {
                        name: "root",
                        admin: true,
                    },
                )
            })
            .expect("admin releases");
        let h = store
            .read_blocking(|c| history(c, "lab", "b1", 10))
            .expect("history");
        let ends: Vec<_> = h
            .iter()
            .map(|(r, _, how)| (r.owner.as_str(), how.as_deref()))
            .collect();
        assert_eq!(
            ends,
            vec![("bob", Some("released")), ("ana", Some("expired"))]
        );
        // Each change is an event on the log.
        let ops: Vec<String> = store
            .read_blocking(|c| crate::store::events::events_after(c, 0, 100, None, true))
            .expect("events")
            .into_iter()
            .map(|e| e.event_type().to_string())
            .collect();
        assert_eq!(
            ops,
            vec![
                "org.labwire.device.reserved",
                "org.labwire.device.reservation_extended",
                "org.labwire.device.reservation_expired",
                "org.labwire.device.reserved",
                "org.labwire.device.released",
            ]
        );
    }

    /// A job with `hold` seconds of hold on failure, submitted by the token `owner` (the
    /// free-text submitter says someone else), leased to `lab`'s device `dev`.
    fn leased_job(store: &crate::store::Store, owner: &str, hold: u32) -> crate::model::NodeId {
        let job = crate::store::jobs::NewJob {
            spec: labwire_proto::v1::JobSpec {
                name: "held".into(),
                hold_on_failure_seconds: hold,
                ..Default::default()
            },
            submitter: "mallory".into(),
            owner: owner.into(),
            ..Default::default()
        };
        let (node, _) = store
            .write_blocking(move |w| w.submit_job(job))
            .expect("submit");
        let id = node.id;
        store
            .write_blocking(move |w| w.claim_for_test(id, "lab", at(10_000)))
            .expect("claim")
            .expect("claimed");
        id
    }

    #[test]
    fn a_failed_job_holds_its_device_for_the_token_that_submitted_it() {
        use labwire_common::NodeResult;
        let clock = Clock::manual(at(0));
        let (_t, store) = temp_store_with_clock(clock.clone());
        let report = |id, result| {
            store
                .write_blocking(move |w| w.report_for_test("lab", id, 1, result, vec![]))
                .expect("report");
        };
        let live_now = || {
            store
                .read_blocking(|c| live(c, Some("lab"), at(1)))
                .expect("live")
        };
        // Passed or incomplete: nothing held.
        for result in [NodeResult::Pass, NodeResult::Incomplete] {
            let id = leased_job(&store, "ana", 600);
            report(id, result);
            assert!(live_now().is_empty(), "{result:?} held the device");
        }
        // Failed without the flag: nothing held.
        let id = leased_job(&store, "ana", 0);
        report(id, NodeResult::Fail);
        assert!(live_now().is_empty());
        // Failed with it: held for the token's name, in the result's transaction.
        let id = leased_job(&store, "ana", 600);
        report(id, NodeResult::Fail);
        let held = live_now();
        assert_eq!(held.len(), 1);
        let r = &held[0];
        assert_eq!(
            (r.device.as_str(), r.owner.as_str(), r.expires),
            ("dev", "ana", at(600))
        );
        assert_eq!(r.reason, format!("held after job {id} failed"));
        // A device someone holds already is not taken from them.
        let admin = Caller {
            name: "root",
            admin: true,
        };
        store
            .write_blocking(move |w| w.release_reservation("lab", "dev", admin))
            .expect("released");
        store
            .write_blocking(|w| w.reserve("lab", "dev", "bob", "bisect", at(900)))
            .expect("bob reserves");
        let id = leased_job(&store, "ana", 600);
        report(id, NodeResult::Fail);
        let held = live_now();
        assert_eq!(
            held.iter().map(|r| r.owner.as_str()).collect::<Vec<_>>(),
            ["bob"]
        );
    }
}
