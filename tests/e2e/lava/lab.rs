//! The LAVA test lab (tests/lava/server.sh): lava-server, a real lava-dispatcher worker, the
//! QEMU device type and the scripted serial board; an HTTP server for the jobs' artifacts;
//! an agent configured for the lab; helpers to read what LAVA and the coordinator say.

use crate::common::*;
use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use labwire_agent::lava::client::{JobStatus, LavaClient};
use labwire_agent::lava::config::{LavaConfig, Secret};
use labwire_proto::v1;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVER_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lava/server.sh");
/// The lab admin's job templates (the scripted serial board's).
pub const TEMPLATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lava/templates");

/// A running LAVA lab, stopped when dropped (its folder and logs kept if the test failed).
pub struct LavaLab {
    dir: tempfile::TempDir,
    pub url: String,
    pub token: String,
    /// The scripted board's state folder (`power-broken` there breaks its power switch).
    pub board_state: PathBuf,
}

impl LavaLab {
    pub fn start() -> LavaLab {
        let dir = tempfile::Builder::new()
            .prefix("labwire-lava-")
            .tempdir()
            .expect("tempdir");
        // PostgreSQL runs as its own user: it must reach the folder.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = Command::new("bash")
            .arg(SERVER_SH)
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("run tests/lava/server.sh");
        assert!(
            out.status.success(),
            "could not start the LAVA lab (did scripts/setup.d/20-lava.sh and 25-lava-dispatcher.sh run?): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.path().join("server.env")).expect("server.env");
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing in server.env"))
                .to_string()
        };
        LavaLab {
            url: get("URL"),
            token: get("TOKEN"),
            board_state: PathBuf::from(get("BOARD_STATE")),
            dir,
        }
    }

    pub fn config(&self) -> LavaConfig {
        let yaml = format!(
            "name: test\nurl: {}\ntoken: {}\npoll: 300ms\npoll_max: 2s\nrefresh: 2s\n",
            self.url, self.token
        );
        yaml_serde::from_str(&yaml).expect("lava config")
    }

    pub fn client(&self) -> LavaClient {
        LavaClient::with_token(&self.config(), Secret(self.token.clone())).expect("client")
    }

    /// Waits until LAVA's job `id` satisfies `pred`.
    pub async fn wait(
        &self,
        id: i64,
        within: Duration,
        pred: impl Fn(&JobStatus) -> bool,
    ) -> JobStatus {
        let client = self.client();
        let end = Instant::now() + within;
        loop {
            let s = client.job(id).await.expect("job status");
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < end, "LAVA job {id} stuck: {s:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for LavaLab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SERVER_SH)
            .arg("stop")
            .arg(self.dir.path())
            .status();
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "LAVA lab logs kept in {} (worker.log, scheduler.log, gunicorn.log, board/console.log; job logs under media/)",
                self.dir.path().display()
            );
        }
    }
}

/// Builds (or reuses) the QEMU test board of tests/board/: kernel and initramfs.
pub fn board_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var("LABWIRE_BOARD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache/labwire/board")
        });
    let st = Command::new(repo.join("tests/board/build.sh"))
        .arg(&dir)
        .status()
        .expect("run tests/board/build.sh");
    assert!(st.success(), "building the test board failed");
    dir
}

struct Files {
    kernel: Vec<u8>,
    ramdisk: Vec<u8>,
}

/// Serves the board's kernel and ramdisk on 127.0.0.1 (`/board/vmlinuz`,
/// `/board/initramfs.cpio.gz`) and a kernel that the server says exists but does not hand
/// out (`/flaky/vmlinuz`: HEAD 200, GET 404): LAVA's download then fails after its
/// validation passed, which LAVA calls an infrastructure error. Returns the base URL.
pub async fn artifact_server(board: &Path) -> String {
    let files = Arc::new(Files {
        kernel: std::fs::read(board.join("vmlinuz")).expect("vmlinuz"),
        ramdisk: std::fs::read(board.join("initramfs.cpio.gz")).expect("initramfs"),
    });
    async fn kernel(State(f): State<Arc<Files>>) -> Response {
        f.kernel.clone().into_response()
    }
    async fn ramdisk(State(f): State<Arc<Files>>) -> Response {
        f.ramdisk.clone().into_response()
    }
    async fn flaky(method: Method, State(f): State<Arc<Files>>) -> Response {
        if method == Method::HEAD {
            (
                [(header::CONTENT_LENGTH, f.kernel.len().to_string())],
                StatusCode::OK,
            )
                .into_response()
        } else {
            StatusCode::NOT_FOUND.into_response()
        }
    }
    let app = Router::new()
        .route("/board/vmlinuz", get(kernel))
        .route("/board/initramfs.cpio.gz", get(ramdisk))
        .route("/flaky/vmlinuz", get(flaky))
        .with_state(files);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Writes the agent config of `lab` for the LAVA lab (instance `test`, LAVA's callbacks on
/// a free loopback port, the scripted board's template from [`TEMPLATES`]) plus `extra`
/// keys of the `lava:` entry, and returns its path.
pub fn lava_agent(rig: &Rig, lab: &str, server: &LavaLab, extra: &str) -> PathBuf {
    let bundle = rig.issue_lab(lab);
    let token_file = bundle.join("lava.token");
    std::fs::write(&token_file, format!("{}\n", server.token)).unwrap();
    let yaml = format!(
        r#"lab: {lab}
coordinator:
  url: {url}
  ca: {b}/ca.pem
  cert: {b}/agent.pem
  key: {b}/agent.key
state_dir: {b}/state
lava:
  - name: test
    url: {lava}
    token_file: {t}
    refresh: 2s
    templates_dir: {templates}
    boot_methods: {{labwire-serial-board: serial-board}}
    notify: {{listen: "127.0.0.1:0"}}
    device_type_settings:
      qemu:
        prompts: ["root@labwire-board:"]
        kernel_args: "console=ttyS0,115200 labwire.cols=250"
        login: {{username: root, password: labwire}}
      labwire-serial-board:
        prompts: ["root@labwire-serial:"]
        login: {{username: root, password: labwire}}
{extra}"#,
        url = rig.url(),
        b = bundle.display(),
        lava = server.url,
        t = token_file.display(),
        templates = TEMPLATES,
    );
    let path = bundle.join("agent.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A job for LAVA device type `device_type` running `commands`.
pub fn lava_spec(name: &str, device_type: &str, commands: &[&str]) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        criteria: Some(v1::Criteria {
            driver: "lava".into(),
            device_type: device_type.into(),
            ..Default::default()
        }),
        commands: commands.iter().map(|s| s.to_string()).collect(),
        timeout_seconds: 600,
        ..Default::default()
    }
}

/// A qemu job booting the board's kernel and ramdisk from `artifacts`.
pub fn qemu_spec(name: &str, artifacts: &str, commands: &[&str]) -> v1::JobSpec {
    let mut s = lava_spec(name, "qemu", commands);
    for (role, file) in [("kernel", "vmlinuz"), ("ramdisk", "initramfs.cpio.gz")] {
        s.artifacts.insert(
            role.to_string(),
            v1::Artifact {
                url: format!("{artifacts}/board/{file}"),
                sha256: String::new(),
            },
        );
    }
    s
}

/// The LAVA job the agent submitted for attempt `attempt` of a labwire job.
pub fn lava_job_of(state: &Path, job: i64, attempt: i32) -> Option<i64> {
    let text =
        std::fs::read_to_string(state.join(format!("jobs/{job}-{attempt}/lava.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["lava_job"].as_i64()
}

/// A node's children, in the coordinator's order.
pub async fn children(c: &mut labwire::client::Clients, parent: i64) -> Vec<v1::Node> {
    c.nodes
        .query_nodes(v1::QueryNodesRequest {
            parent,
            limit: 500,
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .nodes
}

/// The child of `parent` named `name`.
pub async fn child(c: &mut labwire::client::Clients, parent: i64, name: &str) -> v1::Node {
    let kids = children(c, parent).await;
    let names: Vec<String> = kids.iter().map(|n| n.name.clone()).collect();
    kids.into_iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no test `{name}` under node {parent}: {names:?}"))
}

/// The names of a node's children, in order.
pub async fn child_names(c: &mut labwire::client::Clients, parent: i64) -> Vec<String> {
    children(c, parent)
        .await
        .into_iter()
        .map(|n| n.name)
        .collect()
}

/// The result of a node as its enum.
pub fn result(n: &v1::Node) -> v1::NodeResult {
    v1::NodeResult::try_from(n.result).unwrap_or(v1::NodeResult::Unspecified)
}

/// A checkout with a passed build under it, for jobs that the KCIDB export takes.
pub async fn build_node(c: &mut labwire::client::Clients) -> i64 {
    let create = |node: v1::Node| {
        let mut c = c.nodes.clone();
        async move {
            c.create_node(v1::CreateNodeRequest { node: Some(node) })
                .await
                .expect("create node")
                .into_inner()
                .node
                .unwrap()
                .id
        }
    };
    let data = |j: serde_json::Value| {
        Some(labwire_proto::convert::map_to_struct(
            j.as_object().unwrap(),
        ))
    };
    let checkout = create(v1::Node {
        kind: v1::NodeKind::Checkout as i32,
        name: "checkout".into(),
        state: v1::NodeState::Available as i32,
        data: data(
            serde_json::json!({"kernel_revision": {"tree": "mainline", "branch": "master",
            "url": "https://git.example.org/linux.git",
            "commit": "0123456789abcdef0123456789abcdef01234567"}}),
        ),
        ..Default::default()
    })
    .await;
    create(v1::Node {
        kind: v1::NodeKind::Kbuild as i32,
        name: "kbuild-x86".into(),
        parent: checkout,
        state: v1::NodeState::Available as i32,
        result: v1::NodeResult::Pass as i32,
        data: data(serde_json::json!({"arch": "x86_64", "config": "defconfig"})),
        ..Default::default()
    })
    .await
}

/// The KCIDB status `labwire export kcidb` gives job `job`.
pub fn kcidb_status(rig: &Rig, job: i64) -> String {
    let file = rig.path(&format!("kcidb-{job}.json"));
    run_ok(
        Command::new(CLIENT)
            .args(["export", "kcidb", "--since", "1h", "-o"])
            .arg(&file)
            .env("LABWIRE_SERVER", rig.url())
            .env("LABWIRE_CA", rig.path("coordinator/pki/ca.pem"))
            .env("LABWIRE_TOKEN", rig.admin_token.trim()),
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let id = format!("labwire:{job}");
    doc["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("job {job} not in the KCIDB export: {doc}"))["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
