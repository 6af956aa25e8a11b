//! Test results found by a user's regular expression, like LAVA's pattern monitors: named
//! groups `test_case_id` and `result` (required), `measurement` and `units` (optional),
//! matched against each whole line of the log.

use crate::ParseSetupError;
use crate::line::Line;
use crate::report::{Children, Name, Out};
use labwire_common::{NodeResult, TestNode};
use regex::bytes::Regex;
use std::sync::Arc;

/// A pattern and the words it may find in the `result` group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternSpec {
    /// The regular expression (Rust `regex` syntax), with named groups `test_case_id` and
    /// `result`, and optionally `measurement` and `units`.
    pub regex: String,
    /// Result words and what they mean, tried (exactly) before the defaults: `pass`,
    /// `ok`, `passed`, `success` → pass; `fail`, `failed`, `failure`, `error` → fail;
    /// `skip`, `skipped` → skip; `unknown` → incomplete (defaults ignore case).
    pub result_map: Vec<(String, NodeResult)>,
}

impl PatternSpec {
    /// A pattern with the default result words.
    pub fn new(regex: impl Into<String>) -> Self {
        PatternSpec {
            regex: regex.into(),
            result_map: Vec::new(),
        }
    }
}

fn default_result(word: &str) -> Option<NodeResult> {
    match word.to_ascii_lowercase().as_str() {
        "pass" | "ok" | "passed" | "success" => Some(NodeResult::Pass),
        "fail" | "failed" | "failure" | "error" => Some(NodeResult::Fail),
        "skip" | "skipped" => Some(NodeResult::Skip),
        "unknown" => Some(NodeResult::Incomplete),
        _ => None,
    }
}

/// The pattern detector.
#[derive(Debug)]
pub(crate) struct Pattern {
    re: Regex,
    map: Vec<(String, NodeResult)>,
    has_measurement: bool,
    has_units: bool,
    pub(crate) top: Children,
    root_path: Arc<[Name]>,
}

impl Pattern {
    pub(crate) fn new(spec: &PatternSpec) -> Result<Self, ParseSetupError> {
        let re = Regex::new(&spec.regex).map_err(|e| ParseSetupError::BadPattern(e.to_string()))?;
        let names: Vec<&str> = re.capture_names().flatten().collect();
        for required in ["test_case_id", "result"] {
            if !names.contains(&required) {
                return Err(ParseSetupError::MissingGroup(required));
            }
        }
        Ok(Pattern {
            has_measurement: names.contains(&"measurement"),
            has_units: names.contains(&"units"),
            re,
            map: spec.result_map.clone(),
            top: Children::default(),
            root_path: Arc::from(Vec::new()),
        })
    }

    pub(crate) fn line(&mut self, line: &Line<'_>, out: &mut Out) {
        let Some(caps) = self.re.captures(line.bytes) else {
            return;
        };
        let text = |name: &str| {
            caps.name(name)
                .map(|m| crate::line::lossy(m.as_bytes()).trim().to_string())
        };
        let id = text("test_case_id").unwrap_or_default();
        let word = text("result").unwrap_or_default();
        if id.is_empty() {
            out.issues
                .push(line.no, "the pattern matched with an empty test_case_id");
            return;
        }
        let result = self
            .map
            .iter()
            .find(|(w, _)| *w == word)
            .map(|(_, r)| *r)
            .or_else(|| default_result(&word));
        let mut node = TestNode::leaf(id, result.unwrap_or(NodeResult::Incomplete));
        if result.is_none() {
            out.issues.push(
                line.no,
                format!(
                    "{}: result word `{word}` is not mapped to a result",
                    node.name
                ),
            );
            node.error = Some(format!("unmapped result word `{word}`"));
        } else if result == Some(NodeResult::Incomplete) {
            node.error = Some(format!("result `{word}`"));
        }
        if self.has_measurement
            && let Some(m) = text("measurement").filter(|m| !m.is_empty())
        {
            match m.parse::<f64>() {
                Ok(v) if v.is_finite() => {
                    node.measurement = Some(v);
                    if self.has_units {
                        node.units = text("units").filter(|u| !u.is_empty());
                    }
                }
                _ => out.issues.push(
                    line.no,
                    format!("{}: measurement `{m}` is not a number", node.name),
                ),
            }
        }
        if node.result == NodeResult::Fail {
            let mut e = crate::report::Excerpt::default();
            e.push(line.bytes);
            node.log_excerpt = e.text();
        }
        let keep = out.keep_tree;
        node.name = self.top.unique_name(keep, node.name);
        let nid = out.new_id();
        let result = node.result;
        let kept = out.emit_owned(nid, None, &self.root_path, node, true, line.no);
        self.top.record(result, kept);
    }
}
