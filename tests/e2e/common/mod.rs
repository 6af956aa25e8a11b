//! Helpers for the end-to-end tests: a coordinator and agents as real processes (the binaries
//! cargo built for this package), talking real mutual TLS over loopback, with their files in
//! a temporary folder that is kept (and named) when a test fails.

#![allow(dead_code)]

use labwire::client::Clients;
use labwire_proto::v1;
use labwire_proto::v1::agent_service_client::AgentServiceClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub const COORDINATOR: &str = env!("CARGO_BIN_EXE_labwire-coordinator");
pub const AGENT: &str = env!("CARGO_BIN_EXE_labwire-agent");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_labwire");

/// A process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(self.pid(), sig);
    }

    /// Sends SIGTERM and waits for the exit status (at most `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test installation: one coordinator folder, any number of labs.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub admin_token: String,
    pub port: u16,
    pub extra_config: String,
    /// The PostgreSQL database of the store, when the tests run on PostgreSQL.
    pub pg: Option<labwire_testpg::TestDb>,
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Rig {
    /// Creates the coordinator's CA and admin token. `extra_config` is appended to the
    /// coordinator config (e.g. lease settings).
    pub fn new(extra_config: &str) -> Rig {
        let pg = std::env::var("LABWIRE_TEST_STORE").as_deref() == Ok("postgres");
        Self::with_store(extra_config, pg)
    }

    /// Like [`Rig::new`], on a fresh PostgreSQL database whatever `LABWIRE_TEST_STORE` says
    /// (for what only PostgreSQL does: several replicas).
    pub fn new_on_postgres(extra_config: &str) -> Rig {
        Self::with_store(extra_config, true)
    }

    /// A rig on PostgreSQL (`postgres`) or SQLite, whatever `LABWIRE_TEST_STORE` says.
    pub fn with_store(extra_config: &str, postgres: bool) -> Rig {
        labwire::install_crypto();
        let dir = tempfile::Builder::new()
            .prefix("labwire-e2e-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        // With LABWIRE_TEST_STORE=postgres, the coordinator's store is a fresh database on
        // the private PostgreSQL test server (scripts/test.sh runs the coordinator's
        // behaviour tests both ways).
        let pg = postgres.then(labwire_testpg::database);
        let mut rig = Rig {
            dir,
            admin_token: String::new(),
            port,
            extra_config: extra_config.to_string(),
            pg,
        };
        rig.write_config();
        if rig.pg.is_some() {
            run_ok(
                Command::new(COORDINATOR)
                    .args(["--config"])
                    .arg(rig.path("coordinator.yaml"))
                    .arg("migrate"),
            );
        }
        let token_file = rig.path("admin.token");
        run_ok(
            Command::new(COORDINATOR)
                .args(["--config"])
                .arg(rig.path("coordinator.yaml"))
                .args([
                    "ca",
                    "init",
                    "--dns",
                    "localhost",
                    "--ip",
                    "127.0.0.1",
                    "--token-file",
                ])
                .arg(&token_file),
        );
        rig.admin_token = std::fs::read_to_string(token_file).expect("token");
        rig
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn write_config(&self) {
        let store = match &self.pg {
            Some(db) => format!("store: {}\n", db.url),
            None => String::new(),
        };
        let cfg = format!(
            "listen: 127.0.0.1:{}\ndata_dir: {}\npublic_url: {}\n{store}{}",
            self.port,
            self.path("coordinator").display(),
            self.url(),
            self.extra_config
        );
        std::fs::write(self.path("coordinator.yaml"), cfg).expect("write config");
    }

    /// Starts the coordinator and waits until its port is open.
    pub fn start_coordinator(&self) -> Proc {
        let _ = std::fs::remove_file(self.path("coordinator-http.addr"));
        self.serve(
            &self.path("coordinator.yaml"),
            "coordinator",
            Some(self.path("coordinator-http.addr")),
        )
    }

    /// Starts `labwire-coordinator serve` with `config`, logging to `{name}.log` and writing
    /// its address to `{name}.addr` (and the HTTP side's to `http_addr`), and waits until its
    /// port is open.
    fn serve(&self, config: &Path, name: &str, http_addr: Option<PathBuf>) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .expect("log");
        let addr_file = self.path(&format!("{name}.addr"));
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(COORDINATOR);
        cmd.arg("--config")
            .arg(config)
            .args(["serve", "--addr-file"])
            .arg(&addr_file);
        if let Some(h) = http_addr {
            cmd.arg("--http-addr-file").arg(h);
        }
        let child = cmd
            .env("LABWIRE_LOG", "info,labwire_coordinator=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start coordinator");
        let p = Proc {
            child,
            name: name.replace('-', " "),
        };
        wait_for(
            Duration::from_secs(20),
            &format!("{name} to listen"),
            || addr_file.exists(),
        );
        p
    }

    /// The base URL of the HTTP side (configure `http: {listen: 127.0.0.1:0}`); the
    /// coordinator writes its port before it opens the gRPC one.
    pub fn http_url(&self) -> String {
        let addr = std::fs::read_to_string(self.path("coordinator-http.addr"))
            .expect("the coordinator has no HTTP side (http.listen in extra_config?)");
        format!("https://{}", addr.trim().replace("0.0.0.0", "127.0.0.1"))
    }

    /// An HTTP client that trusts the rig's CA only.
    pub fn http_client(&self) -> reqwest::Client {
        let ca = std::fs::read(self.path("coordinator/pki/ca.pem")).expect("ca");
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("ca pem")])
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client")
    }

    /// Creates a client token with `scopes` (comma-separated) through the coordinator CLI.
    pub fn create_token(&self, name: &str, scopes: &str) -> String {
        run_ok(
            Command::new(COORDINATOR)
                .arg("--config")
                .arg(self.path("coordinator.yaml"))
                .args(["token", "create", name, "--scope", scopes]),
        )
        .trim()
        .to_string()
    }

    /// Issues a certificate for `lab` and writes its folder under the rig.
    pub fn issue_lab(&self, lab: &str) -> PathBuf {
        let out = self.path(&format!("labs/{lab}"));
        run_ok(
            Command::new(COORDINATOR)
                .arg("--config")
                .arg(self.path("coordinator.yaml"))
                .args(["ca", "issue-agent", lab, "--out"])
                .arg(&out),
        );
        out
    }

    /// Writes an agent config for `lab` with shell devices `(name, command argv, tags)`.
    pub fn agent_config(
        &self,
        lab: &str,
        devices: &[(&str, &[&str], &[&str])],
        extra: &str,
    ) -> PathBuf {
        let bundle = self.path(&format!("labs/{lab}"));
        let mut yaml = format!(
            "lab: {lab}\ncoordinator:\n  url: {}\n  ca: {b}/ca.pem\n  cert: {b}/agent.pem\n  key: {b}/agent.key\nstate_dir: {b}/state\n{extra}devices:\n",
            self.url(),
            b = bundle.display()
        );
        for (name, argv, tags) in devices {
            let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
            let tags: Vec<String> = tags.iter().map(|a| format!("{a:?}")).collect();
            yaml.push_str(&format!(
                "  - name: {name}\n    device_type: lab-host\n    tags: [{}]\n    driver:\n      type: shell\n      command: [{}]\n",
                tags.join(", "),
                argv.join(", ")
            ));
        }
        let path = bundle.join("agent.yaml");
        std::fs::write(&path, yaml).expect("write agent config");
        path
    }

    /// Starts an agent with a config written by [`Rig::agent_config`].
    pub fn start_agent(&self, lab: &str) -> Proc {
        let bundle = self.path(&format!("labs/{lab}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("agent-{lab}.log")))
            .expect("log");
        let child = Command::new(AGENT)
            .args(["run", "--config"])
            .arg(bundle.join("agent.yaml"))
            .env("LABWIRE_LOG", "info,labwire_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        Proc {
            child,
            name: format!("agent {lab}"),
        }
    }

    /// A client with the admin token.
    pub async fn client(&self) -> Clients {
        self.client_with(&self.admin_token).await
    }

    pub async fn client_with(&self, token: &str) -> Clients {
        self.connect(&self.url(), token).await
    }

    async fn connect(&self, url: &str, token: &str) -> Clients {
        let ca = std::fs::read(self.path("coordinator/pki/ca.pem")).expect("ca");
        labwire::client::connect(url, &ca, token)
            .await
            .expect("connect client")
    }

    /// A raw agent-service client with a lab's certificate (or none).
    pub async fn agent_client(
        &self,
        bundle: Option<&Path>,
    ) -> Result<AgentServiceClient<Channel>, tonic::transport::Error> {
        agent_client_to(&self.url(), &self.path("coordinator/pki/ca.pem"), bundle).await
    }

    /// Starts another coordinator replica named `name` on `port`: the rig's config with only
    /// the gRPC port changed (the same `data_dir`, hence the same CA, server certificate and
    /// store), logging to `coordinator-{name}.log`; waits until its port is open.
    pub fn start_replica(&self, name: &str, port: u16) -> Proc {
        let a = std::fs::read_to_string(self.path("coordinator.yaml")).expect("A's config");
        let cfg = a.replace(
            &format!("127.0.0.1:{}", self.port),
            &format!("127.0.0.1:{port}"),
        );
        assert_ne!(cfg, a, "the rig's config names its port");
        let cfg_path = self.path(&format!("coordinator-{name}.yaml"));
        std::fs::write(&cfg_path, cfg).expect("write the replica's config");
        self.serve(&cfg_path, &format!("coordinator-{name}"), None)
    }

    /// A client with the admin token, to the replica on `port`.
    pub async fn client_at(&self, port: u16) -> Clients {
        self.connect(&format!("https://127.0.0.1:{port}"), &self.admin_token)
            .await
    }

    /// Points `lab`'s agent config at several replicas, in order (`coordinator.urls`).
    pub fn agent_urls(&self, lab: &str, urls: &[String]) {
        let path = self.path(&format!("labs/{lab}/agent.yaml"));
        let text = std::fs::read_to_string(&path).expect("agent config");
        let one = format!("  url: {}\n", self.url());
        assert!(text.contains(&one), "{text}");
        std::fs::write(
            &path,
            text.replace(&one, &format!("  urls: [{}]\n", urls.join(", "))),
        )
        .expect("write agent config");
    }

    /// Prints the logs when the test fails (the folder itself is kept then, see `Drop`).
    pub fn keep_on_failure(&self) -> KeepOnPanic {
        KeepOnPanic(self.dir.path().to_path_buf())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
        }
    }
}

/// Prints the rig folder and its logs if the test panics.
pub struct KeepOnPanic(PathBuf);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; logs in {}", self.0.display());
            for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(60).collect();
                    eprintln!("--- {} (last lines) ---", p.display());
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

pub async fn agent_client_to(
    url: &str,
    ca: &Path,
    bundle: Option<&Path>,
) -> Result<AgentServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")));
    if let Some(b) = bundle {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(b.join("agent.pem")).expect("cert"),
            std::fs::read(b.join("agent.key")).expect("key"),
        ));
    }
    let ch = Channel::from_shared(url.to_string())
        .expect("url")
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(AgentServiceClient::new(ch))
}

pub fn wait_for(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

/// A shell job's spec: the job `name` for a device with all of `tags`, with `params`.
pub fn shell_spec(name: &str, tags: &[&str], params: &[(&str, &str)], timeout: u32) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        criteria: Some(v1::Criteria {
            driver: "shell".into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        timeout_seconds: timeout,
        ..Default::default()
    }
}

/// Submits a job (under `parent`, 0 for none) and returns its node id.
pub async fn submit_spec_under(c: &mut Clients, spec: v1::JobSpec, parent: i64) -> i64 {
    c.nodes
        .submit_job(v1::SubmitJobRequest {
            spec: Some(spec),
            parent,
            submitter: "e2e".into(),
        })
        .await
        .expect("submit")
        .into_inner()
        .node
        .expect("node")
        .id
}

/// Submits a job with no parent and returns its node id.
pub async fn submit_spec(c: &mut Clients, spec: v1::JobSpec) -> i64 {
    submit_spec_under(c, spec, 0).await
}

/// Submits a shell job with tags and params.
pub async fn submit(c: &mut Clients, name: &str, tags: &[&str], params: &[(&str, &str)]) -> i64 {
    submit_spec(c, shell_spec(name, tags, params, 120)).await
}

/// Polls a node until `pred` holds (at most `within`).
pub async fn wait_node(
    c: &mut Clients,
    id: i64,
    within: Duration,
    pred: impl Fn(&v1::Node) -> bool,
) -> v1::Node {
    let end = Instant::now() + within;
    loop {
        let n = c
            .nodes
            .get_node(v1::GetNodeRequest { id })
            .await
            .expect("get node")
            .into_inner();
        if pred(&n) {
            return n;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting on node {id}: {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn is_done(n: &v1::Node) -> bool {
    n.state == v1::NodeState::Done as i32
}

pub fn data(n: &v1::Node) -> serde_json::Map<String, serde_json::Value> {
    n.data
        .as_ref()
        .map(labwire_proto::convert::struct_to_map)
        .unwrap_or_default()
}

pub async fn read_log(c: &mut Clients, job: i64) -> String {
    let mut s = c
        .nodes
        .get_log(v1::GetLogRequest { job, attempt: -1 })
        .await
        .expect("get log")
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.message().await.expect("log chunk") {
        out.extend_from_slice(&chunk.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Names the steps of a scenario test, so that a failure says which check broke: each
/// [`Steps::at`] prints the step it enters, and when the test panics the step it was in is
/// printed last ("step failed: ...").
pub struct Steps {
    current: String,
}

impl Steps {
    /// A scenario with no step entered yet.
    pub fn new() -> Steps {
        Steps {
            current: "set-up".into(),
        }
    }

    /// Enters the step `name`.
    pub fn at(&mut self, name: &str) {
        eprintln!("-- step: {name}");
        self.current = name.to_string();
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("!! step failed: {}", self.current);
        }
    }
}
