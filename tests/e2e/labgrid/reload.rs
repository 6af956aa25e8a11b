//! SIGHUP and the `labgrid:` section: a changed place entry applies in place (the session
//! with the Labgrid coordinator, the journal and any hold stay); a changed coordinator
//! address is not applied, and the agent's log says so.

use super::*;

fn agent_log(rig: &Rig, lab: &str) -> String {
    std::fs::read_to_string(rig.path(&format!("agent-{lab}.log"))).unwrap_or_default()
}

async fn wait_agent_log(rig: &Rig, lab: &str, needle: &str, times: usize) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let log = agent_log(rig, lab);
        if log.matches(needle).count() >= times {
            return log;
        }
        assert!(
            Instant::now() < end,
            "the agent never logged {needle:?}: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_changed_labgrid_entry_in_place() {
    let mut steps = Steps::new();
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let lg = Labgrid::start(&rig);
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-hup");
    lg.agent_config(&rig, "lab-hup", "10s", "30s");
    let path = rig.path("labs/lab-hup/agent.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    assert!(good.contains("board: scripted"), "{good}");

    steps.at("the entry names a tag no place has: nothing on offer");
    std::fs::write(&path, good.replace("board: scripted", "board: other")).unwrap();
    let agent = rig.start_agent("lab-hup");
    let mut c = rig.client().await;
    wait_agent_log(
        &rig,
        "lab-hup",
        "session with the Labgrid coordinator open",
        1,
    )
    .await;
    wait_agent_log(&rig, "lab-hup", "registered with the coordinator", 1).await;
    assert!(advertised(&mut c, "lab-hup").await.is_empty());

    steps.at("the board's tag and SIGHUP: the place is offered and runs a job");
    std::fs::write(&path, &good).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_advertised(&mut c, "lab-hup", &["board-1"]).await;
    let log = wait_agent_log(&rig, "lab-hup", "SIGHUP: configuration reloaded", 1).await;
    assert!(log.contains(r#""labgrid_applied":"[\"test\"]""#), "{log}");
    assert!(!log.contains("NOT applied"), "{log}");
    let id = submit_spec(&mut c, job("lg-hup", &["echo after-the-reload"], &[], 120)).await;
    let n = wait_node(&mut c, id, Duration::from_secs(120), is_done).await;
    let d = data(&n);
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{d:?}");
    // One session all along: the reload did not open another.
    assert_eq!(
        agent_log(&rig, "lab-hup")
            .matches("session with the Labgrid coordinator open")
            .count(),
        1
    );

    steps.at("another coordinator address is not applied, and the log says so");
    std::fs::write(&path, good.replace(&lg.address, "127.0.0.1:1")).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let log = wait_agent_log(&rig, "lab-hup", "NOT applied", 1).await;
    assert!(
        log.contains("test: its coordinator, client, env, user, host or command_timeout changed"),
        "{log}"
    );
    assert_eq!(advertised(&mut c, "lab-hup").await, ["board-1"]);
}
