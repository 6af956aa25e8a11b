//! Hostile input against the job queue (issue 17), with real processes: a submit token that
//! tries to end a job an agent holds, a queue row an older version let such a token damage,
//! a lab revoked by the command line while the coordinator runs, and the modes of the files
//! the coordinator creates. Each test names the defect it guards against.

use crate::common;

use common::*;
use labwire_proto::v1;
use reqwest::StatusCode;
use std::process::Command;
use std::time::{Duration, Instant};

/// The HTTP side on a free port.
const HTTP: &str = "http: {listen: 127.0.0.1:0}\n";

/// Waits until job `id` is leased (to any lab) and returns the lab.
async fn leased_to(c: &mut labwire::client::Clients, id: i64, within: Duration) -> String {
    let end = Instant::now() + within;
    loop {
        let jobs = c
            .admin
            .list_jobs(v1::ListJobsRequest {
                status: v1::JobStatus::Leased as i32,
                limit: 1000,
            })
            .await
            .expect("list jobs")
            .into_inner()
            .jobs;
        if let Some(j) = jobs
            .iter()
            .find(|j| j.node.as_ref().is_some_and(|n| n.id == id))
        {
            return j.lease_owner.clone();
        }
        assert!(Instant::now() < end, "job {id} was never leased");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `lab` has a live agent session, as ListLabs says.
async fn connected(c: &mut labwire::client::Clients, lab: &str) -> bool {
    c.admin
        .list_labs(v1::ListLabsRequest {})
        .await
        .expect("list labs")
        .into_inner()
        .labs
        .iter()
        .any(|l| l.name == lab && l.connected)
}

/// A raw Register of `lab`'s agent (what every agent does at start): the call that failed
/// for every lab once one queue row was bad.
async fn register(rig: &Rig, lab: &str) -> Result<v1::RegisterResponse, tonic::Status> {
    let bundle = rig.path(&format!("labs/{lab}"));
    let mut a = rig
        .agent_client(Some(&bundle))
        .await
        .expect("connect agent");
    a.register(v1::RegisterRequest {
        free_slots: 1,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn put_node(
    rig: &Rig,
    token: &str,
    id: i64,
    body: serde_json::Value,
) -> (StatusCode, String) {
    let resp = rig
        .http_client()
        .put(format!("{}/node/{id}", rig.http_url()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("PUT");
    let st = resp.status();
    (st, resp.text().await.expect("body"))
}

/// Issue 17 item 1: `PUT /node/{id} {"state":"done"}` by a submit token on a job an agent
/// holds left its queue entry leased, and from then on every Register failed. Now the
/// change is refused (409 / FAILED_PRECONDITION, naming the rule), data that is not the
/// queue's may still be added, the job finishes normally, and agents register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_token_cannot_end_a_leased_job_and_every_agent_still_registers() {
    let mut steps = Steps::new();
    let rig = Rig::new(&format!("{HTTP}leases: {{duration: 6s, heartbeat: 1s}}\n"));
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    for lab in ["lab-a", "lab-b"] {
        rig.issue_lab(lab);
    }
    let slow: &[&str] = &["sh", "-c", "sleep 3; echo done"];
    rig.agent_config("lab-a", &[("a1", slow, &["hostile"])], "");
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let job = submit(&mut c, "held", &["hostile"], &[]).await;
    assert_eq!(
        leased_to(&mut c, job, Duration::from_secs(30)).await,
        "lab-a"
    );

    let submitter = rig.create_token("ci-bot", "submit");
    let (st, body) = put_node(
        &rig,
        &submitter,
        job,
        serde_json::json!({"state": "done", "result": "pass"}),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("job queue") && body.contains("cancel"),
        "{body}"
    );
    let (st, body) = put_node(
        &rig,
        &submitter,
        job,
        serde_json::json!({"data": {"error_code": "forged"}}),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("data.error_code"), "{body}");
    // Data the queue does not keep may still be added (for other pipeline services).
    steps.at("Data the queue does not keep may still be added (for other pipeline services)");
    let (st, body) = put_node(
        &rig,
        &submitter,
        job,
        serde_json::json!({"data": {"triage": "looked at"}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // The same over gRPC.
    steps.at("The same over gRPC");
    let mut s = rig.client_with(&submitter).await;
    let e = s
        .nodes
        .update_node(v1::UpdateNodeRequest {
            id: job,
            state: v1::NodeState::Done as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("job queue"), "{e:?}");

    // Every lab still registers, and the job ends as its agent reports.
    steps.at("Every lab still registers, and the job ends as its agent reports");
    register(&rig, "lab-b").await.expect("lab-b registers");
    let n = wait_node(&mut c, job, Duration::from_secs(30), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    assert_eq!(data(&n)["triage"], "looked at");
    register(&rig, "lab-b")
        .await
        .expect("lab-b registers again");
}

/// Issue 17 item 1, the rows already damaged: a job whose node ended outside the queue while
/// its entry stayed leased (what an older version let a submit token do). On restart the
/// coordinator closes the entry; the lab's agent, which no longer holds the job, registers
/// (that Register sweeps the lab's leases, which used to fail on the row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_row_damaged_by_an_older_version_is_repaired_and_register_works() {
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 60s, heartbeat: 1s}\n");
    let _keep = rig.keep_on_failure();
    let mut coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    let slow: &[&str] = &["sleep", "600"];
    rig.agent_config("lab-a", &[("a1", slow, &["hostile"])], "");
    let mut agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let job = submit(&mut c, "damaged", &["hostile"], &[]).await;
    assert_eq!(
        leased_to(&mut c, job, Duration::from_secs(30)).await,
        "lab-a"
    );
    drop(c);
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = agent.child.wait();
    coord.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord.child.wait();

    // Damage the row the way the old PUT did: the node done, the entry still leased.
    steps.at("Damage the row the way the old PUT did");
    let store = open_rig_store(&rig);
    store
        .write_blocking(move |w| {
            w.update_node(
                labwire_coordinator::model::NodeId(job),
                labwire_coordinator::store::NodeUpdate {
                    state: Some(labwire_coordinator::model::NodeState::Done),
                    result: Some(labwire_common::NodeResult::Pass),
                    ..Default::default()
                },
            )
        })
        .expect("damage the row");
    drop(store);

    let _coord = rig.start_coordinator();
    // The restarted agent holds nothing: its Register expires the lab's leases and sweeps.
    steps.at("The restarted agent holds nothing");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match register(&rig, "lab-a").await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < end, "Register keeps failing: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = rig.client().await;
    let finished = c
        .admin
        .list_jobs(v1::ListJobsRequest {
            status: v1::JobStatus::Finished as i32,
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(
        finished
            .iter()
            .any(|j| j.node.as_ref().is_some_and(|n| n.id == job)),
        "the damaged entry was not closed: {finished:?}"
    );
    let n = c
        .nodes
        .get_node(v1::GetNodeRequest { id: job })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        n.result,
        v1::NodeResult::Pass as i32,
        "the node is left as it was"
    );
}

/// The rig's store, opened by this test process (the coordinator is stopped).
fn open_rig_store(rig: &Rig) -> labwire_coordinator::store::Store {
    use labwire_coordinator::store::{Location, Schema, Store};
    let loc = match &rig.pg {
        Some(db) => Location::Postgres(db.url.clone()),
        None => Location::Sqlite(rig.path("coordinator/labwire.db")),
    };
    Store::connect(
        &loc,
        labwire_coordinator::clock::Clock::system(),
        Schema::Check,
    )
    .expect("open the rig's store")
}

/// Issue 17 item 6: `labwire-coordinator ca revoke` (a separate process) while the
/// coordinator runs requeued the lab's jobs in the database only; the running dispatcher
/// never offered them again until a restart. Now the coordinator hears of the revocation
/// through the store: the job goes to the other lab at once (its lease is a minute long, so
/// no expiry helps), and the revoked lab's sessions end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_revoked_from_the_command_line_has_its_jobs_offered_again_at_once() {
    let rig = Rig::new("leases: {duration: 60s, heartbeat: 1s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    for lab in ["lab-a", "lab-b"] {
        rig.issue_lab(lab);
    }
    let slow: &[&str] = &["sleep", "600"];
    let quick: &[&str] = &["sh", "-c", "echo ran on $LABWIRE_DEVICE"];
    rig.agent_config("lab-a", &[("a1", slow, &["revoke"])], "");
    rig.agent_config("lab-b", &[("b1", quick, &["revoke"])], "");
    let _agent_a = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let job = submit(&mut c, "moved", &["revoke"], &[]).await;
    assert_eq!(
        leased_to(&mut c, job, Duration::from_secs(30)).await,
        "lab-a"
    );
    let _agent_b = rig.start_agent("lab-b");
    wait_for_async(Duration::from_secs(20), "lab-b to connect", || async {
        connected(&mut rig.client().await, "lab-b").await
    })
    .await;

    let revoked_at = Instant::now();
    let out = run_ok(
        Command::new(COORDINATOR)
            .arg("--config")
            .arg(rig.path("coordinator.yaml"))
            .args(["ca", "revoke", "lab-a"]),
    );
    assert!(out.contains("revoked"), "{out}");
    let n = wait_node(&mut c, job, Duration::from_secs(20), is_done).await;
    let took = revoked_at.elapsed();
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    assert_eq!(data(&n)["lab"], "lab-b", "{n:?}");
    assert!(
        took < Duration::from_secs(20),
        "the job waited {took:?} after the revocation"
    );
    println!("revoked from the command line: the job finished on lab-b {took:?} later");
    wait_for_async(
        Duration::from_secs(10),
        "lab-a's session to end",
        || async { !connected(&mut rig.client().await, "lab-a").await },
    )
    .await;
}

/// Like [`wait_for`], for an async condition.
async fn wait_for_async<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Issue 17 item 8: run by hand with a permissive umask, the coordinator created its data
/// folder, database and keys readable by everyone. Now folders are 0700 and the database,
/// keys and token files 0600 whatever the umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_the_coordinator_creates_are_private_even_with_umask_000() {
    let mut steps = Steps::new();
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("labwire-modes-")
        .tempdir()
        .unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let pg = (std::env::var("LABWIRE_TEST_STORE").as_deref() == Ok("postgres"))
        .then(labwire_testpg::database);
    let store = pg
        .as_ref()
        .map(|db| format!("store: {}\n", db.url))
        .unwrap_or_default();
    let cfg = dir.path().join("coordinator.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {}\npublic_url: https://127.0.0.1:{port}\n{store}",
            data.display()
        ),
    )
    .unwrap();
    // Every command through `sh -c 'umask 000; exec ...'`.
    steps.at("Every command through `sh -c 'umask 000");
    let with_umask = |args: &[&str]| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("umask 000; exec \"$@\"")
            .arg("sh")
            .arg(COORDINATOR)
            .arg("--config")
            .arg(&cfg)
            .args(args);
        cmd
    };
    if pg.is_some() {
        run_ok(&mut with_umask(&["migrate"]));
    }
    let token = dir.path().join("secrets/admin.token");
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    run_ok(&mut with_umask(&[
        "ca",
        "init",
        "--token-file",
        token.to_str().unwrap(),
    ]));
    let bundle = dir.path().join("lab-a");
    run_ok(&mut with_umask(&[
        "ca",
        "issue-agent",
        "lab-a",
        "--out",
        bundle.to_str().unwrap(),
    ]));
    let addr = dir.path().join("addr");
    let child = with_umask(&["serve", "--addr-file", addr.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _coord = Proc {
        child,
        name: "coordinator".into(),
    };
    // The addr file is written when the port is open; the store (and its WAL file) a
    // moment later.
    steps.at("The addr file is written when the port is open");
    let wal = data.join("labwire.db-wal");
    wait_for(Duration::from_secs(20), "the coordinator to run", || {
        addr.exists() && (pg.is_some() || wal.exists())
    });
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let mut want = vec![
        (data.clone(), 0o700),
        (data.join("pki"), 0o700),
        (data.join("pki/ca.key"), 0o600),
        (data.join("pki/server.key"), 0o600),
        (token.clone(), 0o600),
        (bundle.clone(), 0o700),
        (bundle.join("agent.key"), 0o600),
    ];
    if pg.is_none() {
        want.push((data.join("labwire.db"), 0o600));
        // Written by the serving coordinator (WAL mode).
        want.push((data.join("labwire.db-wal"), 0o600));
    }
    for (path, m) in want {
        assert_eq!(
            mode(&path),
            m,
            "{} is {:o}, expected {m:o}",
            path.display(),
            mode(&path)
        );
    }
}
