//! The parse report (the JSON document the `parse` command prints), the results handed out
//! while parsing, and the bounded buffers and counters the parsers share.

use labwire_common::{NodeResult, TestNode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// At most this many issues are kept in a report; the rest are counted in a last entry.
pub const MAX_ISSUES: usize = 200;
/// At most this many bytes of log are kept in one test's `log_excerpt`.
pub const MAX_EXCERPT_BYTES: usize = 16 * 1024;
/// At most this many lines of log are kept in one test's `log_excerpt`.
pub const MAX_EXCERPT_LINES: u32 = 100;

/// Number of leaf tests with each result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Leaf tests that passed.
    pub pass: u64,
    /// Leaf tests that failed.
    pub fail: u64,
    /// Leaf tests that were skipped.
    pub skip: u64,
    /// Leaf tests that did not complete.
    pub incomplete: u64,
}

impl Counts {
    /// Counts one more test with result `r`.
    #[inline]
    pub fn add(&mut self, r: NodeResult) {
        match r {
            NodeResult::Pass => self.pass += 1,
            NodeResult::Fail => self.fail += 1,
            NodeResult::Skip => self.skip += 1,
            NodeResult::Incomplete => self.incomplete += 1,
        }
    }

    /// All tests counted.
    pub fn total(&self) -> u64 {
        self.pass + self.fail + self.skip + self.incomplete
    }
}

/// Something in the log that the parser could not make sense of, or a reason the run is
/// incomplete. `line` is 1-based; 0 means the whole log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParseIssue {
    /// The line the issue is about (1-based), or 0 for the log as a whole.
    pub line: u64,
    /// What is wrong, in words.
    pub message: String,
}

/// The outcome of parsing a whole log: the JSON document that `labwire-agent parse` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParseReport {
    /// `fail` if any test failed; else `incomplete` if the run was cut short or no result
    /// was found; else `skip` if every test was skipped; else `pass`.
    pub result: NodeResult,
    /// Leaf tests by result.
    pub counts: Counts,
    /// The top-level tests (KTAP suites, LAVA runs, pattern tests, the `kernelmsg` suite).
    /// Empty when the parser ran without keeping the tree (see `ParserOptions::keep_tree`).
    pub tests: Vec<TestNode>,
    /// Problems found while parsing.
    pub errors: Vec<ParseIssue>,
}

/// A test whose result is known, handed out by `LogParser::drain_completed` as soon as it
/// completes. Members complete before their group, so a group's `node.tests` is always
/// empty here: its members were handed out before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// A number unique within one parse, for linking members to groups.
    pub id: u64,
    /// The `id` of the enclosing group, `None` for a top-level test. The group itself is
    /// handed out after its members (its name may only be known then).
    pub parent: Option<u64>,
    /// Names of the enclosing groups, outermost first. A KTAP group whose name is not
    /// known yet (without a `# Subtest:` header, it comes with its result line) shows as
    /// its test number (`"2"`); link by `parent` for exactness.
    pub path: Arc<[String]>,
    /// The test, without members.
    pub node: TestNode,
    /// True for a leaf test (one counted in `Counts`).
    pub leaf: bool,
    /// The line on which the result became known.
    pub line: u64,
}

/// Issues found so far, bounded.
#[derive(Debug, Default)]
pub(crate) struct Issues {
    list: Vec<ParseIssue>,
    dropped: u64,
}

impl Issues {
    pub(crate) fn push(&mut self, line: u64, message: impl Into<String>) {
        if self.list.len() < MAX_ISSUES {
            self.list.push(ParseIssue {
                line,
                message: message.into(),
            });
        } else {
            self.dropped += 1;
        }
    }

    pub(crate) fn into_vec(mut self) -> Vec<ParseIssue> {
        if self.dropped > 0 {
            self.list.push(ParseIssue {
                line: 0,
                message: format!("{} more issues not shown", self.dropped),
            });
        }
        self.list
    }
}

/// The aggregate of a stream of results, as `NodeResult::aggregate` computes it, kept
/// without keeping the results.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tally {
    any: bool,
    fail: bool,
    incomplete: bool,
    all_skip: bool,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            any: false,
            fail: false,
            incomplete: false,
            all_skip: true,
        }
    }
}

impl Tally {
    #[inline]
    pub(crate) fn add(&mut self, r: NodeResult) {
        self.any = true;
        match r {
            NodeResult::Fail => self.fail = true,
            NodeResult::Incomplete => self.incomplete = true,
            NodeResult::Pass | NodeResult::Skip => {}
        }
        if r != NodeResult::Skip {
            self.all_skip = false;
        }
    }

    pub(crate) fn merge(&mut self, other: &Tally) {
        if other.any {
            self.any = true;
            self.fail |= other.fail;
            self.incomplete |= other.incomplete;
            self.all_skip &= other.all_skip;
        }
    }

    /// The aggregate, or `None` when nothing was added.
    pub(crate) fn result(&self) -> Option<NodeResult> {
        if !self.any {
            None
        } else if self.fail {
            Some(NodeResult::Fail)
        } else if self.incomplete {
            Some(NodeResult::Incomplete)
        } else if self.all_skip {
            Some(NodeResult::Skip)
        } else {
            Some(NodeResult::Pass)
        }
    }
}

/// A bounded piece of log kept as raw bytes; decoded (lossily) only when taken.
#[derive(Debug, Default, Clone)]
pub(crate) struct Excerpt {
    buf: Vec<u8>,
    lines: u32,
    truncated: bool,
}

impl Excerpt {
    #[inline]
    pub(crate) fn push(&mut self, line: &[u8]) {
        if self.lines >= MAX_EXCERPT_LINES || self.buf.len() >= MAX_EXCERPT_BYTES {
            self.truncated = true;
            return;
        }
        let room = MAX_EXCERPT_BYTES - self.buf.len();
        let keep = if line.len() >= room {
            self.truncated = true;
            room.saturating_sub(1)
        } else {
            line.len()
        };
        if self.buf.capacity() == 0 {
            self.buf.reserve(1024);
        }
        self.buf.reserve(keep + 1);
        self.buf.extend_from_slice(&line[..keep]);
        self.buf.push(b'\n');
        self.lines += 1;
    }

    pub(crate) fn append(&mut self, other: &Excerpt) {
        for line in other.lines() {
            self.push(line);
        }
        self.truncated |= other.truncated;
    }

    /// The lines kept.
    pub(crate) fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.buf
            .split_inclusive(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\n").unwrap_or(l))
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.lines = 0;
        self.truncated = false;
    }

    /// No more lines fit.
    pub(crate) fn is_full(&self) -> bool {
        self.lines >= MAX_EXCERPT_LINES || self.buf.len() >= MAX_EXCERPT_BYTES
    }

    /// Notes that lines were left out.
    pub(crate) fn mark_truncated(&mut self) {
        self.truncated = true;
    }

    /// The text, with a note when lines were left out.
    pub(crate) fn text(&self) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        let mut s = crate::line::lossy(&self.buf);
        if self.truncated {
            s.push_str("[... excerpt truncated]\n");
        }
        Some(s)
    }
}

/// The members of a group as they complete: their aggregate always, the nodes themselves
/// only when the tree is kept. Names are made unique among siblings (`name#2`, `name#3`)
/// when the tree is kept.
#[derive(Debug, Default)]
pub(crate) struct Children {
    pub(crate) nodes: Vec<TestNode>,
    seen: HashMap<String, u32>,
    pub(crate) tally: Tally,
    pub(crate) count: u64,
}

impl Children {
    #[inline]
    pub(crate) fn unique_name(&mut self, keep_tree: bool, name: String) -> String {
        if !keep_tree {
            return name;
        }
        let Some(&last) = self.seen.get(&name) else {
            self.seen.insert(name.clone(), 1);
            return name;
        };
        let mut n = last;
        loop {
            n += 1;
            let candidate = format!("{name}#{n}");
            if !self.seen.contains_key(&candidate) {
                self.seen.insert(name, n);
                self.seen.insert(candidate.clone(), 1);
                return candidate;
            }
        }
    }

    pub(crate) fn push(&mut self, keep_tree: bool, node: TestNode) {
        self.record(node.result, keep_tree.then_some(node));
    }

    /// Counts a member with result `result`, keeping `node` when given.
    #[inline]
    pub(crate) fn record(&mut self, result: NodeResult, node: Option<TestNode>) {
        self.tally.add(result);
        self.count += 1;
        if let Some(node) = node {
            self.nodes.push(node);
        }
    }
}

/// Where the parsers hand their completed tests: counts them, queues them for
/// `drain_completed`, and collects issues.
#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) keep_tree: bool,
    pub(crate) progress: bool,
    pub(crate) queue: Vec<Completed>,
    pub(crate) counts: Counts,
    pub(crate) any_fail: bool,
    next_id: u64,
    pub(crate) issues: Issues,
}

impl Out {
    pub(crate) fn new(keep_tree: bool, progress: bool) -> Self {
        Out {
            keep_tree,
            progress,
            queue: Vec::new(),
            counts: Counts::default(),
            any_fail: false,
            next_id: 0,
            issues: Issues::default(),
        }
    }

    #[inline]
    pub(crate) fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Records a completed test (`node` without members).
    pub(crate) fn emit(
        &mut self,
        id: u64,
        parent: Option<u64>,
        path: &Arc<[String]>,
        node: &TestNode,
        leaf: bool,
        line: u64,
    ) {
        if leaf {
            self.counts.add(node.result);
        }
        if node.result == NodeResult::Fail {
            self.any_fail = true;
        }
        if self.progress {
            self.queue.push(Completed {
                id,
                parent,
                path: Arc::clone(path),
                node: node.clone(),
                leaf,
                line,
            });
        }
    }
}

impl Out {
    /// Like [`Out::emit`], taking the node: hands it back when the tree is kept, moves it
    /// into the queue (no copy) when only progress is wanted.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn emit_owned(
        &mut self,
        id: u64,
        parent: Option<u64>,
        path: &Arc<[String]>,
        node: TestNode,
        leaf: bool,
        line: u64,
    ) -> Option<TestNode> {
        if leaf {
            self.counts.add(node.result);
        }
        if node.result == NodeResult::Fail {
            self.any_fail = true;
        }
        let completed = |node| Completed {
            id,
            parent,
            path: Arc::clone(path),
            node,
            leaf,
            line,
        };
        match (self.progress, self.keep_tree) {
            (true, true) => {
                self.queue.push(completed(node.clone()));
                Some(node)
            }
            (true, false) => {
                self.queue.push(completed(node));
                None
            }
            (false, true) => Some(node),
            (false, false) => None,
        }
    }
}

/// A path one level deeper.
pub(crate) fn child_path(parent: &Arc<[String]>, name: &str) -> Arc<[String]> {
    // An exact-size iterator: one allocation for the slice.
    parent
        .iter()
        .cloned()
        .chain(std::iter::once(name.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_matches_aggregate() {
        use NodeResult::*;
        for set in [
            vec![],
            vec![Pass, Skip],
            vec![Skip, Skip],
            vec![Pass, Incomplete],
            vec![Incomplete, Fail],
        ] {
            let mut t = Tally::default();
            for r in &set {
                t.add(*r);
            }
            let expected = if set.is_empty() {
                None
            } else {
                Some(NodeResult::aggregate(set.iter().copied()))
            };
            assert_eq!(t.result(), expected, "{set:?}");
        }
    }

    #[test]
    fn excerpt_is_bounded() {
        let mut e = Excerpt::default();
        for _ in 0..1000 {
            e.push(b"some line of log");
        }
        let t = e.text().unwrap_or_default();
        assert_eq!(t.lines().count(), MAX_EXCERPT_LINES as usize + 1);
        assert!(t.ends_with("[... excerpt truncated]\n"));
        let mut big = Excerpt::default();
        big.push(&[b'x'; 100_000]);
        assert!(big.text().unwrap_or_default().len() <= MAX_EXCERPT_BYTES + 40);
    }

    #[test]
    fn names_made_unique() {
        let mut c = Children::default();
        assert_eq!(c.unique_name(true, "a".into()), "a");
        assert_eq!(c.unique_name(true, "a".into()), "a#2");
        assert_eq!(c.unique_name(true, "a".into()), "a#3");
        assert_eq!(c.unique_name(false, "a".into()), "a");
    }
}
