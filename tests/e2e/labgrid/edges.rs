//! The edges of a real Labgrid lab: a `NetworkSerialPort` with `protocol: raw` (a plain TCP
//! port) used with the default config, the log at the coordinator while a job runs, a
//! Labgrid coordinator killed and restarted mid-job (the hold is gone: `place_lost`, never
//! `pass`; the board ends powered off and released). Prints the agent's time around the
//! board and its CPU per job and per idle minute.

use super::*;

/// CPU seconds a process and its reaped children (the labgrid-client calls) used so far.
fn cpu_seconds(pid: nix::unistd::Pid) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14-17 (11-14 after the state field).
    let ticks: f64 = f.get(11..15).map(|v| v.iter().sum()).unwrap_or(0.0);
    ticks
        / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64
}

/// The coordinator's log of a job so far (empty while it has none).
async fn log_so_far(c: &mut labwire::client::Clients, job: i64) -> String {
    let Ok(s) = c
        .nodes
        .get_log(v1::GetLogRequest { job, attempt: -1 })
        .await
    else {
        return String::new();
    };
    let mut s = s.into_inner();
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = s.message().await {
        out.extend_from_slice(&chunk.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until the coordinator's log of `id` contains `needle` `times` times; returns it.
pub(super) async fn wait_log(
    c: &mut labwire::client::Clients,
    id: i64,
    needle: &str,
    times: usize,
) -> String {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let log = log_so_far(c, id).await;
        if log.matches(needle).count() >= times {
            return log;
        }
        assert!(
            Instant::now() < end,
            "the log never showed {needle:?}: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_serial_port_passes_with_the_default_config_and_the_log_streams() {
    let mut steps = Steps::new();
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let lg = Labgrid::start_raw(&rig);
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-raw");
    lg.agent_config(&rig, "lab-raw", "1s", "30s");
    let agent = rig.start_agent("lab-raw");
    let mut c = rig.client().await;
    wait_advertised(&mut c, "lab-raw", &["board-1"]).await;

    steps.at("a job on the raw port; its log at the coordinator while it runs");
    let id = submit_spec(
        &mut c,
        job(
            "lg-raw",
            &["echo raw-console-ok", "sleep 5", "echo after-the-sleep"],
            &[],
            120,
        ),
    )
    .await;
    let seen = Instant::now();
    let log = wait_log(&mut c, id, "raw-console-ok", 2).await;
    let n = c
        .nodes
        .get_node(v1::GetNodeRequest { id })
        .await
        .expect("node")
        .into_inner();
    assert!(
        !is_done(&n),
        "the log reached the coordinator while the job ran: {log}"
    );
    assert!(!log.contains("after-the-sleep"), "{log}");
    let n = wait_node(&mut c, id, Duration::from_secs(120), is_done).await;
    let log = read_log(&mut c, id).await;
    let d = data(&n);
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{d:?}\n{log}");
    assert!(log.contains("console: tcp 127.0.0.1:"), "{log}");
    assert!(log.contains("released Labgrid place board-1"), "{log}");
    assert!(
        seen.elapsed() >= Duration::from_secs(4),
        "the log was seen before the sleep ended"
    );
    assert_eq!(lg.acquired(), None);
    assert_eq!(lg.power_log(), ["on", "off"]);

    steps.at("figures: five short jobs, the agent's time around the board and its CPU");
    const KEYS: [&str; 6] = [
        "labgrid_acquire_ms",
        "labgrid_console_ms",
        "labgrid_power_on_ms",
        "labgrid_confirm_ms",
        "labgrid_power_off_ms",
        "labgrid_release_ms",
    ];
    let mut runs: Vec<(Vec<f64>, f64)> = Vec::new();
    for i in 0..5 {
        let cpu0 = cpu_seconds(agent.pid());
        let id = submit_spec(&mut c, job(&format!("lg-fig-{i}"), &["true"], &[], 120)).await;
        let n = wait_node(&mut c, id, Duration::from_secs(120), is_done).await;
        let cpu = cpu_seconds(agent.pid()) - cpu0;
        let d = data(&n);
        assert_eq!(n.result, v1::NodeResult::Pass as i32, "{d:?}");
        let ms: Vec<f64> = KEYS
            .iter()
            .map(|k| d.get(*k).and_then(|v| v.as_f64()).expect(k))
            .collect();
        // Around the board, besides the two power calls (labgrid-client processes).
        let own = ms[0] + ms[1] + ms[3] + ms[5];
        println!(
            "labgrid figures: run {i}: acquire {} ms, console {} ms, power on {} ms, confirm hold {} ms, power off {} ms, release {} ms; around the board besides power {own} ms; agent CPU (own + labgrid-client power calls) {cpu:.2} s",
            ms[0], ms[1], ms[2], ms[3], ms[4], ms[5]
        );
        runs.push((ms, cpu));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let own = median(
        runs.iter()
            .map(|(m, _)| m[0] + m[1] + m[3] + m[5])
            .collect(),
    );
    let power = median(runs.iter().map(|(m, _)| m[2] + m[4]).collect());
    let cpu = median(runs.iter().map(|(_, c)| *c).collect());
    println!(
        "labgrid figures: median of 5 jobs: around the board besides power {own} ms, the two power calls {power} ms, agent CPU per job {cpu:.2} s"
    );
    assert_eq!(lg.acquired(), None);

    steps.at("idle: the agent's CPU while it follows the coordinator's update stream");
    let idle0 = cpu_seconds(agent.pid());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let idle = cpu_seconds(agent.pid()) - idle0;
    println!(
        "labgrid figures: idle CPU {idle:.2} s in 30 s, so {:.2} s per minute",
        idle * 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labgrid_coordinator_restart_mid_job_ends_place_lost_and_the_board_ends_off() {
    let mut steps = Steps::new();
    // No retries: the interrupted attempt's end is what is checked.
    let rig = Rig::new("retries: {max: 0}\n");
    let _keep = rig.keep_on_failure();
    let mut lg = Labgrid::start(&rig);
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-restart");
    lg.agent_config(&rig, "lab-restart", "1s", "30s");
    let _agent = rig.start_agent("lab-restart");
    let mut c = rig.client().await;
    wait_advertised(&mut c, "lab-restart", &["board-1"]).await;

    steps.at("mid-job, the Labgrid coordinator is killed and restarted");
    let id = submit_spec(
        &mut c,
        job(
            "lg-restart",
            &["echo started-restart-job", "sleep 120"],
            &[],
            300,
        ),
    )
    .await;
    wait_log(&mut c, id, "started-restart-job", 2).await;
    assert_eq!(lg.acquired().as_deref(), Some(AGENT_ID));
    lg.restart_coordinator(&rig);
    // The exporter exits when its coordinator goes; systemd would start it again.
    lg.restart_exporter(&rig);

    steps.at("someone else takes the place the agent no longer holds");
    let end = Instant::now() + Duration::from_secs(15);
    let mut alice = false;
    while Instant::now() < end {
        if lg
            .client(OTHER_USER, &["-p", "board-1", "acquire"])
            .status
            .success()
        {
            alice = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    steps.at("the job ends place_lost, never pass, and says no false release");
    let n = wait_node(&mut c, id, Duration::from_secs(60), is_done).await;
    let log = read_log(&mut c, id).await;
    let d = data(&n);
    assert_eq!(n.result, v1::NodeResult::Incomplete as i32, "{d:?}\n{log}");
    assert_eq!(
        d.get("error_code").and_then(|v| v.as_str()),
        Some("place_lost"),
        "{d:?}\n{log}"
    );
    assert!(!log.contains("released Labgrid place"), "{log}");

    steps.at("the board ends powered off and the place released, and is offered again");
    if alice {
        assert_eq!(lg.acquired().as_deref(), Some("labwire-test/alice"));
        // Not offered while someone else holds it (from the agent's next reading on).
        wait_advertised(&mut c, "lab-restart", &[]).await;
        lg.client_ok(OTHER_USER, &["-p", "board-1", "release"]);
    }
    let end = Instant::now() + Duration::from_secs(90);
    while !(lg.acquired().is_none() && lg.power_log().last().map(String::as_str) == Some("off")) {
        assert!(
            Instant::now() < end,
            "the board was not powered off and released: {:?}, held by {:?}",
            lg.power_log(),
            lg.acquired()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_advertised(&mut c, "lab-restart", &["board-1"]).await;
    println!("labgrid restart: someone else took the place first: {alice}");
}
