//! The agent daemon (`labwire_agent::daemon::run`, as the binary runs it) against a stand-in
//! coordinator: a tonic server on loopback over mutual TLS that plays the coordinator's side
//! of the agent protocol, hands out the jobs a test gives it and refuses what the test wants
//! refused. It shows what the agent does whatever the real coordinator accepts: a result
//! refused for good ends the job `invalid_result` (never a lease expiry), hostile artifacts
//! are refused by the agent itself.

use labwire_agent::config::AgentConfig;
use labwire_proto::v1;
use labwire_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// What the agent told the stand-in.
#[derive(Default)]
struct Seen {
    starts: Vec<v1::StartJobRequest>,
    logs: Vec<v1::AppendLogRequest>,
    results: Vec<v1::ReportResultRequest>,
    refused: Vec<v1::ReportResultRequest>,
}

#[derive(Default)]
struct StandIn {
    jobs: Mutex<VecDeque<v1::Assignment>>,
    seen: Arc<Mutex<Seen>>,
    /// Refuse this many result reports (INVALID_ARGUMENT) before accepting.
    refuse_results: Mutex<usize>,
}

#[tonic::async_trait]
impl AgentService for StandIn {
    async fn register(
        &self,
        _: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        Ok(Response::new(v1::RegisterResponse {
            lab: "lab-a".into(),
            session: "session-1".into(),
            heartbeat_interval_ms: 500,
            lease_ms: 30_000,
            lost_jobs: Vec::new(),
            reserved: Vec::new(),
        }))
    }

    async fn heartbeat(
        &self,
        _: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        Ok(Response::new(v1::HeartbeatResponse::default()))
    }

    type SessionStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<v1::CoordinatorMessage, Status>> + Send>,
    >;

    /// Like a coordinator from before the session stream: the agent heartbeats with
    /// Heartbeat instead.
    async fn session(
        &self,
        _: Request<tonic::Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Err(Status::unimplemented("no session stream here"))
    }

    async fn acquire_job(
        &self,
        req: Request<v1::AcquireJobRequest>,
    ) -> Result<Response<v1::AcquireJobResponse>, Status> {
        let free = req.into_inner().free_devices;
        let next = {
            let mut jobs = self.jobs.lock().unwrap();
            let i = jobs.iter().position(|a| free.contains(&a.device));
            i.and_then(|i| jobs.remove(i))
        };
        if next.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Response::new(v1::AcquireJobResponse { assignment: next }))
    }

    async fn reject_job(
        &self,
        _: Request<v1::RejectJobRequest>,
    ) -> Result<Response<v1::RejectJobResponse>, Status> {
        Ok(Response::new(v1::RejectJobResponse {}))
    }

    async fn start_job(
        &self,
        req: Request<v1::StartJobRequest>,
    ) -> Result<Response<v1::StartJobResponse>, Status> {
        self.seen.lock().unwrap().starts.push(req.into_inner());
        Ok(Response::new(v1::StartJobResponse {}))
    }

    async fn append_log(
        &self,
        req: Request<v1::AppendLogRequest>,
    ) -> Result<Response<v1::AppendLogResponse>, Status> {
        let r = req.into_inner();
        let length = r.offset + r.data.len() as u64;
        self.seen.lock().unwrap().logs.push(r);
        Ok(Response::new(v1::AppendLogResponse { length }))
    }

    async fn report_result(
        &self,
        req: Request<v1::ReportResultRequest>,
    ) -> Result<Response<v1::ReportResultResponse>, Status> {
        let r = req.into_inner();
        let mut refuse = self.refuse_results.lock().unwrap();
        if *refuse > 0 {
            *refuse -= 1;
            self.seen.lock().unwrap().refused.push(r);
            return Err(Status::invalid_argument(
                "test 2 of `ktap` has an empty name after trimming white space",
            ));
        }
        self.seen.lock().unwrap().results.push(r);
        Ok(Response::new(v1::ReportResultResponse {}))
    }
}

/// A CA, a server certificate for 127.0.0.1 and a lab certificate, written to `dir`
/// (`ca.pem`, `agent.pem`, `agent.key`); returns the server's identity.
fn pki(dir: &Path) -> (Identity, Certificate) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    let mut lab = CertificateParams::new(Vec::<String>::new()).unwrap();
    lab.distinguished_name
        .push(rcgen::DnType::CommonName, "lab-a");
    let lab_key = KeyPair::generate().unwrap();
    let lab_cert = lab.signed_by(&lab_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("agent.pem"), lab_cert.pem()).unwrap();
    std::fs::write(dir.join("agent.key"), lab_key.serialize_pem()).unwrap();
    (
        Identity::from_pem(server_cert.pem(), server_key.serialize_pem()),
        Certificate::from_pem(ca_cert.pem()),
    )
}

/// A stand-in coordinator and an agent with `devices` (agent.yaml text) talking to it.
struct Rig {
    dir: tempfile::TempDir,
    stand_in: Arc<StandIn>,
    seen: Arc<Mutex<Seen>>,
    stop_agent: CancellationToken,
    stop_server: CancellationToken,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Rig {
    async fn start(devices: &str, extra: &str) -> Rig {
        labwire_agent::ensure_crypto();
        let dir = tempfile::tempdir().unwrap();
        let (identity, ca) = pki(dir.path());
        let stand_in = Arc::new(StandIn::default());
        let seen = stand_in.seen.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop_server = CancellationToken::new();
        let stop = stop_server.clone();
        let svc = AgentServiceServer::from_arc(stand_in.clone());
        let tls = ServerTlsConfig::new().identity(identity).client_ca_root(ca);
        tokio::spawn(async move {
            Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move { stop.cancelled().await },
                )
                .await
        });
        let d = dir.path().display();
        let yaml = format!(
            "lab: lab-a\ncoordinator: {{url: 'https://127.0.0.1:{port}', ca: {d}/ca.pem, cert: {d}/agent.pem, key: {d}/agent.key}}\nstate_dir: {d}/state\nlimits: {{drain_timeout: 5s, poll_wait: 1s}}\n{extra}devices:\n{devices}"
        );
        let cfg = AgentConfig::parse(&yaml).unwrap();
        let stop_agent = CancellationToken::new();
        let agent = tokio::spawn(labwire_agent::daemon::run(cfg, None, stop_agent.clone()));
        Rig {
            dir,
            stand_in,
            seen,
            stop_agent,
            stop_server,
            agent,
        }
    }

    fn give(&self, job: i64, device: &str, spec: v1::JobSpec) {
        self.stand_in
            .jobs
            .lock()
            .unwrap()
            .push_back(v1::Assignment {
                job: Some(v1::JobRef { job, attempt: 1 }),
                spec: Some(spec),
                device: device.into(),
                ..Default::default()
            });
    }

    /// Waits until the stand-in accepted a result for `job`.
    async fn result(&self, job: i64) -> v1::ReportResultRequest {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(r) = self
                .seen
                .lock()
                .unwrap()
                .results
                .iter()
                .find(|r| r.job.is_some_and(|j| j.job == job))
            {
                return r.clone();
            }
            assert!(Instant::now() < end, "no result for job {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The log the stand-in holds for `job`, in offset order.
    fn log(&self, job: i64) -> String {
        let seen = self.seen.lock().unwrap();
        let mut chunks: Vec<&v1::AppendLogRequest> = seen
            .logs
            .iter()
            .filter(|l| l.job.is_some_and(|j| j.job == job))
            .collect();
        chunks.sort_by_key(|l| l.offset);
        let mut out = Vec::new();
        for c in chunks {
            if c.offset as usize == out.len() {
                out.extend_from_slice(&c.data);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn stop(self) -> tempfile::TempDir {
        self.stop_agent.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.agent)
            .await
            .expect("the agent drains")
            .unwrap()
            .unwrap();
        self.stop_server.cancel();
        self.dir
    }
}

fn spec(name: &str, artifacts: &[(&str, String)]) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        timeout_seconds: 120,
        artifacts: artifacts
            .iter()
            .map(|(k, u)| {
                (
                    k.to_string(),
                    v1::Artifact {
                        url: u.clone(),
                        sha256: "0".repeat(64),
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_result_ends_the_job_invalid_result_with_its_log() {
    let devices = "  - name: host\n    device_type: lab-host\n    driver:\n      type: shell\n      command: [printf, 'KTAP version 1\\n1..2\\nok 1 first\\nok 2 \\302\\240\\n']\n";
    let rig = Rig::start(devices, "").await;
    *rig.stand_in.refuse_results.lock().unwrap() = 1;
    rig.give(7, "host", spec("odd-name", &[]));
    let r = rig.result(7).await;
    assert_eq!(r.result, v1::NodeResult::Incomplete as i32);
    assert_eq!(r.error_code, "invalid_result");
    assert!(
        r.error_msg.contains(
            "the coordinator refused the job's result: test 2 of `ktap` has an empty name"
        ),
        "{}",
        r.error_msg
    );
    assert!(r.tests.is_empty());
    let refused = rig.seen.lock().unwrap().refused.clone();
    assert_eq!(refused.len(), 1, "the refused report is sent once");
    assert!(!refused[0].tests.is_empty());
    assert_eq!(r.log_length, refused[0].log_length);
    let log = rig.log(7);
    assert_eq!(log.len() as u64, r.log_length, "{log}");
    assert!(log.contains("ok 1 first"), "{log}");
    // Started once, never again.
    assert_eq!(rig.seen.lock().unwrap().starts.len(), 1);
    let dir = rig.stop().await;
    // Nothing is left to send.
    let outbox = labwire_agent::outbox::Outbox::open(&dir.path().join("state")).unwrap();
    assert!(outbox.is_empty().unwrap());
}

/// A serial board whose power commands do nothing and whose console nobody serves: a job
/// gets as far as its artifacts, which the agent checks before anything else.
fn serial_board(name: &str) -> String {
    format!(
        "  - name: {name}\n    device_type: qemu-x86_64\n    driver:\n      type: serial\n      console: {{tcp: {{address: '127.0.0.1:9'}}}}\n      power_on_command: ['true']\n      power_off_command: ['true']\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_artifacts_are_refused_by_the_agent() {
    let allowed = tempfile::tempdir().unwrap();
    std::fs::write(allowed.path().join("vmlinuz"), b"kernel").unwrap();
    let fifo = allowed.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let outside = tempfile::tempdir().unwrap();
    let extra = format!(
        "artifacts: {{file_dirs: ['{}']}}\n",
        allowed.path().display()
    );
    let rig = Rig::start(&serial_board("board"), &extra).await;
    let kernel = format!("file://{}", allowed.path().join("vmlinuz").display());
    let abs = format!("{}/abs", outside.path().display());
    /// A job: its id, its artifacts (role, URL) and what its error must say.
    type Hostile<'a> = (i64, Vec<(&'a str, String)>, &'a str);
    let jobs: Vec<Hostile> = vec![
        (
            1,
            vec![("../../x", kernel.clone())],
            "artifact role `../../x`",
        ),
        (2, vec![(abs.as_str(), kernel.clone())], "artifact role `"),
        (
            3,
            vec![("kernel", "file:///etc/shadow".into())],
            "not in a folder",
        ),
        (
            4,
            vec![("kernel", format!("file://{}", fifo.display()))],
            "a FIFO",
        ),
    ];
    for (id, arts, _) in &jobs {
        rig.give(*id, "board", spec("hostile", arts));
    }
    let started = Instant::now();
    let hex = regex::Regex::new("[0-9a-f]{64}").unwrap();
    for (id, _, want) in &jobs {
        let r = rig.result(*id).await;
        assert_eq!(r.error_code, "invalid_job", "job {id}: {}", r.error_msg);
        assert!(r.error_msg.contains(want), "job {id}: {}", r.error_msg);
        let log = rig.log(*id);
        assert!(log.contains(want), "job {id}: {log}");
        // No hash of anything read: the only 64 hex digits are the job's own zeros.
        for text in [&r.error_msg, &log] {
            assert!(
                hex.find_iter(text).all(|m| m.as_str() == "0".repeat(64)),
                "{text}"
            );
        }
    }
    // The FIFO did not hold the board up.
    assert!(started.elapsed() < Duration::from_secs(30));
    let dir = rig.stop().await;
    // Nothing was written outside the job folders.
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    let state: Vec<String> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("outbox.db"))
        .collect();
    assert_eq!(state, ["jobs"]);
    let jobs_dir = dir.path().join("state/jobs");
    for e in std::fs::read_dir(&jobs_dir).unwrap() {
        let names: Vec<String> = std::fs::read_dir(e.unwrap().path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["console.log"], "a refused job left files");
    }
}
