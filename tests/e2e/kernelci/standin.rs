//! A KernelCI stand-in on loopback serving what a pull lab meets (kernelci-api 95acafc,
//! kernelci-core 69a285e and 58538d8 (`kernelci/runtime/pull_labs.py`), 6cbbad7
//! (`config/runtime/base/pull_labs.jinja2`), kernelci-pipeline e81bdeb; all read, none
//! copied):
//!
//! - `GET /latest/events?kind=&from=&limit=&recursive=true`: events after `from` (exclusive)
//!   as KernelCI's API lists them: `{id, timestamp, channel, owner, data: {op, id, kind,
//!   name, path, group, state, result, owner, data}, node}`;
//! - `GET /latest/node/{id}`: a node;
//! - `GET /storage/...` on a server of its own (KernelCI's storage is not its API): job
//!   definitions (JSON with the fields of kernelci-core's `base/pull_labs.jinja2`:
//!   artifacts, tests, environment, callback) and the board's files;
//! - `POST /node/{id}`: the pipeline's callback endpoint (the whole `Authorization` header
//!   is compared with the token, as kernelci-pipeline's `lava_callback.py` does; 202 when
//!   accepted). The node then ends `done` with the job status kernelci-core's PULL_LABS
//!   `Callback` gives it: `get_job_status` from `summary` (none ran: incomplete; a failure:
//!   fail), incomplete for what `is_infra_error` sees as an infrastructure error.
//!
//! `down()` takes the API and the pipeline down: their port is closed (new connections are
//! refused) and every request that still reaches them on a connection opened before (HTTP
//! keep-alive) is answered 503, until `up()` opens the same port again. The storage stays
//! up, so a board can fetch its files during the outage.
//!
//! `hold_answers()` makes the pipeline apply a callback (record it, end the node) but keep
//! its answer back until `release_answers()`: the caller's crash between KernelCI taking a
//! callback and hearing that it did.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// A callback as it arrived.
#[derive(Debug, Clone)]
pub struct Posted {
    pub node: String,
    pub authorization: Option<String>,
    pub body: Value,
}

#[derive(Default)]
pub struct Inner {
    pub events: Vec<Value>,
    pub nodes: HashMap<String, Value>,
    pub files: HashMap<String, Vec<u8>>,
    pub callbacks: Vec<Posted>,
    pub definition_reads: usize,
    /// Requests answered 503 because the API and pipeline were down.
    pub refused_while_down: usize,
    pub token: String,
    /// The API and pipeline are down.
    down: bool,
    /// Callback answers are held back until this is cancelled.
    hold: Option<CancellationToken>,
}

#[derive(Clone)]
pub struct StandIn {
    pub inner: Arc<Mutex<Inner>>,
    /// The API's and pipeline's port.
    pub port: u16,
    /// The storage's port.
    pub storage_port: u16,
    stop: Arc<Mutex<Option<CancellationToken>>>,
}

fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

impl StandIn {
    pub async fn start(token: &str) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let storage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let storage_port = storage.local_addr().unwrap().port();
        let s = StandIn {
            inner: Arc::new(Mutex::new(Inner {
                token: token.into(),
                ..Default::default()
            })),
            port,
            storage_port,
            stop: Default::default(),
        };
        let files = Router::new()
            .route("/storage/{*path}", get(file))
            .with_state(s.inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(storage, files).await;
        });
        s.serve(listener);
        s
    }

    /// The API's and pipeline's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The storage's base URL.
    pub fn storage_url(&self) -> String {
        format!("http://127.0.0.1:{}/storage/", self.storage_port)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let stop = CancellationToken::new();
        *self.stop.lock().unwrap() = Some(stop.clone());
        let app = Router::new()
            .route("/latest/events", get(events))
            .route("/latest/node/{id}", get(node))
            .route("/node/{id}", axum::routing::post(callback))
            .layer(axum::middleware::from_fn_with_state(
                self.inner.clone(),
                unless_down,
            ))
            .with_state(self.inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
    }

    /// KernelCI's API and pipeline go down: their port is closed and whatever still reaches
    /// them is answered 503.
    pub fn down(&self) {
        self.inner.lock().unwrap().down = true;
        if let Some(s) = self.stop.lock().unwrap().take() {
            s.cancel();
        }
    }

    /// KernelCI is back, on the same port.
    pub async fn up(&self) {
        let addr = format!("127.0.0.1:{}", self.port);
        let listener = loop {
            match tokio::net::TcpListener::bind(&addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        };
        self.inner.lock().unwrap().down = false;
        self.serve(listener);
    }

    /// From now on the pipeline applies a callback but holds its answer back.
    pub fn hold_answers(&self) {
        self.inner.lock().unwrap().hold = Some(CancellationToken::new());
    }

    /// The held answers go out, and later ones are not held.
    pub fn release_answers(&self) {
        if let Some(h) = self.inner.lock().unwrap().hold.take() {
            h.cancel();
        }
    }

    pub fn add_file(&self, path: &str, bytes: Vec<u8>) {
        self.inner.lock().unwrap().files.insert(path.into(), bytes);
    }

    /// What KernelCI's scheduler does for a pull-lab job: a job node, made `available` with
    /// its `job_definition` artifact, and the events of both changes.
    pub fn publish_job(
        &self,
        id: &str,
        name: &str,
        runtime: &str,
        platform: &str,
        definition: Value,
    ) {
        let path = format!("pull_labs_jobs/20260101/{id}.json");
        let url = format!("{}{path}", self.storage_url());
        let mut g = self.inner.lock().unwrap();
        g.files
            .insert(path, serde_json::to_vec(&definition).unwrap());
        let node = json!({
            "id": id, "kind": "job", "name": name, "group": name,
            "path": ["checkout", "kbuild-gcc-14-x86", name],
            "parent": "65f0000000000000000000aa", "state": "available", "result": null,
            "artifacts": {"job_definition": url},
            "data": {"platform": platform, "runtime": runtime,
                     "kernel_revision": {"tree": "mainline", "branch": "master", "commit": "abc123"}},
            "owner": "kernelci", "retry_counter": 0,
        });
        g.nodes.insert(id.into(), node.clone());
        let mut created = node.clone();
        created["state"] = "running".into();
        push_event(&mut g, "created", &created);
        push_event(&mut g, "updated", &node);
    }

    /// KernelCI's timeout service ends a node.
    pub fn time_out(&self, id: &str) {
        let mut g = self.inner.lock().unwrap();
        let Some(n) = g.nodes.get_mut(id) else { return };
        n["state"] = "done".into();
        n["result"] = "incomplete".into();
        n["data"]["error_code"] = "node_timeout".into();
        let n = n.clone();
        push_event(&mut g, "updated", &n);
    }

    pub fn callbacks(&self) -> Vec<Posted> {
        self.inner.lock().unwrap().callbacks.clone()
    }

    pub fn definition_reads(&self) -> usize {
        self.inner.lock().unwrap().definition_reads
    }
}

/// While KernelCI is down, a request on a connection opened before gets 503.
async fn unless_down(
    State(s): State<Arc<Mutex<Inner>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    {
        let mut g = s.lock().unwrap();
        if g.down {
            g.refused_while_down += 1;
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"detail": "KernelCI is down"})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn push_event(g: &mut Inner, op: &str, node: &Value) {
    let ev = json!({
        "id": format!("ev{:022}", g.events.len() + 1),
        "timestamp": now(),
        "sequence_id": g.events.len() + 1,
        "channel": "node",
        "owner": "kernelci",
        "data": {
            "op": op, "id": node["id"], "kind": node["kind"], "name": node["name"],
            "path": node["path"], "group": node["group"], "state": node["state"],
            "result": node["result"], "owner": node["owner"], "data": node["data"],
            "is_hierarchy": false,
        },
    });
    g.events.push(ev);
    // Distinct timestamps, as the real API's clock gives.
    std::thread::sleep(std::time::Duration::from_micros(10));
}

async fn events(
    State(s): State<Arc<Mutex<Inner>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let g = s.lock().unwrap();
    let from = q.get("from").cloned().unwrap_or_default();
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    if q.get("recursive").map(String::as_str) == Some("true") && limit > 1000 {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"detail": "Recursive limit is too large, max is 1000"})),
        )
            .into_response();
    }
    let out: Vec<Value> = g
        .events
        .iter()
        .filter(|e| e["timestamp"].as_str().unwrap_or("") > from.as_str())
        .filter(|e| {
            q.get("kind")
                .is_none_or(|k| e["data"]["kind"] == k.as_str())
        })
        .filter(|e| {
            q.get("state")
                .is_none_or(|k| e["data"]["state"] == k.as_str())
        })
        .take(limit)
        .map(|e| {
            let mut e = e.clone();
            if q.get("recursive").map(String::as_str) == Some("true") {
                let id = e["data"]["id"].as_str().unwrap_or("").to_string();
                e["node"] = g.nodes.get(&id).cloned().unwrap_or(Value::Null);
            }
            e
        })
        .collect();
    axum::Json(out).into_response()
}

async fn node(State(s): State<Arc<Mutex<Inner>>>, Path(id): Path<String>) -> Response {
    match s.lock().unwrap().nodes.get(&id) {
        Some(n) => axum::Json(n.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"detail": "Node not found"})),
        )
            .into_response(),
    }
}

async fn file(State(s): State<Arc<Mutex<Inner>>>, Path(path): Path<String>) -> Response {
    let mut g = s.lock().unwrap();
    if path.starts_with("pull_labs_jobs/") {
        g.definition_reads += 1;
    }
    match g.files.get(&path) {
        Some(b) => b.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn callback(
    State(s): State<Arc<Mutex<Inner>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let hold = {
        let mut g = s.lock().unwrap();
        match apply_callback(&mut g, &id, &headers, &body) {
            Ok(()) => g.hold.clone(),
            Err((status, message)) => {
                return (status, axum::Json(json!({"message": message}))).into_response();
            }
        }
    };
    if let Some(h) = hold {
        h.cancelled().await;
    }
    (StatusCode::ACCEPTED, axum::Json(json!({"message": "OK"}))).into_response()
}

/// What the pipeline does with a callback: checks the token, records it and ends the node;
/// or the status and message it refuses it with.
fn apply_callback(
    g: &mut Inner,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), (StatusCode, &'static str)> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if auth.as_deref() != Some(g.token.as_str()) {
        return Err((StatusCode::UNAUTHORIZED, "Unauthorized"));
    }
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return Err((StatusCode::BAD_REQUEST, "Error decoding JSON"));
    };
    g.callbacks.push(Posted {
        node: id.to_string(),
        authorization: auth,
        body: body.clone(),
    });
    // The job status kernelci-core's PULL_LABS `Callback` derives: `get_job_status` from the
    // summary, `is_infra_error` from `error_code` (top level or in `metadata`) or every
    // test's status being `error`.
    let total = body["summary"]["total"].as_u64().unwrap_or(0);
    let failed = body["summary"]["failed"].as_u64().unwrap_or(0);
    let all_errors = body["tests"].as_object().is_some_and(|t| {
        !t.is_empty()
            && t.values()
                .filter(|v| v.is_object())
                .all(|v| v.get("status").and_then(Value::as_str).unwrap_or("error") == "error")
    });
    let infra = body.get("error_code").is_some()
        || body["metadata"].get("error_code").is_some()
        || all_errors;
    let result = if total == 0 || infra {
        "incomplete"
    } else if failed > 0 {
        "fail"
    } else {
        "pass"
    };
    if let Some(n) = g.nodes.get_mut(id) {
        n["state"] = "done".into();
        n["result"] = result.into();
        let n = n.clone();
        push_event(g, "updated", &n);
    }
    Ok(())
}
