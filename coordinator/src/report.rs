//! The per-checkout summary of the KernelCI e-mail report: the checkout's tree, branch,
//! describe and commit; each job with its result, how many tests it ran and how many failed;
//! then the failing tests by their dotted path. Rendered as plain text or markdown, from the
//! checkout node and its descendants (the `labwire report` command and the mailer share it).

use crate::model::{Node, NodeId, NodeKind, NodeState};
use labwire_common::NodeResult;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write;

/// Output format of a report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Plain text, for e-mail and terminals.
    #[default]
    Text,
    /// Markdown, for issue trackers and chat.
    Markdown,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Format::Text),
            "markdown" | "md" => Ok(Format::Markdown),
            other => Err(format!("`{other}` is not a report format (text, markdown)")),
        }
    }
}

/// One job line of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLine {
    /// The job node.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: NodeState,
    /// Its result, once known.
    pub result: Option<NodeResult>,
    /// `data.error_code`, if any.
    pub error_code: Option<String>,
    /// Where it ran (`data.lab`, `data.device`), when known.
    pub place: Option<String>,
    /// Tests (leaves) under it.
    pub total: usize,
    /// Tests that failed.
    pub failures: usize,
}

/// One failing test of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedTest {
    /// The job it belongs to.
    pub job: String,
    /// Its path below the job, dot-separated (`kunit.example.example_simple_test`).
    pub path: String,
    /// Its result (`fail`).
    pub result: NodeResult,
}

/// The summary of one checkout.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The checkout node.
    pub checkout: NodeId,
    /// Its state.
    pub state: NodeState,
    /// `kernel_revision.tree`.
    pub tree: String,
    /// `kernel_revision.branch`.
    pub branch: String,
    /// `kernel_revision.describe`, when known.
    pub describe: String,
    /// `kernel_revision.commit`.
    pub commit: String,
    /// `kernel_revision.url`.
    pub url: String,
    /// Builds (name, result) under the checkout.
    pub builds: Vec<(String, Option<NodeResult>)>,
    /// Jobs, in id order.
    pub jobs: Vec<JobLine>,
    /// Failing tests, by job then path.
    pub failures: Vec<FailedTest>,
}

fn revision(n: &Node, key: &str) -> String {
    n.data
        .get("kernel_revision")
        .and_then(|r| r.get(key))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string()
}

impl Report {
    /// Builds the report of `checkout` from its descendants (any order; other nodes are
    /// ignored).
    pub fn build(checkout: &Node, descendants: &[Node]) -> Report {
        let mut kids: HashMap<NodeId, Vec<&Node>> = HashMap::new();
        for n in descendants {
            if let Some(p) = n.parent {
                kids.entry(p).or_default().push(n);
            }
        }
        for v in kids.values_mut() {
            v.sort_by_key(|n| n.id);
        }
        let mut builds = Vec::new();
        let mut jobs = Vec::new();
        let mut failures = Vec::new();
        // Walk from the checkout; a job's tests are the leaves below it.
        let mut todo = vec![checkout.id];
        while let Some(id) = todo.pop() {
            for n in kids.get(&id).into_iter().flatten() {
                match n.kind {
                    NodeKind::Kbuild => builds.push((n.name.clone(), n.result)),
                    NodeKind::Job => {
                        let (total, failed) = job_tests(n, &kids, &mut failures);
                        let place = [n.data.get("lab"), n.data.get("device")]
                            .into_iter()
                            .flatten()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join("/");
                        jobs.push(JobLine {
                            id: n.id,
                            name: n.name.clone(),
                            state: n.state,
                            result: n.result,
                            error_code: n.error_code().map(str::to_string),
                            place: (!place.is_empty()).then_some(place),
                            total,
                            failures: failed,
                        });
                        continue;
                    }
                    _ => {}
                }
                todo.push(n.id);
            }
        }
        jobs.sort_by_key(|j| j.id);
        Report {
            checkout: checkout.id,
            state: checkout.state,
            tree: revision(checkout, "tree"),
            branch: revision(checkout, "branch"),
            describe: revision(checkout, "describe"),
            commit: revision(checkout, "commit"),
            url: revision(checkout, "url"),
            builds,
            jobs,
            failures,
        }
    }

    /// A one-line subject, as for the e-mail.
    pub fn subject(&self) -> String {
        let failed = self
            .jobs
            .iter()
            .filter(|j| j.result != Some(NodeResult::Pass))
            .count();
        let what = if self.describe.is_empty() {
            short(&self.commit).to_string()
        } else {
            self.describe.clone()
        };
        format!(
            "[labwire] {}/{} {what}: {} jobs, {failed} not passed, {} failing tests",
            self.tree,
            self.branch,
            self.jobs.len(),
            self.failures.len()
        )
    }

    /// The report in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.text(),
            Format::Markdown => self.markdown(),
        }
    }

    fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Checkout {} ({})", self.checkout, self.state);
        for (k, v) in [
            ("tree", &self.tree),
            ("branch", &self.branch),
            ("describe", &self.describe),
            ("commit", &self.commit),
            ("url", &self.url),
        ] {
            if !v.is_empty() {
                let _ = writeln!(s, "  {k:<9} {v}");
            }
        }
        if !self.builds.is_empty() {
            let _ = writeln!(s, "\nBuilds ({}):", self.builds.len());
            for (name, r) in &self.builds {
                let _ = writeln!(s, "  {name:<40} {}", result(*r));
            }
        }
        let _ = writeln!(s, "\nJobs ({}):", self.jobs.len());
        let _ = writeln!(
            s,
            "  {:<8} {:<32} {:<11} {:>6} {:>8}  NOTE",
            "ID", "JOB", "RESULT", "TOTAL", "FAILURES"
        );
        for j in &self.jobs {
            let _ = writeln!(
                s,
                "  {:<8} {:<32} {:<11} {:>6} {:>8}  {}",
                j.id.0,
                j.name,
                job_result(j),
                j.total,
                j.failures,
                note(j)
            );
        }
        let _ = writeln!(s, "\nFailing tests ({}):", self.failures.len());
        for f in &self.failures {
            let _ = writeln!(s, "  {}: {} {}", f.job, f.path, f.result);
        }
        s
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## Checkout {}: {}/{} {}\n",
            self.checkout,
            md(&self.tree),
            md(&self.branch),
            md(&self.describe)
        );
        let _ = writeln!(s, "| | |\n|---|---|");
        for (k, v) in [
            ("tree", &self.tree),
            ("branch", &self.branch),
            ("describe", &self.describe),
            ("commit", &self.commit),
            ("url", &self.url),
            ("state", &self.state.to_string()),
        ] {
            if !v.is_empty() {
                let _ = writeln!(s, "| {k} | `{}` |", md(v));
            }
        }
        if !self.builds.is_empty() {
            let _ = writeln!(s, "\n### Builds\n\n| build | result |\n|---|---|");
            for (name, r) in &self.builds {
                let _ = writeln!(s, "| {} | {} |", md(name), result(*r));
            }
        }
        let _ = writeln!(
            s,
            "\n### Jobs ({})\n\n| id | job | result | total | failures | note |\n|---|---|---|---:|---:|---|",
            self.jobs.len()
        );
        for j in &self.jobs {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                j.id,
                md(&j.name),
                job_result(j),
                j.total,
                j.failures,
                md(&note(j))
            );
        }
        let _ = writeln!(s, "\n### Failing tests ({})\n", self.failures.len());
        for f in &self.failures {
            let _ = writeln!(s, "- `{}`: `{}` {}", md(&f.job), md(&f.path), f.result);
        }
        s
    }
}

fn job_tests(
    job: &Node,
    kids: &HashMap<NodeId, Vec<&Node>>,
    failures: &mut Vec<FailedTest>,
) -> (usize, usize) {
    let (mut total, mut failed) = (0, 0);
    let mut todo: Vec<(&Node, String)> = kids
        .get(&job.id)
        .into_iter()
        .flatten()
        .rev()
        .map(|n| (*n, n.name.clone()))
        .collect();
    while let Some((n, path)) = todo.pop() {
        match kids.get(&n.id) {
            Some(children) if !children.is_empty() => {
                for c in children.iter().rev() {
                    todo.push((c, format!("{path}.{}", c.name)));
                }
            }
            _ if n.kind == NodeKind::Test => {
                total += 1;
                if n.result == Some(NodeResult::Fail) {
                    failed += 1;
                    failures.push(FailedTest {
                        job: job.name.clone(),
                        path,
                        result: NodeResult::Fail,
                    });
                }
            }
            _ => {}
        }
    }
    (total, failed)
}

fn result(r: Option<NodeResult>) -> &'static str {
    r.map_or("-", |r| r.as_str())
}

fn job_result(j: &JobLine) -> &'static str {
    match (j.result, j.state) {
        (Some(r), _) => r.as_str(),
        (None, NodeState::Done) => "-",
        (None, _) => "(running)",
    }
}

fn note(j: &JobLine) -> String {
    let mut parts = Vec::new();
    if let Some(code) = &j.error_code {
        parts.push(format!("error_code={code}"));
    }
    if let Some(p) = &j.place {
        parts.push(p.clone());
    }
    parts.join(" ")
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// Escapes the characters that break a markdown table cell or code span.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('`', "'").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn node(id: i64, kind: NodeKind, name: &str, parent: Option<i64>) -> Node {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
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
            data: Default::default(),
            created: t,
            updated: t,
            timeout: None,
            holdoff: None,
            owner: String::new(),
            submitter: String::new(),
            treeid: "1".into(),
            retry_counter: 0,
        }
    }

    #[test]
    fn counts_leaves_and_lists_failures_by_path() {
        let mut checkout = node(1, NodeKind::Checkout, "checkout", None);
        checkout.data.insert(
            "kernel_revision".into(),
            json!({"tree": "next", "branch": "master", "commit": "abcdef0123456789"}),
        );
        let mut fail = node(5, NodeKind::Test, "case|2", Some(4));
        fail.result = Some(NodeResult::Fail);
        let mut running = node(7, NodeKind::Job, "later", Some(2));
        running.state = NodeState::Running;
        running.result = None;
        let nodes = vec![
            node(2, NodeKind::Kbuild, "kbuild", Some(1)),
            node(3, NodeKind::Job, "kunit", Some(2)),
            node(4, NodeKind::Test, "suite", Some(3)),
            fail,
            node(6, NodeKind::Test, "case1", Some(4)),
            running,
        ];
        let r = Report::build(&checkout, &nodes);
        assert_eq!(r.jobs.len(), 2);
        assert_eq!((r.jobs[0].total, r.jobs[0].failures), (2, 1));
        assert_eq!(r.failures[0].path, "suite.case|2");
        assert_eq!(
            r.builds,
            vec![("kbuild".to_string(), Some(NodeResult::Pass))]
        );
        assert_eq!(
            r.subject(),
            "[labwire] next/master abcdef012345: 2 jobs, 1 not passed, 1 failing tests"
        );
        let text = r.render(Format::Text);
        assert!(text.contains("(running)"), "{text}");
        assert!(text.contains("kunit: suite.case|2 fail"), "{text}");
        // Markdown escapes what would break a table or a code span.
        let md = r.render(Format::Markdown);
        assert!(md.contains("`suite.case\\|2`"), "{md}");
        assert!("md".parse::<Format>().is_ok() && "html".parse::<Format>().is_err());
    }
}
