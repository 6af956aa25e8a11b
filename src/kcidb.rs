//! `labwire export kcidb`: checkouts, their builds and their tests as one KCIDB I/O document
//! (schema v5.3, what `kcidb_io.schema.LATEST` validates). Ids are `ORIGIN:NODE_ID`; test
//! paths are the names from the job down, joined with dots; statuses come from result and
//! error code ([`status`]). A job is a KCIDB test of a build, so only jobs below a `kbuild`
//! node are exported; the others are counted and named on standard error.

use chrono::{DateTime, Utc};
use labwire_common::{ErrorCode, NodeResult};
use labwire_coordinator::model::{Node, NodeId, NodeKind, NodeState};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// The KCIDB schema version written.
pub const VERSION: (u32, u32) = (5, 3);

/// Error codes of failures where the test never ran: KCIDB `MISS`. Other incomplete results
/// are `ERROR` (the test started and did not complete). Codes are compared as
/// [`ErrorCode`]s, so the old spelling `canceled` is MISS too.
pub const MISS_CODES: &[ErrorCode] = &[
    ErrorCode::Cancelled,
    ErrorCode::NodeTimeout,
    ErrorCode::LeaseExpired,
    ErrorCode::AgentRestart,
    ErrorCode::DownloadFailed,
    ErrorCode::DeployFailed,
    ErrorCode::PowerFailed,
    ErrorCode::ConsoleLost,
    ErrorCode::PlaceUnavailable,
    ErrorCode::SubmitError,
    ErrorCode::InvalidJobParams,
];

/// Export settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The KCIDB origin (`^[a-z0-9_]+$`).
    pub origin: String,
    /// The coordinator's HTTP base URL, to make log links absolute (`/logs/..` artifacts).
    pub http_base: Option<String>,
}

/// What [`export`] left out.
#[derive(Debug, Default)]
pub struct Skipped {
    /// Jobs with no `kbuild` above them (KCIDB tests need a build).
    pub jobs_without_build: Vec<NodeId>,
}

/// Checks an origin name.
pub fn check_origin(o: &str) -> anyhow::Result<()> {
    if o.is_empty()
        || !o
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        anyhow::bail!("--origin `{o}` must be lowercase letters, digits and `_`");
    }
    Ok(())
}

/// The KCIDB status of a finished node: PASS, FAIL, SKIP; `incomplete` is MISS for the
/// error codes in [`MISS_CODES`] and ERROR otherwise; done without a result is DONE. A node
/// that is not done has no status yet.
pub fn status(n: &Node) -> Option<&'static str> {
    if n.state != NodeState::Done {
        return None;
    }
    Some(match n.result {
        Some(NodeResult::Pass) => "PASS",
        Some(NodeResult::Fail) => "FAIL",
        Some(NodeResult::Skip) => "SKIP",
        Some(NodeResult::Incomplete) => match n.error_code() {
            Some(c) if MISS_CODES.contains(&ErrorCode::parse(c)) => "MISS",
            _ => "ERROR",
        },
        None => "DONE",
    })
}

/// A node name as one KCIDB path element (`[a-zA-Z0-9_-]+`; anything else becomes `_`).
pub fn path_element(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn duration(n: &Node) -> Option<f64> {
    (n.state == NodeState::Done)
        .then(|| (n.updated - n.created).num_microseconds())
        .flatten()
        .map(|us| us.max(0) as f64 / 1e6)
}

fn text<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    n.data
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl Options {
    fn id(&self, n: NodeId) -> String {
        format!("{}:{}", self.origin, n)
    }

    /// An artifact as an absolute URL, if it can be one.
    fn url(&self, v: &str) -> Option<String> {
        if v.starts_with("https://") || v.starts_with("http://") {
            Some(v.to_string())
        } else if v.starts_with('/') {
            self.http_base
                .as_ref()
                .map(|b| format!("{}{v}", b.trim_end_matches('/')))
        } else {
            None
        }
    }

    fn misc(&self, n: &Node) -> Value {
        let mut m = Map::new();
        m.insert("node_id".into(), n.id.0.into());
        for k in ["error_code", "error_msg"] {
            if let Some(v) = text(n, k) {
                m.insert(k.into(), v.into());
            }
        }
        Value::Object(m)
    }
}

/// One checkout and its descendants as KCIDB objects, added to `out`.
pub fn add_checkout(
    opts: &Options,
    checkout: &Node,
    nodes: &[Node],
    out: &mut Document,
    skipped: &mut Skipped,
) {
    let rev = checkout
        .data
        .get("kernel_revision")
        .cloned()
        .unwrap_or_default();
    let rv = |k: &str| rev.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let mut c = json!({
        "id": opts.id(checkout.id),
        "origin": opts.origin,
        "start_time": time(checkout.created),
        "misc": opts.misc(checkout),
    });
    if let Some(v) = rv("tree") {
        c["tree_name"] = v.into();
    }
    if let Some(v) = rv("url") {
        c["git_repository_url"] = v.into();
    }
    if let Some(v) = rv("branch") {
        c["git_repository_branch"] = v.into();
    }
    if let Some(v) = rv("commit").filter(|h| {
        h.len() == 40
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }) {
        c["git_commit_hash"] = v.into();
    }
    if let Some(v) = rv("describe") {
        c["git_commit_name"] = v.into();
    }
    match checkout.result {
        Some(NodeResult::Pass) => c["valid"] = true.into(),
        Some(NodeResult::Fail | NodeResult::Incomplete) => c["valid"] = false.into(),
        _ => {}
    }
    out.checkouts.push(c);

    let by_id: HashMap<NodeId, &Node> = nodes.iter().map(|n| (n.id, n)).collect();
    // The nearest kbuild above a node, and the job it belongs to.
    let ancestor = |n: &Node, kind: NodeKind| -> Option<&Node> {
        let mut p = n.parent;
        while let Some(id) = p {
            let a = by_id.get(&id)?;
            if a.kind == kind {
                return Some(a);
            }
            p = a.parent;
        }
        None
    };
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.id);
    for n in sorted {
        match n.kind {
            NodeKind::Kbuild => {
                let mut b = json!({
                    "id": opts.id(n.id),
                    "checkout_id": opts.id(checkout.id),
                    "origin": opts.origin,
                    "start_time": time(n.created),
                    "comment": n.name,
                    "misc": opts.misc(n),
                });
                if let Some(s) = status(n) {
                    b["status"] = s.into();
                }
                if let Some(d) = duration(n) {
                    b["duration"] = d.into();
                }
                if let Some(a) = text(n, "arch").filter(|a| {
                    a.bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
                }) {
                    b["architecture"] = a.into();
                }
                if let Some(v) = text(n, "compiler") {
                    b["compiler"] = v.into();
                }
                if let Some(v) = text(n, "config").or_else(|| text(n, "defconfig")) {
                    b["config_name"] = v.into();
                }
                if let Some(u) = ["build_log", "log"]
                    .iter()
                    .find_map(|k| n.artifacts.get(*k).and_then(|v| opts.url(v)))
                {
                    b["log_url"] = u.into();
                }
                out.builds.push(b);
            }
            NodeKind::Job | NodeKind::Test => {
                let job = if n.kind == NodeKind::Job {
                    Some(n)
                } else {
                    ancestor(n, NodeKind::Job)
                };
                let Some(job) = job else { continue };
                let Some(build) = ancestor(job, NodeKind::Kbuild) else {
                    if n.kind == NodeKind::Job {
                        skipped.jobs_without_build.push(n.id);
                    }
                    continue;
                };
                // The path: names from the job down.
                let mut names = vec![path_element(&n.name)];
                let mut p = n.parent;
                while n.kind != NodeKind::Job
                    && let Some(id) = p
                {
                    let Some(a) = by_id.get(&id) else { break };
                    names.push(path_element(&a.name));
                    if a.id == job.id {
                        break;
                    }
                    p = a.parent;
                }
                names.reverse();
                let mut t = json!({
                    "id": opts.id(n.id),
                    "build_id": opts.id(build.id),
                    "origin": opts.origin,
                    "path": names.join("."),
                    "start_time": time(n.created),
                    "misc": opts.misc(n),
                });
                if let Some(s) = status(n) {
                    t["status"] = s.into();
                }
                if let Some(d) = duration(n) {
                    t["duration"] = d.into();
                }
                if let Some(u) = job.artifacts.get("log").and_then(|v| opts.url(v)) {
                    t["log_url"] = u.into();
                }
                let place: Vec<String> = ["lab", "device", "device_type"]
                    .iter()
                    .filter_map(|k| text(job, k).map(|v| format!("{k} {v}")))
                    .collect();
                if !place.is_empty() {
                    let mut misc = Map::new();
                    for k in ["lab", "device", "device_type"] {
                        if let Some(v) = text(job, k) {
                            misc.insert(k.into(), v.into());
                        }
                    }
                    t["environment"] = json!({"comment": place.join(", "), "misc": misc});
                }
                out.tests.push(t);
            }
            _ => {}
        }
    }
}

/// A KCIDB document being built.
#[derive(Debug, Default)]
pub struct Document {
    /// Checkouts.
    pub checkouts: Vec<Value>,
    /// Builds.
    pub builds: Vec<Value>,
    /// Tests.
    pub tests: Vec<Value>,
}

impl Document {
    /// The JSON document.
    pub fn to_json(&self) -> Value {
        json!({
            "version": {"major": VERSION.0, "minor": VERSION.1},
            "checkouts": self.checkouts,
            "builds": self.builds,
            "tests": self.tests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i64, kind: NodeKind, name: &str, parent: Option<i64>) -> Node {
        let t = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 1, 1, 0, 0, 0).unwrap();
        Node {
            id: NodeId(id),
            kind,
            name: name.into(),
            path: vec![],
            group: None,
            parent: parent.map(NodeId),
            state: NodeState::Done,
            result: Some(NodeResult::Pass),
            artifacts: Default::default(),
            data: Map::new(),
            created: t,
            updated: t + chrono::Duration::milliseconds(1500),
            timeout: None,
            holdoff: None,
            owner: String::new(),
            submitter: String::new(),
            treeid: "1".into(),
            retry_counter: 0,
        }
    }

    #[test]
    fn statuses() {
        let mut n = node(1, NodeKind::Test, "t", None);
        assert_eq!(status(&n), Some("PASS"));
        n.result = Some(NodeResult::Fail);
        assert_eq!(status(&n), Some("FAIL"));
        n.result = Some(NodeResult::Skip);
        assert_eq!(status(&n), Some("SKIP"));
        n.result = None;
        assert_eq!(status(&n), Some("DONE"));
        n.result = Some(NodeResult::Incomplete);
        assert_eq!(status(&n), Some("ERROR"));
        n.data.insert("error_code".into(), "kernel_panic".into());
        assert_eq!(status(&n), Some("ERROR"));
        n.data.insert("error_code".into(), "cancelled".into());
        assert_eq!(status(&n), Some("MISS"));
        // What agents before the ErrorCode type wrote for a job cancelled on LAVA.
        n.data.insert("error_code".into(), "canceled".into());
        assert_eq!(status(&n), Some("MISS"));
        n.data.insert(
            "error_code".into(),
            ErrorCode::PlaceUnavailable.as_str().into(),
        );
        assert_eq!(status(&n), Some("MISS"));
        n.state = NodeState::Running;
        assert_eq!(status(&n), None);
    }

    #[test]
    fn paths_ids_and_skips() {
        let opts = Options {
            origin: "labwire".into(),
            http_base: Some("https://ci.example:8443/".into()),
        };
        let checkout = node(1, NodeKind::Checkout, "checkout", None);
        let mut job = node(3, NodeKind::Job, "kunit x86", Some(2));
        job.artifacts.insert("log".into(), "/logs/3/1".into());
        job.data.insert("lab".into(), "lab-a".into());
        let nodes = vec![
            node(2, NodeKind::Kbuild, "kbuild-gcc", Some(1)),
            job,
            node(4, NodeKind::Test, "exec", Some(3)),
            node(5, NodeKind::Test, "test.one", Some(4)),
            node(6, NodeKind::Job, "orphan", Some(1)),
        ];
        let mut doc = Document::default();
        let mut skipped = Skipped::default();
        add_checkout(&opts, &checkout, &nodes, &mut doc, &mut skipped);
        assert_eq!(skipped.jobs_without_build, vec![NodeId(6)]);
        assert_eq!(doc.builds[0]["checkout_id"], "labwire:1");
        let paths: Vec<&str> = doc
            .tests
            .iter()
            .map(|t| t["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            vec!["kunit_x86", "kunit_x86.exec", "kunit_x86.exec.test_one"]
        );
        assert_eq!(doc.tests[2]["build_id"], "labwire:2");
        assert_eq!(doc.tests[2]["log_url"], "https://ci.example:8443/logs/3/1");
        assert_eq!(doc.tests[0]["duration"], 1.5);
        assert_eq!(doc.tests[0]["environment"]["misc"]["lab"], "lab-a");
        assert!(check_origin("Lab-Wire").is_err());
    }
}
