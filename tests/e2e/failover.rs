//! An agent configured with several coordinator replicas fails over between them, with real
//! processes and real mutual TLS: replica A is killed with SIGKILL while a job runs, replica B
//! (another process on another port, over the same data folder and store) takes over, and the
//! agent carries on through B: it registers there, renews the running job's lease, delivers
//! the job's log and result, and takes new work.
//!
//! B is started only after A is dead, so this runs on SQLite (one process at a time) as well
//! as on PostgreSQL; tests/e2e/replicas.rs runs two replicas at once.

use crate::common;

use common::*;
use labwire_proto::v1;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The job's queue entry as the coordinator at `c` sees it.
async fn job_entry(c: &mut labwire::client::Clients, job: i64) -> Option<v1::Job> {
    c.admin
        .list_jobs(v1::ListJobsRequest {
            status: 0,
            limit: 1000,
        })
        .await
        .expect("list jobs")
        .into_inner()
        .jobs
        .into_iter()
        .find(|j| j.node.as_ref().is_some_and(|n| n.id == job))
}

fn lease_secs(j: &v1::Job) -> f64 {
    let t = j.lease_until.expect("a leased job has a lease expiry");
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

/// Whether an agent log line (JSON, or text on a terminal) says it left `from` for `to`.
fn switched(line: &str, from: &str, to: &str) -> bool {
    line.contains("switching to the next one")
        && (line.contains(&format!("\"from\":\"{from}\""))
            || line.contains(&format!("from={from}")))
        && (line.contains(&format!("\"to\":\"{to}\"")) || line.contains(&format!("to={to}")))
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fails_over_to_another_replica_and_the_running_job_carries_on() {
    const LEASE: f64 = 8.0;
    let rig = Rig::new("leases: {duration: 8s, heartbeat: 1s}\n");
    let _keep = rig.keep_on_failure();
    let mut coord_a = rig.start_coordinator();
    let port_b = free_port();
    // B is dialled by name, A by address: each must present a certificate valid for the host
    // in its own URL (the rig's server certificate has both `localhost` and 127.0.0.1).
    let (url_a, url_b) = (rig.url(), format!("https://localhost:{port_b}"));

    rig.issue_lab("lab-a");
    // Every run of a command leaves a line in `runs`; the long job goes on until the test
    // creates `release` (or a minute passed).
    let runs = rig.path("runs.txt");
    let release = rig.path("release");
    let (runs_arg, release_arg) = (runs.display().to_string(), release.display().to_string());
    let slow: &[&str] = &[
        "sh",
        "-c",
        "echo \"$LABWIRE_JOB_ID-$LABWIRE_JOB_ATTEMPT\" >> \"$1\"; echo started; i=0; \
         while [ ! -e \"$2\" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
         echo 'KTAP version 1'; echo 1..1; echo 'ok 1 ran_across_the_failover'; echo finished",
        "sh",
        &runs_arg,
        &release_arg,
    ];
    let quick: &[&str] = &[
        "sh",
        "-c",
        "echo \"$LABWIRE_JOB_ID-$LABWIRE_JOB_ATTEMPT\" >> \"$1\"; echo quick on $LABWIRE_DEVICE",
        "sh",
        &runs_arg,
    ];
    let cfg = rig.agent_config(
        "lab-a",
        &[("slow", slow, &["slow"]), ("quick", quick, &["quick"])],
        "",
    );
    let text = std::fs::read_to_string(&cfg).expect("agent config");
    let one = format!("  url: {url_a}\n");
    assert!(text.contains(&one), "{text}");
    std::fs::write(
        &cfg,
        text.replace(&one, &format!("  urls: [{url_a}, {url_b}]\n")),
    )
    .expect("write agent config");
    let _agent = rig.start_agent("lab-a");

    // A job runs, through A.
    let mut ca = rig.client().await;
    let job = submit(&mut ca, "failover", &["slow"], &[]).await;
    wait_node(&mut ca, job, Duration::from_secs(30), |n| {
        data(n).contains_key("device")
    })
    .await;
    wait_for(
        Duration::from_secs(10),
        "the job's command to start",
        || std::fs::read_to_string(&runs).is_ok_and(|s| !s.is_empty()),
    );
    let at_kill = job_entry(&mut ca, job).await.expect("the job on A");
    assert_eq!(at_kill.status, v1::JobStatus::Leased as i32, "{at_kill:?}");
    assert_eq!(at_kill.lease_owner, "lab-a");
    let lease_left_by_a = lease_secs(&at_kill);

    // A dies; B starts over the same database on another port.
    coord_a.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord_a.child.wait();
    let killed_at = now_secs();
    drop(ca);
    let _coord_b = rig.start_replica("b", port_b);
    // A starting coordinator gives every lease a grace period of one lease duration.
    let grace_end = now_secs() + LEASE;
    let mut cb = rig.client_at(port_b).await;

    // The agent says it switched to B, and B registers it.
    let agent_log = rig.path("agent-lab-a.log");
    wait_for(
        Duration::from_secs(30),
        "the agent to switch to replica B",
        || {
            std::fs::read_to_string(&agent_log)
                .is_ok_and(|s| s.lines().any(|l| switched(l, &url_a, &url_b)))
        },
    );
    wait_for(
        Duration::from_secs(30),
        "the agent to register with replica B",
        || {
            std::fs::read_to_string(rig.path("coordinator-b.log"))
                .is_ok_and(|s| s.contains("agent registered"))
        },
    );
    let switched_after = now_secs() - killed_at;

    // The lease A gave and the grace B gave at its start both run out, yet the job stays
    // leased, the same attempt, its lease moving on: the agent renews it through B.
    while now_secs() < lease_left_by_a.max(grace_end) + 1.0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut leases = Vec::new();
    for _ in 0..2 {
        let e = job_entry(&mut cb, job).await.expect("the job on B");
        assert_eq!(e.status, v1::JobStatus::Leased as i32, "{e:?}");
        assert_eq!(e.lease_owner, "lab-a");
        assert_eq!(e.attempt, 1, "{e:?}");
        assert!(
            lease_secs(&e) > now_secs(),
            "the lease was not renewed through B: A left it until kill+{:.1}s, B's grace until \
             kill+{:.1}s, now kill+{:.1}s, the lease kill+{:.1}s",
            lease_left_by_a - killed_at,
            grace_end - killed_at,
            now_secs() - killed_at,
            lease_secs(&e) - killed_at
        );
        leases.push(lease_secs(&e) - killed_at);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        leases[1] > leases[0],
        "the lease did not move on: {leases:?}"
    );
    std::fs::write(&release, "").expect("release the job");

    // The result and the whole log arrive through B.
    let n = wait_node(&mut cb, job, Duration::from_secs(60), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    assert_eq!(n.retry_counter, 0, "{n:?}");
    let log = read_log(&mut cb, job).await;
    // The command's own lines (its argv, echoed first, names them too).
    let lines: Vec<&str> = log.lines().collect();
    let at = |what: &str| lines.iter().position(|l| *l == what);
    assert!(
        at("started") < at("finished") && at("started").is_some(),
        "the log: {log}"
    );
    assert_eq!(
        lines.iter().filter(|l| **l == "started").count(),
        1,
        "the log: {log}"
    );
    let tests = cb
        .nodes
        .query_nodes(v1::QueryNodesRequest {
            name: "ran_across_the_failover".into(),
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .nodes;
    assert_eq!(tests.len(), 1, "{tests:?}");
    assert_eq!(tests[0].result, v1::NodeResult::Pass as i32);
    let fin = job_entry(&mut cb, job).await.expect("the job on B");
    assert_eq!(fin.status, v1::JobStatus::Finished as i32, "{fin:?}");
    assert_eq!(fin.attempt, 1, "{fin:?}");

    // Exactly once: the command ran one time, as attempt 1.
    let ran = std::fs::read_to_string(&runs).expect("runs");
    assert_eq!(ran, format!("{job}-1\n"));

    // New work goes through B too.
    let second = submit(&mut cb, "after-failover", &["quick"], &[]).await;
    let n2 = wait_node(&mut cb, second, Duration::from_secs(60), is_done).await;
    assert_eq!(n2.result, v1::NodeResult::Pass as i32, "{n2:?}");
    assert!(read_log(&mut cb, second).await.contains("quick on quick"));
    let ran = std::fs::read_to_string(&runs).expect("runs");
    assert_eq!(ran, format!("{job}-1\n{second}-1\n"));
    println!(
        "failover: the agent switched to replica B and registered there {switched_after:.1}s after \
         replica A was killed; job {job}'s lease ({LEASE}s) renewed through B (A left it until \
         kill+{:.1}s, B's start-up grace until kill+{:.1}s; B then had kill+{:.1}s and kill+{:.1}s); \
         result and log arrived through B; one attempt; a second job ran through B",
        lease_left_by_a - killed_at,
        grace_end - killed_at,
        leases[0],
        leases[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_starts_with_the_first_replica_that_answers() {
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    // Nobody listens on the first address.
    let dead = format!("https://127.0.0.1:{}", free_port());
    let cfg = rig.agent_config(
        "lab-a",
        &[("dev", &["sh", "-c", "echo hello from $LABWIRE_DEVICE"], &[])],
        "",
    );
    let text = std::fs::read_to_string(&cfg).expect("agent config");
    let one = format!("  url: {}\n", rig.url());
    assert!(text.contains(&one), "{text}");
    std::fs::write(
        &cfg,
        text.replace(&one, &format!("  urls: [{dead}, {}]\n", rig.url())),
    )
    .expect("write agent config");
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let job = submit(&mut c, "first-answers", &[], &[]).await;
    let n = wait_node(&mut c, job, Duration::from_secs(30), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    assert!(read_log(&mut c, job).await.contains("hello from dev"));
    let log = std::fs::read_to_string(rig.path("agent-lab-a.log")).expect("agent log");
    assert!(log.lines().any(|l| switched(l, &dead, &rig.url())), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("registered with the coordinator") && l.contains(&rig.url())),
        "{log}"
    );
}
