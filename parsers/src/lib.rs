//! Streaming log parsers: turn a console log (bytes as they arrive) into a tree of test
//! results. Formats: KTAP/TAP (KUnit, kselftest), LAVA test signals, kernel messages (boot
//! reached, panic, Oops, BUG, WARNING, RCU stall, hung task) and user patterns.
//!
//! ```
//! use labwire_parsers::{LogParser, ParserOptions};
//! let mut p = LogParser::new(ParserOptions::default()).expect("auto needs no pattern");
//! p.feed(b"KTAP version 1\n1..1\nok 1 ");
//! p.feed(b"example\n");
//! let report = p.finish();
//! assert_eq!(report.result, labwire_common::NodeResult::Pass);
//! assert_eq!(report.tests[0].name, "example");
//! ```
//!
//! # Streaming
//! [`LogParser::feed`] takes chunks cut anywhere (mid-line, mid-UTF-8); lines end at `\n`,
//! `\r\n` or a lone `\r`; a line longer than 64 KiB keeps its first 64 KiB. Bytes are not
//! decoded except what is kept (names, excerpts), lossily, so garbage is harmless. Results
//! are decided from what came before only, so the report does not depend on how the log
//! was chunked, and a result handed out by [`LogParser::drain_completed`] is never changed
//! by what follows. Memory: the current line, the open tests (each keeping at most 16 KiB
//! of log for its excerpt), and, unless [`ParserOptions::keep_tree`] is off, the tree of
//! completed results. With `keep_tree: false` completed results are only handed out by
//! `drain_completed` and memory stays flat whatever the log's length.
//!
//! # Formats and auto-detection
//! [`Format::Auto`] runs the KTAP, LAVA and kernel message detectors on every line (and the
//! pattern, when one is given) and lists their results side by side: KTAP top-level tests,
//! then LAVA runs, then pattern tests, then the `kernelmsg` suite. KTAP is found by its
//! version line, whose lead-in (timestamps, `<6>`, `kunit: `, a board's tag) is learned
//! and stripped from the following lines; LAVA signals anywhere in a line; kernel messages
//! at the start of a message. Explicit formats run one detector; `--format ktap` also
//! accepts results without a version line.
//!
//! # Results
//! KTAP: `ok` → pass, `not ok` → fail, `# SKIP` → skip, `not ok ... # TODO` → skip (an
//! expected failure), other directives fall back to ok/not ok. A group fails if it or a
//! member failed. A test whose result line never came is `incomplete` with an `error`, as
//! are its enclosing groups. See the `ktap`, `lava` and `kmsg` modules for details.
//!
//! The `kernelmsg` suite (always on in auto mode) has a `boot` test (`pass` when the kernel
//! start line was seen) and one test per problem kind: `panic`, `oops`, `bug`, `warning`,
//! `rcu_stall`, `hung_task`. A kind found is `fail` (a WARNING too: the kernel reported a
//! problem), with its first trace as `log_excerpt`; a kind not found is `pass` when the
//! kernel start was seen and not listed otherwise. So a panic fails the run even when
//! every KTAP result before it passed, and the KTAP tests it cut short are `incomplete`.
//!
//! The report's `result` is `fail` if any test (leaf or group) failed; else `incomplete`
//! if a test is incomplete, the run was cut short (a top-level plan not met, a bail-out,
//! a LAVA run without `ENDRUN`) or no result was found at all; else `skip` if every test
//! was skipped; else `pass`. `counts` counts leaf tests as the log nested them.
//!
//! # Names and nesting
//! Test names follow the one rule of [`labwire_common::names`], which the coordinator
//! applies too: Unicode whitespace and control characters trimmed at the ends and squeezed
//! to one space inside, invisible characters dropped, an empty name replaced by the test's
//! number, a name over 256 bytes shortened, siblings made unique (`name#2`). KTAP nesting is
//! followed 256 levels deep; the report's tree is then flattened to the common limit of 32
//! levels by [`labwire_common::normalise`] (tests below level 32 move up, their path kept in
//! their name), with an issue saying so first in `errors`. So the coordinator stores the
//! report's tree exactly as it is.

pub mod cli;
mod jsonl;
pub mod junit;
mod kmsg;
mod ktap;
mod lava;
mod line;
mod pattern;
mod prefilter;
mod report;
pub mod testgen;

pub use kmsg::SUITE as KERNELMSG_SUITE;
pub use pattern::PatternSpec;
pub use report::{Completed, CompletedNode, Counts, Details, Name, ParseIssue, ParseReport};

use labwire_common::{NodeResult, normalise};
use line::{Line, LineSplitter};
use prefilter::Prefilter;
use report::{Children, Out, Tally};

/// What to look for in a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// KTAP/TAP, LAVA signals and kernel messages together (and the pattern, if given).
    #[default]
    Auto,
    /// KTAP or TAP only (KUnit, kselftest).
    Ktap,
    /// LAVA test signals only.
    Lava,
    /// Kernel messages only: boot reached and problems found.
    Kmsg,
    /// The user's pattern only.
    Pattern,
}

/// How to parse.
#[derive(Debug, Clone, PartialEq)]
pub struct ParserOptions {
    /// What to look for.
    pub format: Format,
    /// The pattern for [`Format::Pattern`]; with [`Format::Auto`] it runs alongside.
    pub pattern: Option<PatternSpec>,
    /// Keep the tree of completed results for the report (default). When off, the report
    /// has counts, result and errors but no `tests`: results are only handed out by
    /// [`LogParser::drain_completed`], and memory stays flat.
    pub keep_tree: bool,
    /// Queue completed results for [`LogParser::drain_completed`] (default). Turn off when
    /// nobody drains, or the queue grows with the log.
    pub progress: bool,
}

impl Default for ParserOptions {
    fn default() -> Self {
        ParserOptions {
            format: Format::Auto,
            pattern: None,
            keep_tree: true,
            progress: true,
        }
    }
}

/// Why a parser could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseSetupError {
    /// `Format::Pattern` without a pattern.
    #[error("the pattern format needs a pattern (--pattern REGEX)")]
    PatternRequired,
    /// The pattern is not a valid regular expression.
    #[error("invalid --pattern: {0}")]
    BadPattern(String),
    /// The pattern lacks a required named group.
    #[error(
        "--pattern has no named group `{0}`: it needs (?P<test_case_id>...) and (?P<result>...)"
    )]
    MissingGroup(&'static str),
}

/// A streaming log parser: feed it bytes, drain results as they complete, finish it for
/// the report.
#[derive(Debug)]
pub struct LogParser {
    splitter: LineSplitter,
    format: Format,
    ktap: Option<ktap::Ktap>,
    lava: Option<lava::Lava>,
    kmsg: Option<kmsg::Kmsg>,
    pattern: Option<pattern::Pattern>,
    out: Out,
    prefilter: Prefilter,
}

impl LogParser {
    /// A parser for `opts`; fails only on a bad or missing pattern.
    pub fn new(opts: ParserOptions) -> Result<Self, ParseSetupError> {
        let mut out = Out::new(opts.keep_tree, opts.progress);
        let f = opts.format;
        let pattern = match (&opts.pattern, f) {
            (None, Format::Pattern) => return Err(ParseSetupError::PatternRequired),
            (Some(spec), Format::Pattern | Format::Auto) => Some(pattern::Pattern::new(spec)?),
            _ => None,
        };
        Ok(LogParser {
            splitter: LineSplitter::default(),
            format: f,
            ktap: matches!(f, Format::Auto | Format::Ktap)
                .then(|| ktap::Ktap::new(f == Format::Ktap)),
            lava: matches!(f, Format::Auto | Format::Lava).then(lava::Lava::new),
            kmsg: matches!(f, Format::Auto | Format::Kmsg).then(|| kmsg::Kmsg::new(&mut out)),
            pattern,
            out,
            prefilter: Prefilter::new(),
        })
    }

    /// Feeds the next bytes of the log, cut anywhere.
    pub fn feed(&mut self, bytes: &[u8]) {
        let LogParser {
            splitter,
            ktap,
            lava,
            kmsg,
            pattern,
            out,
            prefilter,
            ..
        } = self;
        prefilter.reset();
        splitter.feed(bytes, |line| {
            let kinds = prefilter.kinds(&line, bytes);
            dispatch(&line, kinds, ktap, lava, kmsg, pattern, out);
        });
    }

    /// Results completed since the last call, in the order they completed (members before
    /// their group). Empty when [`ParserOptions::progress`] is off.
    pub fn drain_completed(&mut self) -> Vec<Completed> {
        // The next batch is likely as large as this one: one allocation instead of many.
        let next = Vec::with_capacity(self.out.queue.len().min(1 << 16));
        std::mem::replace(&mut self.out.queue, next)
    }

    /// Like [`LogParser::drain_completed`], appending to `into`: a consumer that clears and
    /// reuses its vector spares an allocation per batch (when `into` is empty the two
    /// vectors are swapped, no result is copied).
    pub fn drain_completed_into(&mut self, into: &mut Vec<Completed>) {
        if into.is_empty() {
            std::mem::swap(into, &mut self.out.queue);
        } else {
            into.append(&mut self.out.queue);
        }
    }

    /// Number of lines seen so far.
    pub fn lines(&self) -> u64 {
        self.splitter.lines()
    }

    /// Ends the log: the last unterminated line is parsed, open tests become `incomplete`,
    /// and the report is built. Results completed by this call are still queued for
    /// `drain_completed`; use [`LogParser::finish_with_completed`] to get them.
    pub fn finish(self) -> ParseReport {
        self.finish_with_completed().0
    }

    /// Like [`LogParser::finish`], also returning the results that completed at the end
    /// (for a caller that drains results as they come).
    pub fn finish_with_completed(mut self) -> (ParseReport, Vec<Completed>) {
        {
            let LogParser {
                splitter,
                ktap,
                lava,
                kmsg,
                pattern,
                out,
                prefilter,
                ..
            } = &mut self;
            splitter.finish(|line| {
                let kinds = prefilter.kinds(&line, &[]);
                dispatch(&line, kinds, ktap, lava, kmsg, pattern, out);
            });
        }
        let last = self.splitter.lines();
        let out = &mut self.out;
        let mut parts: Vec<(Children, bool)> = Vec::new();
        let mut seen = false;
        if let Some(mut k) = self.ktap.take() {
            k.finish(last, out);
            seen |= k.seen;
            if !k.seen && self.format == Format::Ktap {
                out.issues.push(0, "no KTAP or TAP output found in the log");
            }
            parts.push((k.top, k.cut));
        }
        if let Some(mut l) = self.lava.take() {
            l.finish(last, out);
            seen |= l.seen;
            if !l.seen && self.format == Format::Lava {
                out.issues.push(0, "no LAVA test signals found in the log");
            }
            parts.push((l.top, l.cut));
        }
        if let Some(p) = self.pattern.take() {
            if p.top.count == 0 && self.format == Format::Pattern {
                out.issues.push(0, "the pattern matched no line of the log");
            }
            seen |= p.top.count > 0;
            parts.push((p.top, false));
        }
        if let Some(mut m) = self.kmsg.take() {
            m.finish(last, out);
            seen |= m.seen;
            if !m.seen && self.format == Format::Kmsg {
                out.issues.push(
                    0,
                    "no kernel start line and no kernel problem found in the log",
                );
            }
            parts.push((m.top, false));
        }
        if !seen && self.format == Format::Auto {
            out.issues.push(
                0,
                "no test results found: no KTAP/TAP output, LAVA signals or kernel messages",
            );
        }
        let mut tally = Tally::default();
        let mut cut = false;
        let mut all = Children::default();
        for (children, c) in parts {
            cut |= c;
            tally.merge(&children.tally);
            for mut node in children.nodes {
                node.name = all.unique_name(true, node.name);
                all.nodes.push(node);
            }
        }
        let result = if out.any_fail {
            NodeResult::Fail
        } else {
            match tally.result() {
                None => NodeResult::Incomplete,
                Some(_) if cut => NodeResult::Incomplete,
                Some(r) => r,
            }
        };
        let completed = std::mem::take(&mut out.queue);
        let mut errors = std::mem::take(&mut out.issues).into_vec();
        // The tree in the shape the coordinator stores: the parsers made the names valid
        // and unique already; what remains is nesting deeper than the common limit.
        let mut tests = all.nodes;
        let shaped = normalise::normalise(&mut tests, normalise::MAX_DEPTH);
        if shaped.changes.flattened > 0 {
            // First, so that a reader of the first few issues (the agent keeps 20) sees it.
            errors.insert(
                0,
                ParseIssue {
                    line: 0,
                    message: format!(
                        "{} tests nested deeper than {} levels were moved up to level {}, their path kept in their name",
                        shaped.changes.flattened,
                        normalise::MAX_DEPTH,
                        normalise::MAX_DEPTH
                    ),
                },
            );
        }
        let report = ParseReport {
            result,
            counts: out.counts,
            tests,
            errors,
        };
        (report, completed)
    }
}

#[inline]
fn dispatch(
    line: &Line<'_>,
    kinds: u8,
    ktap: &mut Option<ktap::Ktap>,
    lava: &mut Option<lava::Lava>,
    kmsg: &mut Option<kmsg::Kmsg>,
    pattern: &mut Option<pattern::Pattern>,
    out: &mut Out,
) {
    if line.truncated {
        out.issues.push(
            line.no,
            format!(
                "line longer than {} bytes: the rest was dropped",
                line::MAX_LINE
            ),
        );
    }
    if let Some(k) = ktap {
        k.line(line, kinds, out);
    }
    if let Some(l) = lava {
        l.line(line, kinds, out);
    }
    if let Some(m) = kmsg {
        m.line(line, kinds, out);
    }
    if let Some(p) = pattern {
        p.line(line, out);
    }
}

/// Parses a whole log held in memory (a convenience for tests and small logs).
pub fn parse_bytes(opts: ParserOptions, log: &[u8]) -> Result<ParseReport, ParseSetupError> {
    let mut p = LogParser::new(opts)?;
    p.feed(log);
    Ok(p.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_is_send() {
        fn is_send<T: Send>() {}
        is_send::<LogParser>();
    }

    #[test]
    fn nesting_and_issues_are_bounded() {
        let mut log = String::from("KTAP version 1\n");
        for depth in 1..300 {
            log.push_str(&" ".repeat(depth * 2));
            log.push_str("KTAP version 1\n");
        }
        for _ in 0..1000 {
            log.push_str("1..2\n1..3\n");
        }
        let r = parse_bytes(ParserOptions::default(), log.as_bytes()).expect("parser");
        assert!(r.errors.len() <= report::MAX_ISSUES + 2);
        assert!(
            r.errors
                .iter()
                .any(|e| e.message.contains("deeper than 256 levels: line ignored"))
        );
        assert!(
            r.errors[0]
                .message
                .contains("deeper than 32 levels were moved up"),
            "{:?}",
            r.errors[0]
        );
        assert!(normalise::depth(&r.tests) <= normalise::MAX_DEPTH);
        assert!(
            r.errors
                .last()
                .is_some_and(|e| e.message.ends_with("more issues not shown"))
        );
        assert_eq!(r.result, NodeResult::Incomplete);
    }

    #[test]
    fn a_cut_suite_counts_every_test_its_plan_promised_within_a_bound() {
        let log = b"KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: s\n    1..5\n    ok 1 a\n[ 1.0] Kernel panic\n";
        let r = parse_bytes(ParserOptions::default(), log).expect("parser");
        assert_eq!((r.counts.pass, r.counts.incomplete), (1, 4), "{r:?}");
        let hostile = b"KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: s\n    1..4000000000\n    ok 1 a\n";
        let r = parse_bytes(ParserOptions::default(), hostile).expect("parser");
        assert_eq!(r.counts.incomplete, 1 + ktap::MAX_MISSING);
        assert!(
            r.errors
                .iter()
                .any(|e| e.message.contains("more missing subtests")),
            "{:?}",
            r.errors
        );
    }

    #[test]
    fn results_are_handed_out_as_they_complete() {
        let mut p = LogParser::new(ParserOptions::default()).expect("parser");
        p.feed(b"KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: suite\n    1..2\n");
        p.feed(b"    ok 1 first\n");
        let first = p.drain_completed();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].node.name, "first");
        assert_eq!(&*first[0].path, &["suite".to_string()]);
        assert!(first[0].leaf);
        p.feed(b"    not ok 2 second\nnot ok 1 suite\n");
        let rest = p.drain_completed();
        let names: Vec<&str> = rest.iter().map(|c| c.node.name.as_str()).collect();
        assert_eq!(names, ["second", "suite"]);
        assert_eq!(rest[0].parent, Some(rest[1].id));
        assert_eq!(rest[1].parent, None);
        assert!(!rest[1].leaf);
        let mut into = Vec::new();
        p.drain_completed_into(&mut into);
        assert!(into.is_empty());
        let r = p.finish();
        assert_eq!(r.result, NodeResult::Fail);
        assert_eq!(r.counts.fail, 1);
        assert_eq!(r.counts.pass, 1);
    }

    #[test]
    fn pattern_errors_name_the_problem() {
        let opts = |re: &str| ParserOptions {
            format: Format::Pattern,
            pattern: Some(PatternSpec::new(re)),
            ..ParserOptions::default()
        };
        let e = LogParser::new(opts("(?P<result>x)"))
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("`test_case_id`"), "{e}");
        let e = LogParser::new(opts("(")).map(|_| ()).unwrap_err();
        assert!(e.to_string().starts_with("invalid --pattern"), "{e}");
        let e = LogParser::new(ParserOptions {
            format: Format::Pattern,
            ..ParserOptions::default()
        })
        .map(|_| ())
        .unwrap_err();
        assert_eq!(e, ParseSetupError::PatternRequired);
    }
}
