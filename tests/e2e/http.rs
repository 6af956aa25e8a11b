//! The HTTP/JSON side against a real coordinator process over HTTPS on loopback: node filters
//! and paging, token scopes refused and granted, the event stream resuming from a sequence
//! number, log and artifact downloads, metrics parsed as Prometheus text, the health check,
//! and the timeout service running inside the daemon.

use crate::common;

use common::*;
use futures::StreamExt;
use labwire_proto::v1;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const HTTP: &str = "http: {listen: 127.0.0.1:0}\ntimeouts: {interval: 100ms}\n";

async fn get(c: &reqwest::Client, url: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut r = c.get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.expect("request");
    let st = resp.status();
    (st, resp.text().await.expect("body"))
}

async fn get_json(c: &reqwest::Client, url: &str, token: &str) -> Value {
    let (st, body) = get(c, url, Some(token)).await;
    assert_eq!(st, StatusCode::OK, "{url}: {body}");
    serde_json::from_str(&body).expect("json")
}

async fn post_node(c: &reqwest::Client, base: &str, token: &str, body: Value) -> Value {
    let resp = c
        .post(format!("{base}/node"))
        .bearer_auth(token)
        .json_body(&body)
        .send()
        .await
        .expect("post");
    let st = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(st, StatusCode::CREATED, "{text}");
    serde_json::from_str(&text).expect("json")
}

/// reqwest here has no `json` feature: send JSON by hand.
trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}

fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|n| n["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn nodes_filters_paging_and_scopes() {
    let mut steps = Steps::new();
    let rig = Rig::new(HTTP);
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let base = rig.http_url();
    let http = rig.http_client();
    let read = rig.create_token("reader", "read");
    let submit = rig.create_token("ci-bot", "submit");

    // Health needs no token; everything else does.
    steps.at("Health needs no token");
    assert_eq!(
        get(&http, &format!("{base}/healthz"), None).await.0,
        StatusCode::OK
    );
    let resp = http.get(format!("{base}/nodes")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let (st, body) = get(&http, &format!("{base}/nodes"), Some("not-a-token")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("unknown token"), "{body}");

    // Writing needs `submit`: a read token is refused, a submit token granted.
    steps.at("Writing needs `submit`");
    let body = json!({"kind": "checkout", "name": "checkout", "state": "available",
                      "data": {"kernel_revision": {"tree": "mainline"}}});
    let resp = http
        .post(format!("{base}/node"))
        .bearer_auth(&read)
        .json_body(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let text = resp.text().await.unwrap();
    assert!(text.contains("needs `submit`"), "{text}");
    let checkout = post_node(&http, &base, &submit, body).await;
    let cid = checkout["id"].as_i64().unwrap();
    assert_eq!(checkout["owner"], "ci-bot");
    assert_eq!(checkout["treeid"], cid.to_string());

    let build = post_node(
        &http,
        &base,
        &submit,
        json!({"kind": "kbuild", "name": "kbuild-gcc-x86", "parent": cid}),
    )
    .await;
    let bid = build["id"].as_i64().unwrap();
    let mut tests = Vec::new();
    for i in 0..25 {
        let result = if i % 5 == 0 { "fail" } else { "pass" };
        let n = post_node(
            &http,
            &base,
            &submit,
            json!({"kind": "test", "name": format!("t{i:02}"), "parent": bid,
                   "state": "done", "result": result}),
        )
        .await;
        tests.push(n);
    }

    // Filters.
    steps.at("Filters");
    let fails = get_json(
        &http,
        &format!("{base}/nodes?kind=test&result=fail&limit=100"),
        &read,
    )
    .await;
    let want: Vec<i64> = tests
        .iter()
        .filter(|t| t["result"] == "fail")
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids(&fails), want);
    let by_name = get_json(&http, &format!("{base}/nodes?name=t07"), &read).await;
    assert_eq!(ids(&by_name), vec![tests[7]["id"].as_i64().unwrap()]);
    let kids = get_json(&http, &format!("{base}/nodes?parent={cid}"), &read).await;
    assert_eq!(ids(&kids), vec![bid]);
    let running = get_json(&http, &format!("{base}/nodes?state=running"), &read).await;
    assert_eq!(ids(&running), vec![bid]);
    let by_path = get_json(
        &http,
        &format!("{base}/nodes?path=checkout/kbuild-gcc-x86/t03"),
        &read,
    )
    .await;
    assert_eq!(ids(&by_path), vec![tests[3]["id"].as_i64().unwrap()]);
    // created__gt: strictly after the 10th test's creation time.
    steps.at("created__gt");
    let t10 = tests[10]["created"].as_str().unwrap();
    let later = get_json(
        &http,
        &format!(
            "{base}/nodes?kind=test&created__gt={}",
            t10.replace('+', "%2B")
        ),
        &read,
    )
    .await;
    let want: Vec<i64> = tests[11..]
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids(&later), want);
    let upto = get_json(
        &http,
        &format!(
            "{base}/nodes?kind=test&created__lte={}",
            t10.replace('+', "%2B")
        ),
        &read,
    )
    .await;
    assert_eq!(ids(&upto).len(), 11);

    // Paging: every test once, in order, across pages of 4.
    steps.at("Paging");
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut pages = 0;
    loop {
        let page = get_json(
            &http,
            &format!("{base}/nodes?kind=test&limit=4&cursor={cursor}"),
            &read,
        )
        .await;
        pages += 1;
        seen.extend(ids(&page));
        match page["next_cursor"].as_i64() {
            Some(c) => cursor = c,
            None => break,
        }
    }
    let all: Vec<i64> = tests.iter().map(|t| t["id"].as_i64().unwrap()).collect();
    assert_eq!(seen, all);
    assert_eq!(pages, 7);

    // Bad input names what was wrong.
    steps.at("Bad input names what was wrong");
    for (q, says) in [
        ("colour=red", "unknown filter `colour`"),
        ("kind=build", "`build` is not a node kind"),
        ("limit=0", "limit"),
        ("created__gt=yesterday", "created__gt"),
        ("parent=-3", "parent"),
    ] {
        let (st, body) = get(&http, &format!("{base}/nodes?{q}"), Some(&read)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}: {body}");
        assert!(body.contains(says), "{q}: {body}");
    }

    // One node, with KernelCI's field names.
    steps.at("One node, with KernelCI's field names");
    let n = get_json(&http, &format!("{base}/node/{bid}"), &read).await;
    assert_eq!(n["kind"], "kbuild");
    assert_eq!(n["path"], json!(["checkout", "kbuild-gcc-x86"]));
    assert_eq!(n["parent"], cid);
    for f in [
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
        assert!(n.get(f).is_some(), "field {f} missing: {n}");
    }
    let (st, body) = get(&http, &format!("{base}/node/999999"), Some(&read)).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");

    // State changes go through the state machine.
    steps.at("State changes go through the state machine");
    let resp = http
        .put(format!("{base}/node/{bid}"))
        .bearer_auth(&submit)
        .json_body(&json!({"state": "done", "result": "pass"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .put(format!("{base}/node/{bid}"))
        .bearer_auth(&submit)
        .json_body(&json!({"state": "running"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(resp.text().await.unwrap().contains("done -> running"));

    // A revoked token is refused from then on.
    steps.at("A revoked token is refused from then on");
    let out = std::process::Command::new(COORDINATOR)
        .arg("--config")
        .arg(rig.path("coordinator.yaml"))
        .args(["token", "revoke", "reader"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (st, body) = get(&http, &format!("{base}/nodes"), Some(&read)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(body.contains("revoked"), "{body}");
}

/// Reads server-sent events until `n` arrived: (id, event type, data).
async fn read_sse(resp: reqwest::Response, n: usize) -> Vec<(i64, String, Value)> {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .expect("chunk");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut ev, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<i64>().expect("id"));
                } else if let Some(v) = line.strip_prefix("event:") {
                    ev = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                out.push((id, ev, serde_json::from_str(&data).expect("event json")));
            }
        }
    }
    out
}

#[tokio::test]
async fn event_stream_resumes_from_a_sequence_number() {
    let mut steps = Steps::new();
    let rig = Rig::new(HTTP);
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let base = rig.http_url();
    let http = rig.http_client();
    let token = rig.admin_token.trim().to_string();
    let mut c = rig.client().await;
    let create = |c: &mut labwire::client::Clients, name: String| {
        let mut c = c.clone();
        async move {
            c.nodes
                .create_node(v1::CreateNodeRequest {
                    node: Some(v1::Node {
                        kind: v1::NodeKind::Checkout as i32,
                        name,
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner()
                .node
                .unwrap()
                .id
        }
    };
    for i in 0..10 {
        create(&mut c, format!("c{i}")).await;
    }

    // The list: events after a sequence number.
    steps.at("The list");
    let list = get_json(&http, &format!("{base}/events?from=4&limit=3"), &token).await;
    let seqs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(seqs, vec!["5", "6", "7"]);
    assert_eq!(list[0]["specversion"], "1.0");
    assert_eq!(list[0]["type"], "org.labwire.node.created");
    assert_eq!(list[0]["data"]["name"], "c4");

    // The stream: catch up from 3, then a live event.
    steps.at("The stream");
    let resp = http
        .get(format!("{base}/events/stream?from=3"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let live = tokio::spawn({
        let c = c.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut c = c;
            create(&mut c, "live".into()).await
        }
    });
    let got = read_sse(resp, 8).await;
    assert_eq!(
        got.iter().map(|e| e.0).collect::<Vec<_>>(),
        (4..=11).collect::<Vec<_>>()
    );
    assert_eq!(got[7].2["data"]["name"], "live");
    assert_eq!(got[7].1, "org.labwire.node.created");
    live.await.unwrap();

    // The client went away after event 11; more changes happen; it comes back with
    // Last-Event-ID and gets exactly the events it missed, in order.
    steps.at("The client went away after event 11");
    for i in 0..5 {
        create(&mut c, format!("missed{i}")).await;
    }
    let resp = http
        .get(format!("{base}/events/stream?from=0"))
        .header("last-event-id", "11")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let got = read_sse(resp, 5).await;
    assert_eq!(
        got.iter().map(|e| e.0).collect::<Vec<_>>(),
        (12..=16).collect::<Vec<_>>()
    );
    assert_eq!(got[0].2["data"]["name"], "missed0");

    // Filtering by kind, and a bad cursor.
    steps.at("Filtering by kind, and a bad cursor");
    let (st, body) = get(&http, &format!("{base}/events?from=-1"), Some(&token)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let (st, body) = get(&http, &format!("{base}/events?after=1"), Some(&token)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("after"), "{body}");
    let none = get_json(&http, &format!("{base}/events?kind=job"), &token).await;
    assert_eq!(none, json!([]));
}

#[tokio::test]
async fn logs_artifacts_and_metrics() {
    let mut steps = Steps::new();
    let rig = Rig::new(HTTP);
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    rig.agent_config(
        "lab-a",
        &[("host-1", &["echo", "hello from the lab"], &["smoke"])],
        "",
    );
    let _agent = rig.start_agent("lab-a");
    let base = rig.http_url();
    let http = rig.http_client();
    let token = rig.admin_token.trim().to_string();
    let mut c = rig.client().await;
    let job = submit(&mut c, "smoke", &["smoke"], &[]).await;
    let done = wait_node(&mut c, job, Duration::from_secs(30), is_done).await;
    assert_eq!(done.result, v1::NodeResult::Pass as i32, "{done:?}");

    let (st, log) = get(&http, &format!("{base}/logs/{job}"), Some(&token)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(log.contains("\nhello from the lab\n"), "{log}");
    // Byte for byte what gRPC GetLog gives.
    steps.at("Byte for byte what gRPC GetLog gives");
    assert_eq!(log, read_log(&mut c, job).await);
    let (st, log1) = get(&http, &format!("{base}/logs/{job}/1"), Some(&token)).await;
    assert_eq!((st, log1.as_str()), (StatusCode::OK, log.as_str()));
    let (st, _) = get(&http, &format!("{base}/logs/{job}/7"), Some(&token)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // The node's `log` artifact points at the coordinator's log route.
    steps.at("The node's `log` artifact points at the coordinator's log route");
    let resp = http
        .get(format!("{base}/node/{job}/artifacts/log"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(resp.headers()["location"], format!("/logs/{job}/1"));
    let (st, body) = get(
        &http,
        &format!("{base}/node/{job}/artifacts/kernel"),
        Some(&token),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(body.contains("no artifact `kernel`"), "{body}");

    // A second job waits in the queue: nothing offers the tag it wants.
    steps.at("A second job waits in the queue");
    submit(&mut c, "nowhere", &["no-such-tag"], &[]).await;

    let resp = http
        .get(format!("{base}/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = resp.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"));
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} {label:?} missing:\n{text}"));
        match &s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(value("labwire_queue_length", None), 1.0);
    assert_eq!(value("labwire_jobs", Some(("status", "queued"))), 1.0);
    assert_eq!(value("labwire_jobs", Some(("status", "finished"))), 1.0);
    assert_eq!(value("labwire_labs_connected", None), 1.0);
    let last_seq = get_json(&http, &format!("{base}/events?from=0&limit=1000"), &token)
        .await
        .as_array()
        .unwrap()
        .len();
    assert_eq!(value("labwire_events_written_total", None), last_seq as f64);
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "labwire_dispatch_latency_seconds")
        .unwrap_or_else(|| panic!("no dispatch latency histogram:\n{text}"));
    match &hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets
                .iter()
                .find(|b| b.less_than == f64::INFINITY)
                .unwrap();
            assert_eq!(inf.count, 1.0, "one job was leased: {buckets:?}");
        }
        other => panic!("dispatch latency is not a histogram: {other:?}"),
    }
    assert!(
        text.contains("labwire_dispatch_latency_seconds_count 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_timeout_service_runs_in_the_coordinator() {
    let mut steps = Steps::new();
    let rig = Rig::new(HTTP);
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let base = rig.http_url();
    let http = rig.http_client();
    let token = rig.admin_token.trim().to_string();
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(500)).to_rfc3339();
    let timed = post_node(
        &http,
        &base,
        &token,
        json!({"kind": "checkout", "name": "checkout", "timeout": soon}),
    )
    .await;
    let held = post_node(
        &http,
        &base,
        &token,
        json!({"kind": "checkout", "name": "checkout", "state": "available", "holdoff": soon}),
    )
    .await;
    let child = post_node(
        &http,
        &base,
        &token,
        json!({"kind": "kbuild", "name": "kbuild", "parent": held["id"]}),
    )
    .await;
    let node = |id: &Value| format!("{base}/node/{id}");
    let end = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let a = get_json(&http, &node(&timed["id"]), &token).await;
        let b = get_json(&http, &node(&held["id"]), &token).await;
        if a["state"] == "done" && b["state"] == "closing" {
            assert_eq!(a["result"], "incomplete");
            assert_eq!(a["data"]["error_code"], "node_timeout");
            break;
        }
        assert!(std::time::Instant::now() < end, "{a}\n{b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A closing parent takes no children.
    steps.at("A closing parent takes no children");
    let resp = http
        .post(format!("{base}/node"))
        .bearer_auth(&token)
        .json_body(&json!({"kind": "kbuild", "name": "late", "parent": held["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // Its last child finishes: it goes done.
    steps.at("Its last child finishes");
    let resp = http
        .put(node(&child["id"]))
        .bearer_auth(&token)
        .json_body(&json!({"state": "done", "result": "pass"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while get_json(&http, &node(&held["id"]), &token).await["state"] != "done" {
        assert!(
            std::time::Instant::now() < end,
            "closing node never went done"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn grpc_reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let ca = std::fs::read(rig.path("coordinator/pki/ca.pem")).unwrap();
    let channel = tonic::transport::Channel::from_shared(rig.url())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer: {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "labwire.v1.NodeService",
        "labwire.v1.EventService",
        "labwire.v1.AgentService",
        "labwire.v1.AdminService",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}

#[tokio::test]
async fn plain_http_for_a_local_proxy() {
    let rig = Rig::new("http: {listen: 127.0.0.1:0, tls: false}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let base = rig.http_url().replace("https://", "http://");
    let http = reqwest::Client::new();
    let (st, body) = get(&http, &format!("{base}/healthz"), None).await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "ok\n"));
    let page = get_json(&http, &format!("{base}/nodes"), rig.admin_token.trim()).await;
    assert_eq!(page["items"], json!([]));
    assert_eq!(page["next_cursor"], Value::Null);
}
