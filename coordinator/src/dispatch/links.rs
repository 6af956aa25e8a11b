//! The coordinator's way to an agent between two of its calls: the open session streams
//! (`AgentService.Session`), by lab. Whatever must reach a lab at once (a cancel, later a
//! reservation or a console relay) is put on each of the lab's streams; a stream that is
//! full or gone is skipped, and the agent hears of a cancel at its next heartbeat instead,
//! as an agent without a stream does.

use crate::model::{AttemptNo, LabName, NodeId, SessionId};
use labwire_proto::v1;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Messages queued per stream before the stream counts as stuck (and is skipped).
const DEPTH: usize = 64;

struct Link {
    id: u64,
    tx: mpsc::Sender<v1::CoordinatorMessage>,
}

type Map = Arc<Mutex<HashMap<LabName, Vec<Link>>>>;

fn lock(map: &Map) -> std::sync::MutexGuard<'_, HashMap<LabName, Vec<Link>>> {
    map.lock().unwrap_or_else(|p| p.into_inner())
}

/// The open session streams.
#[derive(Default)]
pub(crate) struct Links {
    by_lab: Map,
    next: AtomicU64,
}

/// One open stream, unregistered when dropped.
pub(crate) struct LinkGuard {
    map: Map,
    lab: LabName,
    id: u64,
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        if let Some(v) = map.get_mut(&self.lab) {
            v.retain(|l| l.id != self.id);
            if v.is_empty() {
                map.remove(&self.lab);
            }
        }
    }
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LabName, Vec<Link>>> {
        lock(&self.by_lab)
    }

    /// Registers a stream of `session` of `lab`; what is sent to the lab arrives on the
    /// receiver until the guard is dropped. The sender is the stream's own (for the
    /// answers to its heartbeats).
    pub(crate) fn open(
        &self,
        lab: &LabName,
        session: &SessionId,
    ) -> (
        LinkGuard,
        mpsc::Sender<v1::CoordinatorMessage>,
        mpsc::Receiver<v1::CoordinatorMessage>,
    ) {
        let (tx, rx) = mpsc::channel(DEPTH);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(lab = %lab, session = %session, stream = id, "session stream registered");
        self.lock()
            .entry(lab.clone())
            .or_default()
            .push(Link { id, tx: tx.clone() });
        (
            LinkGuard {
                map: self.by_lab.clone(),
                lab: lab.clone(),
                id,
            },
            tx,
            rx,
        )
    }

    /// Tells every stream of `lab` to stop `jobs` at once. Returns on how many streams it
    /// was queued (0: the lab has no stream; its next heartbeat tells it).
    pub(crate) fn cancel(
        &self,
        lab: &LabName,
        jobs: &[(NodeId, AttemptNo)],
        reason: &str,
    ) -> usize {
        if jobs.is_empty() {
            return 0;
        }
        let msg = v1::CoordinatorMessage {
            kind: Some(v1::coordinator_message::Kind::Cancel(v1::CancelJobs {
                jobs: jobs
                    .iter()
                    .map(|(j, a)| v1::JobRef {
                        job: j.0,
                        attempt: a.0,
                    })
                    .collect(),
                reason: reason.to_string(),
            })),
        };
        let map = self.lock();
        map.get(lab).map_or(0, |v| {
            v.iter()
                .filter(|l| l.tx.try_send(msg.clone()).is_ok())
                .count()
        })
    }

    /// Tells every stream of `lab` its reserved devices now (the whole list). Returns on how
    /// many streams it was queued (0: its next heartbeat tells it).
    pub(crate) fn reserved(&self, lab: &LabName, devices: Vec<String>) -> usize {
        let msg = v1::CoordinatorMessage {
            kind: Some(v1::coordinator_message::Kind::Reserved(
                v1::ReservedDevices { devices },
            )),
        };
        let map = self.lock();
        map.get(lab).map_or(0, |v| {
            v.iter()
                .filter(|l| l.tx.try_send(msg.clone()).is_ok())
                .count()
        })
    }

    /// The sender of the newest open stream of `lab`, for what must wait for room rather
    /// than be dropped (console bytes).
    pub(crate) fn sender(&self, lab: &LabName) -> Option<mpsc::Sender<v1::CoordinatorMessage>> {
        self.lock()
            .get(lab)
            .and_then(|v| v.iter().rev().find(|l| !l.tx.is_closed()))
            .map(|l| l.tx.clone())
    }

    /// Ends every stream of `lab` (it was revoked): dropping the senders ends them.
    pub(crate) fn drop_lab(&self, lab: &LabName) {
        self.lock().remove(lab);
    }

    /// How many streams are open.
    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_reaches_every_stream_of_the_lab_and_no_other() {
        let links = Links::default();
        let (a, b) = (LabName::new("lab-a"), LabName::new("lab-b"));
        let (ga, _, mut ra) = links.open(&a, &SessionId::new("s1"));
        let (_gb, tb, mut rb) = links.open(&b, &SessionId::new("s2"));
        drop(tb);
        assert_eq!(links.open_count(), 2);
        assert_eq!(
            links.cancel(&a, &[(NodeId(7), AttemptNo(2))], "cancelled"),
            1
        );
        let got = ra.recv().await.expect("a message");
        match got.kind {
            Some(v1::coordinator_message::Kind::Cancel(c)) => {
                assert_eq!(c.jobs, vec![v1::JobRef { job: 7, attempt: 2 }]);
                assert_eq!(c.reason, "cancelled");
            }
            other => panic!("{other:?}"),
        }
        assert!(rb.try_recv().is_err(), "lab-b heard nothing");
        // A closed stream is unregistered: the lab is reached at its next heartbeat.
        drop(ga);
        assert_eq!(links.cancel(&a, &[(NodeId(7), AttemptNo(2))], "x"), 0);
        links.drop_lab(&b);
        assert!(rb.recv().await.is_none(), "a revoked lab's stream ends");
    }
}
