//! Liveness held in memory (issue 23), with real processes: heartbeats renew leases in the
//! coordinator's memory and a writer puts them on disk every `leases.write_interval`. A
//! coordinator killed with SIGKILL after renewals were accepted but before they were written
//! loses them; the restart grace covers that, and every job still runs exactly once. And a
//! cancel reaches a running agent on its session stream, not at its next heartbeat.

use crate::common;

use common::*;
use labwire_proto::v1;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The leased jobs and their lease expiry as the store has it (ListJobs reads the store).
async fn leases_on_disk(c: &mut labwire::client::Clients) -> BTreeMap<i64, i64> {
    c.admin
        .list_jobs(v1::ListJobsRequest {
            status: v1::JobStatus::Leased as i32,
            limit: 1000,
        })
        .await
        .expect("list jobs")
        .into_inner()
        .jobs
        .into_iter()
        .filter_map(|j| {
            let id = j.node.as_ref()?.id;
            let until = j.lease_until?;
            Some((
                id,
                until.seconds * 1_000_000 + i64::from(until.nanos / 1000),
            ))
        })
        .collect()
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_before_writing_renewals_runs_every_job_once() {
    const JOBS: usize = 4;
    let lease = Duration::from_secs(12);
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 12s, heartbeat: 1s, write_interval: 4s}\n");
    let _keep = rig.keep_on_failure();
    let mut coord = rig.start_coordinator();
    // Each job notes that it ran (one line per run) and runs longer than a lease, past the
    // coordinator's outage.
    let runs = rig.path("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let script = format!(
        "echo ran >> {}/$LABWIRE_JOB_ID; sleep 24; echo 'KTAP version 1'; echo 1..1; echo 'ok 1 ran_once'",
        runs.display()
    );
    let cmd: &[&str] = &["sh", "-c", &script];
    let mut agents = Vec::new();
    for lab in ["lab-a", "lab-b"] {
        rig.issue_lab(lab);
        let d1 = format!("{lab}-1");
        let d2 = format!("{lab}-2");
        rig.agent_config(lab, &[(&d1, cmd, &["renew"]), (&d2, cmd, &["renew"])], "");
        agents.push(rig.start_agent(lab));
    }
    let mut c = rig.client().await;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        ids.push(submit(&mut c, &format!("renew-{i}"), &["renew"], &[]).await);
    }

    steps.at("every job runs");
    wait_for(Duration::from_secs(60), "every job to start", || {
        ids.iter().all(|id| runs.join(id.to_string()).exists())
    });

    steps.at("a write of renewals is seen on disk");
    let first = leases_on_disk(&mut c).await;
    assert_eq!(first.len(), JOBS, "{first:?}");
    let end = Instant::now() + Duration::from_secs(20);
    let written = loop {
        let now = leases_on_disk(&mut c).await;
        if now.iter().all(|(id, until)| first.get(id) < Some(until)) {
            break now;
        }
        assert!(
            Instant::now() < end,
            "no renewal reached the store: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    steps.at("renewals are accepted in memory, not written");
    // Two heartbeats later (the next write is four seconds after the last one), the agents'
    // leases were renewed in memory, not on disk.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let on_disk = leases_on_disk(&mut c).await;
    let at_kill = now_micros();
    assert_eq!(on_disk, written, "a write came sooner than write_interval");
    let renewed_in_memory = at_kill - 1_500_000 + lease.as_micros() as i64;
    for (id, until) in &on_disk {
        assert!(
            *until < renewed_in_memory,
            "job {id}: the store has the lease until {until}, as recent as a heartbeat's renewal"
        );
    }
    coord.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord.child.wait();

    steps.at("the leases run out on disk while the coordinator is down");
    let latest = on_disk.values().copied().max().unwrap_or(0);
    let wait = Duration::from_micros((latest - now_micros()).max(0) as u64 + 1_000_000);
    tokio::time::sleep(wait).await;
    assert!(
        on_disk.values().all(|until| *until < now_micros()),
        "every lease on disk has run out"
    );
    let _coord = rig.start_coordinator();

    steps.at("every job ends once, on its first attempt");
    let mut c = rig.client().await;
    for id in &ids {
        let n = wait_node(&mut c, *id, Duration::from_secs(90), is_done).await;
        assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
        assert_eq!(n.retry_counter, 0, "job {id} was leased again: {n:?}");
        assert_eq!(data(&n)["attempt"], 1, "{n:?}");
        let ran = std::fs::read_to_string(runs.join(id.to_string())).unwrap();
        assert_eq!(
            ran.lines().count(),
            1,
            "job {id} ran {} times",
            ran.lines().count()
        );
    }
    let log = std::fs::read_to_string(rig.path("coordinator.log")).unwrap();
    assert!(
        log.contains("gave leases held before the leadership changed a grace period"),
        "the restart grace was not given"
    );
    println!(
        "killed {:.1} s after a write with {JOBS} leases renewed only in memory; down until every \
         lease had run out on disk; every job passed on attempt 1 and ran once",
        (at_kill - written.values().copied().min().unwrap_or(at_kill) + lease.as_micros() as i64)
            as f64
            / 1e6
    );
}

/// A cancel reaches a running real agent on its session stream at once, not at its next
/// heartbeat (15 s apart here, the default): the job's command is stopped within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_running_agent_before_its_next_heartbeat() {
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 60s, heartbeat: 15s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    let marks = rig.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let script = format!("touch {}/started; sleep 60", marks.display());
    let cmd: &[&str] = &["sh", "-c", &script];
    rig.agent_config("lab-a", &[("dev", cmd, &["stop-me"])], "");
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let job = submit(&mut c, "stop-me", &["stop-me"], &[]).await;

    steps.at("the job runs");
    wait_for(Duration::from_secs(30), "the job to start", || {
        marks.join("started").exists()
    });
    let agent_log = rig.path("agent-lab-a.log");
    wait_for(Duration::from_secs(20), "the session stream", || {
        std::fs::read_to_string(&agent_log).is_ok_and(|l| l.contains("session stream open"))
    });

    steps.at("an admin cancels it");
    let t0 = Instant::now();
    c.admin
        .cancel_job(v1::CancelJobRequest {
            job,
            reason: "not wanted".into(),
        })
        .await
        .expect("cancel");
    wait_for(Duration::from_secs(5), "the agent to stop the job", || {
        std::fs::read_to_string(&agent_log)
            .is_ok_and(|l| l.contains("the coordinator cancelled jobs"))
    });
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    let n = wait_node(&mut c, job, Duration::from_secs(10), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Incomplete as i32, "{n:?}");
    println!("cancel reached the running agent {took:?} after CancelJob (heartbeats 15 s apart)");
}
