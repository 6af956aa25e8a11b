//! Dispatch: hands each queued job to exactly one waiting agent. Agents long-poll with the
//! devices they have free; a job submitted while an agent waits reaches it at once (the
//! submitting task completes the agent's wait), so there is no polling interval. The queue
//! lives in the store; this module keeps an in-memory copy in dispatch order plus the list of
//! waiting agents, and every hand-out is a lease written to the store before the agent sees it.

use crate::error::Result;
use crate::model::NodeId;
use crate::store::{Claim, JobRow, Store};
use labwire_common::{Criteria, DeviceInfo};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{Mutex, oneshot};

/// A job handed to an agent, with the device it was matched to.
#[derive(Debug)]
pub struct Assignment {
    /// The lease just granted.
    pub claim: Claim,
    /// The free device the job's criteria matched first.
    pub device: String,
}

struct Queued {
    id: NodeId,
    criteria: Criteria,
}

struct Waiter {
    id: u64,
    lab: String,
    session: String,
    devices: Vec<DeviceInfo>,
    tx: oneshot::Sender<Assignment>,
}

#[derive(Default)]
struct State {
    /// Queued jobs keyed by (priority descending, id ascending): dispatch order.
    queue: BTreeMap<(Reverse<i32>, i64), Queued>,
    /// Agents waiting for work, oldest first.
    waiters: Vec<Waiter>,
    next_waiter: u64,
}

/// The dispatcher.
pub struct Dispatcher {
    store: Store,
    lease: Duration,
    state: Mutex<State>,
}

fn first_match(criteria: &Criteria, devices: &[DeviceInfo]) -> Option<String> {
    devices
        .iter()
        .find(|d| criteria.matches(d))
        .map(|d| d.name.clone())
}

impl Dispatcher {
    /// Loads the queued jobs from the store.
    pub async fn load(store: Store, lease: Duration) -> Result<Self> {
        let jobs = store.read(crate::store::jobs::queued_jobs).await?;
        let mut state = State::default();
        for j in jobs {
            state.queue.insert(
                (Reverse(j.priority), j.id.0),
                Queued {
                    id: j.id,
                    criteria: j.criteria,
                },
            );
        }
        Ok(Dispatcher {
            store,
            lease,
            state: Mutex::new(state),
        })
    }

    /// How many jobs wait in the queue.
    pub async fn queue_len(&self) -> usize {
        self.state.lock().await.queue.len()
    }

    async fn claim(&self, id: NodeId, lab: &str, session: &str, device: &str) -> Result<Claim> {
        let until = chrono::Utc::now()
            + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(60));
        let (lab, session, device) = (lab.to_string(), session.to_string(), device.to_string());
        self.store
            .write(move |w| w.claim_job(id, &lab, &session, &device, until))
            .await
    }

    /// Offers a queued job (new, or back from an expired lease) to the waiting agents; if none
    /// can take it, it waits in the queue.
    pub async fn enqueue(&self, job: &JobRow) {
        let mut st = self.state.lock().await;
        st.waiters.retain(|w| !w.tx.is_closed());
        let mut i = 0;
        while i < st.waiters.len() {
            let Some(device) = first_match(&job.criteria, &st.waiters[i].devices) else {
                i += 1;
                continue;
            };
            let w = st.waiters.remove(i);
            match self.claim(job.id, &w.lab, &w.session, &device).await {
                Ok(claim) => {
                    let attempt = claim.job.attempt;
                    if let Err(back) = w.tx.send(Assignment { claim, device }) {
                        // The agent stopped waiting just now: take the lease back.
                        let lab = w.lab.clone();
                        let id = back.claim.job.id;
                        let res = self
                            .store
                            .write(move |wr| {
                                wr.release_job(&lab, id, attempt, "agent stopped waiting")
                            })
                            .await;
                        if let Err(e) = res {
                            tracing::warn!(job = %id, error = %e, "could not give back an undelivered job");
                            return;
                        }
                        continue;
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
        st.queue.insert(
            (Reverse(job.priority), job.id.0),
            Queued {
                id: job.id,
                criteria: job.criteria.clone(),
            },
        );
    }

    /// Drops a job from the in-memory queue (it was cancelled).
    pub async fn forget(&self, id: NodeId) {
        self.state.lock().await.queue.retain(|_, q| q.id != id);
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
        let (rx, waiter_id) = {
            let mut st = self.state.lock().await;
            // First, the queue in dispatch order. An entry whose claim is refused (the job
            // was cancelled meanwhile) is dropped and the next one is tried.
            loop {
                let found = st.queue.iter().find_map(|(key, q)| {
                    first_match(&q.criteria, &devices).map(|d| (*key, q.id, d))
                });
                let Some((key, id, device)) = found else {
                    break;
                };
                st.queue.remove(&key);
                match self.claim(id, lab, session, &device).await {
                    Ok(claim) => return Ok(Some(Assignment { claim, device })),
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
}
