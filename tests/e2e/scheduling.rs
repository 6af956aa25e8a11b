//! Scheduling and placement end to end: a real coordinator with a KernelCI-style scheduler
//! config and placement rules, three real agents (three labs, three device types) over mTLS
//! on loopback, checkouts made available through the gRPC API, and a coordinator killed in
//! the middle.

use crate::common;

use common::*;
use labwire_proto::v1;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const PIPELINE: &str = r#"
_anchors:
  checkout: &checkout-event
    channel: node
    kind: checkout
    state: available
jobs:
  boot: &boot
    kind: job
    timeout: 2m
    rules:
      tree: ['!android']
  kunit:
    <<: *boot
    runs: {number: 3, variant: device_type, mode: strict}
  net-test:
    <<: *boot
    runs: {number: 4}
platforms:
  qemu-x86: {base_name: qemu-x86_64, arch: x86_64}
  qemu-arm64: {base_name: qemu-arm64, arch: arm64}
scheduler:
  - job: boot
    event: *checkout-event
    runtime: {type: shell}
    platforms: [qemu-x86, qemu-arm64]
  - job: kunit
    event: *checkout-event
    runtime: {type: shell}
  - job: net-test
    event: *checkout-event
    runtime: {type: shell}
"#;

const PLACEMENT: &str = r#"
labs:
  lab-rpi:
    rules:
      job: ['!net-test']
"#;

/// Jobs per checkout: boot on 2 platforms, kunit 3 runs, net-test 4 runs.
const PER_CHECKOUT: usize = 9;

fn write_agent(rig: &Rig, lab: &str, device: &str, device_type: &str) {
    let b = rig.issue_lab(lab);
    let yaml = format!(
        "lab: {lab}\ncoordinator:\n  url: {url}\n  ca: {b}/ca.pem\n  cert: {b}/agent.pem\n  key: {b}/agent.key\n\
         state_dir: {b}/state\nlimits:\n  poll_wait: 2s\ndevices:\n  - name: {device}\n    device_type: {device_type}\n    driver:\n      type: shell\n      command: [sh, -c, 'echo running on {device}; sleep 0.3']\n      max_jobs: 2\n",
        url = rig.url(),
        b = b.display()
    );
    std::fs::write(b.join("agent.yaml"), yaml).expect("agent config");
}

async fn checkout(c: &mut labwire::client::Clients, tree: &str, commit: &str) -> i64 {
    let mut data = serde_json::Map::new();
    data.insert(
        "kernel_revision".into(),
        serde_json::json!({"tree": tree, "branch": "master", "commit": commit,
                           "version": {"version": 6, "patchlevel": 12}}),
    );
    let n = c
        .nodes
        .create_node(v1::CreateNodeRequest {
            node: Some(v1::Node {
                kind: v1::NodeKind::Checkout as i32,
                name: "checkout".into(),
                data: Some(labwire_proto::convert::map_to_struct(&data)),
                ..Default::default()
            }),
        })
        .await
        .expect("create checkout")
        .into_inner()
        .node
        .expect("node");
    n.id
}

async fn make_available(c: &mut labwire::client::Clients, id: i64) {
    c.nodes
        .update_node(v1::UpdateNodeRequest {
            id,
            state: v1::NodeState::Available as i32,
            ..Default::default()
        })
        .await
        .expect("checkout available");
}

async fn children(c: &mut labwire::client::Clients, parent: i64) -> Vec<v1::Node> {
    c.nodes
        .query_nodes(v1::QueryNodesRequest {
            parent,
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .nodes
}

async fn wait_children_done(
    c: &mut labwire::client::Clients,
    parent: i64,
    n: usize,
) -> Vec<v1::Node> {
    let end = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let kids = children(c, parent).await;
        if kids.len() == n && kids.iter().all(is_done) {
            return kids;
        }
        assert!(
            kids.len() <= n,
            "checkout {parent} has {} children, expected {n}: duplicates",
            kids.len()
        );
        assert!(
            std::time::Instant::now() < end,
            "checkout {parent}: {} of {n} children, {} done",
            kids.len(),
            kids.iter().filter(|k| is_done(k)).count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn s(d: &serde_json::Map<String, serde_json::Value>, k: &str) -> String {
    d.get(k)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

/// Checks one checkout's jobs: each on a lab that can run it, kunit on three device types,
/// net-test never in the denied lab.
fn check_jobs(kids: &[v1::Node]) {
    let mut by_name: BTreeMap<String, Vec<serde_json::Map<String, serde_json::Value>>> =
        BTreeMap::new();
    for k in kids {
        assert_eq!(
            k.result,
            v1::NodeResult::Pass as i32,
            "job {} did not pass: {:?}",
            k.id,
            data(k)
        );
        by_name.entry(k.name.clone()).or_default().push(data(k));
    }
    assert_eq!(by_name["boot"].len(), 2);
    let boot_types: BTreeSet<String> = by_name["boot"]
        .iter()
        .map(|d| s(d, "device_type"))
        .collect();
    assert_eq!(
        boot_types,
        BTreeSet::from(["qemu-arm64".to_string(), "qemu-x86_64".to_string()]),
        "each boot job runs on its platform's device type"
    );
    let kunit_types: BTreeSet<String> = by_name["kunit"]
        .iter()
        .map(|d| s(d, "device_type"))
        .collect();
    assert_eq!(
        kunit_types.len(),
        3,
        "kunit runs on three device types: {kunit_types:?}"
    );
    assert_eq!(by_name["net-test"].len(), 4);
    for d in &by_name["net-test"] {
        assert_ne!(
            s(d, "lab"),
            "lab-rpi",
            "placement denies net-test to lab-rpi"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_places_jobs_across_three_labs_and_survives_a_restart() {
    let mut steps = Steps::new();
    let rig = Rig::new(
        "leases:\n  duration: 6s\n  heartbeat: 1s\npipeline: [pipeline.yaml]\nplacement: placement.yaml\n",
    );
    let _keep = rig.keep_on_failure();
    std::fs::write(rig.path("pipeline.yaml"), PIPELINE).unwrap();
    std::fs::write(rig.path("placement.yaml"), PLACEMENT).unwrap();
    let mut coord = rig.start_coordinator();
    write_agent(&rig, "lab-x86", "x86-1", "qemu-x86_64");
    write_agent(&rig, "lab-arm", "arm-1", "qemu-arm64");
    write_agent(&rig, "lab-rpi", "rpi-1", "bcm2711-rpi-4-b");
    let _agents: Vec<Proc> = ["lab-x86", "lab-arm", "lab-rpi"]
        .iter()
        .map(|l| rig.start_agent(l))
        .collect();
    let mut c = rig.client().await;

    // A checkout of a denied tree creates nothing.
    steps.at("A checkout of a denied tree creates nothing");
    let android = checkout(&mut c, "android", "a1").await;
    make_available(&mut c, android).await;

    let co1 = checkout(&mut c, "mainline", "c1").await;
    make_available(&mut c, co1).await;
    // Changing the available checkout again is no new edge: nothing more is created.
    steps.at("Changing the available checkout again is no new edge");
    c.nodes
        .update_node(v1::UpdateNodeRequest {
            id: co1,
            data: Some(labwire_proto::convert::map_to_struct(
                serde_json::json!({"note": "touched"}).as_object().unwrap(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    let kids = wait_children_done(&mut c, co1, PER_CHECKOUT).await;
    check_jobs(&kids);
    assert!(
        children(&mut c, android).await.is_empty(),
        "the android checkout got jobs"
    );

    // `labwire jobs explain` tells why net-test is not for lab-rpi.
    steps.at("`labwire jobs explain` tells why net-test is not for lab-rpi");
    let net = kids.iter().find(|k| k.name == "net-test").unwrap();
    let ex = c
        .admin
        .explain_job(v1::ExplainJobRequest { job: net.id })
        .await
        .unwrap()
        .into_inner();
    let rpi = ex
        .labs
        .iter()
        .find(|l| l.lab == "lab-rpi")
        .expect("lab-rpi verdict");
    assert!(!rpi.eligible);
    assert!(
        rpi.reasons
            .iter()
            .any(|r| r.contains("labs.lab-rpi") && r.contains("net-test")),
        "{:?}",
        rpi.reasons
    );
    let out = std::process::Command::new(CLIENT)
        .args(["--server", &rig.url(), "--ca"])
        .arg(rig.path("coordinator/pki/ca.pem"))
        .args(["jobs", "explain", &net.id.to_string()])
        .env("LABWIRE_TOKEN", &rig.admin_token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("no  lab-rpi") && text.contains("yes lab-x86"),
        "{text}"
    );

    // The coordinator dies right after a checkout became available: after the restart the
    // scheduler creates that checkout's jobs exactly once, and nothing of the first again.
    steps.at("The coordinator dies right after a checkout became available");
    let co2 = checkout(&mut c, "mainline", "c2").await;
    make_available(&mut c, co2).await;
    coord.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord.child.wait();
    let _coord2 = rig.start_coordinator();
    let mut c = rig.client().await;
    let kids2 = wait_children_done(&mut c, co2, PER_CHECKOUT).await;
    check_jobs(&kids2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(children(&mut c, co1).await.len(), PER_CHECKOUT);
    assert_eq!(children(&mut c, co2).await.len(), PER_CHECKOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_failures_are_retried_on_another_device_and_test_failures_are_not() {
    let mut steps = Steps::new();
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    // `broken` cannot even start its command (an infrastructure failure); `good` works;
    // `failing` runs a command that fails (a test failure).
    steps.at("`broken` cannot even start its command (an infrastructure failure)");
    rig.agent_config(
        "lab-a",
        &[
            ("broken", &["/nonexistent/labwire-test-program"], &["pair"]),
            ("good", &["sh", "-c", "echo fine"], &["pair"]),
            ("failing", &["false"], &["solo"]),
        ],
        "",
    );
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;

    let job = submit(&mut c, "flaky-infra", &["pair"], &[]).await;
    let n = wait_node(&mut c, job, Duration::from_secs(60), is_done).await;
    let d = data(&n);
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{d:?}");
    assert_eq!(n.retry_counter, 1, "{d:?}");
    assert_eq!(
        s(&d, "device"),
        "good",
        "the retry went to the other device"
    );
    let attempts = d["attempts"].as_array().expect("attempts history");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["device"], "broken");
    assert_eq!(attempts[0]["error_code"], "infrastructure");
    assert_eq!(d["attempt"], 2);
    // Only the final attempt counts: its log is the one served.
    steps.at("Only the final attempt counts");
    assert!(read_log(&mut c, job).await.contains("fine"));

    let job = submit(&mut c, "real-failure", &["solo"], &[]).await;
    let n = wait_node(&mut c, job, Duration::from_secs(60), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Fail as i32, "{:?}", data(&n));
    assert_eq!(n.retry_counter, 0, "a test failure is not retried");
}
