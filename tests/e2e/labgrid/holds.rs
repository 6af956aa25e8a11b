//! Holds on a real Labgrid place: a place someone else holds is not offered, and a job
//! that finds it held (taken while the job downloaded its artifacts) waits, then fails
//! untouched; an agent killed mid-job gives the place back
//! (powered off) when it restarts, with the attempt's log whole at the coordinator; one
//! stopped with SIGTERM gives it back before it exits.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_held_by_someone_else_is_not_offered_and_a_job_on_it_fails_place_unavailable() {
    // No retries: `place_unavailable` is an infrastructure error the coordinator would
    // otherwise retry; here the first attempt's end is what is checked.
    let rig = Rig::new("retries: {max: 0}\n");
    let _keep = rig.keep_on_failure();
    let lg = Labgrid::start(&rig);
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-held");
    let mut c = rig.client().await;

    // Inventory: a place someone holds is left out, and offered once it is released.
    lg.client_ok(OTHER_USER, &["-p", "board-1", "acquire"]);
    lg.agent_config(&rig, "lab-held", "10s", "5s");
    let _agent = rig.start_agent("lab-held");
    let end = Instant::now() + Duration::from_secs(60);
    while !read_file(&rig.path("agent-lab-held.log")).contains("registered with the coordinator") {
        assert!(Instant::now() < end, "the agent did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A while later, still nothing on offer.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(advertised(&mut c, "lab-held").await.is_empty());
    assert_eq!(
        lg.acquired().as_deref(),
        Some("labwire-test/alice"),
        "the agent left it alone"
    );
    lg.client_ok(OTHER_USER, &["-p", "board-1", "release"]);
    wait_advertised(&mut c, "lab-held", &["board-1"]).await;

    // Someone takes the place while a job on it downloads its artifacts (the place is
    // acquired only after that): the job finds it held, waits, then fails untouched. The
    // test's HTTP server holds the download until the other user has the place.
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/kernel", server.local_addr().unwrap());
    let (asked_tx, asked) = tokio::sync::oneshot::channel::<()>();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, _) = server.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf).await;
        let _ = asked_tx.send(());
        let _ = go_rx.await;
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nkernel")
            .await;
    });
    let mut spec = job("lg-held", &["echo never"], &[], 120);
    spec.artifacts = [(
        "kernel".to_string(),
        v1::Artifact {
            url,
            sha256: String::new(),
        },
    )]
    .into();
    let id = submit_spec(&mut c, spec).await;
    asked.await.expect("the agent downloads the artifact");
    lg.client_ok(OTHER_USER, &["-p", "board-1", "acquire"]);
    let started = Instant::now();
    let _ = go.send(());

    let n = wait_node(&mut c, id, Duration::from_secs(60), is_done).await;
    let log = read_log(&mut c, id).await;
    let d = data(&n);
    assert_eq!(n.result, v1::NodeResult::Incomplete as i32, "{d:?}\n{log}");
    assert_eq!(
        d.get("error_code").and_then(|v| v.as_str()),
        Some("place_unavailable"),
        "{d:?}\n{log}"
    );
    let msg = d.get("error_msg").and_then(|v| v.as_str()).unwrap_or("");
    assert!(
        msg.contains("labwire-test/alice"),
        "the error names the holder: {msg}"
    );
    assert!(
        log.contains("waiting up to 5s for the Labgrid place board-1"),
        "{log}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the job waited"
    );
    // Untouched: still held by the other user, never powered.
    assert_eq!(lg.acquired().as_deref(), Some("labwire-test/alice"));
    assert!(lg.power_log().is_empty(), "{:?}", lg.power_log());
    assert!(!log.contains("power on"), "{log}");
}

fn read_file(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_left_acquired_by_a_killed_agent_is_released_when_it_restarts() {
    // No retries: the interrupted job must end `agent_restart` here, not run again.
    let rig = Rig::new("retries: {max: 0}\n");
    let _keep = rig.keep_on_failure();
    let lg = Labgrid::start(&rig);
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-kill");
    lg.agent_config(&rig, "lab-kill", "2s", "30s");
    let mut agent = rig.start_agent("lab-kill");
    let mut c = rig.client().await;
    wait_advertised(&mut c, "lab-kill", &["board-1"]).await;

    let id = submit_spec(
        &mut c,
        job("lg-long", &["echo started-long-job", "sleep 600"], &[], 900),
    )
    .await;
    // Mid-job: the place is ours, the board on, the command running.
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let log = read_file(&rig.path(&format!("labs/lab-kill/state/jobs/{id}-1/console.log")));
        // The command's echo, then its output.
        if log.matches("started-long-job").count() >= 2 {
            break;
        }
        assert!(
            Instant::now() < end,
            "the job did not reach its command: {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lg.acquired().as_deref(), Some(AGENT_ID));
    assert_eq!(lg.power_log(), ["on"]);
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = agent.child.wait();
    // Nobody gave it back.
    assert_eq!(lg.acquired().as_deref(), Some(AGENT_ID));

    let mut agent = rig.start_agent("lab-kill");
    let end = Instant::now() + Duration::from_secs(60);
    while lg.acquired().is_some() {
        assert!(
            Instant::now() < end,
            "the restarted agent did not release the place"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        lg.power_log(),
        ["on", "off"],
        "powered off before the release"
    );
    let n = wait_node(&mut c, id, Duration::from_secs(60), is_done).await;
    let d = data(&n);
    assert_eq!(n.result, v1::NodeResult::Incomplete as i32, "{d:?}");
    assert_eq!(
        d.get("error_code").and_then(|v| v.as_str()),
        Some("agent_restart"),
        "{d:?}"
    );
    // The attempt's log is whole at the coordinator: what the killed agent wrote (the
    // command's echo and its output), then the restarted agent's note.
    let log = read_log(&mut c, id).await;
    assert!(log.contains("Linux version 6.1.0-labwire"), "{log}");
    assert_eq!(log.matches("started-long-job").count(), 2, "{log}");
    assert!(
        log.ends_with("[labwire] the agent restarted while the job ran; the log ends here\n"),
        "{log}"
    );
    // And the place is on offer again.
    wait_advertised(&mut c, "lab-kill", &["board-1"]).await;

    // SIGTERM mid-job: the agent drains (3s here), stops the job, powers the place off and
    // releases it before it exits.
    let id = submit_spec(
        &mut c,
        job("lg-term", &["echo started-term-job", "sleep 600"], &[], 900),
    )
    .await;
    let end = Instant::now() + Duration::from_secs(120);
    while read_file(&rig.path(&format!("labs/lab-kill/state/jobs/{id}-1/console.log")))
        .matches("started-term-job")
        .count()
        < 2
    {
        assert!(
            Instant::now() < end,
            "the second job did not reach its command"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lg.acquired().as_deref(), Some(AGENT_ID));
    let st = agent
        .terminate(Duration::from_secs(60))
        .expect("the agent exits");
    assert!(st.success(), "{st:?}");
    assert_eq!(lg.acquired(), None, "released before the agent exited");
    assert_eq!(lg.power_log(), ["on", "off", "on", "off"]);
    // The result went out before the agent exited.
    let n = wait_node(&mut c, id, Duration::from_secs(10), is_done).await;
    let d = data(&n);
    assert_eq!(n.result, v1::NodeResult::Incomplete as i32, "{d:?}");
    assert_eq!(
        d.get("error_code").and_then(|v| v.as_str()),
        Some("cancelled"),
        "{d:?}"
    );
}
