//! Hostile input on the network and the web (issue 17, items 7 and 8), against a real
//! coordinator process: idle sockets that used to take every file descriptor of both ports,
//! idle connections never closed, cross-site posts to the dashboard's sign-in and sign-out,
//! a big log read into memory by `/ui/log`, artifact links redirected off-site, and the
//! `labwire` client panicking when its output pipe closes.

use crate::common;

use common::*;
use reqwest::StatusCode;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts `labwire-coordinator serve` for `rig` with at most `nofile` open files (soft and
/// hard limit, as a unit's `LimitNOFILE` would), and waits until both ports are open.
fn start_coordinator_with_nofile(rig: &Rig, nofile: u32) -> Proc {
    let addr_file = rig.path("coordinator.addr");
    let http_addr = rig.path("coordinator-http.addr");
    let _ = std::fs::remove_file(&addr_file);
    let _ = std::fs::remove_file(&http_addr);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(rig.path("coordinator.log"))
        .expect("log");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(COORDINATOR)
        .arg("--config")
        .arg(rig.path("coordinator.yaml"))
        .args(["serve", "--addr-file"])
        .arg(&addr_file)
        .arg("--http-addr-file")
        .arg(&http_addr)
        .env("LABWIRE_LOG", "info,labwire_coordinator=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start coordinator");
    let p = Proc {
        child,
        name: "coordinator".into(),
    };
    wait_for(Duration::from_secs(20), "the coordinator to listen", || {
        addr_file.exists()
    });
    p
}

/// The coordinator's log so far.
fn coordinator_log(rig: &Rig) -> String {
    std::fs::read_to_string(rig.path("coordinator.log")).unwrap_or_default()
}

/// `host:port` of the HTTP side.
fn http_addr(rig: &Rig) -> String {
    rig.http_url().trim_start_matches("https://").to_string()
}

/// Opens `n` TCP connections to `addr` that never send a byte.
fn idle_sockets(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("idle socket {i} to {addr}: {e}"))
        })
        .collect()
}

/// Files the process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn idle_sockets_do_not_stop_either_port() {
    let mut steps = Steps::new();
    // Issue 17 item 7: with 128 files allowed, 111 idle sockets stopped both ports.
    steps.at("Issue 17 item 7");
    let rig = Rig::new("http: {listen: 127.0.0.1:0}\n");
    let _keep = rig.keep_on_failure();
    let coord = start_coordinator_with_nofile(&rig, 128);
    let grpc_addr = format!("127.0.0.1:{}", rig.port);
    let http = http_addr(&rig);

    // 200 unauthenticated sockets on each port that never send a byte, kept open.
    steps.at("200 unauthenticated sockets on each port that never send a byte, kept open");
    let mut idle = idle_sockets(&grpc_addr, 200);
    idle.extend(idle_sockets(&http, 200));

    // A good client is served on both ports at once, not after the idle ones time out.
    steps.at("A good client is served on both ports at once, not after the idle ones time out");
    let started = Instant::now();
    let mut c = tokio::time::timeout(Duration::from_secs(10), rig.client())
        .await
        .expect("a gRPC client connects within 10 s while 400 idle sockets are open");
    let labs = tokio::time::timeout(
        Duration::from_secs(10),
        c.admin.list_labs(labwire_proto::v1::ListLabsRequest {}),
    )
    .await
    .expect("a gRPC call is answered within 10 s")
    .expect("list labs");
    assert!(labs.into_inner().labs.is_empty());
    let web = rig.http_client();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        web.get(format!("{}/healthz", rig.http_url())).send(),
    )
    .await
    .expect("an HTTP request is answered within 10 s")
    .expect("healthz");
    assert_eq!(r.status(), StatusCode::OK);
    println!(
        "both ports served a good client {} ms after 400 idle sockets were opened",
        started.elapsed().as_millis()
    );

    // The coordinator stayed inside its file limit and said why it closed connections.
    steps.at("The coordinator stayed inside its file limit and said why it closed connections");
    let fds = open_fds(coord.child.id());
    assert!(fds <= 128, "{fds} files open");
    let log = coordinator_log(&rig);
    assert!(
        log.contains("lowered to fit the open-files limit"),
        "no warning about the lowered cap:\n{log}"
    );
    assert!(
        log.contains("port full"),
        "no warning about a full port:\n{log}"
    );
    drop(idle);
}

/// A TLS client of the rig's CA, for raw connections.
fn tls_client(rig: &Rig, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    labwire::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(rig.path("coordinator/pki/ca.pem")).expect("ca") {
        roots.add(c.expect("ca pem")).expect("add ca");
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

/// Connects with TLS to `addr`, writes `hello`, then waits (at most `within`) for the
/// server to close the connection; returns how long that took after the write.
fn closed_after(
    cfg: Arc<rustls::ClientConfig>,
    addr: &str,
    hello: &[u8],
    within: Duration,
) -> Option<Duration> {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(cfg, name).expect("tls");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(hello).expect("write");
    tls.flush().expect("flush");
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        match tls.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[tokio::test]
async fn idle_connections_are_closed_on_both_ports() {
    let mut steps = Steps::new();
    // Issue 17 item 7: idle connections were never closed. Here a client that finished its
    // TLS handshake (and, on HTTP, one request) then says nothing more.
    steps.at("Issue 17 item 7");
    let rig = Rig::new("http: {listen: 127.0.0.1:0}\nconnections: {idle_timeout: 2s}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let grpc_addr = format!("127.0.0.1:{}", rig.port);
    let http = http_addr(&rig);
    let h1 = tls_client(&rig, b"http/1.1");
    let h2 = tls_client(&rig, b"h2");
    let within = Duration::from_secs(20);
    let (web, grpc) = tokio::task::spawn_blocking(move || {
        let web = closed_after(
            h1,
            &http,
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
            within,
        );
        // The HTTP/2 preface and an empty SETTINGS frame, then nothing.
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let grpc = closed_after(h2, &grpc_addr, &preface, within);
        (web, grpc)
    })
    .await
    .expect("join");
    for (port, after) in [("HTTP", web), ("gRPC", grpc)] {
        let after =
            after.unwrap_or_else(|| panic!("the {port} port kept an idle connection for 20 s"));
        assert!(
            after >= Duration::from_millis(1500) && after < Duration::from_secs(8),
            "the {port} port closed an idle connection after {after:?}, with idle_timeout 2s"
        );
    }

    // A quiet event stream is a request under way, not an idle connection: after twice the
    // idle timeout without an event, both streams still deliver the next one.
    steps.at("A quiet event stream is a request under way, not an idle connection");
    let mut c = rig.client().await;
    let mut grpc_events = c
        .events
        .subscribe(labwire_proto::v1::SubscribeRequest {
            after_seq: 0,
            kind: 0,
            catch_up_only: false,
        })
        .await
        .expect("subscribe")
        .into_inner();
    let base = rig.http_url();
    let token = rig.admin_token.trim().to_string();
    let web = rig.http_client();
    let mut sse = web
        .get(format!("{base}/events/stream"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("event stream");
    assert_eq!(sse.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = web
        .post(format!("{base}/node"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"kind": "checkout", "name": "after-a-quiet-while"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);
    let ev = tokio::time::timeout(Duration::from_secs(10), grpc_events.message())
        .await
        .expect("a gRPC event within 10 s")
        .expect("the gRPC event stream is still open")
        .expect("an event");
    assert_eq!(ev.node.expect("node").name, "after-a-quiet-while");
    let mut text = String::new();
    while !text.contains("after-a-quiet-while") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), sse.chunk())
            .await
            .expect("an HTTP event within 10 s")
            .expect("the HTTP event stream is still open")
            .expect("more of the stream");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn cross_site_sign_in_and_out_are_refused() {
    let mut steps = Steps::new();
    // Issue 17 item 8: the dashboard's sign-in and sign-out accepted posts from any site.
    steps.at("Issue 17 item 8");
    let rig = Rig::new("http: {listen: 127.0.0.1:0}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let base = rig.http_url();
    let http = rig.http_client();
    let read = rig.create_token("viewer", "read");
    let host = base.trim_start_matches("https://").to_string();
    let post = |path: &str, headers: &[(&str, &str)]| {
        let mut r = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={read}"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send()
    };
    // A page on another site posting the form (what a browser sends then).
    steps.at("A page on another site posting the form (what a browser sends then)");
    for headers in [
        &[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://evil.example"),
        ][..],
        &[
            ("sec-fetch-site", "same-site"),
            ("origin", "https://sub.example"),
        ][..],
        &[("origin", "https://evil.example")][..],
        &[("origin", "null")][..],
    ] {
        for path in ["/ui/login", "/ui/logout"] {
            let r = post(path, headers).await.expect("post");
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path} {headers:?}");
            assert!(
                r.headers().get("set-cookie").is_none(),
                "{path} {headers:?} set a cookie"
            );
            let body = r.text().await.expect("body");
            assert!(body.contains("another site"), "{body}");
        }
    }
    // The dashboard's own forms, and clients that are not browsers, still work.
    steps.at("The dashboard's own forms, and clients that are not browsers, still work");
    let origin = format!("https://{host}");
    for headers in [
        &[
            ("sec-fetch-site", "same-origin"),
            ("origin", origin.as_str()),
        ][..],
        &[("origin", origin.as_str())][..],
        &[][..],
    ] {
        let r = post("/ui/login", headers).await.expect("post");
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{headers:?}");
        let cookie = r.headers()["set-cookie"].to_str().expect("cookie");
        assert!(cookie.starts_with("labwire_ui="), "{cookie}");
        let r = post("/ui/logout", headers).await.expect("post");
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{headers:?}");
    }
}

/// Peak memory of process `pid` since the last reset, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

/// Resident memory of process `pid` now, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[tokio::test]
async fn a_big_log_is_streamed_with_bounded_memory() {
    let mut steps = Steps::new();
    // Issue 17 item 8: `/ui/log/{job}` read the whole log into memory; five readers of a
    // 61 MB log added 419 MiB to the coordinator.
    steps.at("Issue 17 item 8");
    const LOG_BYTES: u64 = 61_000_000;
    let rig = Rig::new("http: {listen: 127.0.0.1:0}\n");
    let _keep = rig.keep_on_failure();
    let coord = rig.start_coordinator();
    rig.issue_lab("lab-a");
    let big = format!(
        "yes 'a line of a big log: 0123456789 abcdefghijklmnopqrstuvwxyz' | head -c {LOG_BYTES}"
    );
    rig.agent_config("lab-a", &[("host-1", &["sh", "-c", &big], &["big"])], "");
    let _agent = rig.start_agent("lab-a");
    let mut c = rig.client().await;
    let job = submit(&mut c, "big-log", &["big"], &[]).await;
    let done = wait_node(&mut c, job, Duration::from_secs(300), is_done).await;
    assert_eq!(
        done.result,
        labwire_proto::v1::NodeResult::Pass as i32,
        "{done:?}"
    );

    let base = rig.http_url();
    let read = rig.create_token("viewer", "read");
    let pid = coord.child.id();
    // Reset the peak (Linux: `5` to clear_refs), so that it measures the reads only.
    steps.at("Reset the peak (Linux");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    let before = rss(pid);
    let readers: Vec<_> = (0..5)
        .map(|_| {
            let http = rig.http_client();
            let url = format!("{base}/ui/log/{job}");
            let read = read.clone();
            tokio::spawn(async move {
                let mut r = http
                    .get(url)
                    .bearer_auth(read)
                    .timeout(Duration::from_secs(300))
                    .send()
                    .await
                    .expect("get");
                assert_eq!(r.status(), StatusCode::OK);
                let ct = r.headers()["content-type"]
                    .to_str()
                    .expect("type")
                    .to_string();
                assert!(ct.starts_with("text/plain"), "{ct}");
                let mut n = 0u64;
                while let Some(chunk) = r.chunk().await.expect("chunk") {
                    n += chunk.len() as u64;
                }
                n
            })
        })
        .collect();
    for r in readers {
        let n = r.await.expect("join");
        assert!(
            n >= LOG_BYTES,
            "a reader got {n} bytes of a {LOG_BYTES}-byte log"
        );
    }
    let grew = peak_rss(pid).saturating_sub(before);
    println!(
        "five readers of a {} MB log: coordinator peak RSS {} MiB above {} MiB",
        LOG_BYTES / 1_000_000,
        grew >> 20,
        before >> 20
    );
    assert!(
        grew < 64 << 20,
        "five readers of a {LOG_BYTES}-byte log grew the coordinator by {} MiB",
        grew >> 20
    );
}

#[tokio::test]
async fn off_site_artifacts_are_not_redirected() {
    let mut steps = Steps::new();
    // Issue 17 item 8: `//host/x` artifact links were redirected off-site by the coordinator.
    steps.at("Issue 17 item 8");
    let rig = Rig::new("http: {listen: 127.0.0.1:0}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let base = rig.http_url();
    let http = rig.http_client();
    let token = rig.admin_token.trim().to_string();
    let body = serde_json::json!({
        "kind": "checkout", "name": "artifacts",
        "artifacts": {
            "protocol-relative": "//evil.example/x",
            "backslash": "/\\evil.example/x",
            "elsewhere": "https://storage.example/kernel/Image",
            "script": "javascript:alert(1)",
            "here": "/logs/1",
        }
    });
    let r = http
        .post(format!("{base}/node"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: serde_json::Value =
        serde_json::from_str(&r.text().await.expect("body")).expect("json");
    let id = created["id"].as_i64().expect("id");
    for name in ["protocol-relative", "backslash", "elsewhere", "script"] {
        let r = http
            .get(format!("{base}/node/{id}/artifacts/{name}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert!(
            r.headers().get("location").is_none(),
            "{name}: redirected to {:?}",
            r.headers().get("location")
        );
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{name}");
        let detail = r.text().await.expect("body");
        assert!(detail.contains("not on this coordinator"), "{detail}");
    }
    // A path on the coordinator is still redirected.
    steps.at("A path on the coordinator is still redirected");
    let r = http
        .get(format!("{base}/node/{id}/artifacts/here"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers()["location"], "/logs/1");

    // The dashboard links only its own paths and shows an off-site URL in plain view.
    steps.at("The dashboard links only its own paths and shows an off-site URL in plain view");
    let page = http
        .get(format!("{base}/ui/node/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("page");
    for bad in [
        "href=\"//",
        "href=\"&#x2f;&#x2f;",
        "href=\"/\\",
        "href=\"javascript",
    ] {
        assert!(!page.contains(bad), "{bad} in {page}");
    }
    assert!(page.contains("href=\"&#x2f;logs&#x2f;1\""), "{page}");
    assert!(
        page.contains("class=external href=\"https:&#x2f;&#x2f;storage.example&#x2f;kernel&#x2f;Image\" rel=\"noopener noreferrer nofollow\""),
        "{page}"
    );
}

#[tokio::test]
async fn labwire_exits_quietly_when_its_reader_goes() {
    let mut steps = Steps::new();
    // `labwire jobs | head -1` panicked: "failed printing to stdout: Broken pipe".
    steps.at("`labwire jobs | head -1` panicked");
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let mut c = rig.client().await;
    // Queued jobs (no lab), enough events to overflow a pipe's buffer (64 KiB).
    steps.at("Queued jobs (no lab), enough events to overflow a pipe's buffer (64 KiB)");
    let mut first = 0;
    for i in 0..300 {
        let id = submit(
            &mut c,
            &format!("queued-job-with-a-longish-name-{i}"),
            &["nowhere"],
            &[],
        )
        .await;
        if i == 0 {
            first = id;
        }
    }
    let ca = rig.path("coordinator/pki/ca.pem");
    let token = rig.admin_token.trim().to_string();
    let labwire = |args: &[&str]| {
        let mut cmd = Command::new(CLIENT);
        cmd.arg("--server")
            .arg(rig.url())
            .arg("--ca")
            .arg(&ca)
            .arg("--token")
            .arg(&token)
            .args(args);
        cmd
    };
    let id = first.to_string();
    for args in [
        &["jobs"][..],
        &["jobs", "--status", "queued", "--limit", "1000"][..],
        &["jobs", "explain", &id][..],
        &["events"][..],
        &["nodes"][..],
        &["node", &id][..],
        &["tree", &id][..],
        &["labs"][..],
    ] {
        // The reader is gone before the command writes anything.
        let mut child = labwire(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start labwire");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "labwire {args:?} with its output closed: {} {stderr}",
            out.status
        );
    }
    // The pipeline itself, with pipefail: the reader leaves after one line.
    steps.at("The pipeline itself, with pipefail");
    let pipeline = labwire(&["events"]);
    let argv: Vec<String> = std::iter::once(pipeline.get_program())
        .chain(pipeline.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; {} | head -1", argv.join(" ")))
        .stderr(Stdio::piped())
        .output()
        .expect("run pipeline");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "labwire events | head -1: {} {stderr}",
        out.status
    );
    let first_line = String::from_utf8_lossy(&out.stdout);
    assert!(
        first_line.lines().count() == 1 && first_line.contains("\"seq\":1"),
        "{first_line}"
    );
}
