//! Reliability under crashes and outages, with real processes: the coordinator killed with
//! SIGKILL while jobs flow, an agent killed and restarted, the coordinator down while a job
//! runs, and a lab trying to act on another lab's job.

use crate::common;

use common::*;
use labwire_proto::v1;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

async fn done_count(c: &mut labwire::client::Clients) -> usize {
    let mut n = 0;
    let mut cursor = 0;
    loop {
        let Ok(page) = c
            .nodes
            .query_nodes(v1::QueryNodesRequest {
                kind: v1::NodeKind::Job as i32,
                state: v1::NodeState::Done as i32,
                limit: 1000,
                cursor,
                ..Default::default()
            })
            .await
        else {
            return 0;
        };
        let page = page.into_inner();
        n += page.nodes.len();
        if page.next_cursor == 0 {
            return n;
        }
        cursor = page.next_cursor;
    }
}

/// Waits until `want` jobs are done, reconnecting when the coordinator is away.
async fn wait_done_count(rig: &Rig, want: usize, within: Duration) -> usize {
    let end = Instant::now() + within;
    loop {
        let mut c = rig.client().await;
        let n = done_count(&mut c).await;
        if n >= want || Instant::now() > end {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_jobs_survive_coordinator_and_agent_kills() {
    const JOBS: usize = 500;
    let rig = Rig::new("leases: {duration: 5s, heartbeat: 1s, max_retries: 5}\n");
    let _keep = rig.keep_on_failure();
    let mut coord = rig.start_coordinator();
    let cmd: &[&str] = &[
        "sh",
        "-c",
        "echo \"job $LABWIRE_JOB_ID on $LABWIRE_DEVICE\"",
    ];
    let mut agents = Vec::new();
    for lab in ["lab-1", "lab-2", "lab-3"] {
        rig.issue_lab(lab);
        let devs: Vec<(String, &[&str], &[&str])> = (0..4)
            .map(|i| (format!("{lab}-dev{i}"), cmd, &["flow"][..]))
            .collect();
        let devs: Vec<(&str, &[&str], &[&str])> =
            devs.iter().map(|(n, c, t)| (n.as_str(), *c, *t)).collect();
        rig.agent_config(lab, &devs, "limits: {poll_wait: 5s, drain_timeout: 10s}\n");
        agents.push(rig.start_agent(lab));
    }
    let mut c = rig.client().await;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        ids.push(submit(&mut c, &format!("flow-{i}"), &["flow"], &[]).await);
    }

    // Kill the coordinator twice, and one agent once, while the jobs flow.
    let n = wait_done_count(&rig, 100, Duration::from_secs(120)).await;
    eprintln!("{n} jobs done: SIGKILL coordinator");
    coord.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord.child.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    coord = rig.start_coordinator();
    let n = wait_done_count(&rig, 220, Duration::from_secs(120)).await;
    eprintln!("{n} jobs done: SIGKILL agent lab-2");
    agents[1].signal(nix::sys::signal::Signal::SIGKILL);
    let _ = agents[1].child.wait();
    agents[1] = rig.start_agent("lab-2");
    let n = wait_done_count(&rig, 330, Duration::from_secs(120)).await;
    eprintln!("{n} jobs done: SIGKILL coordinator again");
    coord.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord.child.wait();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _coord = rig.start_coordinator();
    let n = wait_done_count(&rig, JOBS, Duration::from_secs(240)).await;
    assert_eq!(n, JOBS, "not every job finished");

    // Every job is done exactly once, every result stored once, and the event log has no gap.
    let mut c = rig.client().await;
    let mut s = c
        .events
        .subscribe(v1::SubscribeRequest {
            after_seq: 0,
            kind: 0,
            catch_up_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    let mut done_events: HashMap<i64, usize> = HashMap::new();
    let mut test_nodes: HashMap<i64, usize> = HashMap::new();
    while let Some(e) = s.message().await.unwrap() {
        seqs.push(e.seq);
        let node = e.node.unwrap();
        if node.kind == v1::NodeKind::Job as i32
            && node.state == v1::NodeState::Done as i32
            && e.previous_state != v1::NodeState::Done as i32
            && e.op == "update"
        {
            *done_events.entry(node.id).or_default() += 1;
        }
        if node.kind == v1::NodeKind::Test as i32 && e.op == "create" {
            *test_nodes.entry(node.parent).or_default() += 1;
        }
    }
    let gaps = seqs.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert_eq!(seqs.first(), Some(&1));
    assert_eq!(gaps, 0, "the event log has gaps");
    let mut results: BTreeMap<String, usize> = BTreeMap::new();
    let mut retried = 0;
    for id in &ids {
        assert_eq!(
            done_events.get(id),
            Some(&1),
            "job {id} went done {:?} times",
            done_events.get(id)
        );
        assert!(
            test_nodes.get(id).copied().unwrap_or(0) <= 1,
            "job {id} has its result stored twice"
        );
        let n = c
            .nodes
            .get_node(v1::GetNodeRequest { id: *id })
            .await
            .unwrap()
            .into_inner();
        let d = data(&n);
        let key = match d.get("error_code").and_then(|v| v.as_str()) {
            Some(code) => format!("{} ({code})", labwire::commands::result_name(&n)),
            None => labwire::commands::result_name(&n).to_string(),
        };
        *results.entry(key).or_default() += 1;
        if n.retry_counter > 0 {
            retried += 1;
        }
        if n.result == v1::NodeResult::Pass as i32 {
            assert_eq!(
                test_nodes.get(id),
                Some(&1),
                "job {id} passed without its result tree"
            );
        }
    }
    println!(
        "fault test: {JOBS} jobs done exactly once; results {results:?}; {retried} retried after a lost lease; \
         {} events, sequence 1..={} without gaps; results stored once",
        seqs.len(),
        seqs.last().copied().unwrap_or(0)
    );
    // Only jobs that were running on the killed agent may be incomplete.
    let incomplete: usize = results
        .iter()
        .filter(|(k, _)| k.starts_with("incomplete"))
        .map(|(_, v)| v)
        .sum();
    assert!(
        incomplete <= 4,
        "more jobs incomplete than the killed agent was running: {results:?}"
    );
    assert!(
        results
            .keys()
            .all(|k| k == "pass" || k == "incomplete (agent_restart)"),
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_made_during_a_coordinator_outage_is_delivered_afterwards() {
    let rig = Rig::new("leases: {duration: 10s, heartbeat: 1s}\n");
    let _keep = rig.keep_on_failure();
    let mut coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    let slow: &[&str] = &[
        "sh",
        "-c",
        "echo started; sleep 3; echo 'KTAP version 1'; echo 1..1; echo 'ok 1 survived_the_outage'; echo finished",
    ];
    rig.agent_config("lab-a", &[("dev", slow, &["outage"])], "");
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let job = submit(&mut c, "outage", &["outage"], &[]).await;
    wait_node(&mut c, job, Duration::from_secs(30), |n| {
        data(n).contains_key("device")
    })
    .await;
    // The coordinator goes away while the job runs, and stays away after it finished.
    coord.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord.child.wait();
    let journal = rig
        .path("labs/lab-a/state/jobs")
        .join(format!("{job}-1"))
        .join("console.log");
    wait_for(
        Duration::from_secs(30),
        "the job to finish on the agent",
        || {
            std::fs::read_to_string(&journal)
                .map(|s| s.contains("command finished"))
                .unwrap_or(false)
        },
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _coord = rig.start_coordinator();
    let mut c = rig.client().await;
    let n = wait_node(&mut c, job, Duration::from_secs(60), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    let log = read_log(&mut c, job).await;
    assert!(log.contains("started") && log.contains("finished"), "{log}");
    let kids = c
        .nodes
        .query_nodes(v1::QueryNodesRequest {
            name: "survived_the_outage".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(kids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_cannot_act_on_another_labs_job() {
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let a = rig.issue_lab("lab-a");
    let b = rig.issue_lab("lab-b");
    let mut c = rig.client().await;
    let job = submit(&mut c, "mine", &[], &[]).await;
    // Lab A registers with a device and takes the job.
    let mut ca = rig.agent_client(Some(&a)).await.unwrap();
    let dev = v1::Device {
        name: "d".into(),
        device_type: "lab-host".into(),
        driver: "shell".into(),
        health: v1::DeviceHealth::Good as i32,
        ..Default::default()
    };
    let sa = ca
        .register(v1::RegisterRequest {
            devices: vec![dev.clone()],
            free_slots: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got = ca
        .acquire_job(v1::AcquireJobRequest {
            session: sa.session.clone(),
            free_devices: vec!["d".into()],
            wait_ms: 5000,
        })
        .await
        .unwrap()
        .into_inner()
        .assignment
        .expect("lab A gets the job");
    let jr = got.job.unwrap();
    assert_eq!(jr.job, job);
    // Lab B tries everything on it.
    let mut cb = rig.agent_client(Some(&b)).await.unwrap();
    let sb = cb
        .register(v1::RegisterRequest {
            devices: vec![dev],
            free_slots: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = cb
        .report_result(v1::ReportResultRequest {
            job: Some(jr),
            result: v1::NodeResult::Pass as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = cb
        .append_log(v1::AppendLogRequest {
            job: Some(jr),
            offset: 0,
            data: b"forged".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = cb
        .start_job(v1::StartJobRequest {
            session: sb.session.clone(),
            job: Some(jr),
            device: "d".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = cb
        .reject_job(v1::RejectJobRequest {
            session: sb.session.clone(),
            job: Some(jr),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    // B cannot use A's session either.
    let e = cb
        .acquire_job(v1::AcquireJobRequest {
            session: sa.session.clone(),
            free_devices: vec!["d".into()],
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // An oversized message is refused before it is read (the limit is 16 MiB).
    let e = ca
        .append_log(v1::AppendLogRequest {
            job: Some(jr),
            offset: 0,
            data: vec![b'x'; 17 << 20],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    // A still can.
    ca.append_log(v1::AppendLogRequest {
        job: Some(jr),
        offset: 0,
        data: b"real".to_vec(),
    })
    .await
    .unwrap();
    ca.report_result(v1::ReportResultRequest {
        job: Some(jr),
        result: v1::NodeResult::Pass as i32,
        log_length: 4,
        ..Default::default()
    })
    .await
    .unwrap();
    let n = wait_node(&mut c, job, Duration::from_secs(5), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32);
    assert_eq!(read_log(&mut c, job).await, "real");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_devices_without_dropping_the_running_job() {
    let rig = Rig::new("leases: {duration: 10s, heartbeat: 1s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    let slow: &[&str] = &[
        "sh",
        "-c",
        "echo started on $LABWIRE_DEVICE; sleep 4; echo finished",
    ];
    let quick: &[&str] = &["sh", "-c", "echo quick on $LABWIRE_DEVICE"];
    rig.agent_config("lab-a", &[("old-dev", slow, &["old"])], "");
    let agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let running = submit(&mut c, "long", &["old"], &[]).await;
    wait_node(&mut c, running, Duration::from_secs(30), |n| {
        data(n).contains_key("device")
    })
    .await;

    // A broken file is refused and changes nothing.
    let cfg = rig.path("labs/lab-a/agent.yaml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{good}  - name: broken\n    device_type: no-such-type\n"),
    )
    .unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Replace the device list while the job runs: the old device goes, a new one comes.
    rig.agent_config("lab-a", &[("new-dev", quick, &["new"])], "");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let fresh = submit(&mut c, "fresh", &["new"], &[]).await;
    let f = wait_node(&mut c, fresh, Duration::from_secs(30), is_done).await;
    assert_eq!(f.result, v1::NodeResult::Pass as i32, "{f:?}");
    assert_eq!(data(&f)["device"], "new-dev");
    // The job that was running on the removed device finished normally.
    let r = wait_node(&mut c, running, Duration::from_secs(30), is_done).await;
    assert_eq!(r.result, v1::NodeResult::Pass as i32, "{r:?}");
    assert!(read_log(&mut c, running).await.contains("finished"));
    // The old device is no longer offered: a job for it waits in the queue.
    let orphan = submit(&mut c, "orphan", &["old"], &[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let o = c
        .nodes
        .get_node(v1::GetNodeRequest { id: orphan })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(o.state, v1::NodeState::Running as i32);
    assert!(!data(&o).contains_key("device"), "{o:?}");
    let labs = c
        .admin
        .list_labs(v1::ListLabsRequest {})
        .await
        .unwrap()
        .into_inner()
        .labs;
    let names: Vec<&str> = labs[0].devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["new-dev"]);
    let log = std::fs::read_to_string(rig.path("agent-lab-a.log")).unwrap();
    assert!(log.contains("configuration refused"), "{log}");
}
