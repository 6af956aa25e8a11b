//! A job definition shaped as kernelci-core's `base/pull_labs.jinja2` renders it (commit
//! 69a285e; written here from the template's fields), turned into a labwire job; then the
//! callback of that job once it ran, checked against what kernelci-core's PULL_LABS
//! `Callback` reads: `summary.total`/`failed`, each test's `status` and `subtests`,
//! `error_code` only for infrastructure failures, and `artifacts.log` as `base64:` + gzip.

use super::*;
use crate::model::NodeState;
use crate::pipeline::kernelci::config::PullLabConfig;
use crate::pipeline::kernelci::definition::{self, Origin};
use crate::store::kernelci::KciStatus;
use std::io::Read;

fn cfg() -> PullLabConfig {
    let yaml = "api: http://127.0.0.1:9/latest/\nruntimes: [{name: pull-labs-demo, callback_token_file: /nonexistent}]\n\
                platforms: {qemu-x86_64: {driver: serial, tags: [kci]}}\n\
                tests:\n  ltp: {commands: ['run-ltp {test.parameters} --timeout {test.timeout_s}']}\n  \
                kselftest-*: {params: {kselftest: '{test.type_suffix}'}, commands: ['kselftest {test.id}']}\n";
    yaml_serde::from_str(yaml).unwrap()
}

/// The template's output for a QEMU platform, with a boot test and two more.
fn rendered(callback: &str) -> String {
    format!(
        r#"{{
  "artifacts": {{
    "kernel": "http://storage.example/kbuild/bzImage",
    "modules": "http://storage.example/kbuild/modules.tar.xz",
    "ramdisk": "http://storage.example/rootfs/rootfs.cpio.gz"
  }},
  "tests": [
    {{"id": "ltp-smoke", "type": "ltp", "depends": ["boot-test-65f0a1b2"], "timeout_s": 3600,
      "parameters": "tst_cmdfiles=smoketest workers=max", "pre-commands": ["mount -t tmpfs t /tmp"], "post-commands": []}},
    {{"id": "boot-test-65f0a1b2", "type": "boot", "depends": [], "timeout_s": 600, "pre-commands": [], "post-commands": []}},
    {{"id": "kselftest-timers", "type": "kselftest-timers", "depends": [], "timeout_s": 1800, "pre-commands": [], "post-commands": ["dmesg | tail"]}}
  ],
  "environment": {{"platform": "qemu-x86_64", "arch": "x86_64", "console": {{"method": "serial", "baud": 115200}}}},
  "callback": {{"url": "{callback}", "token_name": "kernelci-pull-labs-demo"}}
}}"#
    )
}

fn origin() -> Origin<'static> {
    Origin {
        kci_node: "65f0a1b2c3d4e5f6a7b8c9d0",
        name: "baseline-x86-pull-labs-demo",
        runtime: "pull-labs-demo",
        kernel_revision: None,
    }
}

#[test]
fn a_rendered_definition_becomes_a_job() {
    let def =
        definition::parse(rendered("http://127.0.0.1:9/node/65f0a1b2c3d4e5f6a7b8c9d0").as_bytes())
            .unwrap();
    let t = definition::translate(&cfg(), &origin(), &def).unwrap();
    let s = &t.job.spec;
    assert_eq!(s.name, "baseline-x86-pull-labs-demo");
    let c = s.criteria.as_ref().unwrap();
    assert_eq!(
        (c.device_type.as_str(), c.driver.as_str()),
        ("qemu-x86_64", "serial")
    );
    assert_eq!(c.tags, vec!["kci".to_string()]);
    assert_eq!(
        s.artifacts["ramdisk"].url,
        "http://storage.example/rootfs/rootfs.cpio.gz"
    );
    assert_eq!(s.artifacts.len(), 3);
    // The boot test first (ltp depends on it), then ltp with its pre-command, then kselftest.
    assert_eq!(
        s.commands,
        vec![
            "mount -t tmpfs t /tmp".to_string(),
            "run-ltp {params.kci_t2_parameters} --timeout {params.kci_t2_timeout_s}".into(),
            "kselftest {params.kci_t3_id}".into(),
            "dmesg | tail".into(),
        ]
    );
    assert_eq!(
        s.params["kci_t2_parameters"],
        "tst_cmdfiles=smoketest workers=max"
    );
    assert_eq!(s.params["kselftest"], "timers");
    assert_eq!(s.params["kernelci_node"], "65f0a1b2c3d4e5f6a7b8c9d0");
    // 10 min allowance + the three tests.
    assert_eq!(s.timeout_seconds, 600 + 600 + 3600 + 1800);
    let plan = &t.job.data["kernelci"]["tests"];
    assert_eq!(plan[0]["id"], "boot-test-65f0a1b2");
    assert_eq!(plan[0]["commands"], serde_json::json!([1, 0]));
    assert_eq!(plan[1]["commands"], serde_json::json!([1, 2]));
    assert_eq!(plan[2]["commands"], serde_json::json!([3, 4]));
}

#[test]
fn definitions_that_cannot_run_here_are_refused_with_the_reason() {
    let ok = rendered("http://127.0.0.1:9/node/x");
    let refused = |text: &str| {
        let def = definition::parse(text.as_bytes())?;
        definition::translate(&cfg(), &origin(), &def).map(|_| ())
    };
    let cases = [
        (
            ok.replace("127.0.0.1:9/node", "attacker.example/node"),
            "callback URL",
        ),
        (ok.replace("\"ltp\"", "\"fancy\""), "type `fancy`"),
        (
            ok.replace(
                "http://storage.example/kbuild/bzImage",
                "file:///etc/shadow",
            ),
            "artifacts.kernel",
        ),
        (
            ok.replace("[\"boot-test-65f0a1b2\"]", "[\"nope\"]"),
            "depends on `nope`",
        ),
        (
            ok.replace(
                "\"depends\": [], \"timeout_s\": 600",
                "\"depends\": [\"ltp-smoke\"], \"timeout_s\": 600",
            ),
            "circle",
        ),
        (
            ok.replace("\"platform\": \"qemu-x86_64\"", "\"platform\": \"../x\""),
            "platform",
        ),
        ("{\"tests\": []}".to_string(), "environment"),
        ("not json".to_string(), "not a PULL_LABS definition"),
    ];
    for (text, want) in cases {
        let e = refused(&text).unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
    }
}

fn node(id: i64, parent: i64, name: &str, result: Option<NodeResult>) -> Node {
    Node {
        id: NodeId(id),
        kind: crate::model::NodeKind::Test,
        name: name.into(),
        path: vec![],
        group: None,
        parent: Some(NodeId(parent)),
        state: NodeState::Done,
        result,
        artifacts: Default::default(),
        data: Default::default(),
        created: chrono::Utc::now(),
        updated: chrono::Utc::now(),
        timeout: None,
        holdoff: None,
        owner: String::new(),
        submitter: String::new(),
        treeid: String::new(),
        retry_counter: 0,
    }
}

fn kci() -> KciJob {
    KciJob {
        kci_node: "65f0a1b2c3d4e5f6a7b8c9d0".into(),
        runtime: "pull-labs-demo".into(),
        job_node: Some(NodeId(1)),
        status: KciStatus::Running,
        callback_url: "http://127.0.0.1:9/node/65f0a1b2c3d4e5f6a7b8c9d0".into(),
        refusal: None,
        tries: 0,
    }
}

fn decode(log: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD
        .decode(log.strip_prefix("base64:").unwrap())
        .unwrap();
    let mut s = String::new();
    flate2::read::GzDecoder::new(b.as_slice())
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn ran_job(result: NodeResult, data: Value) -> (Node, Vec<Node>) {
    let def = definition::parse(rendered("http://127.0.0.1:9/node/x").as_bytes()).unwrap();
    let t = definition::translate(&cfg(), &origin(), &def).unwrap();
    let mut job = node(1, 0, "baseline-x86-pull-labs-demo", Some(result));
    job.parent = None;
    job.data = t.job.data;
    for (k, v) in data.as_object().unwrap() {
        job.data.insert(k.clone(), v.clone());
    }
    (job, Vec::new())
}

#[test]
fn a_job_that_ran_posts_each_test_with_its_status_and_the_log() {
    use NodeResult::*;
    let (job, _) = ran_job(Fail, json!({"lab": "lab-a", "device": "qemu-01"}));
    let mut failed_cmd = node(8, 3, "command-3", Some(Fail));
    failed_cmd.data.insert(
        "error_msg".into(),
        "`kselftest` exited with status 1".into(),
    );
    let tree = vec![
        node(2, 1, "setup", Some(Pass)),
        node(3, 1, "commands", Some(Fail)),
        node(4, 1, "labwire_demo", Some(Fail)),
        node(5, 2, "kernel-boot", Some(Pass)),
        node(6, 2, "login", Some(Pass)),
        node(7, 3, "command-1", Some(Pass)),
        node(9, 3, "command-2", Some(Pass)),
        failed_cmd,
        node(10, 3, "command-4", Some(Pass)),
        node(11, 4, "test_a", Some(Pass)),
        node(12, 4, "test_b", Some(Fail)),
        node(13, 4, "test_c", Some(Skip)),
    ];
    let cb = finished(
        &kci(),
        &job,
        &tree,
        b"Linux version 6.1\nlogin: root\n",
        "https://coord.example:7443",
    );
    let tests = &cb["tests"];
    assert_eq!(tests["boot-test-65f0a1b2"]["status"], "pass");
    assert_eq!(
        tests["boot-test-65f0a1b2"]["subtests"]["login"]["status"],
        "pass"
    );
    assert_eq!(tests["ltp-smoke"]["status"], "pass");
    assert_eq!(
        tests["ltp-smoke"]["subtests"]["command-2"]["status"],
        "pass"
    );
    assert_eq!(tests["kselftest-timers"]["status"], "fail");
    assert_eq!(
        tests["kselftest-timers"]["subtests"]["command-3"]["error_msg"],
        "`kselftest` exited with status 1"
    );
    assert_eq!(
        tests["labwire_demo"]["subtests"]["test_c"]["status"],
        "skip"
    );
    // Leaves: 2 setup + 4 commands + 3 suite tests.
    assert_eq!(
        cb["summary"],
        json!({"total": 9, "passed": 6, "failed": 2, "skipped": 1, "errors": 0})
    );
    assert!(
        cb.get("error_code").is_none(),
        "a test failure is no infrastructure error"
    );
    assert_eq!(cb["metadata"]["system"], "lab-a/qemu-01");
    assert_eq!(
        decode(cb["artifacts"]["log"].as_str().unwrap()),
        "Linux version 6.1\nlogin: root\n"
    );
}

#[test]
fn infrastructure_failures_are_reported_as_such_and_kernel_failures_are_not() {
    let tree_boot_failed = |code: &str| {
        let (job, _) = ran_job(
            NodeResult::Incomplete,
            json!({"lab": "lab-a", "device": "qemu-01", "error_code": code, "error_msg": "what happened"}),
        );
        let tree = vec![
            node(2, 1, "setup", Some(NodeResult::Fail)),
            node(5, 2, "kernel-boot", Some(NodeResult::Fail)),
        ];
        finished(&kci(), &job, &tree, b"", "https://c")
    };
    let infra = tree_boot_failed("power_failed");
    assert_eq!(infra["error_code"], "power_failed");
    assert_eq!(infra["metadata"]["error_code"], "power_failed");
    assert_eq!(infra["error_msg"], "what happened");
    // The tests that never ran are errors (KernelCI: incomplete), not failures.
    assert_eq!(infra["tests"]["ltp-smoke"]["status"], "error");
    let panic = tree_boot_failed("kernel_panic");
    assert!(panic.get("error_code").is_none());
    assert_eq!(panic["tests"]["boot-test-65f0a1b2"]["status"], "fail");
    assert!(panic["summary"]["failed"].as_u64().unwrap() > 0);

    let mut k = kci();
    k.job_node = None;
    k.status = KciStatus::Refused;
    k.refusal = Some("test type `fancy` is not mapped".into());
    let r = refused(&k, "https://c");
    assert_eq!(r["error_code"], "invalid_job");
    assert_eq!(r["summary"]["total"], 0);
    assert_eq!(r["error_msg"], "test type `fancy` is not mapped");
}

#[test]
fn a_huge_log_is_cut_in_the_middle() {
    let log = vec![b'x'; MAX_LOG_BYTES + 10];
    let text = decode(&encode_log(&log));
    assert!(text.contains("[labwire: 10 bytes of the log left out here]"));
    assert_eq!(
        text.len(),
        MAX_LOG_BYTES + "\n[labwire: 10 bytes of the log left out here]\n".len()
    );
}
