//! Hostile input on the network and the web (issue 17, items 7 and 8), against a real
//! coordinator process: idle sockets that used to take every file descriptor of both ports,
//! idle connections never closed, cross-site posts to the dashboard's sign-in and sign-out,
//! a big log read into memory by `/ui/log`, artifact links redirected off-site, and the
//! `labwire` client panicking when its output pipe closes.

mod common;

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
    // Issue 17 item 7: with 128 files allowed, 111 idle sockets stopped both ports.
    let rig = Rig::new("http: {listen: 127.0.0.1:0}\n");
    let _keep = rig.keep_on_failure();
    let coord = start_coordinator_with_nofile(&rig, 128);
    let grpc_addr = format!("127.0.0.1:{}", rig.port);
    let http = http_addr(&rig);

    // 200 unauthenticated sockets on each port that never send a byte, kept open.
    let mut idle = idle_sockets(&grpc_addr, 200);
    idle.extend(idle_sockets(&http, 200));

    // A good client is served on both ports at once, not after the idle ones time out.
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
    // Issue 17 item 7: idle connections were never closed. Here a client that finished its
    // TLS handshake (and, on HTTP, one request) then says nothing more.
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
}
