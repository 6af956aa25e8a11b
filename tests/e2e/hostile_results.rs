//! End-to-end: results that the coordinator used to refuse whole (issue 17, item 4), after
//! which the agent dropped them, the lease ran out and the job ran again on the board. A
//! real coordinator and a real agent whose shell device prints KTAP from a file and counts
//! its runs in a file next to it: each job must end `done` with its results, normalised
//! or cut to the limit with a note, having run exactly once. Also what a submit is refused
//! for (issue 17, item 8), and what the coordinator does with a peer's report that our
//! parser would never send.

use crate::common;

use common::*;
use labwire_proto::v1;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prints the KTAP file named by the job's `ktap` parameter; counts runs in `FILE.runs`.
const KTAP_DEVICE: &[&str] = &[
    "sh",
    "-c",
    "echo run >> \"$1.runs\"; cat \"$1\"",
    "sh",
    "{params.ktap}",
];

fn write_ktap(rig: &Rig, name: &str, text: &str) -> PathBuf {
    let p = rig.path(&format!("{name}.ktap"));
    std::fs::write(&p, text).expect("write KTAP");
    p
}

fn runs(ktap: &Path) -> usize {
    let runs = PathBuf::from(format!("{}.runs", ktap.display()));
    std::fs::read_to_string(runs)
        .unwrap_or_default()
        .lines()
        .count()
}

async fn submit_ktap(c: &mut labwire::client::Clients, name: &str, ktap: &Path) -> i64 {
    let path = ktap.display().to_string();
    submit_spec(
        c,
        shell_spec(name, &["ktap"], &[("ktap", path.as_str())], 600),
    )
    .await
}

async fn children(c: &mut labwire::client::Clients, parent: i64) -> Vec<v1::Node> {
    c.nodes
        .query_nodes(v1::QueryNodesRequest {
            parent,
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("query children")
        .into_inner()
        .nodes
}

/// Every test node under job `job` (the job is the root of its tree), paging through.
async fn all_tests(c: &mut labwire::client::Clients, job: i64) -> Vec<v1::Node> {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let page = c
            .nodes
            .query_nodes(v1::QueryNodesRequest {
                kind: v1::NodeKind::Test as i32,
                treeid: job.to_string(),
                limit: 1000,
                cursor,
                ..Default::default()
            })
            .await
            .expect("query tests")
            .into_inner();
        out.extend(page.nodes);
        if page.next_cursor == 0 {
            return out;
        }
        cursor = page.next_cursor;
    }
}

fn start(rig: &Rig) -> (Proc, Proc) {
    let coord = rig.start_coordinator();
    rig.issue_lab("lab-k");
    rig.agent_config("lab-k", &[("host-k", KTAP_DEVICE, &["ktap"])], "");
    let agent = rig.start_agent("lab-k");
    (coord, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_test_names_and_deep_nesting_end_done_and_run_once() {
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 10s, heartbeat: 1s}\n");
    let _keep = rig.keep_on_failure();
    let _procs = start(&rig);
    let mut c = rig.client().await;

    // A name ending in a non-breaking space (the parser trimmed ASCII only, the store
    // Unicode), one made of Unicode blanks around a word, a control character inside.
    steps.at("A name ending in a non-breaking space (the parser trimmed ASCII only, the store Unicode), one mad...");
    let nbsp = write_ktap(
        &rig,
        "nbsp",
        "KTAP version 1\n1..3\nok 1 nbsp_case\u{a0}\nok 2 \u{a0}other\u{3000}case\u{2009}\nok 3 bell\u{7}inside\n",
    );
    // Results with no name at all, or only blanks.
    steps.at("Results with no name at all, or only blanks");
    let empty = write_ktap(
        &rig,
        "empty",
        "KTAP version 1\n1..3\nok 1\nnot ok 2 - \u{a0}\nok 3 named\n",
    );
    // Subtests nested 200 levels deep, a passing test at the bottom.
    steps.at("Subtests nested 200 levels deep, a passing test at the bottom");
    let mut deep = String::from("KTAP version 1\n1..1\n");
    for level in 1..200 {
        let pad = "  ".repeat(level);
        deep.push_str(&format!(
            "{pad}KTAP version 1\n{pad}# Subtest: level{level}\n{pad}1..1\n"
        ));
    }
    deep.push_str(&format!("{}ok 1 bottom\n", "  ".repeat(200)));
    for level in (1..200).rev() {
        deep.push_str(&format!("{}ok 1 level{level}\n", "  ".repeat(level - 1)));
    }
    let deep = write_ktap(&rig, "deep", &deep);

    let j_nbsp = submit_ktap(&mut c, "nbsp-names", &nbsp).await;
    let j_empty = submit_ktap(&mut c, "empty-names", &empty).await;
    let j_deep = submit_ktap(&mut c, "nesting-200", &deep).await;

    let n = wait_node(&mut c, j_nbsp, Duration::from_secs(120), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    let names: Vec<String> = children(&mut c, j_nbsp)
        .await
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(
        names,
        ["exit-status", "nbsp_case", "other case", "bell inside"]
    );
    assert_eq!(runs(&nbsp), 1, "the job ran more than once");

    let n = wait_node(&mut c, j_empty, Duration::from_secs(120), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Fail as i32, "{n:?}");
    let kids = children(&mut c, j_empty).await;
    let names: Vec<&str> = kids.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["exit-status", "1", "2", "named"]);
    assert_eq!(kids[2].result, v1::NodeResult::Fail as i32);
    assert_eq!(runs(&empty), 1, "the job ran more than once");

    let n = wait_node(&mut c, j_deep, Duration::from_secs(120), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    let d = data(&n);
    let first_issue = d["parse_errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        first_issue.contains("168 tests nested deeper than 32 levels were moved up"),
        "{d:?}"
    );
    let tests = all_tests(&mut c, j_deep).await;
    // 199 levels, the bottom test and exit-status: every one stored, none deeper than 32.
    steps.at("199 levels, the bottom test and exit-status");
    assert_eq!(tests.len(), 201);
    let deepest = tests.iter().map(|t| t.path.len() - 1).max().unwrap_or(0);
    assert_eq!(deepest, 32, "levels below the job");
    let bottom = tests
        .iter()
        .find(|t| t.name.ends_with("/bottom") || t.name.contains('~'))
        .expect("the bottom test, moved up");
    assert_eq!(bottom.result, v1::NodeResult::Pass as i32);
    assert!(
        tests.iter().any(|t| t.name == "level32/level33"),
        "the path is kept in the name"
    );
    assert_eq!(runs(&deep), 1, "the job ran more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_of_120000_tests_is_kept_cut_to_the_limit_with_its_counts() {
    let mut steps = Steps::new();
    let rig = Rig::new("leases: {duration: 20s, heartbeat: 2s}\n");
    let _keep = rig.keep_on_failure();
    let _procs = start(&rig);
    let mut c = rig.client().await;

    // 120 suites of 1000 tests; the very last test fails, one in the middle is skipped.
    steps.at("120 suites of 1000 tests");
    let mut text = String::from("KTAP version 1\n1..120\n");
    for s in 0..120 {
        text.push_str(&format!(
            "    KTAP version 1\n    # Subtest: suite{s}\n    1..1000\n"
        ));
        for t in 0..1000 {
            let line = match (s, t) {
                (119, 999) => format!("not ok {} case{t}", t + 1),
                (60, 500) => format!("ok {} case{t} # SKIP not here", t + 1),
                _ => format!("ok {} case{t}", t + 1),
            };
            text.push_str(&format!("    {line}\n"));
        }
        let result = if s == 119 { "not ok" } else { "ok" };
        text.push_str(&format!("{result} {} suite{s}\n", s + 1));
    }
    let big = write_ktap(&rig, "big", &text);
    let job = submit_ktap(&mut c, "ktap-120000", &big).await;
    let n = wait_node(&mut c, job, Duration::from_secs(900), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Fail as i32, "{n:?}");
    assert_eq!(runs(&big), 1, "the job ran more than once");
    let d = data(&n);
    assert_eq!(d["results_truncated"], true, "{d:?}");
    // Everything the agent sent: 120,000 tests, 120 suites and exit-status.
    // exit-status passes too: one passing test more than the KTAP has.
    steps.at("Everything the agent sent");
    assert_eq!(
        d["results_counts"],
        serde_json::json!({"pass": 119_999, "fail": 1, "skip": 1, "incomplete": 0, "nodes": 120_121}),
        "{d:?}"
    );
    let note = d["results_note"].as_str().unwrap_or_default();
    assert!(
        note.contains("100000 of the 120121 tests sent were kept"),
        "{note}"
    );
    let tests = all_tests(&mut c, job).await;
    assert_eq!(tests.len(), 100_000);
    // The failure survived the cut, with its suite.
    steps.at("The failure survived the cut, with its suite");
    let failed = tests
        .iter()
        .find(|t| t.name == "case999" && t.result == v1::NodeResult::Fail as i32)
        .expect("the failing test is kept");
    assert_eq!(failed.path[1], "suite119");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_with_a_bad_role_a_nul_or_a_huge_parameter_is_refused_naming_the_field() {
    let mut steps = Steps::new();
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let mut c = rig.client().await;
    let refused = |spec: v1::JobSpec| {
        let mut c = c.clone();
        async move {
            c.nodes
                .submit_job(v1::SubmitJobRequest {
                    spec: Some(spec),
                    parent: 0,
                    submitter: "e2e".into(),
                })
                .await
                .expect_err("the submit is refused")
        }
    };
    let mut spec = shell_spec("role", &[], &[], 60);
    spec.artifacts.insert(
        "../x".into(),
        v1::Artifact {
            url: "https://example.org/x".into(),
            sha256: String::new(),
        },
    );
    let e = refused(spec).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("spec.artifacts: the role \"../x\" contains `/`"),
        "{e:?}"
    );

    let e = refused(shell_spec("nul", &[], &[("arg", "a\0b")], 60)).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("spec.params.arg contains a NUL byte"),
        "{e:?}"
    );

    let huge = "x".repeat(1 << 20);
    let e = refused(shell_spec("huge", &[], &[("big", huge.as_str())], 60)).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("spec.params.big is 1048576 bytes long (at most 32768)"),
        "{e:?}"
    );

    // Nothing was queued.
    steps.at("Nothing was queued");
    let nodes = c
        .nodes
        .query_nodes(v1::QueryNodesRequest::default())
        .await
        .expect("query")
        .into_inner()
        .nodes;
    assert!(nodes.is_empty(), "{nodes:?}");
}

/// A lab's raw agent client that has taken job `job` on device `d`.
async fn take_job(
    rig: &Rig,
    bundle: &Path,
) -> (
    v1::agent_service_client::AgentServiceClient<tonic::transport::Channel>,
    v1::JobRef,
) {
    let mut a = rig.agent_client(Some(bundle)).await.expect("agent client");
    let s = a
        .register(v1::RegisterRequest {
            devices: vec![v1::Device {
                name: "d".into(),
                device_type: "lab-host".into(),
                driver: "shell".into(),
                health: v1::DeviceHealth::Good as i32,
                ..Default::default()
            }],
            free_slots: 1,
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    let got = a
        .acquire_job(v1::AcquireJobRequest {
            session: s.session,
            free_devices: vec!["d".into()],
            wait_ms: 5000,
        })
        .await
        .expect("acquire")
        .into_inner()
        .assignment
        .expect("a job");
    (a, got.job.expect("job ref"))
}

fn test(name: &str, result: v1::NodeResult, tests: Vec<v1::TestResult>) -> v1::TestResult {
    v1::TestResult {
        name: name.into(),
        result: result as i32,
        tests,
        ..Default::default()
    }
}

fn chain(depth: usize) -> v1::TestResult {
    let mut t = test("bottom", v1::NodeResult::Fail, vec![]);
    for i in (1..depth).rev() {
        t = test(&format!("l{i}"), v1::NodeResult::Fail, vec![t]);
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_report_with_hostile_names_is_normalised_with_a_note_and_never_internal() {
    let mut steps = Steps::new();
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let lab = rig.issue_lab("peer-lab");
    let mut c = rig.client().await;

    // A report our parser would never send: names with NBSP, NUL and nothing at all,
    // duplicates, and a chain 60 levels deep. Accepted, fixed, and the job says so.
    steps.at("A report our parser would never send");
    let job = submit(&mut c, "peer-report", &[], &[]).await;
    let (mut a, jr) = take_job(&rig, &lab).await;
    assert_eq!(jr.job, job);
    a.report_result(v1::ReportResultRequest {
        job: Some(jr),
        result: v1::NodeResult::Fail as i32,
        tests: vec![
            test("x\u{a0}", v1::NodeResult::Pass, vec![]),
            test("x", v1::NodeResult::Pass, vec![]),
            test("", v1::NodeResult::Skip, vec![]),
            test("nul\0byte", v1::NodeResult::Pass, vec![]),
            chain(60),
        ],
        // A peer cannot forge the coordinator's own notes.
        data: Some(labwire_proto::convert::map_to_struct(
            &serde_json::json!({"results_note": "forged"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )),
        ..Default::default()
    })
    .await
    .expect("the report is accepted");
    let n = wait_node(&mut c, job, Duration::from_secs(10), is_done).await;
    let d = data(&n);
    let note = d["results_note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("the coordinator changed this result"),
        "{d:?}"
    );
    assert!(note.contains("moved up"), "{note}");
    assert_eq!(d["results_changes"]["flattened"], 28, "{d:?}");
    assert_eq!(d["results_changes"]["made_unique"], 1, "{d:?}");
    let names: Vec<String> = children(&mut c, job)
        .await
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["x", "x#2", "3", "nul byte", "l1"]);

    // Nested deeper than the wire allows (prost decodes 100 levels): the message cannot be
    // decoded, which is the sender's fault: INVALID_ARGUMENT, never INTERNAL (retried).
    steps.at("Nested deeper than the wire allows (prost decodes 100 levels)");
    let job = submit(&mut c, "too-deep", &[], &[]).await;
    let (mut a, jr) = take_job(&rig, &lab).await;
    assert_eq!(jr.job, job);
    let e = a
        .report_result(v1::ReportResultRequest {
            job: Some(jr),
            result: v1::NodeResult::Fail as i32,
            tests: vec![chain(150)],
            ..Default::default()
        })
        .await
        .expect_err("too deep to decode");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("cannot be decoded"), "{e:?}");
}
