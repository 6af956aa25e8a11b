//! Reports and the KCIDB export from a real pipeline run: a checkout with a build and three
//! jobs run by a real agent (one passing, one with a failing KTAP test, one cancelled). The
//! checkout closes by its holdoff; its report is mailed to an SMTP sink on loopback;
//! `labwire report` prints it as text and markdown; `labwire export kcidb` writes a document
//! that the `kcidb-io` package validates (venv made by scripts/setup.d/40-pipeline.sh).

use crate::common;

use common::*;
use labwire_proto::{convert, v1};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// A minimal SMTP server on 127.0.0.1: hands over the data of every message it accepts;
/// the first `refuse` messages get a permanent refusal (554) after their data. Shared with
/// the health alert test.
pub(crate) async fn smtp_sink(
    refuse: usize,
) -> (u16, mpsc::UnboundedReceiver<(Vec<String>, String)>) {
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut rcpt = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim_end().to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        b"250 sink\r\n"
                    } else if cmd.starts_with("RCPT TO:") {
                        rcpt.push(line.trim_end()[8..].to_string());
                        b"250 ok\r\n"
                    } else if cmd == "DATA" {
                        w.write_all(b"354 go on\r\n").await.unwrap();
                        let mut data = String::new();
                        loop {
                            let mut l = String::new();
                            if r.read_line(&mut l).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if l == ".\r\n" {
                                break;
                            }
                            data.push_str(&l);
                        }
                        if refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < refuse {
                            rcpt.clear();
                            b"554 refused\r\n"
                        } else {
                            let _ = tx.send((std::mem::take(&mut rcpt), data));
                            b"250 queued\r\n"
                        }
                    } else if cmd == "QUIT" {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, rx)
}

fn venv_python() -> PathBuf {
    let venv = std::env::var_os("LABWIRE_KCIDB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/labwire/kcidb-venv")
        });
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup.d/40-pipeline.sh (it creates the kcidb-io venv)",
        py.display()
    );
    py
}

async fn create(c: &mut labwire::client::Clients, node: v1::Node) -> i64 {
    c.nodes
        .create_node(v1::CreateNodeRequest { node: Some(node) })
        .await
        .expect("create node")
        .into_inner()
        .node
        .unwrap()
        .id
}

fn labwire(rig: &Rig, args: &[&str]) -> String {
    run_ok(
        Command::new(CLIENT)
            .args(args)
            .env("LABWIRE_SERVER", rig.url())
            .env("LABWIRE_CA", rig.path("coordinator/pki/ca.pem"))
            .env("LABWIRE_TOKEN", rig.admin_token.trim()),
    )
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_is_reported_mailed_and_exported_to_kcidb() {
    let mut steps = Steps::new();
    let (smtp_port, mut mails) = smtp_sink(0).await;
    let rig = Rig::new(&format!(
        "http: {{listen: 127.0.0.1:0}}\ntimeouts: {{interval: 100ms}}\nreports:\n  email:\n    \
         smtp_host: 127.0.0.1\n    smtp_port: {smtp_port}\n    security: none\n    \
         from: labwire <ci@example.org>\n    to: [results@example.org, lab@example.org]\n"
    ));
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    rig.agent_config(
        "lab-a",
        &[
            ("host-1", &["echo", "smoke ok"], &["smoke"]),
            (
                "host-2",
                &[
                    "printf",
                    "KTAP version 1\\n1..2\\nok 1 alpha\\nnot ok 2 beta\\n",
                ],
                &["ktap"],
            ),
        ],
        "",
    );
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;

    let holdoff = convert::timestamp(chrono::Utc::now() + chrono::Duration::seconds(3));
    let checkout = create(
        &mut c,
        v1::Node {
            kind: v1::NodeKind::Checkout as i32,
            name: "checkout".into(),
            state: v1::NodeState::Available as i32,
            holdoff: Some(holdoff),
            data: Some(convert::map_to_struct(
                json!({"kernel_revision": {"tree": "mainline", "branch": "master",
                        "url": "https://git.example.org/linux.git",
                        "commit": COMMIT, "describe": "v6.99-rc1"}})
                .as_object()
                .unwrap(),
            )),
            ..Default::default()
        },
    )
    .await;
    let build = create(
        &mut c,
        v1::Node {
            kind: v1::NodeKind::Kbuild as i32,
            name: "kbuild-gcc-14-x86".into(),
            parent: checkout,
            state: v1::NodeState::Available as i32,
            result: v1::NodeResult::Pass as i32,
            holdoff: Some(holdoff),
            data: Some(convert::map_to_struct(
                json!({"arch": "x86_64", "compiler": "gcc-14", "config": "defconfig"})
                    .as_object()
                    .unwrap(),
            )),
            ..Default::default()
        },
    )
    .await;
    let smoke = submit_spec_under(&mut c, shell_spec("smoke", &["smoke"], &[], 60), build).await;
    let ktap = submit_spec_under(&mut c, shell_spec("kunit", &["ktap"], &[], 60), build).await;
    let stuck = submit_spec_under(
        &mut c,
        shell_spec("nowhere", &["no-such-tag"], &[], 60),
        build,
    )
    .await;
    c.admin
        .cancel_job(v1::CancelJobRequest {
            job: stuck,
            reason: "no device".into(),
        })
        .await
        .unwrap();
    for j in [smoke, ktap] {
        wait_node(&mut c, j, Duration::from_secs(30), is_done).await;
    }
    // The holdoffs pass; with every child done, build and checkout close by themselves.
    steps.at("The holdoffs pass");
    let done = wait_node(&mut c, checkout, Duration::from_secs(30), is_done).await;
    assert_eq!(done.state, v1::NodeState::Done as i32);

    // The mail: once, to both recipients, with the report.
    steps.at("The mail");
    let (rcpt, data) = tokio::time::timeout(Duration::from_secs(30), mails.recv())
        .await
        .expect("a report mail in time")
        .expect("mail");
    assert_eq!(rcpt.len(), 2, "{rcpt:?}");
    assert!(rcpt.iter().any(|r| r.contains("results@example.org")));
    let unfolded = data.replace("\r\n ", " ").replace("\r\n", "\n");
    assert!(
        unfolded.contains(
            "Subject: [labwire] mainline/master v6.99-rc1: 3 jobs, 2 not passed, 1 failing tests"
        ),
        "{unfolded}"
    );
    assert!(unfolded.contains(COMMIT), "{unfolded}");
    assert!(unfolded.contains("kunit: beta fail"), "{unfolded}");

    // The same report from the command line.
    steps.at("The same report from the command line");
    let text = labwire(&rig, &["report", &checkout.to_string()]);
    for want in [
        format!("Checkout {checkout} (done)"),
        "tree      mainline".into(),
        "branch    master".into(),
        "describe  v6.99-rc1".into(),
        format!("commit    {COMMIT}"),
        "Jobs (3):".into(),
        "Failing tests (1):".into(),
        "kunit: beta fail".into(),
        "error_code=cancelled".into(),
    ] {
        assert!(text.contains(&want), "missing `{want}` in:\n{text}");
    }
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no line for job {name}:\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    // The shell driver adds an `exit-status` test to each job it ran.
    steps.at("The shell driver adds an `exit-status` test to each job it ran");
    let tree = labwire(&rig, &["tree", &checkout.to_string()]);
    assert_eq!(line("smoke")[2..5], ["pass", "1", "0"], "{text}\n{tree}");
    assert_eq!(line("kunit")[2..5], ["fail", "3", "1"], "{text}\n{tree}");
    assert_eq!(
        line("nowhere")[2..5],
        ["incomplete", "0", "0"],
        "{text}\n{tree}"
    );
    let md = labwire(
        &rig,
        &["report", &checkout.to_string(), "--format", "markdown"],
    );
    assert!(
        md.contains(&format!(
            "## Checkout {checkout}: mainline/master v6.99-rc1"
        )),
        "{md}"
    );
    assert!(
        md.contains("| id | job | result | total | failures | note |"),
        "{md}"
    );
    assert!(md.contains("- `kunit`: `beta` fail"), "{md}");
    let out = Command::new(CLIENT)
        .args(["report", &build.to_string()])
        .env("LABWIRE_SERVER", rig.url())
        .env("LABWIRE_CA", rig.path("coordinator/pki/ca.pem"))
        .env("LABWIRE_TOKEN", rig.admin_token.trim())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a kbuild, not a checkout"));

    // KCIDB, validated by kcidb-io.
    steps.at("KCIDB, validated by kcidb-io");
    let file = rig.path("kcidb.json");
    labwire(
        &rig,
        &[
            "export",
            "kcidb",
            "--since",
            "1h",
            "--http-url",
            &rig.http_url(),
            "-o",
            file.to_str().unwrap(),
        ],
    );
    let out = Command::new(venv_python())
        .args([
            "-c",
            "import json, sys, kcidb_io\n\
             data = json.load(open(sys.argv[1]))\n\
             kcidb_io.schema.LATEST.validate(data)\n\
             print(kcidb_io.schema.LATEST.major, kcidb_io.schema.LATEST.minor)",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kcidb-io refused the export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5 3");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(doc["checkouts"].as_array().unwrap().len(), 1);
    let co = &doc["checkouts"][0];
    assert_eq!(co["id"], format!("labwire:{checkout}"));
    assert_eq!(co["git_commit_hash"], COMMIT);
    assert_eq!(co["git_commit_name"], "v6.99-rc1");
    assert_eq!(co["tree_name"], "mainline");
    let b = &doc["builds"][0];
    assert_eq!(b["architecture"], "x86_64");
    assert_eq!(b["status"], "PASS");
    let status_of = |path: &str| -> String {
        doc["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["path"] == path)
            .unwrap_or_else(|| panic!("no test {path}: {}", doc["tests"]))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status_of("smoke"), "PASS");
    assert_eq!(status_of("kunit"), "FAIL");
    assert_eq!(status_of("nowhere"), "MISS");
    let leaf = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["path"].as_str().unwrap().ends_with(".beta"))
        .unwrap_or_else(|| panic!("no beta test: {}", doc["tests"]));
    assert_eq!(leaf["status"], "FAIL");
    assert_eq!(leaf["build_id"], format!("labwire:{build}"));
    assert!(
        leaf["log_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/logs/{ktap}/1")),
        "{leaf}"
    );
    assert_eq!(leaf["environment"]["misc"]["lab"], "lab-a");

    // No second mail for the same checkout.
    steps.at("No second mail for the same checkout");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), mails.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_refused_for_good_does_not_hold_up_the_next() {
    let (smtp_port, mut mails) = smtp_sink(1).await;
    let rig = Rig::new(&format!(
        "timeouts: {{interval: 100ms}}\nreports:\n  email:\n    smtp_host: 127.0.0.1\n    \
         smtp_port: {smtp_port}\n    security: none\n    from: ci@example.org\n    \
         to: [results@example.org]\n    format: markdown\n"
    ));
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let mut c = rig.client().await;
    let mut ids = Vec::new();
    for branch in ["first", "second"] {
        let id = create(
            &mut c,
            v1::Node {
                kind: v1::NodeKind::Checkout as i32,
                name: "checkout".into(),
                data: Some(convert::map_to_struct(
                    json!({"kernel_revision": {"tree": "t", "branch": branch, "commit": COMMIT}})
                        .as_object()
                        .unwrap(),
                )),
                ..Default::default()
            },
        )
        .await;
        ids.push(id);
    }
    for id in &ids {
        c.nodes
            .update_node(v1::UpdateNodeRequest {
                id: *id,
                state: v1::NodeState::Done as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let (_, data) = tokio::time::timeout(Duration::from_secs(30), mails.recv())
        .await
        .expect("the second report in time")
        .unwrap();
    let unfolded = data.replace("\r\n ", " ");
    assert!(unfolded.contains("[labwire] t/second"), "{unfolded}");
    assert!(unfolded.contains("text/markdown"), "{unfolded}");
    let log = std::fs::read_to_string(rig.path("coordinator.log")).unwrap();
    assert!(log.contains("report refused by the SMTP server"), "{log}");
}
