//! End-to-end tests of the walking skeleton: a real coordinator and real agents as processes,
//! over real mutual TLS on loopback, with a real SQLite store.

use crate::common;

use common::*;
use labwire_proto::v1;
use std::time::Duration;

const PASS_FAIL: &[&str] = &[
    "sh",
    "-c",
    "echo \"start $1\"; echo \"to stderr\" >&2; exit \"$2\"",
    "sh",
    "{params.msg}",
    "{params.code}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_pass_and_fail_with_logs_and_survive_a_coordinator_restart() {
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 10s, heartbeat: 1s}\n");
    let _keep = rig.keep_on_failure();
    let mut coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    rig.agent_config("lab-a", &[("host-1", PASS_FAIL, &["e2e"])], "");
    let mut agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;

    // A parameter full of shell metacharacters is passed as one argument, never parsed.
    steps.at("A parameter full of shell metacharacters is passed as one argument, never parsed");
    let pwned = rig.path("pwned");
    let evil = format!(
        "x; touch {p}; $(touch {p}) `touch {p}` && touch {p}",
        p = pwned.display()
    );
    let pass = submit(
        &mut c,
        "pass-job",
        &["e2e"],
        &[("msg", &evil), ("code", "0")],
    )
    .await;
    let fail = submit(
        &mut c,
        "fail-job",
        &["e2e"],
        &[("msg", "bye"), ("code", "3")],
    )
    .await;
    let p = wait_node(&mut c, pass, Duration::from_secs(30), is_done).await;
    let f = wait_node(&mut c, fail, Duration::from_secs(30), is_done).await;
    assert_eq!(p.result, v1::NodeResult::Pass as i32, "{p:?}");
    assert_eq!(f.result, v1::NodeResult::Fail as i32, "{f:?}");
    assert_eq!(data(&p)["lab"], "lab-a");
    assert_eq!(data(&p)["device"], "host-1");
    assert_eq!(data(&f)["exit_code"], 3);
    assert_eq!(
        p.artifacts.get("log").map(String::as_str),
        Some(format!("/logs/{pass}/1").as_str())
    );

    let log = read_log(&mut c, pass).await;
    assert!(log.contains(&format!("start {evil}")), "{log}");
    assert!(log.contains("to stderr"), "{log}");
    assert!(
        !pwned.exists(),
        "a job parameter was run by a shell on the lab host"
    );
    let flog = read_log(&mut c, fail).await;
    assert!(
        flog.contains("start bye") && flog.contains("exit code 3"),
        "{flog}"
    );

    // The result tree: one `exit-status` test under each job.
    steps.at("The result tree");
    let kids = c
        .nodes
        .query_nodes(v1::QueryNodesRequest {
            parent: fail,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(kids.len(), 1);
    assert_eq!(kids[0].name, "exit-status");
    assert_eq!(kids[0].result, v1::NodeResult::Fail as i32);
    assert_eq!(
        kids[0].path,
        vec!["fail-job".to_string(), "exit-status".to_string()]
    );

    // The coordinator dies hard and comes back on the same port: the agent registers again
    // and the next job runs.
    steps.at("The coordinator dies hard and comes back on the same port");
    coord.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord.child.wait();
    let _coord2 = rig.start_coordinator();
    let mut c = rig.client().await;
    let again = submit(
        &mut c,
        "after-restart",
        &["e2e"],
        &[("msg", "again"), ("code", "0")],
    )
    .await;
    let n = wait_node(&mut c, again, Duration::from_secs(60), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");

    // SIGTERM drains the agent and it exits 0.
    steps.at("SIGTERM drains the agent and it exits 0");
    let st = agent
        .terminate(Duration::from_secs(30))
        .expect("agent exits on SIGTERM");
    assert!(st.success(), "agent exit status {st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_and_good_clients_keep_working() {
    let mut steps = Steps::new();
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let good = rig.issue_lab("good-lab");
    let revoked = rig.issue_lab("gone-lab");
    let reg = || v1::RegisterRequest {
        agent_version: "test".into(),
        ..Default::default()
    };

    // No client certificate: the agent service refuses.
    steps.at("No client certificate");
    let mut anon = rig
        .agent_client(None)
        .await
        .expect("TLS without a client cert connects");
    let e = anon.register(reg()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("client certificate"), "{e:?}");

    // A certificate from another CA: refused in the handshake or at the first call.
    steps.at("A certificate from another CA");
    let other = Rig::new("");
    let foreign = other.issue_lab("good-lab");
    match rig.agent_client(Some(&foreign)).await {
        Err(_) => {}
        Ok(mut cl) => {
            let e = cl.register(reg()).await.unwrap_err();
            assert_ne!(e.code(), tonic::Code::Ok);
        }
    }

    // A revoked lab: its connections are closed at once, and a new one is refused.
    steps.at("A revoked lab");
    let mut gone = rig.agent_client(Some(&revoked)).await.unwrap();
    gone.register(reg())
        .await
        .expect("registered before revocation");
    let mut c = rig.client().await;
    let r = c
        .admin
        .revoke_lab(v1::RevokeLabRequest {
            lab: "gone-lab".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.certificates, 1);
    let mut e = gone.register(reg()).await.unwrap_err();
    if e.code() == tonic::Code::Unavailable {
        // The call met the connection the revocation closed; the next one connects again.
        e = gone.register(reg()).await.unwrap_err();
    }
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");

    // A bad token, and a token without the needed scope.
    steps.at("A bad token, and a token without the needed scope");
    let mut bad = rig.client_with("lwt_not-a-real-token").await;
    let e = bad
        .nodes
        .get_node(v1::GetNodeRequest { id: 1 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let reader = std::process::Command::new(COORDINATOR)
        .arg("--config")
        .arg(rig.path("coordinator.yaml"))
        .args(["token", "create", "reader", "--scope", "read"])
        .output()
        .unwrap();
    let reader_token = String::from_utf8(reader.stdout).unwrap();
    let mut ro = rig.client_with(reader_token.trim()).await;
    let e = ro
        .nodes
        .create_node(v1::CreateNodeRequest {
            node: Some(v1::Node {
                kind: v1::NodeKind::Checkout as i32,
                name: "c".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("needs `submit`"), "{e:?}");

    // An invalid state transition names the node and both states.
    steps.at("An invalid state transition names the node and both states");
    let node = c
        .nodes
        .create_node(v1::CreateNodeRequest {
            node: Some(v1::Node {
                kind: v1::NodeKind::Checkout as i32,
                name: "checkout".into(),
                state: v1::NodeState::Done as i32,
                result: v1::NodeResult::Pass as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap();
    let e = c
        .nodes
        .update_node(v1::UpdateNodeRequest {
            id: node.id,
            state: v1::NodeState::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        e.message(),
        format!(
            "node {}: state transition done -> running is not allowed",
            node.id
        )
    );

    // After all that, good clients still work on the same server.
    steps.at("After all that, good clients still work on the same server");
    let mut ok = rig.agent_client(Some(&good)).await.unwrap();
    let r = ok
        .register(reg())
        .await
        .expect("good lab registers")
        .into_inner();
    assert_eq!(r.lab, "good-lab");
    let n = ro
        .nodes
        .get_node(v1::GetNodeRequest { id: node.id })
        .await
        .expect("reader reads")
        .into_inner();
    assert_eq!(n.name, "checkout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_reconnects_gets_every_event_exactly_once() {
    let mut steps = Steps::new();
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let mut c = rig.client().await;

    let root = c
        .nodes
        .create_node(v1::CreateNodeRequest {
            node: Some(v1::Node {
                kind: v1::NodeKind::Checkout as i32,
                name: "checkout".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap();

    // Read the first events, then go away.
    steps.at("Read the first events, then go away");
    let mut s = c
        .events
        .subscribe(v1::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert_eq!(first.seq, 1);
    assert_eq!(first.op, "create");
    let last_seen = first.seq;
    drop(s);

    // 1,000 node changes while nobody listens: 500 creations and 500 updates.
    steps.at("1,000 node changes while nobody listens");
    for i in 0..500 {
        let n = c
            .nodes
            .create_node(v1::CreateNodeRequest {
                node: Some(v1::Node {
                    kind: v1::NodeKind::Test as i32,
                    name: format!("t{i}"),
                    parent: root.id,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .node
            .unwrap();
        c.nodes
            .update_node(v1::UpdateNodeRequest {
                id: n.id,
                state: v1::NodeState::Done as i32,
                result: v1::NodeResult::Pass as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    // Come back from the last sequence number: every event once, in order, then live ones.
    steps.at("Come back from the last sequence number");
    let mut s = c
        .events
        .subscribe(v1::SubscribeRequest {
            after_seq: last_seen,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    let (mut creates, mut updates) = (0, 0);
    while seqs.len() < 1000 {
        let e = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .unwrap();
        match e.op.as_str() {
            "create" => creates += 1,
            "update" => {
                updates += 1;
                assert_eq!(e.previous_state, v1::NodeState::Running as i32);
            }
            other => panic!("op {other}"),
        }
        seqs.push(e.seq);
    }
    assert_eq!(seqs, (last_seen + 1..=last_seen + 1000).collect::<Vec<_>>());
    assert_eq!((creates, updates), (500, 500));
    // Live delivery continues on the same stream.
    steps.at("Live delivery continues on the same stream");
    c.nodes
        .update_node(v1::UpdateNodeRequest {
            id: root.id,
            state: v1::NodeState::Available as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let live = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(live.seq, last_seen + 1001);
    assert_eq!(live.node.unwrap().id, root.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_loses_its_job_and_its_late_result_is_refused() {
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 3s, heartbeat: 500ms, max_retries: 2}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let slow: &[&str] = &[
        "sh",
        "-c",
        "echo \"run by $LABWIRE_DEVICE\"; sleep \"$1\"; echo finished",
        "sh",
        "{params.sleep}",
    ];
    let lab_a = rig.issue_lab("lab-a");
    rig.agent_config("lab-a", &[("a-dev", slow, &["lease"])], "");
    rig.issue_lab("lab-b");
    rig.agent_config("lab-b", &[("b-dev", slow, &["lease"])], "");
    let agent_a = rig.start_agent("lab-a");
    let mut c = rig.client().await;

    let job = submit(&mut c, "slow-job", &["lease"], &[("sleep", "6")]).await;
    let n = wait_node(&mut c, job, Duration::from_secs(30), |n| {
        data(n).get("device").and_then(|v| v.as_str()) == Some("a-dev")
    })
    .await;
    assert_eq!(n.retry_counter, 0);
    // Lab A stops heartbeating (frozen), lab B comes up: the lease expires and B gets the job.
    steps.at("Lab A stops heartbeating (frozen), lab B comes up");
    agent_a.signal(nix::sys::signal::Signal::SIGSTOP);
    let _agent_b = rig.start_agent("lab-b");
    let done = wait_node(&mut c, job, Duration::from_secs(60), is_done).await;
    assert_eq!(done.result, v1::NodeResult::Pass as i32, "{done:?}");
    assert_eq!(data(&done)["lab"], "lab-b");
    assert_eq!(done.retry_counter, 1);
    assert_eq!(data(&done)["attempt"], 2);
    let log = read_log(&mut c, job).await;
    assert!(log.contains("run by b-dev"), "{log}");

    // Lab A's late result for attempt 1 is refused, whatever it says.
    steps.at("Lab A's late result for attempt 1 is refused, whatever it says");
    let mut a = rig.agent_client(Some(&lab_a)).await.unwrap();
    let e = a
        .report_result(v1::ReportResultRequest {
            job: Some(v1::JobRef { job, attempt: 1 }),
            result: v1::NodeResult::Fail as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not leased to lab `lab-a`"), "{e:?}");
    // The real agent A wakes up, finishes, reports: also refused; the node keeps B's result.
    steps.at("The real agent A wakes up, finishes, reports");
    agent_a.signal(nix::sys::signal::Signal::SIGCONT);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = c
        .nodes
        .get_node(v1::GetNodeRequest { id: job })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.result, v1::NodeResult::Pass as i32);
    assert_eq!(data(&after)["lab"], "lab-b");
    let a_log = std::fs::read_to_string(rig.path("agent-lab-a.log")).unwrap();
    assert!(
        a_log.contains("refused") || a_log.contains("withdrew"),
        "agent A should learn it lost the job:\n{a_log}"
    );
}
