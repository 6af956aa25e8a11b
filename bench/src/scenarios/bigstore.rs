//! A coordinator whose store holds many nodes, shared by the queries and events scenarios.
//! The nodes are written in-process through the store library (the same code the API calls,
//! one event per change) before the coordinator starts, since creating a million nodes
//! through the API one call at a time would take most of the time budget.
//!
//! Shape: trees of 100 nodes, like a KernelCI checkout: a checkout, a kbuild, 7 jobs
//! (`baseline`, `kunit`, `kselftest-net`, ...), 13 tests under each job (`test_0`..`test_12`,
//! group = the job's name; 85 % pass, 10 % fail, 5 % skip), each job done once its tests are
//! in. So 100 nodes make 107 events (100 creations, 7 job updates).

use crate::StoreChoice;
use crate::rig::Rig;
use labwire_common::NodeResult;
use labwire_coordinator::model::{NodeId, NodeKind, NodeState};
use labwire_coordinator::store::{NewNode, NodeUpdate};
use std::time::Instant;

/// Job names of a tree (also the tests' group).
pub const JOBS: [&str; 7] = [
    "baseline",
    "kunit",
    "kselftest-net",
    "kselftest-mm",
    "ltp-syscalls",
    "boot-nfs",
    "kselftest-timers",
];
/// Tests per job.
pub const TESTS: usize = 13;
const TREE: usize = 2 + JOBS.len() * (1 + TESTS);

/// The running coordinator over the big store.
pub struct BigStore {
    /// The coordinator.
    pub rig: Rig,
    /// Nodes written.
    pub nodes: usize,
    /// Events written.
    pub events: u64,
    /// Ids of some checkouts (for treeid queries) and jobs (for parent queries).
    pub sample_checkouts: Vec<NodeId>,
    /// Ids of some jobs.
    pub sample_jobs: Vec<NodeId>,
    /// Seconds taken to write the store.
    pub build_secs: f64,
}

impl BigStore {
    /// Writes about `nodes` nodes (whole trees of 100) into a store of kind `store` and
    /// starts the coordinator.
    pub async fn build(store: &StoreChoice, nodes: usize) -> anyhow::Result<BigStore> {
        let mut rig = Rig::new(store, "")?;
        let store = rig.open_store()?;
        let trees = nodes.div_ceil(TREE).max(1);
        let t = Instant::now();
        let (checkouts, jobs) = tokio::task::spawn_blocking(move || {
            let mut rng = 0x5eedu64;
            let mut roll = move || {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 33) % 100
            };
            let (mut checkouts, mut jobs) = (Vec::new(), Vec::new());
            let per_tx = 100;
            for start in (0..trees).step_by(per_tx) {
                store.write_blocking(|w| {
                    for tree in start..(start + per_tx).min(trees) {
                        let mut co = NewNode::new(NodeKind::Checkout, "checkout");
                        co.data
                            .insert("kernel_revision".into(), format!("v6.{}", tree % 20).into());
                        let co = w.create_node(co)?;
                        let mut kb = NewNode::new(NodeKind::Kbuild, "kbuild-gcc-12-x86");
                        kb.parent = Some(co.id);
                        let kb = w.create_node(kb)?;
                        for job in JOBS {
                            let mut j = NewNode::new(NodeKind::Job, job);
                            j.parent = Some(kb.id);
                            j.group = Some(job.to_string());
                            let j = w.create_node(j)?;
                            let mut failed = false;
                            for i in 0..TESTS {
                                let r = roll();
                                let result = if r < 85 {
                                    NodeResult::Pass
                                } else if r < 95 {
                                    failed = true;
                                    NodeResult::Fail
                                } else {
                                    NodeResult::Skip
                                };
                                let mut n = NewNode::new(NodeKind::Test, format!("test_{i}"));
                                n.parent = Some(j.id);
                                n.group = Some(job.to_string());
                                n.state = NodeState::Done;
                                n.result = Some(result);
                                w.create_node(n)?;
                            }
                            w.update_node(
                                j.id,
                                NodeUpdate {
                                    state: Some(NodeState::Done),
                                    result: Some(if failed {
                                        NodeResult::Fail
                                    } else {
                                        NodeResult::Pass
                                    }),
                                    ..Default::default()
                                },
                            )?;
                            if tree % 97 == 0 {
                                jobs.push(j.id);
                            }
                        }
                        if tree % 97 == 0 {
                            checkouts.push(co.id);
                        }
                    }
                    Ok(())
                })?;
            }
            anyhow::Ok((checkouts, jobs))
        })
        .await??;
        let build_secs = t.elapsed().as_secs_f64();
        let events =
            rig.open_store()?
                .read_blocking(labwire_coordinator::store::events::last_seq)? as u64;
        eprintln!(
            "    store: {} nodes, {events} events written in {build_secs:.1}s",
            trees * TREE
        );
        rig.start()?;
        Ok(BigStore {
            rig,
            nodes: trees * TREE,
            events,
            sample_checkouts: checkouts,
            sample_jobs: jobs,
            build_secs,
        })
    }
}
