//! The PULL_LABS results callback, built from a finished labwire job the way kernelci-core's
//! `kernelci/runtime/pull_labs.py` `Callback` reads it (commit 69a285e):
//!
//! - `tests`: one entry per KernelCI test id, `{status, subtests}`; a `boot` test's status is
//!   the boot and login (`setup`: `kernel-boot`, `login`), another test's the exit statuses
//!   of its own commands (`command-N`). Suites the log parsers found (KTAP, ...) follow
//!   under their own names, nested as `subtests`. Statuses are `pass`, `fail`, `skip` and
//!   `error` (a test that did not finish, which KernelCI reads as `incomplete`);
//! - `summary`: `total`, `passed`, `failed`, `skipped`, `errors` over the leaf tests
//!   (KernelCI reads `total` and `failed`: none ran is incomplete, any failure is fail);
//! - an infrastructure failure (a lab problem: power, console, downloads, a lease lost, a
//!   cancel) sets `error_code` and `error_msg` at the top and in `metadata`, so KernelCI
//!   records an incomplete job, not a kernel failure; what may be the kernel's fault (a
//!   panic, no boot, no login, a test past its time) stays a test failure;
//! - `metadata.system` is `LAB/DEVICE`; `artifacts.log` is the console log, gzipped and
//!   base64-encoded behind `base64:`.

use crate::model::{Node, NodeId};
use crate::store::kernelci::KciJob;
use base64::Engine;
use labwire_common::{ErrorCode, NodeResult};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::io::Write as _;

/// Logs longer than this are cut to their first and last halves of it.
pub(crate) const MAX_LOG_BYTES: usize = 64 << 20;

fn status(r: Option<NodeResult>) -> &'static str {
    match r {
        Some(NodeResult::Pass) => "pass",
        Some(NodeResult::Fail) => "fail",
        Some(NodeResult::Skip) => "skip",
        Some(NodeResult::Incomplete) | None => "error",
    }
}

/// Whether an error code is the lab's problem rather than possibly the kernel's.
pub(crate) fn infrastructure(code: &str) -> bool {
    !matches!(
        ErrorCode::from(code),
        ErrorCode::KernelPanic
            | ErrorCode::BootTimeout
            | ErrorCode::LoginFailed
            | ErrorCode::TestTimeout
    )
}

struct Tree<'a> {
    children: HashMap<NodeId, Vec<&'a Node>>,
}

impl<'a> Tree<'a> {
    fn new(nodes: &'a [Node]) -> Self {
        let mut children: HashMap<NodeId, Vec<&Node>> = HashMap::new();
        for n in nodes {
            if let Some(p) = n.parent {
                children.entry(p).or_default().push(n);
            }
        }
        Tree { children }
    }

    fn of(&self, id: NodeId) -> &[&'a Node] {
        self.children.get(&id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// A node as a callback test: `{status}` for a leaf, with `subtests` for a group.
    fn test(&self, n: &Node) -> Value {
        let mut t = Map::new();
        t.insert("status".into(), status(n.result).into());
        let kids = self.of(n.id);
        if !kids.is_empty() {
            t.insert("subtests".into(), self.tests(kids));
        }
        if let Some(e) = n.data.get("error_msg").and_then(Value::as_str) {
            t.insert("error_msg".into(), e.into());
        }
        Value::Object(t)
    }

    fn tests(&self, nodes: &[&Node]) -> Value {
        Value::Object(
            nodes
                .iter()
                .map(|n| (n.name.clone(), self.test(n)))
                .collect(),
        )
    }
}

fn count(tests: &Map<String, Value>, totals: &mut [u64; 5]) {
    for t in tests.values() {
        match t.get("subtests").and_then(Value::as_object) {
            Some(sub) if !sub.is_empty() => count(sub, totals),
            _ => {
                totals[0] += 1;
                let i = match t.get("status").and_then(Value::as_str) {
                    Some("pass") => 1,
                    Some("fail") => 2,
                    Some("skip") => 3,
                    _ => 4,
                };
                totals[i] += 1;
            }
        }
    }
}

/// The log as KernelCI's callback parser takes it: `base64:` + gzip.
pub(crate) fn encode_log(log: &[u8]) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let cut;
    let log = if log.len() > MAX_LOG_BYTES {
        let half = MAX_LOG_BYTES / 2;
        let mut v = log[..half].to_vec();
        v.extend_from_slice(
            format!(
                "\n[labwire: {} bytes of the log left out here]\n",
                log.len() - 2 * half
            )
            .as_bytes(),
        );
        v.extend_from_slice(&log[log.len() - half..]);
        cut = v;
        cut.as_slice()
    } else {
        log
    };
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(log);
    let bytes = gz.finish().unwrap_or_default();
    format!(
        "base64:{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The callback for a job this installation refused (its definition could not be used).
pub(crate) fn refused(k: &KciJob, public_url: &str) -> Value {
    let msg = k.refusal.clone().unwrap_or_default();
    json!({
        "summary": {"total": 0, "passed": 0, "failed": 0, "skipped": 0, "errors": 0},
        "tests": {},
        "error_code": ErrorCode::InvalidJob.as_str(),
        "error_msg": msg,
        "metadata": {
            "error_code": ErrorCode::InvalidJob.as_str(),
            "runtime": k.runtime,
            "labwire": {"coordinator": public_url},
        },
        "artifacts": {},
    })
}

/// The callback for a finished labwire job: its node, its result tree and its log.
pub(crate) fn finished(
    k: &KciJob,
    job: &Node,
    tree: &[Node],
    log: &[u8],
    public_url: &str,
) -> Value {
    let t = Tree::new(tree);
    let top = t.of(job.id);
    let group = |name: &str| top.iter().find(|n| n.name == name).copied();
    let setup = group("setup");
    let commands: HashMap<&str, &Node> = group("commands")
        .map(|g| t.of(g.id).iter().map(|n| (n.name.as_str(), *n)).collect())
        .unwrap_or_default();
    let mut tests = Map::new();
    let plan = job
        .data
        .get("kernelci")
        .and_then(|k| k.get("tests"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for p in &plan {
        let id = p
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("test")
            .to_string();
        let range = p.get("commands").and_then(Value::as_array);
        let first = range
            .and_then(|r| r.first())
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let last = range
            .and_then(|r| r.get(1))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let entry = if first > last {
            // No commands: the boot and the login are the test.
            match setup {
                Some(s) => {
                    let mut v = t.test(s);
                    let kids = t.of(s.id);
                    let r = NodeResult::aggregate(
                        kids.iter()
                            .map(|n| n.result.unwrap_or(NodeResult::Incomplete)),
                    );
                    v["status"] = status(Some(if kids.is_empty() {
                        NodeResult::Incomplete
                    } else {
                        r
                    }))
                    .into();
                    v
                }
                None => json!({"status": "error"}),
            }
        } else {
            let mut sub = Map::new();
            let mut results = Vec::new();
            for i in first..=last {
                let name = format!("command-{i}");
                let v = match commands.get(name.as_str()) {
                    Some(n) => {
                        results.push(n.result.unwrap_or(NodeResult::Incomplete));
                        t.test(n)
                    }
                    None => {
                        results.push(NodeResult::Incomplete);
                        json!({"status": "error", "error_msg": "did not run"})
                    }
                };
                sub.insert(name, v);
            }
            json!({"status": status(Some(NodeResult::aggregate(results))), "subtests": sub})
        };
        tests.insert(id, entry);
    }
    for n in top
        .iter()
        .filter(|n| n.name != "setup" && n.name != "commands")
    {
        let name = if tests.contains_key(&n.name) {
            format!("labwire.{}", n.name)
        } else {
            n.name.clone()
        };
        tests.insert(name, t.test(n));
    }
    let mut totals = [0u64; 5];
    count(&tests, &mut totals);
    let text = |key: &str| {
        job.data
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let system = match (text("lab"), text("device")) {
        (Some(l), Some(d)) => format!("{l}/{d}"),
        (Some(l), None) => l,
        _ => String::new(),
    };
    let mut metadata = json!({
        "system": system,
        "runtime": k.runtime,
        "labwire": {
            "coordinator": public_url,
            "job": job.id.0,
            "result": job.result.map(|r| r.as_str()),
            "retry_counter": job.retry_counter,
        },
    });
    let mut out = json!({
        "summary": {"total": totals[0], "passed": totals[1], "failed": totals[2],
                    "skipped": totals[3], "errors": totals[4]},
        "tests": tests,
        "artifacts": {"log": encode_log(log)},
    });
    if job.result == Some(NodeResult::Incomplete) {
        let code =
            text("error_code").unwrap_or_else(|| ErrorCode::Infrastructure.as_str().to_string());
        if infrastructure(&code) {
            let msg = text("error_msg").unwrap_or_default();
            out["error_code"] = code.clone().into();
            out["error_msg"] = msg.into();
            metadata["error_code"] = code.into();
        }
    }
    out["metadata"] = metadata;
    out
}

#[cfg(test)]
mod tests;
