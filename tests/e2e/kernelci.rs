//! KernelCI interop, end to end. A labwire installation joins KernelCI as a pull lab: the
//! coordinator follows a KernelCI API stand-in on loopback (`kernelci/standin.rs`: events,
//! job definitions shaped as kernelci-core 69a285e's `config/runtime/base/pull_labs.jinja2`
//! renders them, the callback endpoint of kernelci-pipeline e81bdeb), takes a job for the
//! `qemu-x86_64` platform, runs it on the real QEMU board of tests/board/ and posts the
//! callback, checked field by field against what kernelci-core's PULL_LABS `Callback`
//! reads. KernelCI's API and pipeline go down while the job runs; the coordinator is
//! SIGKILLed while the callback waits, and again once KernelCI took the callback but before
//! its answer came back: the callback arrives once, after the outage. Then KernelCI's own
//! client, kci-dev (PyPI, installed by scripts/setup.d/60-kci-dev.sh), reads a checkout's
//! nodes and a job's results from a labwire coordinator.
//!
//! The outage lasts `LABWIRE_TEST_KERNELCI_OUTAGE` seconds (10 by default; 60 shows the
//! minute of the issue): what it proves does not depend on its length, since the poster
//! retries with back-off capped at 2 s here.

#[path = "kernelci/standin.rs"]
mod standin;

use crate::common::*;
use base64::Engine;
use labwire_proto::v1;
use serde_json::{Value, json};
use standin::StandIn;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cret-callback-value";
const RUNTIME: &str = "pull-labs-demo";

fn board_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var("LABWIRE_BOARD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/labwire/board")
        });
    let st = std::process::Command::new(repo.join("tests/board/build.sh"))
        .arg(&dir)
        .status()
        .expect("run tests/board/build.sh");
    assert!(st.success(), "building the test board failed");
    dir
}

/// The coordinator's `kernelci:` section against the stand-in.
fn kernelci_config(rig: &Rig, kci: &StandIn, extra: &str) -> String {
    let token = rig.path("callback.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    format!(
        "kernelci:\n  read_api: {{anonymous: true}}\n  pull_lab:\n    api: {api}latest/\n    callback_url: {api}\n    \
         runtimes: [{{name: {RUNTIME}, callback_token_file: \"{t}\"}}]\n    poll_interval: 1s\n    retry_min: 1s\n    \
         retry_max: 2s\n    request_timeout: 5s\n    boot_allowance: 3m\n    \
         platforms: {{qemu-x86_64: {{driver: serial}}}}\n    \
         tests:\n      ktap: {{commands: ['labwire-ktap-demo', 'printf \"PARAMS=[%s]\\n\" {{test.parameters}}']}}\n{extra}",
        api = kci.url(),
        t = token.display(),
    )
}

/// A job definition as KernelCI's template renders it for the QEMU platform.
fn definition(kci: &StandIn, id: &str, test_type: &str, platform: &str) -> Value {
    json!({
        "artifacts": {
            "kernel": format!("{}board/vmlinuz", kci.storage_url()),
            "ramdisk": format!("{}board/initramfs.cpio.gz", kci.storage_url()),
        },
        "tests": [
            {"id": format!("boot-test-{}", &id[..8]), "type": "boot", "depends": [], "timeout_s": 600,
             "pre-commands": [], "post-commands": []},
            {"id": "ktap-demo", "type": test_type, "depends": [format!("boot-test-{}", &id[..8])],
             "timeout_s": 300, "parameters": "it's $(touch /tmp/labwire-kci-pwned) `id`",
             "pre-commands": ["echo pre-command ran"], "post-commands": ["echo post-command ran"]},
        ],
        "environment": {"platform": platform, "arch": "x86_64", "console": {"method": "serial", "baud": 115200}},
        "callback": {"url": format!("{}node/{id}", kci.url()), "token_name": "kernelci-pull-labs-demo"},
    })
}

fn decode_log(v: &Value) -> String {
    let s = v.as_str().expect("artifacts.log is a string");
    let b = base64::engine::general_purpose::STANDARD
        .decode(s.strip_prefix("base64:").expect("base64: prefix"))
        .expect("base64");
    let mut out = String::new();
    flate2::read::GzDecoder::new(b.as_slice())
        .read_to_string(&mut out)
        .expect("gzip");
    out
}

async fn wait_async(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn job_by_name(c: &mut labwire::client::Clients, name: &str) -> Option<v1::Node> {
    c.nodes
        .query_nodes(v1::QueryNodesRequest {
            name: name.into(),
            kind: v1::NodeKind::Job as i32,
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner()
        .nodes
        .into_iter()
        .next()
}

/// The coordinators' log (every start appends to it) from byte `from` on.
fn log_since(rig: &Rig, from: usize) -> String {
    let l = std::fs::read(rig.path("coordinator.log")).unwrap_or_default();
    String::from_utf8_lossy(l.get(from..).unwrap_or_default()).into_owned()
}

fn log_len(rig: &Rig) -> usize {
    std::fs::metadata(rig.path("coordinator.log")).map_or(0, |m| m.len() as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernelci_job_runs_on_the_qemu_board_and_its_callback_survives_an_outage_and_a_kill() {
    let outage = Duration::from_secs(
        std::env::var("LABWIRE_TEST_KERNELCI_OUTAGE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let board = board_dir();
    let kci = StandIn::start(TOKEN).await;
    kci.add_file(
        "board/vmlinuz",
        std::fs::read(board.join("vmlinuz")).unwrap(),
    );
    kci.add_file(
        "board/initramfs.cpio.gz",
        std::fs::read(board.join("initramfs.cpio.gz")).unwrap(),
    );
    let rig = Rig::new("leases: {duration: 30s, heartbeat: 2s}\n");
    let cfg = std::fs::read_to_string(rig.path("coordinator.yaml")).unwrap();
    std::fs::write(
        rig.path("coordinator.yaml"),
        format!("{cfg}{}", kernelci_config(&rig, &kci, "")),
    )
    .unwrap();
    let _keep = rig.keep_on_failure();
    let mut coord = rig.start_coordinator();

    // A lab with the QEMU board as a serial device of type qemu-x86_64.
    rig.issue_lab("kci-lab");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = rig.path("run-qemu-1");
    std::fs::create_dir_all(&run).unwrap();
    let bundle = rig.path("labs/kci-lab");
    let agent_yaml = format!(
        "lab: kci-lab\ncoordinator:\n  url: {url}\n  ca: {b}/ca.pem\n  cert: {b}/agent.pem\n  key: {b}/agent.key\nstate_dir: {b}/state\n\
         limits: {{drain_timeout: 20s}}\ndevices:\n  - name: qemu-1\n    device_type: qemu-x86_64\n    settings: {{board: \"{board}\"}}\n    driver:\n      type: serial\n      \
         console: {{tty: {{path: \"{run}/console\"}}}}\n      \
         power_on_command: [\"{repo}/tests/board/run-qemu.sh\", --kernel, \"{{artifacts.kernel}}\", --initrd, \"{{artifacts.ramdisk}}\", \"{{device.board}}\"]\n      \
         power_off_command: [\"{repo}/tests/board/stop-qemu.sh\", \"{{device.board}}\"]\n      command_env: {{LABWIRE_BOARD_RUNDIR: \"{run}\"}}\n      \
         boot: {{timeout: 90s}}\n      login: {{username: root, password: labwire, shell_prompt: 'root@labwire-board:~# ', timeout: 40s}}\n",
        url = rig.url(),
        b = bundle.display(),
        board = board.display(),
        run = run.display(),
        repo = repo.display(),
    );
    std::fs::write(bundle.join("agent.yaml"), agent_yaml).unwrap();
    let _agent = rig.start_agent("kci-lab");
    let mut c = rig.client().await;

    // KernelCI's scheduler makes the job available for the runtime.
    let id = "65f0a1b2c3d4e5f6a7b8c9d0";
    kci.publish_job(
        id,
        "baseline-x86-pull-labs-demo",
        RUNTIME,
        "qemu-x86_64",
        definition(&kci, id, "ktap", "qemu-x86_64"),
    );
    // Another runtime's job is not this lab's business.
    kci.publish_job(
        "75f0a1b2c3d4e5f6a7b8c9d1",
        "other-lab-job",
        "pull-labs-elsewhere",
        "qemu-x86_64",
        definition(&kci, "75f0a1b2c3d4e5f6a7b8c9d1", "ktap", "qemu-x86_64"),
    );

    let mut job = None;
    let end = Instant::now() + Duration::from_secs(60);
    while job.is_none() {
        assert!(
            Instant::now() < end,
            "the coordinator never took the KernelCI job"
        );
        job = job_by_name(&mut c, "baseline-x86-pull-labs-demo").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let job = job.unwrap();
    assert!(
        job_by_name(&mut c, "other-lab-job").await.is_none(),
        "took another runtime's job"
    );
    let d = data(&job);
    assert_eq!(d["kernelci"]["node"], id);
    assert_eq!(d["criteria"]["device_type"], "qemu-x86_64");

    // KernelCI's API and pipeline go down while the board runs the job (its storage, a
    // server of its own, still serves the board's files).
    kci.down();
    let down_since = Instant::now();
    let done = wait_node(&mut c, job.id, Duration::from_secs(300), is_done).await;
    // Coordinator 1 tries the callback, fails, and is SIGKILLed while the callback waits.
    wait_async(Duration::from_secs(30), "a failed callback try", || {
        log_since(&rig, 0).contains("callback not accepted")
    })
    .await;
    coord.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord.child.wait();
    // Coordinator 2 finds the callback in its database and keeps trying.
    let second = log_len(&rig);
    let mut coord2 = rig.start_coordinator();
    wait_async(
        Duration::from_secs(30),
        "a callback try after the restart",
        || log_since(&rig, second).contains("callback not accepted"),
    )
    .await;
    tokio::time::sleep(outage.saturating_sub(down_since.elapsed())).await;
    assert!(
        kci.callbacks().is_empty(),
        "a callback arrived while KernelCI was down"
    );
    // KernelCI is back and takes the callback, but coordinator 2 is SIGKILLed before it
    // hears so: the crash between KernelCI's answer and labwire writing it down.
    kci.hold_answers();
    kci.up().await;
    wait_async(
        Duration::from_secs(60),
        "the callback after the outage",
        || !kci.callbacks().is_empty(),
    )
    .await;
    coord2.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = coord2.child.wait();
    kci.release_answers();
    assert!(
        !log_since(&rig, second).contains("callback posted"),
        "coordinator 2 heard KernelCI's answer before the kill"
    );
    // Coordinator 3 finds the callback due again, sees that KernelCI has it, and sends none.
    let third = log_len(&rig);
    let coord3 = rig.start_coordinator();
    wait_async(
        Duration::from_secs(30),
        "coordinator 3 to close the callback",
        || log_since(&rig, third).contains("no callback sent: KernelCI's node is done already"),
    )
    .await;
    // Tries are at most 2 s apart: three more periods show no second callback comes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let posted = kci.callbacks();
    assert_eq!(posted.len(), 1, "exactly one callback: {posted:?}");
    assert_eq!(kci.definition_reads(), 1, "the definition was read once");

    // The callback, field by field.
    let cb = &posted[0];
    assert_eq!(cb.node, id);
    assert_eq!(cb.authorization.as_deref(), Some(TOKEN));
    let b = &cb.body;
    // What assertion messages show: the body without its log.
    let shown = {
        let mut v = b.clone();
        v["artifacts"]["log"] = "...".into();
        format!("{v:#}")
    };
    let tests = &b["tests"];
    let boot = &tests["boot-test-65f0a1b2"];
    assert_eq!(boot["status"], "pass", "{shown}");
    assert_eq!(boot["subtests"]["kernel-boot"]["status"], "pass");
    assert_eq!(boot["subtests"]["login"]["status"], "pass");
    let ktap = &tests["ktap-demo"];
    assert_eq!(ktap["status"], "pass", "{shown}");
    // pre-command, the two commands of the type, post-command.
    for n in 1..=4 {
        assert_eq!(
            ktap["subtests"][format!("command-{n}")]["status"],
            "pass",
            "{shown}"
        );
    }
    // The KTAP the board printed, parsed into suites.
    assert_eq!(tests["labwire_demo"]["status"], "fail");
    assert_eq!(
        tests["labwire_demo"]["subtests"]["test_b"]["status"],
        "fail"
    );
    assert_eq!(
        tests["labwire_demo"]["subtests"]["test_c"]["status"],
        "skip"
    );
    assert_eq!(tests["labwire_math"]["status"], "pass");
    assert_eq!(
        tests.as_object().unwrap().keys().collect::<Vec<_>>(),
        [
            "boot-test-65f0a1b2",
            "kernelmsg",
            "ktap-demo",
            "labwire_demo",
            "labwire_math"
        ],
        "{shown}"
    );
    // The kernel's messages, as the boot-and-crash parser read them: no panic, no Oops.
    let kmsg = &tests["kernelmsg"]["subtests"];
    for t in ["boot", "panic", "oops", "bug"] {
        assert_eq!(kmsg[t]["status"], "pass", "{t}: {shown}");
    }
    // The leaves: kernel-boot and login, four commands, test_a..c, two math tests, seven
    // kernel-message checks.
    assert_eq!(
        b["summary"],
        json!({"total": 18, "passed": 16, "failed": 1, "skipped": 1, "errors": 0}),
        "{shown}"
    );
    assert!(
        b.get("error_code").is_none() && b["metadata"].get("error_code").is_none(),
        "a test failure is no infrastructure error: {shown}"
    );
    assert_eq!(b["metadata"]["system"], "kci-lab/qemu-1");
    assert_eq!(b["metadata"]["runtime"], RUNTIME);
    assert_eq!(b["metadata"]["labwire"]["job"], job.id);
    assert_eq!(b["metadata"]["labwire"]["result"], "fail");
    assert_eq!(b["metadata"]["labwire"]["coordinator"], rig.url());
    let log = decode_log(&b["artifacts"]["log"]);
    assert!(log.contains("Linux version"), "{log}");
    assert!(
        log.contains("pre-command ran") && log.contains("post-command ran"),
        "{log}"
    );
    // KernelCI's test parameters reached the board as text, never as shell.
    assert!(
        log.contains("PARAMS=[it's $(touch /tmp/labwire-kci-pwned) `id`]"),
        "{log}"
    );
    assert!(!Path::new("/tmp/labwire-kci-pwned").exists());
    // KernelCI recorded the job as its parser would: a test failed.
    assert_eq!(kci.inner.lock().unwrap().nodes[id]["result"], "fail");
    assert_eq!(done.result, v1::NodeResult::Fail as i32);
    drop(coord3);
}

fn kci_dev() -> PathBuf {
    let venv = std::env::var("LABWIRE_KCI_DEV_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/labwire/kci-dev-venv")
        });
    let bin = venv.join("bin/kci-dev");
    if !bin.exists() {
        let st = std::process::Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.d/60-kci-dev.sh"))
            .status()
            .expect("run scripts/setup.d/60-kci-dev.sh");
        assert!(st.success(), "installing kci-dev failed");
    }
    bin
}

fn kci_dev_json(rig: &Rig, settings: &Path, args: &[&str]) -> Value {
    let out = std::process::Command::new(kci_dev())
        .arg("--settings")
        .arg(settings)
        .args(args)
        .env("REQUESTS_CA_BUNDLE", rig.path("coordinator/pki/ca.pem"))
        .output()
        .expect("run kci-dev");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kci-dev {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kci-dev prints a line naming the endpoint, then the JSON.
    let start = stdout
        .find(['[', '{'])
        .unwrap_or_else(|| panic!("no JSON in {stdout}"));
    serde_json::from_str(stdout[start..].trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_timed_out_kernelci_jobs_and_kci_dev_reading_labwire() {
    let kci = StandIn::start(TOKEN).await;
    let rig = Rig::new("http: {listen: 127.0.0.1:0}\n");
    let cfg = std::fs::read_to_string(rig.path("coordinator.yaml")).unwrap();
    std::fs::write(
        rig.path("coordinator.yaml"),
        format!("{cfg}{}", kernelci_config(&rig, &kci, "")),
    )
    .unwrap();
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let mut c = rig.client().await;

    // A job for a platform no lab has waits in the queue; KernelCI's node times out: the
    // labwire job is cancelled and KernelCI hears nothing more.
    let a = "85f0a1b2c3d4e5f6a7b8c9d2";
    kci.publish_job(
        a,
        "baseline-rpi-pull",
        RUNTIME,
        "bcm2711-rpi-4-b",
        definition(&kci, a, "ktap", "bcm2711-rpi-4-b"),
    );
    let mut job = None;
    let end = Instant::now() + Duration::from_secs(60);
    while job.is_none() {
        assert!(Instant::now() < end, "job not taken");
        job = job_by_name(&mut c, "baseline-rpi-pull").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kci.time_out(a);
    let n = wait_node(&mut c, job.unwrap().id, Duration::from_secs(30), is_done).await;
    assert_eq!(data(&n)["error_code"], "cancelled");
    assert!(
        data(&n)["error_msg"]
            .as_str()
            .unwrap()
            .contains("KernelCI ended its node")
    );

    // A test type this lab does not run: refused, and KernelCI is told why.
    let b = "95f0a1b2c3d4e5f6a7b8c9d3";
    kci.publish_job(
        b,
        "ltp-pull",
        RUNTIME,
        "qemu-x86_64",
        definition(&kci, b, "fancy-suite", "qemu-x86_64"),
    );
    wait_async(Duration::from_secs(30), "the refusal's callback", || {
        !kci.callbacks().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let posted = kci.callbacks();
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0].node, b);
    assert_eq!(posted[0].body["error_code"], "invalid_job");
    assert!(
        posted[0].body["error_msg"]
            .as_str()
            .unwrap()
            .contains("`fancy-suite`")
    );
    assert_eq!(kci.inner.lock().unwrap().nodes[b]["result"], "incomplete");

    // kci-dev reads a labwire checkout's nodes and a job's results.
    rig.issue_lab("shell-lab");
    rig.agent_config(
        "shell-lab",
        &[(
            "runner",
            &[
                "sh",
                "-c",
                "echo 'TAP version 13'; echo 1..2; echo 'ok 1 first'; echo 'not ok 2 second'",
            ],
            &["kci"],
        )],
        "",
    );
    let _agent = rig.start_agent("shell-lab");
    let http = rig.http_client();
    let checkout: Value = http
        .post(format!("{}/node", rig.http_url()))
        .bearer_auth(&rig.admin_token)
        .header("content-type", "application/json")
        .body(
            json!({"kind": "checkout", "name": "checkout", "state": "available",
                   "data": {"kernel_revision": {"tree": "mainline", "branch": "master", "commit": "abc"}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t)))
        .unwrap();
    let checkout_id = checkout["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{checkout}"));
    let job = submit_spec_under(
        &mut c,
        shell_spec("tap-job", &["kci"], &[], 60),
        checkout_id,
    )
    .await;
    wait_node(&mut c, job, Duration::from_secs(60), is_done).await;

    let settings = rig.path("kci-dev.toml");
    std::fs::write(
        &settings,
        format!("default_instance=\"labwire\"\n[labwire]\napi=\"{0}/\"\npipeline=\"{0}/\"\ntoken=\"unused\"\n", rig.http_url()),
    )
    .unwrap();
    let nodes = kci_dev_json(
        &rig,
        &settings,
        &[
            "maestro",
            "results",
            "--nodes",
            "--filter",
            &format!("parent={checkout_id}"),
            "--field",
            "name",
            "--field",
            "kind",
        ],
    );
    assert_eq!(nodes, json!([{"name": "tap-job", "kind": "job"}]));
    let one = kci_dev_json(
        &rig,
        &settings,
        &["maestro", "results", "--nodeid", &job.to_string()],
    );
    assert_eq!(one[0]["id"], job.to_string());
    assert_eq!(one[0]["parent"], checkout_id.to_string());
    assert_eq!(one[0]["state"], "done");
    let tests = kci_dev_json(
        &rig,
        &settings,
        &[
            "maestro",
            "results",
            "--nodes",
            "--filter",
            "kind=test",
            "--filter",
            "result=fail",
            "--filter",
            "name=second",
            "--field",
            "name",
            "--field",
            "result",
        ],
    );
    assert_eq!(tests, json!([{"name": "second", "result": "fail"}]));
}
