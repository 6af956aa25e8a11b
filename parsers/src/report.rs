//! The parse report (the JSON document the `parse` command prints), the results handed out
//! while parsing, and the bounded buffers and counters the parsers share.

use labwire_common::names::{self, UniqueNames};
use labwire_common::{NodeResult, TestNode};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// At most this many issues are kept in a report; the rest are counted in a last entry.
pub(crate) const MAX_ISSUES: usize = 200;
/// At most this many bytes of log are kept in one test's `log_excerpt`.
pub(crate) const MAX_EXCERPT_BYTES: usize = 16 * 1024;
/// At most this many lines of log are kept in one test's `log_excerpt`.
pub(crate) const MAX_EXCERPT_LINES: u32 = 100;

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
/// completes. Members complete before their group, so a group's members are never part
/// of it here: they were handed out before it.
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
    pub path: Arc<[Name]>,
    /// The test, without members ([`CompletedNode::to_test_node`] makes a `TestNode`).
    pub node: CompletedNode,
    /// True for a leaf test (one counted in `Counts`).
    pub leaf: bool,
    /// The line on which the result became known.
    pub line: u64,
}

/// A completed test as handed out: its name (kept inline when short, so handing out a
/// result allocates nothing in the common case), its result, and the rarer details
/// (excerpt, measurement, units, error) boxed apart.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedNode {
    /// The test's name (unique among its siblings when the tree is kept).
    pub name: Name,
    /// Its result.
    pub result: NodeResult,
    /// Excerpt, measurement, units and error, when any is set.
    pub details: Option<Box<Details>>,
}

/// The optional parts of a [`CompletedNode`] (see `TestNode` for their meaning).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details {
    /// Lines of the log that explain the result.
    pub log_excerpt: Option<String>,
    /// A measured value reported with the result.
    pub measurement: Option<f64>,
    /// The units of `measurement`.
    pub units: Option<String>,
    /// Why the test is `incomplete` (or another note from the parser).
    pub error: Option<String>,
}

impl Details {
    /// `None` when nothing is set.
    #[inline]
    pub(crate) fn boxed(self) -> Option<Box<Details>> {
        (self.log_excerpt.is_some()
            || self.measurement.is_some()
            || self.units.is_some()
            || self.error.is_some())
        .then(|| Box::new(self))
    }
}

impl CompletedNode {
    /// A node with a name and a result only.
    #[inline]
    pub fn new(name: Name, result: NodeResult) -> Self {
        CompletedNode {
            name,
            result,
            details: None,
        }
    }

    /// The log excerpt, if any.
    pub fn log_excerpt(&self) -> Option<&str> {
        self.details.as_ref()?.log_excerpt.as_deref()
    }

    /// The error note, if any.
    pub fn error(&self) -> Option<&str> {
        self.details.as_ref()?.error.as_deref()
    }

    /// The measurement, if any.
    pub fn measurement(&self) -> Option<f64> {
        self.details.as_ref()?.measurement
    }

    /// The units, if any.
    pub fn units(&self) -> Option<&str> {
        self.details.as_ref()?.units.as_deref()
    }

    /// The same test as a `TestNode` (without members).
    pub fn to_test_node(&self) -> TestNode {
        let mut node = TestNode::leaf(self.name.as_str(), self.result);
        if let Some(d) = &self.details {
            node.log_excerpt = d.log_excerpt.clone();
            node.measurement = d.measurement;
            node.units = d.units.clone();
            node.error = d.error.clone();
        }
        node
    }
}

impl From<&TestNode> for CompletedNode {
    fn from(node: &TestNode) -> Self {
        CompletedNode {
            name: Name::from(node.name.as_str()),
            result: node.result,
            details: Details {
                log_excerpt: node.log_excerpt.clone(),
                measurement: node.measurement,
                units: node.units.clone(),
                error: node.error.clone(),
            }
            .boxed(),
        }
    }
}

impl From<TestNode> for CompletedNode {
    fn from(node: TestNode) -> Self {
        CompletedNode {
            name: Name::from(node.name),
            result: node.result,
            details: Details {
                log_excerpt: node.log_excerpt,
                measurement: node.measurement,
                units: node.units,
                error: node.error,
            }
            .boxed(),
        }
    }
}

/// Bytes of a [`Name`] kept inline.
const INLINE: usize = 54;

/// A test name: text up to 54 bytes is kept inline (no allocation), longer text on the
/// heap. Derefs to `str`; compares, hashes and prints as its text.
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

impl Name {
    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, buf } => {
                let bytes = &buf[..usize::from(*len)];
                // SAFETY: `buf[..len]` is only ever filled from a `str` (see `inline`).
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Repr::Heap(s) => s,
        }
    }

    #[inline]
    fn inline(s: &str) -> Option<Name> {
        let len = s.len();
        if len > INLINE {
            return None;
        }
        let mut buf = [0u8; INLINE];
        buf[..len].copy_from_slice(s.as_bytes());
        Some(Name(Repr::Inline {
            len: len as u8,
            buf,
        }))
    }

    /// The test name in `bytes`: invalid UTF-8 replaced by U+FFFD, then cleaned and
    /// shortened by the common rule ([`names::clean`], [`names::shorten`]). Empty when
    /// nothing is left (the caller then uses the test's number).
    #[inline]
    pub(crate) fn lossy(bytes: &[u8]) -> Name {
        if bytes.len() <= INLINE && bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8.
            let s = unsafe { std::str::from_utf8_unchecked(bytes) };
            if names::is_clean(s)
                && let Some(n) = Name::inline(s)
            {
                return n;
            }
        }
        let text = crate::line::lossy(bytes);
        let cleaned = match names::clean(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(c) => c,
        };
        match names::shorten(&cleaned, names::MAX_NAME_BYTES) {
            Cow::Borrowed(_) => Name::from(cleaned),
            Cow::Owned(short) => Name::from(short),
        }
    }

    /// [`Name::lossy`], or `None` when nothing is left of the name.
    #[inline]
    pub(crate) fn given(bytes: &[u8]) -> Option<Name> {
        let n = Name::lossy(bytes);
        (!n.is_empty()).then_some(n)
    }

    /// The decimal text of `n`.
    #[inline]
    pub(crate) fn number(n: u64) -> Name {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut v = n;
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        Name::lossy(&buf[i..])
    }
}

impl Default for Name {
    fn default() -> Self {
        Name(Repr::Inline {
            len: 0,
            buf: [0; INLINE],
        })
    }
}

impl From<&str> for Name {
    #[inline]
    fn from(s: &str) -> Self {
        Name::inline(s).unwrap_or_else(|| Name(Repr::Heap(s.into())))
    }
}

impl From<String> for Name {
    #[inline]
    fn from(s: String) -> Self {
        Name::inline(&s).unwrap_or_else(|| Name(Repr::Heap(s.into_boxed_str())))
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        match n.0 {
            Repr::Heap(s) => s.into_string(),
            Repr::Inline { .. } => n.as_str().to_owned(),
        }
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    #[inline]
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
/// only when the tree is kept. Names follow the common rule ([`names::test_name`]: blanks
/// trimmed and squeezed, an empty name becomes the test's number, long names shortened)
/// and, when the tree is kept, are made unique among siblings (`name#2`, `name#3`) by
/// [`UniqueNames`], as the coordinator would.
#[derive(Debug, Default)]
pub(crate) struct Children {
    pub(crate) nodes: Vec<TestNode>,
    names: UniqueNames,
    pub(crate) tally: Tally,
    pub(crate) count: u64,
}

impl Children {
    /// The name the next member gets (it is member number `count + 1`).
    #[inline]
    pub(crate) fn unique_name(&mut self, keep_tree: bool, name: String) -> String {
        let name = match names::test_name(&name, self.count + 1) {
            Cow::Borrowed(_) => name,
            Cow::Owned(fixed) => fixed,
        };
        if !keep_tree {
            return name;
        }
        self.names.unique(name)
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

    /// Counts a completed test and tells whether it is to be queued.
    #[inline]
    fn count(&mut self, result: NodeResult, leaf: bool) -> bool {
        if leaf {
            self.counts.add(result);
        }
        if result == NodeResult::Fail {
            self.any_fail = true;
        }
        self.progress
    }

    /// Records a completed test (`node` without members).
    pub(crate) fn emit(
        &mut self,
        id: u64,
        parent: Option<u64>,
        path: &Arc<[Name]>,
        node: &TestNode,
        leaf: bool,
        line: u64,
    ) {
        if self.count(node.result, leaf) {
            self.queue.push(Completed {
                id,
                parent,
                path: Arc::clone(path),
                node: CompletedNode::from(node),
                leaf,
                line,
            });
        }
    }

    /// Records a completed test given as a [`CompletedNode`] (the tree is not kept, or
    /// the caller keeps its own `TestNode`).
    #[inline(always)]
    pub(crate) fn emit_node(
        &mut self,
        id: u64,
        parent: Option<u64>,
        path: &Arc<[Name]>,
        node: CompletedNode,
        leaf: bool,
        line: u64,
    ) {
        if self.count(node.result, leaf) {
            self.queue.push(Completed {
                id,
                parent,
                path: Arc::clone(path),
                node,
                leaf,
                line,
            });
        }
    }
}

impl Out {
    /// Like [`Out::emit`], taking the node: hands it back when the tree is kept, moves its
    /// parts into the queue when only progress is wanted.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn emit_owned(
        &mut self,
        id: u64,
        parent: Option<u64>,
        path: &Arc<[Name]>,
        node: TestNode,
        leaf: bool,
        line: u64,
    ) -> Option<TestNode> {
        if self.keep_tree {
            self.emit(id, parent, path, &node, leaf, line);
            Some(node)
        } else {
            if self.progress {
                self.emit_node(id, parent, path, CompletedNode::from(node), leaf, line);
            } else {
                self.count(node.result, leaf);
            }
            None
        }
    }
}

/// A path one level deeper.
pub(crate) fn child_path(parent: &Arc<[Name]>, name: Name) -> Arc<[Name]> {
    // An exact-size iterator: one allocation for the slice (names are inline when short).
    parent
        .iter()
        .cloned()
        .chain(std::iter::once(name))
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
