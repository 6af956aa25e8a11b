//! The `labwire` command line as a lab engineer uses it: job files and artifacts on
//! `submit` (checked by `--dry-run`, and run on the QEMU serial board), `--json` on every
//! command that prints data (each output parsed here), `labs --devices`, `export junit`,
//! `--version` with the git revision, and all three binaries ending quietly when their
//! reader closes the pipe.

use crate::common;
use crate::serial::{board_dir, serial_agent, serial_device};

use common::*;
use labwire_proto::{convert, v1};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `labwire ARGS` against the rig's coordinator: (success, stdout, stderr).
fn labwire(rig: &Rig, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(CLIENT)
        .args(args)
        .env("LABWIRE_SERVER", rig.url())
        .env("LABWIRE_CA", rig.path("coordinator/pki/ca.pem"))
        .env("LABWIRE_TOKEN", rig.admin_token.trim())
        .output()
        .expect("run labwire");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `labwire ARGS` that must succeed and print JSON.
fn labwire_json(rig: &Rig, args: &[&str]) -> Value {
    let (ok, out, err) = labwire(rig, args);
    assert!(ok, "labwire {args:?} failed: {out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("labwire {args:?}: {e}: {out}"))
}

/// `labwire submit --dry-run` with no coordinator at all: (success, stdout, stderr).
fn dry_run(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(CLIENT)
        .args(["--server", "https://127.0.0.1:1", "submit", "--dry-run"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run labwire");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn job_files_are_checked_by_dry_run_and_bad_ones_name_the_field() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = repo.join("examples/job.yaml");
    let example = example.to_str().expect("utf-8 path");
    // The documented example: its JSON form is a job file again, and reads back the same.
    let (ok, out, err) = dry_run(&["-f", example], None);
    assert!(ok, "{out}{err}");
    let job: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(job["name"], "baseline-x86-serial");
    assert_eq!(job["criteria"]["tags"], serde_json::json!(["qemu"]));
    assert_eq!(job["timeout"], 600);
    assert_eq!(job["parser"], "auto");
    assert!(job["artifacts"]["ramdisk"]["sha256"].is_string(), "{job}");
    let dir = tempfile::tempdir().expect("tempdir");
    let again = dir.path().join("again.json");
    std::fs::write(&again, &out).expect("write");
    let (ok, out2, err) = dry_run(&["-f", again.to_str().expect("path")], None);
    assert!(ok, "{err}");
    assert_eq!(out2, out, "a dry run's output is the same job file");

    // The command line adds to the file and replaces its scalars.
    let sha = "ab".repeat(32);
    let (ok, out, err) = dry_run(
        &[
            "-f",
            example,
            "--name",
            "renamed",
            "--artifact",
            &format!("dtb=https://x.example/board.dtb#{sha}"),
            "--device",
            "qemu-7",
            "--parser",
            "ktap",
            "--timeout",
            "90",
            "--command",
            "echo last",
        ],
        None,
    );
    assert!(ok, "{err}");
    let job: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(job["name"], "renamed");
    assert_eq!(job["artifacts"]["dtb"]["sha256"], sha.as_str());
    assert_eq!(
        job["artifacts"]["kernel"]["url"]
            .as_str()
            .map(|u| u.ends_with("bzImage")),
        Some(true)
    );
    assert_eq!(job["criteria"]["devices"], serde_json::json!(["qemu-7"]));
    assert_eq!(job["parser"], "ktap");
    assert_eq!(job["timeout"], 90);
    assert_eq!(job["commands"].as_array().map(Vec::len), Some(3));

    // JSON on standard input works too.
    let (ok, out, err) = dry_run(
        &["-f", "-"],
        Some(r#"{"name": "from-stdin", "commands": ["true"]}"#),
    );
    assert!(ok, "{err}");
    assert!(out.contains("from-stdin"));

    // Hostile or mistaken files: a clear error naming the file and the field, nothing sent.
    let cases: &[(&str, &str)] = &[
        ("name: x\nartifcats: {}\n", "unknown field `artifcats`"),
        (
            "name: x\nartifacts: {kernel: /boot/vmlinuz}\n",
            "artifacts.kernel",
        ),
        (
            "name: x\nartifacts: {kernel: 'file:///k#zz'}\n",
            "artifacts.kernel",
        ),
        (
            "name: x\nartifacts: {kernel: {url: 'https://k/b', sha256: '123'}}\n",
            "64 hexadecimal",
        ),
        ("name: x\nartifacts: {'../../etc': 'https://k/b'}\n", "role"),
        ("name: x\nparser: perl\n", "parser"),
        ("name: x\ntimeout: soon\n", "timeout"),
        ("name: x\nparams: {'a;b': '1'}\n", "`a;b`"),
        ("criteria: {arch: x86_64}\n", "no name"),
        ("name: \"x\\u0000y\"\n", "spec.name"),
        ("- just\n- a list\n", "job file"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&f, text).expect("write");
        let (ok, out, err) = dry_run(&["-f", f.to_str().expect("path")], None);
        assert!(!ok, "{text:?} was accepted: {out}");
        assert!(err.contains(want), "{text:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (ok, _, err) = dry_run(&["--name", "x", "--artifact", "kernel"], None);
    assert!(!ok && err.contains("ROLE=URL"), "{err}");
    let (ok, _, err) = dry_run(&["--name", "x", "--artifact", "kernel=ftp://k/b"], None);
    assert!(!ok && err.contains("ftp://k/b"), "{err}");
    let (ok, _, err) = dry_run(&["-f", "/nonexistent/job.yaml"], None);
    assert!(!ok && err.contains("/nonexistent/job.yaml"), "{err}");
}

#[test]
fn all_three_binaries_print_the_git_revision_and_end_quietly_on_a_closed_pipe() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let re = regex::Regex::new(r"^\S+ \d+\.\d+\.\d+( \(git [0-9a-f]{7,40}\))?\n$").expect("re");
    let in_git = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "HEAD"])
        .output()
        .is_ok_and(|o| o.status.success());
    for bin in [CLIENT, AGENT, COORDINATOR] {
        let v = run_ok(Command::new(bin).arg("--version"));
        assert!(re.is_match(&v), "{bin} --version: {v:?}");
        assert_eq!(v.contains("(git "), in_git, "{bin} --version: {v:?}");
    }

    // A log that fills any pipe buffer many times over.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("big.log");
    let mut text = String::from("KTAP version 1\n1..20000\n");
    for i in 1..=20000 {
        text.push_str(&format!("ok {i} test_{i}\n"));
    }
    std::fs::write(&log, text).expect("write");
    let log = log.to_str().expect("path");
    let example = repo.join("config/pipeline.yaml");
    let example = example.to_str().expect("path");
    let agent_cfg = repo.join("config/agent.yaml");
    let agent_cfg = agent_cfg.to_str().expect("path");
    let job = repo.join("examples/job.yaml");
    let job = job.to_str().expect("path");
    let runs: &[(&str, &[&str])] = &[
        (AGENT, &["parse", "--output", "jsonl", log]),
        (AGENT, &["parse", "--output", "json", log]),
        (AGENT, &["parse", "--output", "junit", log]),
        (AGENT, &["parse", "--output", "summary", log]),
        (AGENT, &["check-config", "--config", agent_cfg]),
        (
            COORDINATOR,
            &["--config", "/dev/null", "check-config", example],
        ),
        (CLIENT, &["submit", "--dry-run", "-f", job]),
        (CLIENT, &["--help"]),
    ];
    for (bin, args) in runs {
        // The reader is gone before the command writes anything.
        let mut child = Command::new(bin)
            .args(*args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{bin} {args:?} with its output closed: {} {stderr}",
            out.status
        );
    }
    // `| head -1` in a shell with pipefail: the reader leaves after one line.
    let st = Command::new("bash")
        .args(["-o", "pipefail", "-c"])
        .arg(format!(
            "'{AGENT}' parse --output jsonl '{log}' | head -1 >/dev/null"
        ))
        .stderr(Stdio::piped())
        .output()
        .expect("bash");
    assert!(
        st.status.success() && st.stderr.is_empty(),
        "{}: {}",
        st.status,
        String::from_utf8_lossy(&st.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_command_prints_json_with_the_documented_fields() {
    let mut steps = Steps::new();
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    rig.agent_config(
        "lab-a",
        &[(
            "host-1",
            &[
                "printf",
                "KTAP version 1\\n1..2\\nok 1 alpha\\nnot ok 2 beta\\n",
            ],
            &["ktap", "fast"],
        )],
        "",
    );
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;

    steps.at("a checkout and a job submitted by the command line");
    let checkout = c
        .nodes
        .create_node(v1::CreateNodeRequest {
            node: Some(v1::Node {
                kind: v1::NodeKind::Checkout as i32,
                name: "checkout".into(),
                state: v1::NodeState::Available as i32,
                data: Some(convert::map_to_struct(
                    serde_json::json!({"kernel_revision": {"tree": "mainline",
                        "branch": "master", "commit": "0123456789abcdef0123456789abcdef01234567"}})
                    .as_object()
                    .expect("object"),
                )),
                ..Default::default()
            }),
        })
        .await
        .expect("create checkout")
        .into_inner()
        .node
        .expect("node")
        .id;
    let parent = checkout.to_string();
    let submitted = labwire_json(
        &rig,
        &[
            "submit", "--json", "--name", "kunit", "--driver", "shell", "--tag", "ktap",
            "--parser", "ktap", "--parent", &parent,
        ],
    );
    let job = submitted["id"].as_i64().expect("id");
    let n = wait_node(&mut c, job, Duration::from_secs(60), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Fail as i32);
    let id = job.to_string();

    steps.at("node");
    let node = labwire_json(&rig, &["node", &id, "--json"]);
    for k in [
        "id",
        "kind",
        "name",
        "path",
        "group",
        "parent",
        "state",
        "result",
        "artifacts",
        "data",
        "created",
        "updated",
        "timeout",
        "holdoff",
        "owner",
        "submitter",
        "treeid",
        "retry_counter",
    ] {
        assert!(node.get(k).is_some(), "node has no `{k}`: {node}");
    }
    assert_eq!(node["kind"], "job");
    assert_eq!(node["parent"], checkout);
    assert_eq!(node["result"], "fail");

    steps.at("nodes");
    let nodes = labwire_json(&rig, &["nodes", "--json", "--parent", &id]);
    let names: Vec<&str> = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert!(
        names.contains(&"alpha") && names.contains(&"beta"),
        "{nodes}"
    );
    assert!(nodes["next_cursor"].is_null(), "{nodes}");
    let page = labwire_json(&rig, &["--json", "nodes", "--parent", &id, "--limit", "1"]);
    assert!(page["next_cursor"].is_i64(), "{page}");

    steps.at("tree");
    let tree = labwire_json(&rig, &["tree", &parent, "--json"]);
    assert_eq!(tree["kind"], "checkout");
    let kid = &tree["children"][0];
    assert_eq!(kid["id"], job);
    let tests: Vec<(&str, &str)> = kid["children"]
        .as_array()
        .expect("children")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or(""),
                t["result"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        tests,
        [("exit-status", "pass"), ("alpha", "pass"), ("beta", "fail")],
        "{tree}"
    );

    steps.at("labs --devices");
    let labs = labwire_json(&rig, &["labs", "--json"]);
    let lab = &labs["labs"][0];
    assert_eq!(lab["name"], "lab-a");
    assert_eq!(lab["state"], "connected");
    let dev = &lab["devices"][0];
    assert_eq!(dev["name"], "host-1");
    assert_eq!(dev["device_type"], "lab-host");
    assert_eq!(dev["driver"], "shell");
    assert!(
        ["good", "unknown"].contains(&dev["health"].as_str().unwrap_or("")),
        "{dev}"
    );
    assert_eq!(dev["busy"], false);
    assert_eq!(dev["tags"], serde_json::json!(["ktap", "fast"]));
    let (ok, text, err) = labwire(&rig, &["labs", "--devices"]);
    assert!(ok, "{err}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("host-1"))
        .unwrap_or_else(|| panic!("no device line in\n{text}"));
    for word in ["lab-host", "shell", "idle", "ktap,fast"] {
        assert!(line.contains(word), "{line}");
    }

    steps.at("jobs and jobs explain");
    let jobs = labwire_json(&rig, &["jobs", "--json"]);
    let j = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["id"] == job)
        .unwrap_or_else(|| panic!("job {job} not listed: {jobs}"));
    assert_eq!(j["status"], "finished");
    assert_eq!(j["lab"], "lab-a");
    assert_eq!(j["device"], "host-1");
    assert_eq!(j["result"], "fail");
    let ex = labwire_json(&rig, &["jobs", "explain", &id, "--json"]);
    assert_eq!(ex["job"], job);
    assert_eq!(ex["status"], "finished");
    assert_eq!(ex["criteria"]["tags"], serde_json::json!(["ktap"]), "{ex}");
    assert_eq!(ex["labs"][0]["lab"], "lab-a");
    assert!(ex["labs"][0]["eligible"].is_boolean());

    steps.at("events");
    let (ok, text, err) = labwire(&rig, &["events", "--json"]);
    assert!(ok, "{err}");
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["node"]["id"] == job && e["node"]["state"] == "done"),
        "{text}"
    );
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64())
    );

    steps.at("report");
    let report = labwire_json(&rig, &["report", &parent, "--json"]);
    assert_eq!(report["checkout"], checkout);
    assert_eq!(report["tree"], "mainline");
    assert_eq!(report["jobs"][0]["name"], "kunit");
    assert_eq!(report["jobs"][0]["tests"], 3);
    assert_eq!(report["jobs"][0]["failures"], 1);
    assert_eq!(report["failures"][0]["path"], "beta", "{report}");

    steps.at("export junit");
    let (ok, xml, err) = labwire(&rig, &["export", "junit", &id]);
    assert!(ok, "{err}");
    assert!(xml.contains(r#"tests="3" failures="1""#), "{xml}");
    assert!(
        xml.contains(r#"<testcase classname="alpha" name="alpha"/>"#),
        "{xml}"
    );
    assert!(xml.contains(r#"<failure message="fail">"#), "{xml}");

    steps.at("submit, cancel and log");
    let queued = labwire_json(
        &rig,
        &["submit", "--json", "--name", "nowhere", "--tag", "none"],
    );
    let queued = queued["id"].as_i64().expect("id");
    let cancel = labwire_json(&rig, &["cancel", &queued.to_string(), "--json"]);
    assert_eq!(cancel["job"], queued);
    assert_eq!(cancel["state"], "done", "{cancel}");
    let (ok, _, err) = labwire(&rig, &["log", &id, "--json"]);
    assert!(!ok && err.contains("--json does not apply"), "{err}");
}

fn sha256sum(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().expect("digest").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_jobs_from_options_and_from_a_job_file_pass_on_the_qemu_board() {
    let mut steps = Steps::new();
    let board = board_dir();
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 2s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("board-lab");
    let devices = serial_device(&rig, "qemu-1", "qemu", &board, "labwire");
    serial_agent(&rig, "board-lab", &devices, &board);
    let _agent = rig.start_agent("board-lab");
    let mut c = rig.client().await;
    let kernel = board.join("vmlinuz");
    let ramdisk = board.join("initramfs.cpio.gz");

    steps.at("options: --artifact with a digest, --device, --parser, --wait");
    let (ok, out, err) = labwire(
        &rig,
        &[
            "submit",
            "--name",
            "cli-options",
            "--driver",
            "serial",
            "--arch",
            "x86_64",
            "--device",
            "qemu-1",
            "--artifact",
            &format!("kernel=file://{}#{}", kernel.display(), sha256sum(&kernel)),
            "--artifact",
            &format!("ramdisk=file://{}", ramdisk.display()),
            "--parser",
            "ktap",
            "--command",
            "printf 'KTAP version 1\\n1..1\\nok 1 board_ok\\n'",
            "--timeout",
            "3m",
            "--wait",
        ],
    );
    let id: i64 = out
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("job id");
    let log = read_log(&mut c, id).await;
    assert!(ok, "{out}\n{err}\n{log}");
    assert!(out.contains("board_ok"), "{out}");
    let n = wait_node(&mut c, id, Duration::from_secs(5), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{out}");
    assert_eq!(data(&n)["device"], "qemu-1");
    assert!(log.contains("Linux version"), "{log}");

    steps.at("a job file: artifacts as maps with digests, params, commands");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("board-job.yaml");
    std::fs::write(
        &file,
        format!(
            "name: cli-job-file\ncriteria: {{driver: serial, arch: x86_64, tags: [qemu]}}\n\
             artifacts:\n  kernel: {{url: 'file://{}', sha256: {}}}\n  ramdisk: 'file://{}#{}'\n\
             params: {{greeting: \"hello; $(id) `id`\"}}\n\
             commands: [\"printf 'GREETING=[%s]\\\\n' {{params.greeting}}\"]\n\
             parser: auto\ntimeout: 180\n",
            kernel.display(),
            sha256sum(&kernel),
            ramdisk.display(),
            sha256sum(&ramdisk),
        ),
    )
    .expect("write job file");
    let file = file.to_str().expect("path");
    let (ok, out, err) = labwire(&rig, &["submit", "--dry-run", "-f", file]);
    assert!(ok, "{err}");
    assert!(out.contains("cli-job-file"), "{out}");
    let tree = labwire_json(&rig, &["submit", "-f", file, "--wait", "--json"]);
    let id = tree["id"].as_i64().expect("id");
    let log = read_log(&mut c, id).await;
    assert_eq!(tree["result"], "pass", "{tree}\n{log}");
    assert!(log.contains("GREETING=[hello; $(id) `id`]"), "{log}");
    let names: Vec<&str> = tree["children"]
        .as_array()
        .expect("children")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for want in ["setup", "commands", "kernelmsg"] {
        assert!(names.contains(&want), "{names:?}");
    }

    steps.at("a wrong digest: the job ends incomplete, the board is not booted with it");
    let bad = format!("kernel=file://{}#{}", kernel.display(), "0".repeat(64));
    let ramdisk_arg = format!("ramdisk=file://{}", ramdisk.display());
    let (ok, out, _) = labwire(
        &rig,
        &[
            "submit",
            "--name",
            "cli-bad-digest",
            "--driver",
            "serial",
            "--tag",
            "qemu",
            "--artifact",
            &bad,
            "--artifact",
            &ramdisk_arg,
            "--command",
            "true",
            "--wait",
        ],
    );
    assert!(!ok, "{out}");
    let id: i64 = out
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("job id");
    let n = wait_node(&mut c, id, Duration::from_secs(5), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Incomplete as i32, "{out}");
}

#[test]
fn the_device_type_library_has_kernelci_platforms_and_every_pipeline_platform_resolves() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = labwire_agent::device_types::Library::load(&[] as &[&Path]).expect("library");
    // Every file of device-types/ is built in, under the name it is filed as.
    let mut files = 0;
    for e in std::fs::read_dir(repo.join("device-types")).expect("device-types/") {
        let p = e.expect("entry").path();
        if p.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        files += 1;
        let stem = p.file_stem().and_then(|s| s.to_str()).expect("name");
        let t = lib
            .get(stem)
            .unwrap_or_else(|| panic!("{} is not built in", p.display()));
        assert!(!t.arch.is_empty(), "{stem}");
        assert!(
            t.compatible.is_empty() || t.dtb.is_some() || t.arch == "x86_64",
            "{stem}: compatible strings without a dtb"
        );
    }
    assert_eq!(lib.names().len(), files, "a name is filed twice");
    // KernelCI's platforms (config/platforms*.yaml of kernelci-pipeline, except the
    // `docker`, `kubernetes` and `shell` runtimes, which are no boards): 132 boards.
    assert!(files >= 132, "only {files} device types");
    for (name, arch, mach, boot) in [
        ("bcm2711-rpi-4-b", "arm64", "broadcom", "u-boot"),
        ("beaglebone-black", "arm", "omap", "u-boot"),
        ("dragonboard-410c", "arm64", "qcom", "fastboot"),
        ("acer-R721T-grunt", "x86_64", "x86", "depthcharge"),
        ("k3-am62p5-sk", "arm64", "ti", "u-boot"),
        ("qemu-x86_64", "x86_64", "qemu", "qemu"),
    ] {
        let t = lib.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(
            (t.arch.as_str(), t.mach.as_deref(), t.boot_method.as_deref()),
            (arch, Some(mach), Some(boot)),
            "{name}"
        );
    }
    // Every platform of the example scheduler config names a device type of the library
    // (its base_name, else its own name), with the same arch.
    let text = std::fs::read_to_string(repo.join("config/pipeline.yaml")).expect("pipeline");
    let v: yaml_serde::Value = yaml_serde::from_str(&text).expect("yaml");
    let platforms = v["platforms"].as_mapping().expect("platforms:");
    assert!(!platforms.is_empty());
    for (k, p) in platforms {
        let name = k.as_str().expect("name");
        let field = |f: &str| {
            p.get(f)
                .or_else(|| p.get("<<").and_then(|m| m.get(f)))
                .and_then(|x| x.as_str())
        };
        let base = field("base_name").unwrap_or(name);
        let t = lib
            .get(base)
            .unwrap_or_else(|| panic!("platform {name}: no device type `{base}`"));
        if let Some(arch) = field("arch") {
            assert_eq!(t.arch, arch, "platform {name}");
        }
    }
}

#[test]
fn completions_and_man_pages_come_from_the_binaries_definitions() {
    for (bin, word) in [
        ("labwire", "--artifact"),
        ("labwire-agent", "--output"),
        ("labwire-coordinator", "check-config"),
    ] {
        let script = run_ok(Command::new(CLIENT).args(["completions", "bash", "--bin", bin]));
        assert!(
            script.contains(&format!("_{}", bin.replace('-', "__"))),
            "{bin}: {script:.300}"
        );
        assert!(script.contains(word), "{bin}: no {word}");
    }
    let zsh = run_ok(Command::new(CLIENT).args(["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef labwire"), "{zsh:.200}");
    let dir = tempfile::tempdir().expect("tempdir");
    let listed = run_ok(Command::new(CLIENT).arg("man").arg(dir.path()));
    for page in [
        "labwire.1",
        "labwire-submit.1",
        "labwire-export-junit.1",
        "labwire-agent.1",
        "labwire-agent-parse.1",
        "labwire-coordinator.1",
    ] {
        let p = dir.path().join(page);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{page}: {e}\n{listed}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text:.200}"
        );
        assert!(listed.contains(page), "{listed}");
    }
    let submit = std::fs::read_to_string(dir.path().join("labwire-submit.1")).expect("page");
    assert!(submit.contains("dry\\-run"), "{submit:.2000}");
}
