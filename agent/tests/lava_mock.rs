//! The LAVA client, inventory and driver against a mock LAVA server on 127.0.0.1 (axum):
//! every API path the agent uses, LAVA's two kinds of pagination, refused definitions,
//! 5xx answers and slow replies (retried), the concurrency limit, redirects and links to
//! another host (never followed, so the token stays home), cancellation, and a job taken
//! back after the agent lost it. The real lava-server is exercised by `tests/e2e/lava.rs`.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use labwire_agent::device_types::Library;
use labwire_agent::driver::JobContext;
use labwire_agent::lava::client::{LavaClient, LavaError};
use labwire_agent::lava::config::{LavaConfig, Secret};
use labwire_agent::lava::inventory::LavaSource;
use labwire_agent::outbox::Outbox;
use labwire_agent::sources::DeviceSource;
use labwire_common::{ErrorCode, NodeResult};
use labwire_proto::v1;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "s3cret-token";

#[derive(Default)]
struct Job {
    definition: String,
    polls: usize,
    cancelled: bool,
}

#[derive(Default)]
struct Mock {
    base: String,
    /// Requests seen, by path.
    hits: Mutex<HashMap<String, usize>>,
    /// Requests that came without the right token.
    unauthorized: AtomicUsize,
    /// The next N requests to `devicetypes/` answer 503.
    fail_types: AtomicUsize,
    /// The next N requests to `devices/` are answered after 2 s.
    slow_devices: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// `devices/` pages link to this origin instead (a hostile or broken server).
    next_elsewhere: Mutex<Option<String>>,
    jobs: Mutex<HashMap<i64, Job>>,
    device_count: usize,
}

impl Mock {
    fn hit(&self, path: &str) {
        *self
            .hits
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default() += 1;
    }
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

type S = Arc<Mock>;

fn authorized(m: &Mock, h: &HeaderMap) -> bool {
    let ok =
        h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Token {TOKEN}"));
    if !ok {
        m.unauthorized.fetch_add(1, Ordering::SeqCst);
    }
    ok
}

fn page(items: Vec<Value>, base: &str, path: &str, q: &HashMap<String, String>) -> Value {
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50);
    let offset: usize = q.get("offset").and_then(|l| l.parse().ok()).unwrap_or(0);
    let end = (offset + limit).min(items.len());
    let next = (end < items.len()).then(|| format!("{base}{path}?limit={limit}&offset={end}"));
    json!({"count": items.len(), "next": next, "previous": null, "results": items[offset.min(end)..end]})
}

const LOG: &[&str] = &[
    r#"- {"dt": "1", "lvl": "info", "msg": "start: deploy"}"#,
    r#"- {"dt": "2", "lvl": "target", "msg": "Linux version 6.6.0 (mock)"}"#,
    r#"- {"dt": "3", "lvl": "results", "msg": {"definition": "lava", "case": "auto-login-action", "result": "pass"}}"#,
    r#"- {"dt": "4", "lvl": "target", "msg": "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=a RESULT=pass>"}"#,
    r#"- {"dt": "5", "lvl": "target", "msg": "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=b RESULT=fail>"}"#,
];

async fn router(m: S) -> Router {
    Router::new()
        .route("/api/v0.2/system/version/", get(version))
        .route("/api/v0.2/devicetypes/", get(device_types))
        .route("/api/v0.2/devices/", get(devices))
        .route("/api/v0.2/jobs/", post(submit).get(list_jobs))
        .route("/api/v0.2/jobs/validate/", post(validate))
        .route("/api/v0.2/jobs/{id}/", get(job))
        .route("/api/v0.2/jobs/{id}/logs/", get(logs))
        .route("/api/v0.2/jobs/{id}/suites/", get(suites))
        .route("/api/v0.2/jobs/{id}/tests/", get(tests))
        .route("/api/v0.2/jobs/{id}/cancel/", get(cancel))
        .with_state(m)
}

async fn version(State(m): State<S>, h: HeaderMap) -> Response {
    m.hit("version");
    if !authorized(&m, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if let Some(other) = m.next_elsewhere.lock().unwrap().clone() {
        return (
            StatusCode::FOUND,
            [("location", format!("{other}api/v0.2/system/version/"))],
        )
            .into_response();
    }
    axum::Json(json!({"version": "2023.01"})).into_response()
}

async fn device_types(
    State(m): State<S>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    m.hit("devicetypes");
    if !authorized(&m, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if m.fail_types.load(Ordering::SeqCst) > 0 {
        m.fail_types.fetch_sub(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    }
    let items = ["qemu", "bcm2711-rpi-4-b", "dead-board", "unlisted", "mystery-board"]
        .iter()
        .map(|n| json!({"name": n, "architecture": if *n == "qemu" { Value::from("x86_64") } else { Value::Null }}))
        .collect();
    axum::Json(page(items, &m.base, "api/v0.2/devicetypes/", &q)).into_response()
}

async fn devices(
    State(m): State<S>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    m.hit("devices");
    if !authorized(&m, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // Counted until answered or abandoned (the server drops the handler of a request whose
    // client went away).
    struct InFlight(S);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let n = m.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    m.max_in_flight.fetch_max(n, Ordering::SeqCst);
    let _guard = InFlight(m.clone());
    if m.slow_devices.load(Ordering::SeqCst) > 0 {
        m.slow_devices.fetch_sub(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
    } else {
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // qemu: every third device Bad; rpi: all Good but one Looping; dead-board: Bad and
    // Maintenance only; unlisted: Good (not in device_types of the config).
    let mut items = Vec::new();
    for i in 0..m.device_count {
        let health = if i % 3 == 0 { "Bad" } else { "Good" };
        items.push(json!({"hostname": format!("qemu-{i:03}"), "device_type": "qemu", "state": "Idle", "health": health}));
    }
    items.push(json!({"hostname": "rpi-1", "device_type": "bcm2711-rpi-4-b", "state": "Running", "health": "Good"}));
    items.push(json!({"hostname": "rpi-2", "device_type": "bcm2711-rpi-4-b", "state": "Idle", "health": "Looping"}));
    items.push(json!({"hostname": "dead-1", "device_type": "dead-board", "state": "Idle", "health": "Bad"}));
    items.push(json!({"hostname": "dead-2", "device_type": "dead-board", "state": "Idle", "health": "Maintenance"}));
    items.push(json!({"hostname": "other-1", "device_type": "unlisted", "state": "Idle", "health": "Good"}));
    items.push(json!({"hostname": "mystery-1", "device_type": "mystery-board", "state": "Idle", "health": "Good"}));
    let base = m
        .next_elsewhere
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| m.base.clone());
    axum::Json(page(items, &base, "api/v0.2/devices/", &q)).into_response()
}

fn definition_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["definition"].as_str().map(String::from))
        .unwrap_or_default()
}

async fn submit(State(m): State<S>, h: HeaderMap, body: String) -> Response {
    m.hit("submit");
    if !authorized(&m, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let def = definition_of(&body);
    if def.contains("refuse-me") {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"message": "Problem with submitted job data: extra keys not allowed @ data['refuse-me']"}))).into_response();
    }
    let mut jobs = m.jobs.lock().unwrap();
    let id = jobs.len() as i64 + 100;
    jobs.insert(
        id,
        Job {
            definition: def,
            ..Default::default()
        },
    );
    (
        StatusCode::CREATED,
        axum::Json(json!({"message": "job(s) successfully submitted", "job_ids": [id]})),
    )
        .into_response()
}

async fn list_jobs(
    State(m): State<S>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    m.hit("list_jobs");
    if !authorized(&m, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let want = q.get("description").cloned().unwrap_or_default();
    let jobs = m.jobs.lock().unwrap();
    let mut ids: Vec<i64> = jobs
        .iter()
        .filter(|(_, j)| {
            yaml_serde::from_str::<yaml_serde::Value>(&j.definition)
                .ok()
                .and_then(|v| v["job_name"].as_str().map(|n| n == want))
                .unwrap_or(false)
        })
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let items = ids.into_iter().map(|id| json!({"id": id})).collect();
    axum::Json(page(items, &m.base, "api/v0.2/jobs/", &q)).into_response()
}

async fn validate(State(m): State<S>, h: HeaderMap, body: String) -> Response {
    m.hit("validate");
    if !authorized(&m, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let msg = if definition_of(&body).contains("refuse-me") {
        "Job invalid: extra keys not allowed"
    } else {
        "Job valid."
    };
    axum::Json(json!({"message": msg})).into_response()
}

/// Submitted for two looks, then Running while the log grows (one line per look), then
/// Finished. A job whose definition says `hang` runs until cancelled; `incomplete` ends
/// Incomplete.
fn lines_available(j: &Job) -> usize {
    j.polls.saturating_sub(2).min(LOG.len())
}

async fn job(State(m): State<S>, h: HeaderMap, Path(id): Path<i64>) -> Response {
    m.hit("job");
    if !authorized(&m, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut jobs = m.jobs.lock().unwrap();
    let Some(j) = jobs.get_mut(&id) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"detail": "Not found."})),
        )
            .into_response();
    };
    j.polls += 1;
    let hang = j.definition.contains("hang");
    let (state, health) = if j.cancelled {
        ("Finished", "Canceled")
    } else if j.polls <= 2 {
        ("Submitted", "Unknown")
    } else if hang || lines_available(j) < LOG.len() || j.polls < LOG.len() + 4 {
        ("Running", "Unknown")
    } else if j.definition.contains("incomplete") {
        ("Finished", "Incomplete")
    } else {
        ("Finished", "Complete")
    };
    axum::Json(json!({"id": id, "state": state, "health": health, "actual_device": "qemu-001", "failure_comment": "mock failure"})).into_response()
}

async fn logs(
    State(m): State<S>,
    h: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    m.hit("logs");
    if !authorized(&m, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let start: usize = q.get("start").and_then(|s| s.parse().ok()).unwrap_or(0);
    let jobs = m.jobs.lock().unwrap();
    let Some(j) = jobs.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let avail = lines_available(j);
    if start >= avail {
        return StatusCode::NOT_FOUND.into_response();
    }
    let text: String = LOG[start..avail].iter().map(|l| format!("{l}\n")).collect();
    (StatusCode::OK, [("content-type", "application/yaml")], text).into_response()
}

fn page_numbered(items: Vec<Value>, base: &str, path: &str, q: &HashMap<String, String>) -> Value {
    let p: usize = q.get("page").and_then(|s| s.parse().ok()).unwrap_or(1);
    let size = 2;
    let start = (p - 1) * size;
    let end = (start + size).min(items.len());
    let next = (end < items.len()).then(|| format!("{base}{path}?page={}", p + 1));
    json!({"count": items.len(), "next": next, "previous": null, "results": items[start.min(end)..end]})
}

async fn suites(
    State(m): State<S>,
    h: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    m.hit("suites");
    if !authorized(&m, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let items = vec![
        json!({"id": 1, "name": "lava", "job": id}),
        json!({"id": 2, "name": "0_baseline", "job": id}),
        json!({"id": 3, "name": "1_tests", "job": id}),
    ];
    axum::Json(page_numbered(
        items,
        &m.base,
        &format!("api/v0.2/jobs/{id}/suites/"),
        &q,
    ))
    .into_response()
}

async fn tests(
    State(m): State<S>,
    h: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    m.hit("tests");
    if !authorized(&m, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let incomplete = m
        .jobs
        .lock()
        .unwrap()
        .get(&id)
        .is_some_and(|j| j.definition.contains("incomplete"));
    let mut items = vec![
        json!({"name": "auto-login-action", "result": "pass", "suite": 1, "measurement": "3.2", "unit": "seconds", "metadata": "case: auto-login-action\n"}),
        json!({"name": "kernel-messages", "result": "pass", "suite": 1, "metadata": ""}),
        json!({"name": "dmesg-crit", "result": "pass", "suite": 2, "metadata": ""}),
        json!({"name": "a", "result": "pass", "suite": 3, "metadata": ""}),
        json!({"name": "b", "result": "fail", "suite": 3, "metadata": ""}),
    ];
    if incomplete {
        items.push(json!({"name": "job", "result": "fail", "suite": 1, "metadata": "case: job\nerror_type: Infrastructure\nerror_msg: 'power cycle failed'\n"}));
    }
    axum::Json(page_numbered(
        items,
        &m.base,
        &format!("api/v0.2/jobs/{id}/tests/"),
        &q,
    ))
    .into_response()
}

async fn cancel(State(m): State<S>, h: HeaderMap, Path(id): Path<i64>) -> Response {
    m.hit("cancel");
    if !authorized(&m, &h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if let Some(j) = m.jobs.lock().unwrap().get_mut(&id) {
        j.cancelled = true;
    }
    axum::Json(json!({"message": "Job cancel signal sent."})).into_response()
}

/// Starts a mock on 127.0.0.1 port 0.
async fn start(device_count: usize) -> (S, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let m = Arc::new(Mock {
        base: base.clone(),
        device_count,
        ..Default::default()
    });
    let app = router(m.clone()).await;
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (m, base)
}

fn config(url: &str, extra: &str) -> LavaConfig {
    yaml_serde::from_str(&format!(
        "name: mock\nurl: {url}\ntoken: {TOKEN}\npoll: 20ms\npoll_max: 100ms\nrequest_timeout: 1s\nretries: 3\ndevice_types: [qemu, bcm2711-rpi-4-b, dead-board, mystery-board]\n{extra}"
    ))
    .unwrap()
}

fn client(cfg: &LavaConfig) -> LavaClient {
    LavaClient::with_token(cfg, Secret(TOKEN.into())).unwrap()
}

fn source(cfg: LavaConfig) -> LavaSource {
    let lib = Arc::new(Library::load(&Vec::<std::path::PathBuf>::new()).unwrap());
    let c = client(&cfg);
    LavaSource::with_client(cfg, c, "lab-mock", lib).unwrap()
}

#[tokio::test]
async fn inventory_follows_pagination_and_offers_only_usable_device_types() {
    let (m, url) = start(250).await;
    let s = source(config(&url, "queue_depth: 3\n"));
    let list = s.snapshot().await.unwrap();
    // 256 devices over 3 pages of 100.
    assert_eq!(m.hits("devices"), 3);
    let got: Vec<(&str, usize, usize)> = list
        .iter()
        .map(|d| (d.info.name.as_str(), d.count, d.max_jobs))
        .collect();
    // qemu: 250 devices, every third Bad; rpi: the Looping one does not count; dead-board
    // (Bad, Maintenance), `unlisted` (not in device_types) and mystery-board (no boot
    // method known, so no template) are left out.
    assert_eq!(
        got,
        [
            ("lava-mock-qemu", 166, 169),
            ("lava-mock-bcm2711-rpi-4-b", 1, 4)
        ]
    );
    // Told its boot method, mystery-board is offered, with only what LAVA says of it.
    let s2 = source(config(&url, "boot_methods: {mystery-board: depthcharge}\n"));
    let list2 = s2.snapshot().await.unwrap();
    let mystery = list2
        .iter()
        .find(|d| d.info.device_type == "mystery-board")
        .expect("offered");
    assert_eq!(mystery.count, 1);
    assert_eq!(
        mystery.info.properties.len(),
        1,
        "{:?}",
        mystery.info.properties
    );
    assert_eq!(mystery.info.properties["boot_method"], "depthcharge");
    let qemu = &list[0];
    assert_eq!(qemu.info.driver, "lava");
    assert_eq!(qemu.info.device_type, "qemu");
    assert_eq!(qemu.info.properties["arch"], "x86_64");
    assert_eq!(qemu.info.properties["boot_method"], "qemu");
    // A type the device-type library knows advertises the library's properties.
    assert_eq!(list[1].info.properties["boot_method"], "u-boot");
    assert_eq!(list[1].info.properties["arch"], "arm64");
    assert_eq!(m.unauthorized.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn errors_and_slow_replies_are_retried_within_the_concurrency_limit() {
    let (m, url) = start(5).await;
    let cfg = config(&url, "max_requests: 2\n");
    let c = client(&cfg);
    // Three 503 answers, then success: three retries suffice.
    m.fail_types.store(3, Ordering::SeqCst);
    assert_eq!(c.device_types().await.unwrap().len(), 5);
    assert_eq!(m.hits("devicetypes"), 4);
    // Four: more than the retries allow; the error says what LAVA answered.
    m.fail_types.store(4, Ordering::SeqCst);
    let e = c.device_types().await.unwrap_err();
    assert!(matches!(e, LavaError::Status { status: 503, .. }), "{e}");
    // A reply slower than request_timeout (1 s) is abandoned and asked again.
    m.slow_devices.store(1, Ordering::SeqCst);
    let t = std::time::Instant::now();
    assert_eq!(c.devices().await.unwrap().len(), 11);
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    // Ten at once through two slots.
    // (Wait until the server has dropped the abandoned slow request.)
    while m.in_flight.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.max_in_flight.store(0, Ordering::SeqCst);
    let all = futures::future::join_all((0..10).map(|_| c.devices())).await;
    assert!(all.iter().all(|r| r.is_ok()));
    assert!(
        m.max_in_flight.load(Ordering::SeqCst) <= 2,
        "{}",
        m.max_in_flight.load(Ordering::SeqCst)
    );
    // A server that is not there: a transport error after the retries.
    let mut dead = config("http://127.0.0.1:9/", "");
    dead.retries = 1;
    let e = client(&dead).version().await.unwrap_err();
    assert!(matches!(e, LavaError::Transport { .. }), "{e}");
}

#[tokio::test]
async fn the_token_never_goes_to_another_host() {
    let (m, url) = start(150).await;
    let (other, other_url) = start(0).await;
    *m.next_elsewhere.lock().unwrap() = Some(other_url.clone());
    let c = client(&config(&url, ""));
    // A redirect is not followed.
    let e = c.version().await.unwrap_err();
    assert!(matches!(e, LavaError::Elsewhere { .. }), "{e}");
    assert!(e.to_string().contains(&other_url), "{e}");
    // Nor a pagination link to another origin.
    let e = c.devices().await.unwrap_err();
    assert!(matches!(e, LavaError::Elsewhere { .. }), "{e}");
    assert_eq!(other.hits("version") + other.hits("devices"), 0);
    assert_eq!(other.unauthorized.load(Ordering::SeqCst), 0);
    // And the token does not appear in debug output.
    assert!(!format!("{:?} {:?}", c, config(&url, "")).contains(TOKEN));
}

fn spec(name: &str, params: &[(&str, &str)]) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        artifacts: [(
            "kernel".to_string(),
            v1::Artifact {
                url: "http://127.0.0.1:9/bzImage".into(),
                sha256: String::new(),
            },
        )]
        .into(),
        commands: vec!["true".into()],
        ..Default::default()
    }
}

fn ctx(dir: &std::path::Path, name: &str, params: &[(&str, &str)]) -> JobContext {
    let outbox = Arc::new(Outbox::open(dir).unwrap());
    JobContext {
        job: 7,
        attempt: 1,
        spec: spec(name, params),
        dir: dir.to_path_buf(),
        log: labwire_agent::joblog::JobLog::create(dir, outbox, 7, 1, None).unwrap(),
        cancel: CancellationToken::new(),
        timeout: Duration::from_secs(60),
        artifacts: Default::default(),
        left_on: false,
    }
}

async fn qemu(url: &str) -> Arc<labwire_agent::devices::Device> {
    source(config(url, "")).snapshot().await.unwrap().remove(0)
}

#[tokio::test]
async fn a_job_is_submitted_followed_and_its_results_mapped() {
    let (m, url) = start(3).await;
    let d = qemu(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = ctx(dir.path(), "mock run", &[("msg", "x'; reboot; '")]);
    let o = d.driver.run(&mut c).await;
    assert_eq!(o.result, NodeResult::Fail, "{o:?}");
    assert_eq!(o.data["lava_job"], 100);
    assert_eq!(o.data["lava_health"], "Complete");
    let names: Vec<&str> = o.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["setup", "baseline", "tests"]);
    assert_eq!(o.tests[0].tests[0].name, "login");
    assert_eq!(o.tests[2].tests[1].result, NodeResult::Fail);
    // The definition carries the labwire job id; the log is LAVA's, line by line, once.
    let def = std::fs::read_to_string(dir.path().join("lava-job.yaml")).unwrap();
    assert!(def.contains("labwire.job: \"7\""), "{def}");
    let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
    assert_eq!(
        log.matches("Linux version 6.6.0 (mock)").count(),
        1,
        "{log}"
    );
    assert!(log.contains("[lava results] {"), "{log}");
    // Suites and tests came in pages of two.
    assert_eq!(m.hits("suites"), 2);
    assert_eq!(m.hits("tests"), 3);
    assert!(m.hits("job") >= 8);
    assert_eq!(m.unauthorized.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn refused_incomplete_and_cancelled_jobs() {
    let (m, url) = start(3).await;
    let d = qemu(&url).await;
    // A definition LAVA refuses: its message is the job's error.
    let dir = tempfile::tempdir().unwrap();
    let mut c = ctx(dir.path(), "refuse-me", &[]);
    let o = d.driver.run(&mut c).await;
    assert_eq!(o.error_code, Some(ErrorCode::InvalidJob));
    assert!(
        o.error_msg
            .as_deref()
            .unwrap()
            .contains("extra keys not allowed @ data['refuse-me']"),
        "{o:?}"
    );
    // Incomplete with LAVA's error type and message.
    let dir = tempfile::tempdir().unwrap();
    let mut c = ctx(dir.path(), "incomplete", &[]);
    let o = d.driver.run(&mut c).await;
    assert_eq!(o.result, NodeResult::Incomplete);
    assert_eq!(o.error_code, Some(ErrorCode::Infrastructure));
    assert_eq!(o.error_msg.as_deref(), Some("power cycle failed"));
    // Cancelled while running: cancelled on LAVA too.
    let dir = tempfile::tempdir().unwrap();
    let mut c = ctx(dir.path(), "hang", &[]);
    let cancel = c.cancel.clone();
    let before = m.hits("logs");
    let run = tokio::spawn(async move {
        let o = d.driver.run(&mut c).await;
        (o, c)
    });
    while m.hits("logs") < before + 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let (o, _) = run.await.unwrap();
    assert_eq!(o.error_code, Some(ErrorCode::Cancelled), "{o:?}");
    assert_eq!(m.hits("cancel"), 1);
}

#[tokio::test]
async fn a_job_lost_by_the_agent_is_taken_back_with_the_same_log() {
    let (m, url) = start(3).await;
    let s = source(config(&url, ""));
    let d = s.snapshot().await.unwrap().remove(0);
    // An uninterrupted run, for reference.
    let whole = tempfile::tempdir().unwrap();
    let mut c = ctx(whole.path(), "reference", &[]);
    d.driver.run(&mut c).await;
    // (The same but for the LAVA job id.)
    let reference = std::fs::read_to_string(whole.path().join("console.log"))
        .unwrap()
        .replace("100", "101");
    // A run abandoned half-way (the agent died), then taken back.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let d2 = d.clone();
    let run = tokio::spawn(async move {
        let mut c = ctx(&path, "interrupted", &[]);
        d2.driver.run(&mut c).await;
    });
    let before = m.hits("logs");
    while m.hits("logs") < before + 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    run.abort();
    let _ = run.await;
    // What the daemon does at start: the source recognises the job folder...
    let again = s.resume("lava-mock-qemu", dir.path()).expect("taken back");
    assert!(s.resume("lava-other-qemu", dir.path()).is_none());
    assert!(
        s.resume("lava-mock-qemu", whole.path().join("nothing").as_path())
            .is_none()
    );
    // ...and follows the job with a fresh log.
    std::fs::remove_file(dir.path().join("console.log")).unwrap();
    let mut c = ctx(dir.path(), "interrupted", &[]);
    let o = again.driver.resume(&mut c).await;
    assert_eq!(o.data["lava_job"], 101, "{o:?}");
    assert_eq!(o.result, NodeResult::Fail);
    let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
    assert_eq!(log, reference);
    // One submission for the interrupted job: taking it back did not submit again.
    assert_eq!(m.hits("submit"), 2);
}

#[tokio::test]
async fn a_job_whose_submission_was_under_way_is_found_by_its_name() {
    let (m, url) = start(3).await;
    let s = source(config(&url, ""));
    let d = s.snapshot().await.unwrap().remove(0);
    // The agent stopped right after LAVA took the job, before it learnt the id.
    let dir = tempfile::tempdir().unwrap();
    let lava_driver = labwire_agent::driver::lava::LavaJobRef {
        instance: "mock".into(),
        lava_job: None,
        job_name: "labwire 7.1 lost answer".into(),
    };
    let definition = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/templates/lava/base.jinja2"
    ))
    .unwrap();
    assert!(definition.contains(
        "job_name: {{ \"labwire \" ~ job.id ~ \".\" ~ job.attempt ~ \" \" ~ job.name }}"
    ));
    let id = labwire_agent::lava::client::LavaClient::with_token(
        &config(&url, ""),
        Secret(TOKEN.into()),
    )
    .unwrap()
    .submit("job_name: labwire 7.1 lost answer\ndevice_type: qemu\n")
    .await
    .unwrap();
    lava_driver.save(dir.path()).unwrap();
    let again = s.resume("lava-mock-qemu", dir.path()).expect("taken back");
    let mut c = ctx(dir.path(), "lost answer", &[]);
    let o = again.driver.resume(&mut c).await;
    assert_eq!(o.data["lava_job"], id, "{o:?}");
    assert_eq!(m.hits("list_jobs"), 1);
    let r = labwire_agent::driver::lava::LavaJobRef::load(dir.path()).unwrap();
    assert_eq!(r.lava_job, Some(id));
    // Nothing of that name on LAVA: the job is reported interrupted.
    let dir = tempfile::tempdir().unwrap();
    labwire_agent::driver::lava::LavaJobRef {
        instance: "mock".into(),
        lava_job: None,
        job_name: "labwire 8.1 never arrived".into(),
    }
    .save(dir.path())
    .unwrap();
    let mut c = ctx(dir.path(), "never arrived", &[]);
    let o = d.driver.resume(&mut c).await;
    assert_eq!(o.error_code, Some(ErrorCode::AgentRestart), "{o:?}");
}

#[tokio::test]
async fn version_and_validation() {
    let (m, url) = start(0).await;
    let c = client(&config(&url, ""));
    assert_eq!(c.version().await.unwrap(), "2023.01");
    c.validate("device_type: qemu\n").await.unwrap();
    let e = c.validate("refuse-me: 1\n").await.unwrap_err();
    assert!(
        matches!(&e, LavaError::Refused { message } if message.contains("extra keys not allowed")),
        "{e}"
    );
    // A wrong token: LAVA's answer, not a retry loop.
    let bad = LavaClient::with_token(&config(&url, ""), Secret("wrong".into())).unwrap();
    let e = bad.version().await.unwrap_err();
    assert!(matches!(e, LavaError::Status { status: 401, .. }), "{e}");
    assert_eq!(m.hits("version"), 2);
    assert_eq!(m.hits("validate"), 2);
}
