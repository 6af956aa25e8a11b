//! `labwire report lab` end to end: a real agent's devices run known jobs, an admin puts one
//! in maintenance, and the report read through the CLI (`--format json` and markdown) counts
//! the jobs per device, the time in maintenance, the worst device first; a token without the
//! admin scope, an unknown lab and a bad `--since` are refused.

use crate::common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// `labwire ARGS` with `token`: its exit success, standard output and error.
fn cli_with(rig: &Rig, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(CLIENT)
        .args(["--server", &rig.url(), "--ca"])
        .arg(rig.path("coordinator/pki/ca.pem"))
        .args(["--token", token])
        .args(args)
        .output()
        .expect("run labwire");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_report_counts_jobs_and_maintenance_worst_first() {
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 500ms}\nhttp: {listen: 127.0.0.1:0}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-r");
    let cmd: &[&str] = &["sh", "-c", "echo \"run by $LABWIRE_DEVICE\""];
    rig.agent_config("lab-r", &[("d1", cmd, &["one"]), ("d2", cmd, &["two"])], "");
    let _agent = rig.start_agent("lab-r");
    let mut c = rig.client().await;

    steps.at("three known jobs: two on d1, one on d2");
    for (name, tag) in [("a", "one"), ("b", "one"), ("c", "two")] {
        let id = submit(&mut c, name, &[tag], &[]).await;
        let n = wait_node(&mut c, id, Duration::from_secs(30), is_done).await;
        assert_eq!(data(&n)["device"], if tag == "one" { "d1" } else { "d2" });
    }

    steps.at("d2 in maintenance for a while");
    let (ok, out, err) = cli_with(
        &rig,
        &rig.admin_token,
        &["device", "maintenance", "lab-r/d2", "--reason", "rewiring"],
    );
    assert!(ok, "{out}{err}");
    tokio::time::sleep(Duration::from_millis(2500)).await;

    steps.at("the report as JSON");
    let (ok, out, err) = cli_with(
        &rig,
        &rig.admin_token,
        &[
            "report", "lab", "lab-r", "--since", "1h", "--format", "json",
        ],
    );
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(r["lab"], "lab-r");
    let devs = r["devices"].as_array().expect("devices");
    let names: Vec<_> = devs
        .iter()
        .map(|d| d["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["d2", "d1"], "the worst first: {out}");
    let (d2, d1) = (&devs[0], &devs[1]);
    assert_eq!(
        (d1["jobs"].as_i64(), d2["jobs"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(d1["infra_failures"], 0);
    assert_eq!(d1["infra_failure_rate"], 0.0);
    assert!(d2["seconds"]["maintenance"].as_i64() >= Some(2), "{d2}");
    assert_eq!(d1["seconds"]["maintenance"], 0);
    assert_eq!(d1["seconds"]["bad"], 0);
    // Before the lab registered, within the hour: offline.
    let sum = |d: &serde_json::Value| -> i64 {
        ["good", "bad", "maintenance", "retired", "offline"]
            .iter()
            .map(|k| d["seconds"][k].as_i64().unwrap_or(-1))
            .sum()
    };
    assert!((3599..=3600).contains(&sum(d1)), "{d1}");
    assert!(d1["seconds"]["offline"].as_i64() >= Some(3500), "{d1}");
    // The shell driver reports no boot time.
    assert!(d1["boot_ms_mean"].is_null() && d1["boot_samples"] == 0);
    let types = r["device_types"].as_array().expect("device types");
    assert_eq!(types.len(), 1);
    assert_eq!(
        (types[0]["name"].as_str(), types[0]["jobs"].as_i64()),
        (Some("lab-host"), Some(3))
    );

    steps.at("the report as markdown");
    let (ok, md, err) = cli_with(&rig, &rig.admin_token, &["report", "lab", "lab-r"]);
    assert!(ok, "{err}");
    assert!(md.starts_with("# Lab lab-r"), "{md}");
    let d2_row = md.lines().position(|l| l.starts_with("| d2 |"));
    let d1_row = md.lines().position(|l| l.starts_with("| d1 |"));
    assert!(d2_row.is_some() && d2_row < d1_row, "{md}");

    steps.at("the labs page draws each device's last week as an SVG timeline");
    let page = rig
        .http_client()
        .get(format!("{}/ui/labs", rig.http_url()))
        .bearer_auth(&rig.admin_token)
        .send()
        .await
        .expect("labs page")
        .text()
        .await
        .expect("labs page text");
    // d2: offline (before the lab registered), good, then maintenance, as three bars.
    let row = page
        .split("<tr>")
        .find(|r| r.contains("<td>d2</td>"))
        .unwrap_or_else(|| panic!("no row for d2: {page}"));
    let svg = &row[row.find("<svg").expect("an svg")..row.find("</svg>").expect("its end")];
    let kinds: Vec<_> = svg
        .split("class=\"t-")
        .skip(1)
        .map(|r| r.split('"').next().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["offline", "good", "maintenance"], "{svg}");
    assert!(!page.contains("<script src=\"http"), "no script library");

    steps.at("refused: a read token, an unknown lab, a bad --since");
    let read = rig.create_token("viewer", "read");
    let (ok, _, err) = cli_with(&rig, &read, &["report", "lab", "lab-r"]);
    assert!(!ok && err.to_lowercase().contains("admin"), "{err}");
    let (ok, _, err) = cli_with(&rig, &rig.admin_token, &["report", "lab", "nope"]);
    assert!(!ok && err.contains("no lab `nope`"), "{err}");
    let (ok, _, err) = cli_with(
        &rig,
        &rig.admin_token,
        &["report", "lab", "lab-r", "--since", "400days"],
    );
    assert!(!ok && err.contains("since"), "{err}");
    let (ok, _, err) = cli_with(
        &rig,
        &rig.admin_token,
        &["report", "lab", "lab-r", "--since", "$(reboot)"],
    );
    assert!(!ok && err.contains("--since"), "{err}");
}
