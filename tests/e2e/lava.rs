//! The LAVA driver against a real lava-server (Debian's package) on 127.0.0.1, with its own
//! PostgreSQL, gunicorn and lava-scheduler, started by `tests/lava/server.sh` from the
//! database that `scripts/setup.d/20-lava.sh` prepares. A small test worker
//! (`tests/e2e/lava/worker.rs`) speaks lava-server's worker protocol in place of
//! lava-dispatcher. Covered: device types and devices listed and turned into what the agent
//! offers; every built-in template accepted by LAVA's validation; a malformed definition
//! refused with LAVA's message (by the client and, through the driver, in the node's
//! error_msg); then, through a real coordinator and agent: a job run to results and log, a
//! job cancelled on the coordinator and so on LAVA, and a job that survives an agent killed
//! with SIGKILL and restarted.

use crate::common;
mod worker;

use common::*;
use labwire_agent::lava::client::LavaClient;
use labwire_agent::lava::config::{LavaConfig, Secret};
use labwire_proto::v1;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const SERVER_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lava/server.sh");

/// A running lava-server, stopped when dropped.
struct LavaServer {
    dir: tempfile::TempDir,
    url: String,
    token: String,
    worker_token: String,
}

impl LavaServer {
    fn start() -> LavaServer {
        let dir = tempfile::Builder::new()
            .prefix("labwire-lava-")
            .tempdir()
            .expect("tempdir");
        // PostgreSQL runs as its own user: it must reach the folder.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = Command::new("bash")
            .arg(SERVER_SH)
            .arg("start")
            .arg(dir.path())
            .arg(free_port().to_string())
            .arg(free_port().to_string())
            .output()
            .expect("run tests/lava/server.sh");
        assert!(
            out.status.success(),
            "could not start lava-server (did scripts/setup.d/20-lava.sh run? it installs lava-server and prepares its database): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.path().join("server.env")).expect("server.env");
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing in server.env"))
                .to_string()
        };
        LavaServer {
            url: get("URL"),
            token: get("TOKEN"),
            worker_token: get("WORKER_TOKEN"),
            dir,
        }
    }

    fn config(&self) -> LavaConfig {
        let yaml = format!(
            "name: test\nurl: {}\ntoken: {}\npoll: 300ms\npoll_max: 2s\nrefresh: 2s\n",
            self.url, self.token
        );
        yaml_serde::from_str(&yaml).expect("lava config")
    }

    fn client(&self) -> LavaClient {
        LavaClient::with_token(&self.config(), Secret(self.token.clone())).expect("client")
    }
}

impl Drop for LavaServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SERVER_SH)
            .arg("stop")
            .arg(self.dir.path())
            .status();
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "lava-server logs kept in {} (gunicorn.log, scheduler.log, postgres.log)",
                self.dir.path().display()
            );
        }
    }
}

fn lava_job_spec(name: &str, commands: &[&str]) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        criteria: Some(v1::Criteria {
            driver: "lava".into(),
            device_type: "qemu".into(),
            ..Default::default()
        }),
        artifacts: [(
            "kernel".to_string(),
            v1::Artifact {
                url: "http://127.0.0.1:9/bzImage".into(),
                sha256: String::new(),
            },
        )]
        .into(),
        commands: commands.iter().map(|s| s.to_string()).collect(),
        timeout_seconds: 600,
        ..Default::default()
    }
}

/// The LAVA job the agent submitted for a labwire job (from the job folder).
fn lava_job_of(state: &std::path::Path, job: i64) -> Option<i64> {
    let text = std::fs::read_to_string(state.join(format!("jobs/{job}-1/lava.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["lava_job"].as_i64()
}

async fn children(c: &mut labwire::client::Clients, parent: i64) -> Vec<v1::Node> {
    c.nodes
        .query_nodes(v1::QueryNodesRequest {
            parent,
            limit: 500,
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lava_server_inventory_submission_results_cancel_and_restart() {
    labwire::install_crypto();
    let server = LavaServer::start();
    let client = server.client();

    // The inventory, as LAVA lists it, and what the agent offers of it.
    let version = client.version().await.expect("version");
    let types = client.device_types().await.expect("device types");
    let mut names: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["beaglebone-black", "qemu", "x86-pc-grub"]);
    let devices = client.devices().await.expect("devices");
    // LAVA leaves Retired devices (bbb-01) out of its list.
    assert_eq!(devices.len(), 5, "{devices:?}");
    assert!(devices.iter().all(|d| d.hostname != "bbb-01"));
    let lib = Arc::new(labwire_agent::device_types::Library::load(&Vec::<PathBuf>::new()).unwrap());
    let source = labwire_agent::lava::inventory::LavaSource::with_client(
        server.config(),
        client.clone(),
        "lab-lava",
        lib,
    )
    .unwrap();
    let offered = source.snapshot().await.expect("snapshot");
    let offered: Vec<(String, usize, usize, String)> = offered
        .iter()
        .map(|d| {
            (
                d.info.name.clone(),
                d.count,
                d.max_jobs,
                d.info.properties.get("arch").cloned().unwrap_or_default(),
            )
        })
        .collect();
    // qemu: qemu-01 (Good) and qemu-02 (Unknown) can take jobs, qemu-03 (Bad) cannot;
    // beaglebone-black (Retired, Bad) and x86-pc-grub (Maintenance) are not offered.
    assert_eq!(
        offered,
        [("lava-test-qemu".to_string(), 2, 2, String::new())]
    );

    // Every built-in template renders a definition that LAVA's own validation accepts.
    let templates = labwire_agent::lava::templates::Templates::load(None).unwrap();
    for boot in ["qemu", "u-boot", "depthcharge", "grub", "fastboot"] {
        let vars = labwire_agent::lava::templates::JobVars {
            device_type: "qemu".into(),
            boot_method: boot.into(),
            job: labwire_agent::lava::templates::JobInfo {
                id: 1,
                attempt: 1,
                name: "validate".into(),
            },
            params: [
                ("kunit".to_string(), "1".to_string()),
                ("kselftest".to_string(), "timers".to_string()),
            ]
            .into(),
            artifacts: ["kernel", "ramdisk", "dtb", "rootfs", "boot"]
                .iter()
                .map(|r| {
                    (
                        r.to_string(),
                        labwire_agent::lava::templates::ArtifactVar {
                            url: format!("http://127.0.0.1:9/{r}"),
                            sha256: None,
                        },
                    )
                })
                .collect(),
            commands: vec!["uname -a".into(), "exit 1".into()],
            timeouts: labwire_agent::lava::templates::Timeouts {
                job: 10,
                action: 5,
                test: 10,
            },
            priority: 50,
            visibility: "public".into(),
            lab: "lab-lava".into(),
        };
        let def = templates.render(&vars).expect("render");
        client
            .validate(&def)
            .await
            .unwrap_or_else(|e| panic!("LAVA refused the {boot} template: {e}\n{def}"));
    }

    // A malformed definition is refused with LAVA's own message.
    let e = client
        .submit("device_type: qemu\njob_name: no timeouts\n")
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("Problem with submitted job data: required key not provided @ data["),
        "{e}"
    );

    // Through the driver: a template LAVA refuses puts LAVA's message in the job's error.
    let tpl = tempfile::tempdir().unwrap();
    std::fs::write(
        tpl.path().join("qemu.jinja2"),
        "device_type: {{ device_type }}\njob_name: {{ job.name }}\nactions: []\n",
    )
    .unwrap();
    let mut cfg = server.config();
    cfg.templates_dir = Some(tpl.path().to_path_buf());
    let lib0 =
        Arc::new(labwire_agent::device_types::Library::load(&Vec::<PathBuf>::new()).unwrap());
    let bad = labwire_agent::lava::inventory::LavaSource::with_client(
        cfg,
        client.clone(),
        "lab-lava",
        lib0,
    )
    .unwrap();
    let device = bad
        .snapshot()
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("qemu offered");
    let jobdir = tempfile::tempdir().unwrap();
    let outbox = Arc::new(labwire_agent::outbox::Outbox::open(jobdir.path()).unwrap());
    let mut ctx = labwire_agent::driver::JobContext {
        job: 1,
        attempt: 1,
        spec: lava_job_spec("refused", &[]),
        dir: jobdir.path().to_path_buf(),
        log: labwire_agent::joblog::JobLog::create(jobdir.path(), outbox, 1, 1, None).unwrap(),
        cancel: tokio_util::sync::CancellationToken::new(),
        timeout: Duration::from_secs(600),
        artifacts: Default::default(),
    };
    let o = device.driver.run(&mut ctx).await;
    assert_eq!(
        o.error_code,
        Some(labwire_common::ErrorCode::InvalidJob),
        "{o:?}"
    );
    let msg = o.error_msg.unwrap_or_default();
    assert!(
        msg.contains("LAVA refused the job definition")
            && msg.contains("required key not provided"),
        "{msg}"
    );

    // A queued job cancelled on LAVA ends Canceled (no worker has taken it yet).
    let queued = client
        .submit(&templates_render_qemu(&templates, "queued then cancelled"))
        .await
        .expect("submit");
    // (A job can be found by its name, as the agent does for one whose submission was under
    // way when it stopped.)
    assert_eq!(
        client
            .find_by_description("labwire 0.1 queued then cancelled")
            .await
            .expect("find"),
        Some(queued)
    );
    client.cancel(queued).await.expect("cancel");
    let st = wait_lava(&client, queued, |s| s.state == "Finished").await;
    assert_eq!(st.health, "Canceled");

    // From here on the test worker plays lava-dispatcher.
    let stop = tokio_util::sync::CancellationToken::new();
    let release = Arc::new(AtomicBool::new(false));
    let w = worker::TestWorker {
        base: url::Url::parse(&server.url).unwrap(),
        name: "worker1".into(),
        token: server.worker_token.clone(),
        http: reqwest::Client::new(),
        release: release.clone(),
    };
    let worker = tokio::spawn(w.run(version, stop.clone()));

    // A real coordinator and agent; the agent offers the LAVA server's qemu devices.
    // One retry: the infrastructure failure below is retried once, then ends the job.
    let rig = Rig::new("retries: {max: 1}\n");
    let _keep = rig.keep_on_failure();
    let _coordinator = rig.start_coordinator();
    let bundle = rig.issue_lab("lab-lava");
    let token_file = bundle.join("lava.token");
    std::fs::write(&token_file, format!("{}\n", server.token)).unwrap();
    let state = bundle.join("state");
    let yaml = format!(
        "lab: lab-lava\ncoordinator:\n  url: {}\n  ca: {b}/ca.pem\n  cert: {b}/agent.pem\n  key: {b}/agent.key\nstate_dir: {s}\nlava:\n  - name: test\n    url: {}\n    token_file: {t}\n    queue_depth: 1\n    poll: 300ms\n    poll_max: 2s\n    refresh: 2s\n",
        rig.url(),
        server.url,
        b = bundle.display(),
        s = state.display(),
        t = token_file.display(),
    );
    std::fs::write(bundle.join("agent.yaml"), yaml).unwrap();
    let mut agent = rig.start_agent("lab-lava");
    let mut c = rig.client().await;

    // Three jobs at once (two devices plus a queue depth of one): one to results, one
    // that hangs until it is cancelled, one that outlives an agent restart.
    let done_job = submit_spec(&mut c, lava_job_spec("results", &["uname -a", "exit 1"])).await;
    let hang_job = submit_spec(&mut c, lava_job_spec("hang", &[])).await;
    let slow_job = submit_spec(&mut c, lava_job_spec("slow", &["true"])).await;
    // A job for beaglebone-black, whose LAVA devices are all Retired or Bad: the agent does
    // not offer that type, so the coordinator never hands the job out.
    let mut bbb = lava_job_spec("no usable device", &[]);
    bbb.criteria.as_mut().unwrap().device_type = "beaglebone-black".into();
    let bbb_job = submit_spec(&mut c, bbb).await;

    // The first runs to its results (the LAVA scheduler works in rounds of 20 s).
    let n = wait_node(&mut c, done_job, Duration::from_secs(120), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Fail as i32, "{n:?}");
    let d = data(&n);
    assert_eq!(d["lava_health"], "Complete", "{d:?}");
    assert_eq!(d["device"], "lava-test-qemu");
    let tree = children(&mut c, done_job).await;
    let names: Vec<&str> = tree.iter().map(|n| n.name.as_str()).collect();
    for want in ["setup", "baseline", "tests"] {
        assert!(names.contains(&want), "{names:?}");
    }
    let log = read_log(&mut c, done_job).await;
    assert!(log.contains("Linux version 6.1.0-labwire"), "{log}");
    assert!(log.contains("[lava results]"), "{log}");

    // The hanging job, cancelled on the coordinator, is cancelled on LAVA.
    wait_for(Duration::from_secs(60), "the hang job on LAVA", || {
        lava_job_of(&state, hang_job).is_some()
    });
    let hang_lava = lava_job_of(&state, hang_job).unwrap();
    wait_lava(&client, hang_lava, |s| s.state == "Running").await;
    c.admin
        .cancel_job(v1::CancelJobRequest {
            job: hang_job,
            reason: "test".into(),
        })
        .await
        .expect("cancel");
    let st = wait_lava(&client, hang_lava, |s| s.state == "Finished").await;
    assert_eq!(st.health, "Canceled");

    // The slow job: running on LAVA, the agent is killed and restarted; it finds the job
    // again, keeps its lease and follows it to the end.
    wait_for(Duration::from_secs(60), "the slow job on LAVA", || {
        lava_job_of(&state, slow_job).is_some()
    });
    let slow_lava = lava_job_of(&state, slow_job).unwrap();
    wait_lava(&client, slow_lava, |s| s.state == "Running").await;
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = agent.child.wait();
    let mut agent = rig.start_agent("lab-lava");
    release.store(true, Ordering::SeqCst);
    let n = wait_node(&mut c, slow_job, Duration::from_secs(60), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    assert_eq!(n.retry_counter, 0, "the lease was kept: {n:?}");
    assert_eq!(data(&n)["lava_job"], slow_lava);
    let log = read_log(&mut c, slow_job).await;
    assert_eq!(
        log.matches("Linux version 6.1.0-labwire").count(),
        1,
        "the log was written again at the same offsets, not doubled: {log}"
    );
    assert!(log.contains("TEST_CASE_ID=command-1 RESULT=pass"), "{log}");

    // A job that LAVA ends Incomplete with an infrastructure error: retried once (the
    // coordinator's `retries`), then incomplete.
    let infra_job = submit_spec(&mut c, lava_job_spec("infra", &[])).await;
    let n = wait_node(&mut c, infra_job, Duration::from_secs(150), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Incomplete as i32, "{n:?}");
    assert_eq!(n.retry_counter, 1, "{n:?}");
    let d = data(&n);
    assert_eq!(d["error_code"], "infrastructure", "{d:?}");
    assert_eq!(d["attempts"].as_array().map(Vec::len), Some(2), "{d:?}");
    assert!(
        d["error_msg"]
            .as_str()
            .unwrap_or("")
            .contains("tftp timed out"),
        "{d:?}"
    );

    let queued = c
        .admin
        .list_jobs(v1::ListJobsRequest {
            status: v1::JobStatus::Queued as i32,
            limit: 100,
        })
        .await
        .expect("list jobs")
        .into_inner()
        .jobs;
    let ids: Vec<i64> = queued
        .iter()
        .filter_map(|j| j.node.as_ref().map(|n| n.id))
        .collect();
    assert_eq!(
        ids,
        [bbb_job],
        "only the beaglebone-black job is still queued"
    );

    agent.terminate(Duration::from_secs(20));
    stop.cancel();
    let _ = worker.await;
}

/// A definition of the qemu template.
fn templates_render_qemu(t: &labwire_agent::lava::templates::Templates, name: &str) -> String {
    let vars = labwire_agent::lava::templates::JobVars {
        device_type: "qemu".into(),
        boot_method: "qemu".into(),
        job: labwire_agent::lava::templates::JobInfo {
            id: 0,
            attempt: 1,
            name: name.into(),
        },
        params: Default::default(),
        artifacts: [(
            "kernel".to_string(),
            labwire_agent::lava::templates::ArtifactVar {
                url: "http://127.0.0.1:9/bzImage".into(),
                sha256: None,
            },
        )]
        .into(),
        commands: vec![],
        timeouts: labwire_agent::lava::templates::Timeouts {
            job: 10,
            action: 5,
            test: 10,
        },
        priority: 50,
        visibility: "public".into(),
        lab: "lab-lava".into(),
    };
    t.render(&vars).expect("render")
}

async fn wait_lava(
    client: &LavaClient,
    id: i64,
    pred: impl Fn(&labwire_agent::lava::client::JobStatus) -> bool,
) -> labwire_agent::lava::client::JobStatus {
    let end = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let s = client.job(id).await.expect("job status");
        if pred(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < end,
            "LAVA job {id} stuck: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
