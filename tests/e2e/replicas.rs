//! Two coordinator replicas over one PostgreSQL database (a private server, labwire-testpg),
//! with agents spread over both, as real processes with real mutual TLS:
//! - a job submitted to one replica reaches an agent waiting on the other at once (the
//!   agents' long polls last 20 s; the job starts well before);
//! - jobs flow through both; replica A, which leads, is killed with SIGKILL mid-run; its
//!   agent fails over to B, B takes the leadership (the services) over, and every job ends
//!   `pass` having run exactly once (one attempt, one line in the run log each).

use crate::common;

use common::*;
use labwire_proto::v1;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A shell device command that records `JOB-ATTEMPT` in `runs`, works for a moment, and
/// prints a KTAP result.
fn device_command(runs: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        "echo \"$LABWIRE_JOB_ID-$LABWIRE_JOB_ATTEMPT\" >> \"$1\"; sleep 0.5; \
         echo 'KTAP version 1'; echo 1..1; echo \"ok 1 ran_on_$LABWIRE_DEVICE\""
            .into(),
        "sh".into(),
        runs.into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_work_and_one_dies_without_losing_or_doubling_a_job() {
    let rig =
        Rig::new_on_postgres("leases: {duration: 8s, heartbeat: 1s}\nreplicas: {leader_ttl: 3s}\n");
    let _keep = rig.keep_on_failure();
    let mut coord_a = rig.start_coordinator();
    // A leads: it started first. B starts once A's claim is in.
    wait_for(Duration::from_secs(20), "replica A to lead", || {
        std::fs::read_to_string(rig.path("coordinator.log"))
            .is_ok_and(|s| s.contains("runs the scheduler and services now"))
    });
    let port_b = free_port();
    let _coord_b = rig.start_replica("b", port_b);
    let (url_a, url_b) = (rig.url(), format!("https://127.0.0.1:{port_b}"));

    let runs = rig.path("runs.txt");
    let cmd = device_command(&runs.display().to_string());
    let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
    for (lab, tag, urls) in [
        ("lab-a", "on-a", [url_a.clone(), url_b.clone()]),
        ("lab-b", "on-b", [url_b.clone(), url_a.clone()]),
    ] {
        rig.issue_lab(lab);
        rig.agent_config(lab, &[(&format!("{lab}-dev"), &argv, &[tag, "any"])], "");
        rig.agent_urls(lab, &urls);
    }
    let _agent_a = rig.start_agent("lab-a");
    let _agent_b = rig.start_agent("lab-b");
    wait_for(Duration::from_secs(30), "both agents to register", || {
        let a = std::fs::read_to_string(rig.path("coordinator.log")).unwrap_or_default();
        let b = std::fs::read_to_string(rig.path("coordinator-b.log")).unwrap_or_default();
        a.contains("agent registered") && b.contains("agent registered")
    });
    let mut ca = rig.client().await;
    let mut cb = rig.client_at(port_b).await;
    // Let both agents settle into their long polls.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Across replicas, at once: submitted to A, only lab-b (on B) can run it, and the
    // other way round.
    let mut cross = Vec::new();
    for (client, tag, lab) in [(&mut ca, "on-b", "lab-b"), (&mut cb, "on-a", "lab-a")] {
        let t0 = Instant::now();
        let job = submit(client, "cross", &[tag], &[]).await;
        let n = wait_node(client, job, Duration::from_secs(30), |n| {
            data(n).contains_key("device")
        })
        .await;
        let took = t0.elapsed();
        assert_eq!(data(&n)["lab"], lab, "{n:?}");
        assert!(
            took < Duration::from_secs(5),
            "job {job} took {took:?} to reach {lab} on the other replica: that is the agent's \
             next poll, not a notification"
        );
        cross.push((job, took));
    }

    // Jobs flow through both replicas; A is killed while they run.
    let mut jobs: BTreeMap<i64, ()> = cross.iter().map(|(j, _)| (*j, ())).collect();
    for i in 0..16 {
        let client = if i % 2 == 0 { &mut ca } else { &mut cb };
        let tag = ["on-a", "on-b", "any"][i % 3];
        jobs.insert(submit(client, &format!("flow-{i}"), &[tag], &[]).await, ());
    }
    wait_for(Duration::from_secs(60), "a few jobs to finish", || {
        std::fs::read_to_string(&runs).is_ok_and(|s| s.lines().count() >= 6)
    });
    coord_a.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord_a.child.wait();
    let killed = Instant::now();
    drop(ca);
    for i in 0..4 {
        let tag = ["on-a", "on-b"][i % 2];
        jobs.insert(
            submit(&mut cb, &format!("after-{i}"), &[tag], &[]).await,
            (),
        );
    }

    // B takes the services over once A's claim expires.
    wait_for(Duration::from_secs(30), "replica B to lead", || {
        std::fs::read_to_string(rig.path("coordinator-b.log"))
            .is_ok_and(|s| s.contains("runs the scheduler and services now"))
    });
    let takeover = killed.elapsed();

    // Every job ends pass, through B, having run once.
    for &job in jobs.keys() {
        let n = wait_node(&mut cb, job, Duration::from_secs(120), is_done).await;
        assert_eq!(n.result, v1::NodeResult::Pass as i32, "job {job}: {n:?}");
        assert_eq!(n.retry_counter, 0, "job {job} was retried: {n:?}");
    }
    let ran = std::fs::read_to_string(&runs).expect("runs");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in ran.lines() {
        *seen.entry(line.to_string()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = jobs.keys().map(|j| (format!("{j}-1"), 1)).collect();
    assert_eq!(seen, want, "each job must run exactly once, as attempt 1");
    // Both labs did work.
    let mut by_lab: BTreeMap<String, usize> = BTreeMap::new();
    for &job in jobs.keys() {
        let n = wait_node(&mut cb, job, Duration::from_secs(5), is_done).await;
        *by_lab
            .entry(data(&n)["lab"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert!(by_lab.len() == 2, "{by_lab:?}");
    println!(
        "replicas: cross-replica dispatch {:?} and {:?}; {} jobs, {by_lab:?}, each run once; \
         B took the leadership over {takeover:.1?} after A was killed",
        cross[0].1,
        cross[1].1,
        jobs.len()
    );
}
