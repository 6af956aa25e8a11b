//! What the coordinator does with a job's result tree before storing it. The rule: **a
//! result is never refused for its content.** What breaks a limit is changed so that it
//! fits, and the change is recorded in the job node's data, so an agent never sees its
//! report refused, never lets its lease run out over it, and the job never runs twice:
//!
//! - names and nesting follow the common rule ([`labwire_common::normalise`]): blanks and
//!   control characters cleaned, empty names numbered, long names shortened, duplicates
//!   made unique, tests below level 32 moved up with their path in their name;
//! - a log excerpt or error over 64 KiB, or units over 64 bytes, are cut;
//! - a tree of more than `results.max_tests` nodes (default 100,000) is cut to that many:
//!   failing and incomplete tests first (with their groups), then the others in the order
//!   they came; kept groups keep the result of all their members.
//!
//! The job node's data then says what happened: `results_note` (in words),
//! `results_changes` (counts by kind), `results_renamed` (the first 20 renamed tests, with
//! their old names) and, for a cut tree, `results_truncated: true` and `results_counts`
//! (pass, fail, skip and incomplete leaf tests, and all nodes, of the tree as sent). A tree
//! that needs none of this is stored as it came and none of these keys is set: the parser
//! applies the same rule, so reports of labwire's agents only meet the size limit.

use labwire_common::normalise::{self, MAX_DEPTH, TreeCounts};
use labwire_common::{NodeResult, TestNode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The default of `results.max_tests`.
pub const DEFAULT_MAX_TESTS: usize = 100_000;
/// The largest `results.max_tests` accepted.
pub const MAX_MAX_TESTS: usize = 10_000_000;
/// Log excerpts and errors of one test are cut to this many bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Units of a measurement are cut to this many bytes.
pub const MAX_UNITS_BYTES: usize = 64;

/// Keys of a job node's data that only the coordinator writes; a report's own `data` cannot
/// set them.
pub const OWNED_KEYS: [&str; 5] = [
    "results_note",
    "results_changes",
    "results_renamed",
    "results_truncated",
    "results_counts",
];

/// Limits on the result trees the coordinator stores (`results:` in coordinator.yaml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// At most this many test nodes (groups and leaves) are stored per job; a larger tree is
    /// cut to this size, its full counts recorded. Default 100000.
    #[serde(default = "default_max_tests")]
    pub max_tests: usize,
}

fn default_max_tests() -> usize {
    DEFAULT_MAX_TESTS
}

impl Default for ResultsConfig {
    fn default() -> Self {
        ResultsConfig {
            max_tests: DEFAULT_MAX_TESTS,
        }
    }
}

impl ResultsConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=MAX_MAX_TESTS).contains(&self.max_tests) {
            anyhow::bail!(
                "results.max_tests must be between 1 and {MAX_MAX_TESTS}, not {}",
                self.max_tests
            );
        }
        Ok(())
    }
}

/// A result tree ready to store, and what to add to the job node's data about it.
#[derive(Debug, Clone, Default)]
pub struct Intake {
    /// The tree to store.
    pub tests: Vec<TestNode>,
    /// `results_*` keys for the job node's data; empty when the tree came as it is stored.
    pub data: Map<String, Value>,
}

/// Puts a reported tree in the shape the store takes (see the module documentation).
/// Never fails; linear in the size of the tree (run it off the store's writer).
pub fn normalise_report(mut tests: Vec<TestNode>, cfg: &ResultsConfig) -> Intake {
    let sent = TreeCounts::of(&tests);
    let shaped = normalise::normalise(&mut tests, MAX_DEPTH);
    let texts_cut = cut_texts(&mut tests);
    let kept = truncate(&mut tests, cfg.max_tests.max(1));
    let mut data = Map::new();
    let mut said = Vec::new();
    if kept < sent.nodes {
        said.push(format!(
            "{kept} of the {} tests sent were kept (results.max_tests is {}): failing and \
             incomplete tests first, then the others in order; kept groups keep the result of \
             all their members, and results_counts counts every test sent",
            sent.nodes, cfg.max_tests
        ));
        data.insert("results_truncated".into(), true.into());
        data.insert(
            "results_counts".into(),
            json!({
                "pass": sent.pass, "fail": sent.fail, "skip": sent.skip,
                "incomplete": sent.incomplete, "nodes": sent.nodes,
            }),
        );
    }
    if !shaped.changes.is_empty() {
        said.push(shaped.changes.describe());
    }
    if texts_cut > 0 {
        said.push(format!(
            "{texts_cut} log excerpts, errors or units cut to {MAX_TEXT_BYTES} bytes \
             ({MAX_UNITS_BYTES} for units)"
        ));
    }
    if said.is_empty() {
        return Intake { tests, data };
    }
    let c = shaped.changes;
    data.insert(
        "results_changes".into(),
        json!({
            "cleaned": c.cleaned, "numbered": c.numbered, "shortened": c.shortened,
            "made_unique": c.made_unique, "flattened": c.flattened,
            "texts_cut": texts_cut, "dropped": sent.nodes - kept,
        }),
    );
    if !shaped.renamed.is_empty() {
        data.insert(
            "results_renamed".into(),
            serde_json::to_value(&shaped.renamed).unwrap_or_default(),
        );
    }
    data.insert(
        "results_note".into(),
        format!("the coordinator changed this result: {}", said.join("; ")).into(),
    );
    Intake { tests, data }
}

/// Cuts `s` to at most `max` bytes on a character boundary, with a note; true if cut.
fn cut(s: &mut String, max: usize, note: bool) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    if note {
        s.push_str("\n[... cut by the coordinator]\n");
    }
    true
}

/// Cuts over-long excerpts, errors and units; returns how many were cut.
fn cut_texts(tests: &mut [TestNode]) -> u64 {
    let mut n = 0;
    let mut stack: Vec<&mut TestNode> = tests.iter_mut().collect();
    while let Some(t) = stack.pop() {
        for (text, max, note) in [
            (&mut t.log_excerpt, MAX_TEXT_BYTES, true),
            (&mut t.error, MAX_TEXT_BYTES, true),
            (&mut t.units, MAX_UNITS_BYTES, false),
        ] {
            if let Some(s) = text
                && cut(s, max, note)
            {
                n += 1;
            }
        }
        stack.extend(t.tests.iter_mut());
    }
    n
}

const NO_PARENT: usize = usize::MAX;

/// Cuts the tree to at most `max` nodes and returns how many are left. Which stay: every
/// failing or incomplete leaf with its groups, in order, while they fit; then every other
/// node in order (depth first), while room is left. A node always comes with its groups.
fn truncate(tests: &mut Vec<TestNode>, max: usize) -> u64 {
    // The tree in depth-first order: each node's parent, and the leaves that failed.
    fn index(list: &[TestNode], up: usize, parent: &mut Vec<usize>, failed: &mut Vec<usize>) {
        for t in list {
            let me = parent.len();
            parent.push(up);
            if t.tests.is_empty() && matches!(t.result, NodeResult::Fail | NodeResult::Incomplete) {
                failed.push(me);
            }
            index(&t.tests, me, parent, failed);
        }
    }
    let (mut parent, mut failed) = (Vec::new(), Vec::new());
    index(tests, NO_PARENT, &mut parent, &mut failed);
    let n = parent.len();
    if n <= max {
        return n as u64;
    }
    let mut keep = vec![false; n];
    let mut budget = max;
    let mut chain = Vec::new();
    let mut take = |i: usize, keep: &mut [bool], budget: &mut usize| {
        chain.clear();
        let mut j = i;
        while j != NO_PARENT && !keep[j] {
            chain.push(j);
            j = parent[j];
        }
        if chain.len() <= *budget {
            for &j in &chain {
                keep[j] = true;
            }
            *budget -= chain.len();
        }
    };
    for &i in &failed {
        if budget == 0 {
            break;
        }
        take(i, &mut keep, &mut budget);
    }
    for i in 0..n {
        if budget == 0 {
            break;
        }
        if !keep[i] {
            take(i, &mut keep, &mut budget);
        }
    }
    fn prune(list: &mut Vec<TestNode>, keep: &[bool], at: &mut usize) {
        for mut t in std::mem::take(list) {
            let me = *at;
            *at += 1;
            if keep[me] {
                prune(&mut t.tests, keep, at);
                list.push(t);
            } else {
                *at += t.count_nodes() - 1;
            }
        }
    }
    let mut at = 0;
    prune(tests, &keep, &mut at);
    (max - budget) as u64
}

#[cfg(test)]
mod tests;
