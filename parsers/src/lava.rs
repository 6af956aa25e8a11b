//! LAVA test signals on a console: `<LAVA_SIGNAL_STARTRUN ...>`, `ENDRUN`, `TESTCASE`,
//! `TESTSET START/STOP`, `STARTTC/ENDTC`, `TESTREFERENCE` and `TESTRAISE`, found anywhere
//! in a line (console output often runs into them).
//!
//! Each run (`STARTRUN 0_smoke 123_1.2`) is a top-level group named after the test
//! definition (`0_smoke`); test sets are groups inside it; test cases are leaves. Results
//! `pass`, `fail`, `skip` map to themselves and `unknown` to `incomplete`. A run without
//! its `ENDRUN` (the log was cut) is `incomplete`, and so is a test case started with
//! `STARTTC` whose run was cut before its result came. The lines a test case logged
//! between `STARTTC` and `ENDTC` become the `log_excerpt` of a result other than `pass`.

use crate::line::{Line, lossy, trim};
use crate::prefilter::LAVA;
use crate::report::{Children, Excerpt, Name, Out, child_path};
use labwire_common::{NodeResult, TestNode};
use memchr::{memchr, memmem};
use std::sync::Arc;

/// The lines a test case logged between `STARTTC` and `ENDTC` (bounded).
#[derive(Debug)]
struct TestCaseLog {
    name: String,
    has_result: bool,
    log: Excerpt,
}

#[derive(Debug)]
struct Group {
    id: u64,
    name: String,
    children: Children,
    /// Path handed out with the members' results.
    path: Arc<[Name]>,
}

/// The LAVA signal detector.
#[derive(Debug)]
pub(crate) struct Lava {
    finder: memmem::Finder<'static>,
    run: Option<Group>,
    set: Option<Group>,
    /// A `STARTTC` whose `ENDTC` has not come.
    open_tc: Option<TestCaseLog>,
    /// The last test case closed by `ENDTC`, waiting for its result.
    last_tc: Option<TestCaseLog>,
    pub(crate) top: Children,
    pub(crate) seen: bool,
    pub(crate) cut: bool,
    root_path: Arc<[Name]>,
}

const PREFIX: &[u8] = b"<LAVA_SIGNAL_";

impl Lava {
    pub(crate) fn new() -> Self {
        Lava {
            finder: memmem::Finder::new(PREFIX),
            run: None,
            set: None,
            open_tc: None,
            last_tc: None,
            top: Children::default(),
            seen: false,
            cut: false,
            root_path: Arc::from(Vec::new()),
        }
    }

    #[inline]
    pub(crate) fn line(&mut self, line: &Line<'_>, kinds: u8, out: &mut Out) {
        if kinds & LAVA != 0 {
            self.signals(line, out);
        } else if let Some(tc) = &mut self.open_tc {
            tc.log.push(line.bytes);
        }
    }

    /// A line with at least one signal.
    #[inline(never)]
    fn signals(&mut self, line: &Line<'_>, out: &mut Out) {
        let mut rest = line.bytes;
        let Some(first) = self.finder.find(rest) else {
            return;
        };
        let mut next = Some(first);
        while let Some(pos) = next {
            let sig = &rest[pos + PREFIX.len()..];
            let Some(end) = memchr(b'>', sig) else {
                out.issues
                    .push(line.no, "LAVA signal without its closing `>`");
                return;
            };
            self.signal(line.no, &sig[..end], out);
            rest = &sig[end + 1..];
            next = self.finder.find(rest);
        }
    }

    fn signal(&mut self, no: u64, sig: &[u8], out: &mut Out) {
        self.seen = true;
        let (kind, args) = match memchr(b' ', sig) {
            Some(i) => (&sig[..i], trim(&sig[i + 1..])),
            None => (sig, &b""[..]),
        };
        let text = lossy;
        match kind {
            b"STARTRUN" => {
                let name = text(args.split(|&b| b == b' ').next().unwrap_or_default());
                if self.run.is_some() {
                    out.issues.push(
                        no,
                        format!("STARTRUN {name} before the previous run's ENDRUN"),
                    );
                    self.close_run(no, Some("no ENDRUN: another run started"), out);
                }
                let name = if name.is_empty() {
                    "lava".to_string()
                } else {
                    name
                };
                let path = child_path(&self.root_path, Name::from(name.as_str()));
                self.run = Some(Group {
                    id: out.new_id(),
                    name,
                    children: Children::default(),
                    path,
                });
            }
            b"ENDRUN" => {
                if self.run.is_none() {
                    out.issues.push(no, "ENDRUN without STARTRUN");
                }
                if self.set.is_some() {
                    out.issues.push(no, "ENDRUN inside a test set: set closed");
                    self.close_set(no, None, out);
                }
                self.open_tc = None;
                self.last_tc = None;
                self.close_run(no, None, out);
            }
            b"TESTSET" => {
                if let Some(name) = args.strip_prefix(b"START") {
                    if self.set.is_some() {
                        out.issues
                            .push(no, "TESTSET START inside a test set: set closed");
                        self.close_set(no, None, out);
                    }
                    let name = text(trim(name));
                    let parent = self.run.as_ref().map_or(&self.root_path, |r| &r.path);
                    let path = child_path(parent, Name::from(name.as_str()));
                    self.set = Some(Group {
                        id: out.new_id(),
                        name,
                        children: Children::default(),
                        path,
                    });
                } else if args.starts_with(b"STOP") {
                    if self.set.is_none() {
                        out.issues.push(no, "TESTSET STOP without START");
                    }
                    self.close_set(no, None, out);
                } else {
                    out.issues
                        .push(no, format!("bad TESTSET signal `{}`", text(args)));
                }
            }
            b"TESTCASE" | b"TESTREFERENCE" => self.testcase(no, args, out),
            b"STARTTC" => {
                self.open_tc = Some(TestCaseLog {
                    name: text(args),
                    has_result: false,
                    log: Excerpt::default(),
                });
            }
            b"ENDTC" => self.last_tc = self.open_tc.take(),
            b"TESTRAISE" => {
                let msg = format!("lava-test-raise: {}", text(args));
                out.issues.push(no, msg.clone());
                self.cut(no, &msg, out);
            }
            _ => out
                .issues
                .push(no, format!("unknown LAVA signal `{}`", text(kind))),
        }
    }

    fn testcase(&mut self, no: u64, args: &[u8], out: &mut Out) {
        let (mut id, mut result, mut measurement, mut units) = (None, None, None, None);
        for kv in args.split(|&b| b == b' ').filter(|s| !s.is_empty()) {
            let Some(eq) = memchr(b'=', kv) else {
                continue;
            };
            let value = lossy(&kv[eq + 1..]);
            match &kv[..eq] {
                b"TEST_CASE_ID" => id = Some(value),
                b"RESULT" => result = Some(value),
                b"MEASUREMENT" => measurement = Some(value),
                b"UNITS" => units = Some(value),
                _ => {}
            }
        }
        let (Some(id), Some(word)) = (id, result) else {
            out.issues
                .push(no, "LAVA test case without TEST_CASE_ID or RESULT ignored");
            return;
        };
        let mut node = TestNode::leaf(id, NodeResult::Incomplete);
        match word.to_ascii_lowercase().as_str() {
            "pass" => node.result = NodeResult::Pass,
            "fail" => node.result = NodeResult::Fail,
            "skip" => node.result = NodeResult::Skip,
            "unknown" => node.error = Some("LAVA reported the result as unknown".into()),
            _ => {
                out.issues
                    .push(no, format!("{}: unknown LAVA result `{word}`", node.name));
                node.error = Some(format!("unknown LAVA result `{word}`"));
            }
        }
        if let Some(m) = measurement {
            match m.parse::<f64>() {
                Ok(v) if v.is_finite() => {
                    node.measurement = Some(v);
                    node.units = units;
                }
                _ => out.issues.push(
                    no,
                    format!("{}: measurement `{m}` is not a number", node.name),
                ),
            }
        }
        // The lines between STARTTC and ENDTC explain a failure.
        if let Some(tc) = self.open_tc.as_mut().filter(|t| t.name == node.name) {
            tc.has_result = true;
            if node.result != NodeResult::Pass {
                node.log_excerpt = tc.log.text();
            }
        } else if let Some(tc) = self.last_tc.take_if(|t| t.name == node.name)
            && node.result != NodeResult::Pass
        {
            node.log_excerpt = tc.log.text();
        }
        self.add_leaf(no, node, out);
    }

    fn add_leaf(&mut self, no: u64, mut node: TestNode, out: &mut Out) {
        let keep = out.keep_tree;
        let id = out.new_id();
        let (parent, path, children) = match (&mut self.set, &mut self.run) {
            (Some(g), _) | (None, Some(g)) => (Some(g.id), &g.path, &mut g.children),
            (None, None) => (None, &self.root_path, &mut self.top),
        };
        node.name = children.unique_name(keep, node.name);
        let result = node.result;
        children.record(result, out.emit_owned(id, parent, path, node, true, no));
    }

    fn close_set(&mut self, no: u64, error: Option<&str>, out: &mut Out) {
        let Some(set) = self.set.take() else {
            return;
        };
        let keep = out.keep_tree;
        let (parent, path, children) = match &mut self.run {
            Some(r) => (Some(r.id), &r.path, &mut r.children),
            None => (None, &self.root_path, &mut self.top),
        };
        close_group(set, parent, path, children, error, no, keep, out);
    }

    fn close_run(&mut self, no: u64, error: Option<&str>, out: &mut Out) {
        let Some(run) = self.run.take() else {
            return;
        };
        let keep = out.keep_tree;
        close_group(
            run,
            None,
            &self.root_path,
            &mut self.top,
            error,
            no,
            keep,
            out,
        );
    }

    /// The run stopped before its end: open test case, set and run are incomplete.
    fn cut(&mut self, no: u64, reason: &str, out: &mut Out) {
        if self.run.is_none() && self.set.is_none() {
            return;
        }
        self.cut = true;
        if let Some(tc) = self.open_tc.take().filter(|t| !t.has_result) {
            let mut node = TestNode::leaf(tc.name, NodeResult::Incomplete);
            node.error = Some(reason.to_string());
            node.log_excerpt = tc.log.text();
            self.add_leaf(no, node, out);
        }
        self.close_set(no, Some(reason), out);
        self.close_run(no, Some(reason), out);
    }

    pub(crate) fn finish(&mut self, last_line: u64, out: &mut Out) {
        self.cut(
            last_line,
            "no ENDRUN: the log ended while the test run was going on",
            out,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn close_group(
    g: Group,
    parent: Option<u64>,
    path: &Arc<[Name]>,
    siblings: &mut Children,
    error: Option<&str>,
    no: u64,
    keep: bool,
    out: &mut Out,
) {
    let result = match (error, g.children.tally.result()) {
        (Some(_), _) => NodeResult::Incomplete,
        (None, Some(r)) => r,
        (None, None) => NodeResult::Skip,
    };
    let mut node = TestNode::leaf(siblings.unique_name(keep, g.name), result);
    node.error = match (error, g.children.count) {
        (Some(e), _) => Some(e.to_string()),
        (None, 0) => Some("no test case reported".to_string()),
        (None, _) => None,
    };
    out.emit(g.id, parent, path, &node, g.children.count == 0, no);
    node.tests = g.children.nodes;
    siblings.push(keep, node);
}
