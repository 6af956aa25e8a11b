//! The rules of the KernelCI timeout service, applied in one store transaction per sweep:
//!
//! - a node past its `timeout` that is not `done` goes `done`; without a result it gets
//!   `incomplete` and `data.error_code = node_timeout`. Its unfinished descendants go with
//!   it, by the same rule, and a job among them leaves the queue (its agent is told to stop
//!   at its next heartbeat);
//! - an `available` node past its `holdoff` goes `done` when it has no unfinished child, else
//!   `closing` (and takes no new children from then on);
//! - a `closing` node goes `done` once its last child is `done`.
//!
//! Every change goes through [`Write::update_node`], so each appends its event.

use super::db::params;
use super::nodes::{NodeUpdate, children, get_node};
use super::{QueueChange, Write, micros};
use crate::error::Result;
use crate::model::{NodeId, NodeState};
use labwire_common::NodeResult;
use serde_json::Map;

/// The most nodes each rule handles in one sweep, so a transaction stays short; the rest
/// wait for the next sweep.
pub(crate) const BATCH: usize = 500;

/// What one sweep changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TimeoutSweep {
    /// Nodes that timed out (including the descendants that went with them).
    pub(crate) timed_out: Vec<NodeId>,
    /// Available nodes past their holdoff that went `closing`.
    pub(crate) closing: Vec<NodeId>,
    /// Nodes that went `done` by holdoff or because their last child finished.
    pub(crate) closed: Vec<NodeId>,
}

impl TimeoutSweep {
    /// Whether nothing changed.
    pub(crate) fn is_empty(&self) -> bool {
        self.timed_out.is_empty() && self.closing.is_empty() && self.closed.is_empty()
    }
}

fn ids(w: &Write<'_>, sql: &str, now: i64) -> Result<Vec<NodeId>> {
    let rows = w
        .conn()
        .query_map(sql, params![now, BATCH as i64], |r| r.get::<_, i64>(0))?;
    Ok(rows.into_iter().map(NodeId).collect())
}

fn unfinished_children(w: &Write<'_>, id: NodeId) -> Result<usize> {
    let n: i64 = w.conn().query_row(
        "SELECT COUNT(*) FROM nodes WHERE parent = ?1 AND state != 'done'",
        params![id.0],
        |r| r.get(0),
    )?;
    Ok(n as usize)
}

impl Write<'_> {
    /// Applies the timeout, holdoff and closing rules at this transaction's time.
    pub(crate) fn sweep_timeouts(&mut self) -> Result<TimeoutSweep> {
        let now = micros(self.now());
        let mut out = TimeoutSweep::default();

        let expired = ids(
            self,
            "SELECT id FROM nodes WHERE state IN ('running', 'available', 'closing') \
             AND timeout IS NOT NULL AND timeout <= ?1 ORDER BY id LIMIT ?2",
            now,
        )?;
        for id in expired {
            self.time_out(id, &mut out.timed_out)?;
        }

        let held = ids(
            self,
            "SELECT id FROM nodes WHERE state = 'available' \
             AND holdoff IS NOT NULL AND holdoff <= ?1 ORDER BY id LIMIT ?2",
            now,
        )?;
        for id in held {
            let to = if unfinished_children(self, id)? == 0 {
                out.closed.push(id);
                NodeState::Done
            } else {
                out.closing.push(id);
                NodeState::Closing
            };
            self.update_node(
                id,
                NodeUpdate {
                    state: Some(to),
                    ..Default::default()
                },
            )?;
        }

        // A node that just went done may have been the last child of a closing parent, and
        // that parent the last child of its own: repeat until nothing changes.
        for _ in 0..64 {
            let ready = ids(
                self,
                "SELECT id FROM nodes n WHERE state = 'closing' AND CAST(?1 AS BIGINT) = ?1 AND NOT EXISTS \
                 (SELECT 1 FROM nodes c WHERE c.parent = n.id AND c.state != 'done') \
                 ORDER BY id LIMIT ?2",
                now,
            )?;
            if ready.is_empty() {
                break;
            }
            for id in ready {
                self.update_node(
                    id,
                    NodeUpdate {
                        state: Some(NodeState::Done),
                        ..Default::default()
                    },
                )?;
                out.closed.push(id);
            }
        }
        Ok(out)
    }

    /// Ends `id` and its unfinished descendants by the timeout rule.
    fn time_out(&mut self, id: NodeId, changed: &mut Vec<NodeId>) -> Result<()> {
        let mut todo = vec![(id, true)];
        while let Some((id, root)) = todo.pop() {
            let node = get_node(self.conn(), id)?;
            if node.state == NodeState::Done {
                continue;
            }
            for c in children(self.conn(), id)? {
                if c.state != NodeState::Done {
                    todo.push((c.id, false));
                }
            }
            let mut u = NodeUpdate {
                state: Some(NodeState::Done),
                ..Default::default()
            };
            if node.result.is_none() {
                let mut data = Map::new();
                data.insert(
                    "error_code".into(),
                    labwire_common::ErrorCode::NodeTimeout.as_str().into(),
                );
                let msg = match node.timeout {
                    Some(t) if root => format!("timed out at {}", t.to_rfc3339()),
                    _ => "an ancestor node timed out".to_string(),
                };
                data.insert("error_msg".into(), msg.into());
                u.result = Some(NodeResult::Incomplete);
                u.data = data;
            }
            // A queued or leased job leaves the queue; the agent holding it learns at its
            // next heartbeat that the lease is gone.
            let left = self.conn().execute(
                "UPDATE jobs SET status = 'finished', lease_expires = NULL, finished_at = ?2 \
                 WHERE node_id = ?1 AND status != 'finished'",
                params![id.0, micros(self.now())],
            )?;
            if left > 0 {
                self.queue_changed(QueueChange::Ended(id));
            }
            self.update_node(id, u)?;
            changed.push(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::error::Error;
    use crate::model::{Node, NodeKind};
    use crate::store::events::events_after;
    use crate::store::nodes::get_node;
    use crate::store::{NewJob, NewNode, Store};
    use chrono::{DateTime, Duration, TimeZone, Utc};
    use labwire_proto::v1;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn store() -> (crate::store::TestStore, Store, Clock) {
        let clock = Clock::manual(t0());
        let (dir, store) = crate::store::temp_store_with_clock(clock.clone());
        (dir, store, clock)
    }

    fn create(store: &Store, f: impl FnOnce(&mut NewNode)) -> Node {
        let mut n = NewNode::new(NodeKind::Checkout, "checkout");
        f(&mut n);
        store.write_blocking(|w| w.create_node(n)).unwrap()
    }

    fn get(store: &Store, id: NodeId) -> Node {
        store.read_blocking(|c| get_node(c, id)).unwrap()
    }

    fn sweep(store: &Store) -> TimeoutSweep {
        store.write_blocking(|w| w.sweep_timeouts()).unwrap()
    }

    fn set_state(store: &Store, id: NodeId, state: NodeState, result: Option<NodeResult>) {
        store
            .write_blocking(|w| {
                w.update_node(
                    id,
                    NodeUpdate {
                        state: Some(state),
                        result,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
    }

    fn events_of(store: &Store, id: NodeId) -> Vec<crate::store::StoredEvent> {
        store
            .read_blocking(|c| events_after(c, 0, 10_000, None, false))
            .unwrap()
            .into_iter()
            .filter(|e| e.node.id == id)
            .collect()
    }

    #[test]
    fn a_node_past_its_timeout_ends_incomplete() {
        let (_d, store, clock) = store();
        let n = create(&store, |n| n.timeout = Some(t0() + Duration::seconds(10)));
        clock.advance(Duration::seconds(9));
        assert!(sweep(&store).is_empty());
        assert_eq!(get(&store, n.id).state, NodeState::Running);
        clock.advance(Duration::seconds(1));
        let s = sweep(&store);
        assert_eq!(s.timed_out, vec![n.id]);
        let after = get(&store, n.id);
        assert_eq!(after.state, NodeState::Done);
        assert_eq!(after.result, Some(NodeResult::Incomplete));
        assert_eq!(after.error_code(), Some("node_timeout"));
        assert_eq!(after.updated, t0() + Duration::seconds(10));
        let evs = events_of(&store, n.id);
        assert_eq!(evs.len(), 2, "create and the timeout");
        assert_eq!(evs[1].previous_state, Some(NodeState::Running));
        assert_eq!(evs[1].node.state, NodeState::Done);
        // Done is final: a later sweep changes nothing.
        clock.advance(Duration::hours(1));
        assert!(sweep(&store).is_empty());
    }

    #[test]
    fn a_timed_out_node_keeps_its_result() {
        let (_d, store, clock) = store();
        let n = create(&store, |n| {
            n.state = NodeState::Available;
            n.result = Some(NodeResult::Pass);
            n.timeout = Some(t0() + Duration::seconds(5));
        });
        clock.advance(Duration::seconds(6));
        assert_eq!(sweep(&store).timed_out, vec![n.id]);
        let after = get(&store, n.id);
        assert_eq!(after.state, NodeState::Done);
        assert_eq!(after.result, Some(NodeResult::Pass));
        assert_eq!(after.error_code(), None);
    }

    #[test]
    fn a_timeout_takes_unfinished_descendants_and_their_jobs() {
        let (_d, store, clock) = store();
        let root = create(&store, |n| n.timeout = Some(t0() + Duration::seconds(60)));
        let finished = create(&store, |n| {
            n.kind = NodeKind::Kbuild;
            n.name = "kbuild-done".into();
            n.parent = Some(root.id);
        });
        set_state(&store, finished.id, NodeState::Done, Some(NodeResult::Fail));
        let build = create(&store, |n| {
            n.kind = NodeKind::Kbuild;
            n.name = "kbuild".into();
            n.parent = Some(root.id);
        });
        let (job, _) = store
            .write_blocking(move |w| {
                w.submit_job(NewJob {
                    spec: v1::JobSpec {
                        name: "baseline".into(),
                        ..Default::default()
                    },
                    parent: Some(build.id),
                    submitter: "t".into(),
                    owner: "t".into(),
                    ..Default::default()
                })
            })
            .unwrap();
        clock.advance(Duration::seconds(61));
        let s = sweep(&store);
        let mut got = s.timed_out.clone();
        got.sort();
        assert_eq!(got, vec![root.id, build.id, job.id]);
        for id in [build.id, job.id] {
            let n = get(&store, id);
            assert_eq!(n.state, NodeState::Done);
            assert_eq!(n.result, Some(NodeResult::Incomplete));
            assert_eq!(n.error_code(), Some("node_timeout"));
            assert_eq!(
                n.data.get("error_msg").and_then(|v| v.as_str()),
                Some("an ancestor node timed out")
            );
        }
        // The finished child is left alone.
        assert_eq!(get(&store, finished.id).result, Some(NodeResult::Fail));
        assert_eq!(events_of(&store, finished.id).len(), 2);
        // The job left the queue.
        let row = store
            .read_blocking(move |c| crate::store::jobs::find_job(c, job.id))
            .unwrap()
            .unwrap();
        assert_eq!(row.status, crate::store::JobStatus::Finished);
    }

    #[test]
    fn holdoff_closes_or_finishes_an_available_node() {
        let (_d, store, clock) = store();
        let lonely = create(&store, |n| {
            n.state = NodeState::Available;
            n.holdoff = Some(t0() + Duration::seconds(30));
        });
        let parent = create(&store, |n| {
            n.state = NodeState::Available;
            n.holdoff = Some(t0() + Duration::seconds(30));
        });
        // A running node past its holdoff is not touched: holdoff is for available nodes.
        let running = create(&store, |n| n.holdoff = Some(t0() + Duration::seconds(1)));
        let child = create(&store, |n| {
            n.kind = NodeKind::Kbuild;
            n.name = "kbuild".into();
            n.parent = Some(parent.id);
        });
        clock.advance(Duration::seconds(29));
        assert!(sweep(&store).is_empty());
        clock.advance(Duration::seconds(1));
        let s = sweep(&store);
        assert_eq!(s.closed, vec![lonely.id]);
        assert_eq!(s.closing, vec![parent.id]);
        assert_eq!(get(&store, lonely.id).state, NodeState::Done);
        assert_eq!(get(&store, lonely.id).result, None);
        assert_eq!(get(&store, parent.id).state, NodeState::Closing);
        assert_eq!(get(&store, running.id).state, NodeState::Running);

        // A closing parent refuses new children; so does a done one.
        for id in [parent.id, lonely.id] {
            let err = store
                .write_blocking(move |w| {
                    let mut n = NewNode::new(NodeKind::Kbuild, "late");
                    n.parent = Some(id);
                    w.create_node(n)
                })
                .unwrap_err();
            assert!(matches!(err, Error::ParentClosed { .. }), "{err}");
        }

        // The closing parent waits for its child, then goes done.
        assert!(sweep(&store).is_empty());
        set_state(&store, child.id, NodeState::Done, Some(NodeResult::Pass));
        let s = sweep(&store);
        assert_eq!(s.closed, vec![parent.id]);
        let p = get(&store, parent.id);
        assert_eq!(p.state, NodeState::Done);
        let evs = events_of(&store, parent.id);
        let states: Vec<_> = evs.iter().map(|e| e.node.state).collect();
        assert_eq!(
            states,
            vec![NodeState::Available, NodeState::Closing, NodeState::Done]
        );
    }

    #[test]
    fn closing_cascades_up_the_tree() {
        let (_d, store, _clock) = store();
        let top = create(&store, |_| {});
        let mid = create(&store, |n| {
            n.name = "mid".into();
            n.parent = Some(top.id);
        });
        let leaf = create(&store, |n| {
            n.name = "leaf".into();
            n.parent = Some(mid.id);
        });
        set_state(&store, top.id, NodeState::Closing, None);
        set_state(&store, mid.id, NodeState::Closing, None);
        assert!(sweep(&store).is_empty());
        set_state(&store, leaf.id, NodeState::Done, Some(NodeResult::Pass));
        let s = sweep(&store);
        assert_eq!(s.closed, vec![mid.id, top.id]);
        assert_eq!(get(&store, top.id).state, NodeState::Done);
    }
}
