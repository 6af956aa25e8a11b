//! Two boards on two exporters of one Labgrid coordinator. The exporter of the board a job
//! runs on is killed mid-job: the agent sees its resources go on the coordinator's update
//! stream, withdraws the place and ends the job there `place_lost`; the job is retried on
//! the other board and passes. When the exporter is back, the first board is powered off
//! and released (the agent owed it that) and offered again.

use super::edges::wait_log;
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_killed_mid_job_moves_the_job_to_the_other_board() {
    let mut steps = Steps::new();
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let mut lg = Labgrid::start(&rig);
    let mut second = lg.add_board(&rig);
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-move");
    lg.agent_config(&rig, "lab-move", "10s", "30s");
    let _agent = rig.start_agent("lab-move");
    let mut c = rig.client().await;
    wait_advertised(&mut c, "lab-move", &["board-1", "board-2"]).await;

    steps.at("a job starts on one board; that board's exporter is killed");
    let id = submit_spec(
        &mut c,
        job(
            "lg-move",
            &["echo started-move-job", "sleep 6", "echo move-job-done"],
            &[],
            120,
        ),
    )
    .await;
    let log = wait_log(&mut c, id, "started-move-job", 2).await;
    let (first, other) = if log.contains("acquired Labgrid place board-1 ") {
        ("board-1", "board-2")
    } else {
        ("board-2", "board-1")
    };
    let killed = Instant::now();
    if first == "board-1" {
        lg.kill_exporter();
    } else {
        second.kill_exporter();
    }
    wait_advertised(&mut c, "lab-move", &[other]).await;
    let withdrawn = killed.elapsed();

    steps.at("the job is retried on the other board and passes there");
    let n = wait_node(&mut c, id, Duration::from_secs(120), is_done).await;
    let log = read_log(&mut c, id).await;
    let d = data(&n);
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{d:?}\n{log}");
    assert!(n.retry_counter >= 1, "{n:?}");
    assert_eq!(
        d.get("device").and_then(|v| v.as_str()),
        Some(other),
        "{d:?}"
    );
    assert!(log.contains("move-job-done"), "{log}");
    println!(
        "labgrid exporter killed mid-job on {first}: place withdrawn after {} ms (advertised list read every 200 ms)",
        withdrawn.as_millis()
    );

    steps.at("the exporter is back: the first board is powered off, released, offered");
    if first == "board-1" {
        lg.restart_exporter(&rig);
    } else {
        second.restart_exporter(&rig, &lg);
    }
    wait_advertised(&mut c, "lab-move", &["board-1", "board-2"]).await;
    let power = if first == "board-1" {
        lg.power_log()
    } else {
        second.power_log()
    };
    assert_eq!(power.last().map(String::as_str), Some("off"), "{power:?}");
    let places = lg.client_ok(OTHER_USER, &["-v", "places"]);
    assert!(!places.contains(AGENT_ID), "{places}");
}
