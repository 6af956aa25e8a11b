//! Liveness held in memory: what heartbeats bring (a lab's last call and free slots, the
//! lease renewals of the attempts its agent holds) is kept here and written to the store in
//! one transaction every `leases.write_interval` (2 s by default) and at a clean shutdown,
//! instead of one transaction per heartbeat.
//!
//! The rule for what a crash can lose: renewals accepted since the last write. The store is
//! then behind by at most one write interval, and a coordinator that starts (or a replica
//! that becomes leader) gives every lease a full lease period of grace before any sweep,
//! so a lease renewed only in memory cannot run out because of the crash; the agent renews
//! it again at its next heartbeat. Without a crash, a renewal reaches the store within one
//! write interval, which is at most a third of the lease, so the on-disk lease never runs
//! out while the agent keeps calling, whichever replica sweeps; this coordinator's own sweep
//! also skips the leases it holds renewed in memory ([`Liveness::renewed`]).
//!
//! A write that finds an attempt no longer leased to its lab (another replica took the job
//! back, it was cancelled there) keeps it as lost; the lab's next heartbeat tells the agent
//! to stop it.

use crate::error::Result;
use crate::model::{AttemptNo, LabName, NodeId};
use crate::store::Store;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a lost attempt is kept for a lab that does not call again.
const LOST_MEMORY: Duration = Duration::from_secs(600);

/// A lab's last call, not yet written.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: DateTime<Utc>,
    free_slots: u32,
}

/// A lease renewal, not yet written.
#[derive(Debug, Clone)]
struct Renewal {
    lab: LabName,
    attempt: AttemptNo,
    until: DateTime<Utc>,
}

#[derive(Default)]
struct Pending {
    labs: HashMap<LabName, Seen>,
    renewals: HashMap<NodeId, Renewal>,
    /// Attempts a write found no longer leased to their lab, by lab.
    lost: HashMap<LabName, (Instant, Vec<(NodeId, AttemptNo)>)>,
}

/// What [`Liveness::write`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// Labs whose last call was written.
    pub(crate) labs: usize,
    /// Leases renewed on disk.
    pub(crate) renewed: usize,
    /// Renewals of attempts no longer leased to their lab.
    pub(crate) lost: usize,
}

/// Liveness held in memory until the next write.
#[derive(Default)]
pub(crate) struct Liveness {
    pending: Mutex<Pending>,
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a heartbeat of `lab`: its free slots, and the renewal of `held` until `until`.
    pub(crate) fn heartbeat(
        &self,
        lab: &LabName,
        free_slots: u32,
        held: &[(NodeId, AttemptNo)],
        until: DateTime<Utc>,
    ) {
        let mut p = self.lock();
        p.labs.insert(
            lab.clone(),
            Seen {
                at: Utc::now(),
                free_slots,
            },
        );
        for &(job, attempt) in held {
            p.renewals.insert(
                job,
                Renewal {
                    lab: lab.clone(),
                    attempt,
                    until,
                },
            );
        }
    }

    /// The attempts of `lab` that a write found lost and that its agent still runs
    /// (`running`); forgets the others.
    pub(crate) fn take_lost(
        &self,
        lab: &LabName,
        running: &[(NodeId, AttemptNo)],
    ) -> Vec<(NodeId, AttemptNo)> {
        let mut p = self.lock();
        match p.lost.remove(lab) {
            Some((_, lost)) => lost.into_iter().filter(|l| running.contains(l)).collect(),
            None => Vec::new(),
        }
    }

    /// Drops the renewals held for `lab` (its agent registered again and listed what it
    /// holds, which is written at once).
    pub(crate) fn forget_renewals(&self, lab: &LabName) {
        let mut p = self.lock();
        p.renewals.retain(|_, r| &r.lab != lab);
        p.lost.remove(lab);
    }

    /// The jobs whose lease is renewed in memory beyond `now`: a sweep must not expire them.
    pub(crate) fn renewed(&self, now: DateTime<Utc>) -> Vec<NodeId> {
        self.lock()
            .renewals
            .iter()
            .filter(|(_, r)| r.until > now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// How many renewals and labs wait to be written.
    #[cfg(test)]
    fn backlog(&self) -> (usize, usize) {
        let p = self.lock();
        (p.renewals.len(), p.labs.len())
    }

    /// Writes what is held, in one transaction. On failure it is kept for the next write
    /// (newer calls since then win). A lab's call more than `silent_after` after its last
    /// one ends a silence ([`crate::store::Write::touch_lab_at`]).
    pub(crate) async fn write(
        &self,
        store: &Store,
        silent_after: chrono::Duration,
    ) -> Result<Written> {
        let (labs, renewals) = {
            let mut p = self.lock();
            if p.labs.is_empty() && p.renewals.is_empty() {
                return Ok(Written::default());
            }
            (std::mem::take(&mut p.labs), std::mem::take(&mut p.renewals))
        };
        let (l2, r2) = (labs.clone(), renewals.clone());
        let res = store
            .write(move |w| {
                for (lab, seen) in &l2 {
                    w.touch_lab_at(lab, seen.at, seen.free_slots, silent_after)?;
                }
                let mut renewed = 0;
                let mut lost = Vec::new();
                for (job, r) in &r2 {
                    if w.renew_leases(&r.lab, &[(*job, r.attempt)], r.until)?
                        .is_empty()
                    {
                        renewed += 1;
                    } else {
                        lost.push((r.lab.clone(), *job, r.attempt));
                    }
                }
                Ok((renewed, lost))
            })
            .await;
        let mut p = self.lock();
        match res {
            Ok((renewed, lost)) => {
                let n_lost = lost.len();
                let now = Instant::now();
                p.lost.retain(|_, (at, _)| at.elapsed() < LOST_MEMORY);
                for (lab, job, attempt) in lost {
                    // A newer renewal of the same attempt since the write is no use.
                    if p.renewals
                        .get(&job)
                        .is_some_and(|r| r.lab == lab && r.attempt == attempt)
                    {
                        p.renewals.remove(&job);
                    }
                    let e = p.lost.entry(lab).or_insert_with(|| (now, Vec::new()));
                    e.0 = now;
                    e.1.push((job, attempt));
                }
                Ok(Written {
                    labs: labs.len(),
                    renewed,
                    lost: n_lost,
                })
            }
            Err(e) => {
                for (lab, seen) in labs {
                    p.labs.entry(lab).or_insert(seen);
                }
                for (job, r) in renewals {
                    p.renewals.entry(job).or_insert(r);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::NewJob;
    use crate::store::temp_store;

    fn spec(name: &str) -> labwire_proto::v1::JobSpec {
        labwire_proto::v1::JobSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Renewals stay in memory until written; a write renews on disk what is still leased to
    /// the lab and keeps the rest as lost for the lab's next heartbeat.
    #[tokio::test]
    async fn renewals_are_written_in_one_batch_and_lost_ones_are_kept() {
        let (_d, store) = temp_store();
        let lab = LabName::new("lab-a");
        let soon = Utc::now() + chrono::Duration::seconds(5);
        let (a, b) = store
            .write_blocking(|w| {
                w.register_lab_cert("lab-a", "aa", None)?;
                let mut ids = Vec::new();
                for name in ["a", "b"] {
                    let id = w
                        .submit_job(NewJob {
                            spec: spec(name),
                            submitter: "me".into(),
                            owner: "admin".into(),
                            ..Default::default()
                        })?
                        .0
                        .id;
                    w.claim_for_test(id, "lab-a", soon)?;
                    ids.push(id);
                }
                let (a, b) = (ids[0], ids[1]);
                Ok((a, b))
            })
            .unwrap();
        let live = Liveness::default();
        let later = Utc::now() + chrono::Duration::seconds(60);
        live.heartbeat(&lab, 2, &[(a, AttemptNo(1)), (b, AttemptNo(1))], later);
        assert_eq!(live.renewed(Utc::now()).len(), 2);
        let expires = |id: NodeId| {
            store
                .read_blocking(move |c| crate::store::jobs::find_job(c, id))
                .unwrap()
                .and_then(|j| j.lease_expires)
                .unwrap()
        };
        // Held in memory only: the store still has the claim's expiry.
        assert!(expires(a) < later - chrono::Duration::seconds(30));
        // b is cancelled meanwhile.
        store
            .write_blocking(move |w| w.cancel_job(b, "gone"))
            .unwrap();
        let written = live
            .write(&store, chrono::Duration::seconds(35))
            .await
            .unwrap();
        assert_eq!(
            written,
            Written {
                labs: 1,
                renewed: 1,
                lost: 1
            }
        );
        assert_eq!(expires(a).timestamp_micros(), later.timestamp_micros());
        assert_eq!(live.backlog(), (0, 0));
        // The agent still runs b: its next heartbeat hears that b is lost, once.
        let running = [(a, AttemptNo(1)), (b, AttemptNo(1))];
        assert_eq!(live.take_lost(&lab, &running), vec![(b, AttemptNo(1))]);
        assert!(live.take_lost(&lab, &running).is_empty());
        // Nothing held: a write is a no-op.
        assert_eq!(
            live.write(&store, chrono::Duration::seconds(35))
                .await
                .unwrap(),
            Written::default()
        );
    }
}
