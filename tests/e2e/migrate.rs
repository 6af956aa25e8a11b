//! Moving an installation from SQLite to PostgreSQL, as the README says: stop the
//! coordinator, point `store:` at an empty PostgreSQL database, run
//! `labwire-coordinator migrate --from sqlite://PATH`, start it again. The agent (still
//! running), a client token and an event subscriber carry on where they were: the old jobs,
//! their results and logs are there with the same ids, and new events continue the old
//! sequence numbers.

use crate::common;

use common::*;
use labwire_proto::v1;
use std::process::Command;
use std::time::Duration;

const PASS_FAIL: &[&str] = &[
    "sh",
    "-c",
    "echo \"log of $1\"; exit \"$2\"",
    "sh",
    "{params.msg}",
    "{params.code}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqlite_store_moves_to_postgres_and_everyone_carries_on() {
    let mut steps = Steps::new();
    let rig = Rig::with_store("leases: {duration: 10s, heartbeat: 1s}\n", false);
    let _keep = rig.keep_on_failure();
    let mut coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    rig.agent_config("lab-a", &[("host-1", PASS_FAIL, &["mv"])], "");
    let _agent = rig.start_agent("lab-a");
    let ci_token = rig.create_token("ci", "submit");
    let mut c = rig.client().await;

    let mut before = Vec::new();
    for (msg, code) in [("one", "0"), ("two", "1"), ("three", "0")] {
        let job = submit(&mut c, msg, &["mv"], &[("msg", msg), ("code", code)]).await;
        let n = wait_node(&mut c, job, Duration::from_secs(30), is_done).await;
        before.push((job, msg, n.result));
    }
    // The newest event number a subscriber has seen.
    steps.at("The newest event number a subscriber has seen");
    let mut s = c
        .events
        .subscribe(v1::SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let mut last_seen = 0;
    while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_millis(500), s.message()).await
    {
        last_seen = e.seq;
    }
    assert!(last_seen > 0);
    drop((s, c));
    assert!(
        coord.terminate(Duration::from_secs(15)).is_some(),
        "the coordinator stops"
    );

    // Move: point the config at an empty PostgreSQL database and copy.
    steps.at("Move");
    let db = labwire_testpg::database();
    let cfg_path = rig.path("coordinator.yaml");
    let cfg = std::fs::read_to_string(&cfg_path).expect("config");
    std::fs::write(&cfg_path, format!("store: {}\n{cfg}", db.url)).expect("write config");
    let sqlite = rig.path("coordinator/labwire.db");
    let out = run_ok(
        Command::new(COORDINATOR)
            .arg("--config")
            .arg(&cfg_path)
            .arg("migrate")
            .arg("--from")
            .arg(format!("sqlite://{}", sqlite.display())),
    );
    assert!(out.contains("applied 0001_initial"), "{out}");
    assert!(out.contains("nodes: ") && out.contains("copied "), "{out}");
    // A second copy is refused: the target is not empty any more.
    steps.at("A second copy is refused");
    let again = Command::new(COORDINATOR)
        .arg("--config")
        .arg(&cfg_path)
        .args(["migrate", "--from"])
        .arg(format!("sqlite://{}", sqlite.display()))
        .output()
        .expect("run migrate");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // Start on PostgreSQL; the agent reconnects by itself.
    steps.at("Start on PostgreSQL");
    let _coord = rig.start_coordinator();
    wait_for(
        Duration::from_secs(20),
        "the coordinator to run on PostgreSQL",
        || {
            std::fs::read_to_string(rig.path("coordinator.log"))
                .is_ok_and(|l| l.contains("coordinator listening") && l.contains("postgres://"))
        },
    );
    let mut c = rig.client().await;
    for (job, msg, result) in &before {
        let n = c
            .nodes
            .get_node(v1::GetNodeRequest { id: *job })
            .await
            .expect("old node")
            .into_inner();
        assert_eq!(n.result, *result, "{n:?}");
        assert!(
            read_log(&mut c, *job)
                .await
                .contains(&format!("log of {msg}"))
        );
    }
    // The subscriber resumes from its number: the next events follow it without a gap.
    steps.at("The subscriber resumes from its number");
    let mut s = c
        .events
        .subscribe(v1::SubscribeRequest {
            after_seq: last_seen,
            ..Default::default()
        })
        .await
        .expect("resubscribe")
        .into_inner();
    // The client token still works, and new work runs on the agent that was there all along.
    steps.at(
        "The client token still works, and new work runs on the agent that was there all along",
    );
    let mut ci = rig.client_with(&ci_token).await;
    let job = submit(&mut ci, "four", &["mv"], &[("msg", "four"), ("code", "0")]).await;
    assert!(job > before.iter().map(|b| b.0).max().unwrap());
    let n = wait_node(&mut c, job, Duration::from_secs(60), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    let first = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an event")
        .expect("stream")
        .expect("event");
    assert_eq!(first.seq, last_seen + 1);
    assert!(sqlite.exists(), "the SQLite file is left as it was");
}
