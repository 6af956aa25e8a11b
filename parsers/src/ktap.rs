//! KTAP (v1, v2) and TAP (13, 14) as KUnit and kselftest print them, parsed line by line
//! as the log streams in.
//!
//! A document starts at a version line (`KTAP version 1`, `TAP version 13`); whatever
//! precedes the keyword on that line is its lead-in ([`LeadIn`]), stripped from every
//! following line. Lines that lack the lead-in are not KTAP (other console output) unless
//! they hold a new version line, which starts a new document.
//!
//! Nesting follows what the kernel's own tools accept:
//! - a version line or a `# Subtest: name` header opens a subtest, and the result line
//!   that closes it is the first one less indented than its lines (KUnit, the KTAP spec);
//! - kselftest's runner prefixes the output of each test program with `# `, so
//!   `# TAP version 13`, `# 1..3`, `# ok 1 x` are one level deeper than `ok 1 prog`;
//! - without indentation, a subtest ends when its plan is met or when a result line names
//!   it (`# Subtest: foo` ... `ok 1 foo`).
//!
//! A subtest whose result line never comes (the kernel crashed, the log was cut) is
//! `incomplete` with an error; when its plan says more tests were due, the test that was
//! running is added as an `incomplete` leaf named by its number, with the lines logged
//! since the last result (often the crash) as its excerpt, and so is every later test the
//! plan promised (named by its number, "missing expected subtest", as kunit.py counts
//! them; at most [`MAX_MISSING`] per subtest, the rest counted in an issue). Plans are
//! optional; a plan that is not met makes a passing group `incomplete` and is reported.

mod close;
mod syntax;

/// Most missing tests listed for one cut subtest (a plan can promise billions).
pub(crate) const MAX_MISSING: u64 = 1000;

use crate::line::{LeadIn, Line, indent, lossy, strip_printk, trim};
use crate::prefilter::VERSION;
use crate::report::{Children, CompletedNode, Details, Excerpt, Name, Out, child_path};
use labwire_common::{NodeResult, TestNode};
use memchr::memmem;
use std::sync::Arc;
use syntax::{Kind, Level, ResultLine, classify, structural};

/// Deepest nesting followed; deeper version lines are reported and ignored. The report's
/// tree is then flattened to [`labwire_common::normalise::MAX_DEPTH`] levels (see
/// `LogParser::finish`), so tests down to this depth keep their place and their path. Each
/// open level keeps at most 16 KiB of log, so this also bounds the parser's memory.
const MAX_DEPTH: usize = 256;

const END_REASON: &str =
    "no result line: the log ended while this test ran (kernel crash, timeout or cut log)";
const OUTER_REASON: &str = "no result line: the log went on with an outer test";
const NEWDOC_REASON: &str = "no result line: a new KTAP/TAP document started";

/// One open test level: the document's root or a subtest.
#[derive(Debug)]
struct Block {
    id: u64,
    root: bool,
    /// Indentation of the block's lines, once known.
    level: Option<Level>,
    /// Indentation of the line that opened it.
    header_level: Level,
    has_version: bool,
    name: Option<String>,
    plan: Option<u64>,
    done: u64,
    /// KTAP v2 `#:ktap_test:` name for the next result.
    hint: Option<String>,
    bailed: Option<String>,
    children: Children,
    /// Lines since the last result at this level.
    diag: Excerpt,
    /// Path handed out with the members' results, built when first needed.
    path: Option<Arc<[Name]>>,
    /// Its number among its parent's tests, for its path until its name is known.
    number: u64,
    line: u64,
}

impl Block {
    #[inline]
    fn eff_level(&self) -> Level {
        self.level.unwrap_or(self.header_level)
    }

    #[inline]
    fn fresh(&self) -> bool {
        self.plan.is_none() && self.done == 0
    }
}

/// The KTAP/TAP detector.
#[derive(Debug)]
pub(crate) struct Ktap {
    /// Results and plans without a version line start a document (`--format ktap`).
    implicit: bool,
    leadin: Option<LeadIn>,
    stack: Vec<Block>,
    /// Members of the documents' roots: the top-level tests.
    pub(crate) top: Children,
    /// A document was cut short (a top-level plan not met, a bail-out).
    pub(crate) cut: bool,
    /// A version line (or, with `implicit`, a result) was seen.
    pub(crate) seen: bool,
    version: memmem::Finder<'static>,
    ok: memmem::Finder<'static>,
    root_path: Arc<[Name]>,
}

impl Ktap {
    pub(crate) fn new(implicit: bool) -> Self {
        Ktap {
            implicit,
            leadin: None,
            stack: Vec::new(),
            top: Children::default(),
            cut: false,
            seen: false,
            version: memmem::Finder::new(b"TAP version "),
            ok: memmem::Finder::new(b"ok "),
            root_path: Arc::from(Vec::new()),
        }
    }

    /// Handles one line of the log.
    #[inline]
    pub(crate) fn line(&mut self, line: &Line<'_>, kinds: u8, out: &mut Out) {
        let raw = line.bytes;
        if let Some(body) = self.leadin.as_ref().and_then(|l| l.strip(raw)) {
            let (level, kind) = classify(body);
            if !matches!(kind, Kind::Other) {
                self.structural(line.no, raw, level, kind, out);
                return;
            }
        }
        if kinds & VERSION != 0
            && let Some(start) = self.version_at(raw)
        {
            self.new_document(line.no, raw, start, out);
            return;
        }
        if self.implicit && self.stack.is_empty() && self.implicit_start(line.no, raw, out) {
            return;
        }
        if let Some(top) = self.stack.last_mut() {
            top.diag.push(raw);
        }
    }

    /// End of the log: open tests are incomplete.
    pub(crate) fn finish(&mut self, last_line: u64, out: &mut Out) {
        self.end_document(last_line, END_REASON, out);
    }

    /// Where a version line starts in `raw` (`KTAP version N` / `TAP version N` with
    /// nothing after the number).
    fn version_at(&self, raw: &[u8]) -> Option<usize> {
        let pos = self.version.find(raw)?;
        let after = &raw[pos + b"TAP version ".len()..];
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || !trim(&after[digits..]).is_empty() {
            return None;
        }
        Some(if pos > 0 && raw[pos - 1] == b'K' {
            pos - 1
        } else {
            pos
        })
    }

    fn new_document(&mut self, no: u64, raw: &[u8], start: usize, out: &mut Out) {
        self.end_document(no, NEWDOC_REASON, out);
        let leadin = LeadIn::learn(&raw[..start]);
        let body = leadin.strip(raw).unwrap_or(&raw[start..]);
        let (level, _) = classify(body);
        self.leadin = Some(leadin);
        self.start_root(no, level, out);
    }

    /// `--format ktap`: a result or plan line before any version line starts a document.
    fn implicit_start(&mut self, no: u64, raw: &[u8], out: &mut Out) -> bool {
        let start = if let Some(pos) = self.ok.find(raw) {
            let s = if pos >= 4 && &raw[pos - 4..pos] == b"not " {
                pos - 4
            } else {
                pos
            };
            if !raw[pos + 3..].first().is_some_and(u8::is_ascii_digit) {
                return false;
            }
            s
        } else {
            let body = strip_printk(raw);
            let (_, rest) = indent(body);
            if !matches!(structural(rest), Some(Kind::Plan(_))) {
                return false;
            }
            raw.len() - rest.len()
        };
        let leadin = LeadIn::learn(&raw[..start]);
        let Some(body) = leadin.strip(raw) else {
            return false;
        };
        let (level, kind) = classify(body);
        if !matches!(kind, Kind::Result(_) | Kind::Plan(_)) {
            return false;
        }
        out.issues.push(
            no,
            "no KTAP/TAP version line before the first result: parsing from here",
        );
        self.leadin = Some(leadin);
        self.start_root(no, level, out);
        self.structural(no, raw, level, kind, out);
        true
    }

    fn start_root(&mut self, no: u64, level: Level, out: &mut Out) {
        self.seen = true;
        let id = out.new_id();
        self.stack.push(Block {
            id,
            root: true,
            level: Some(level),
            header_level: level,
            has_version: true,
            name: None,
            plan: None,
            done: 0,
            hint: None,
            bailed: None,
            children: Children::default(),
            diag: Excerpt::default(),
            path: Some(Arc::clone(&self.root_path)),
            number: 0,
            line: no,
        });
    }

    fn structural(&mut self, no: u64, raw: &[u8], level: Level, kind: Kind<'_>, out: &mut Out) {
        if self.stack.is_empty() {
            match kind {
                Kind::Version => self.start_root(no, level, out),
                Kind::Result(_) | Kind::Plan(_) if self.implicit => {
                    self.start_root(no, level, out);
                    self.structural(no, raw, level, kind, out);
                }
                _ => {}
            }
            return;
        }
        match kind {
            Kind::Version => self.on_version(no, level, out),
            Kind::Plan(n) => self.on_plan(no, level, n, out),
            Kind::Result(r) => self.on_result(no, raw, level, r, out),
            Kind::Subtest(name) => self.on_header(no, level, name, out),
            Kind::Meta(key, value) => self.on_meta(key, value),
            Kind::BailOut(reason) => self.on_bail(no, raw, level, reason, out),
            Kind::Other => {}
        }
    }

    fn on_version(&mut self, no: u64, level: Level, out: &mut Out) {
        let n = self.stack.len();
        let top = &mut self.stack[n - 1];
        if !top.root && !top.has_version && top.fresh() && level >= top.header_level {
            // `# Subtest: name` then the subtest's version line.
            top.has_version = true;
            top.level = Some(level);
            return;
        }
        if top.root && n == 1 && top.fresh() && level == top.header_level {
            return; // a repeated version line
        }
        let mut popped = false;
        while self.stack.len() > 1 && level < self.top_block().eff_level() {
            self.cut_top(no, OUTER_REASON, out);
            popped = true;
        }
        let root = &self.stack[0];
        let root_done = root.plan.map_or(root.done > 0, |p| root.done >= p);
        let at_root = self.stack.len() == 1 && level == root.eff_level();
        if popped || level < root.eff_level() || (at_root && root_done) {
            self.end_document(no, NEWDOC_REASON, out);
            self.start_root(no, level, out);
            return;
        }
        self.push_block(no, level, true, None, out);
    }

    fn on_plan(&mut self, no: u64, level: Level, n: u64, out: &mut Out) {
        let top = self.top_block_mut();
        if top.plan.is_none() {
            if top.done == 0 {
                if top.level.is_none() {
                    top.level = Some(level);
                }
                top.plan = Some(n);
                return;
            }
            if level == top.eff_level() {
                // TAP allows the plan after the results.
                top.plan = Some(n);
                return;
            }
        }
        if level > top.eff_level() && self.stack.len() < MAX_DEPTH {
            // An indented subtest with neither version line nor header (TAP 14).
            if self.push_block(no, level, false, None, out) {
                self.top_block_mut().plan = Some(n);
            }
            return;
        }
        out.issues
            .push(no, format!("unexpected plan line 1..{n} ignored"));
    }

    fn on_header(&mut self, no: u64, level: Level, name: &[u8], out: &mut Out) {
        let name = lossy(name);
        let top = self.top_block_mut();
        if !top.root && top.has_version && top.fresh() && top.name.is_none() {
            top.name = Some(name);
            self.rename_top();
            return;
        }
        while self.stack.len() > 1 && level < self.top_block().eff_level() {
            self.cut_top(no, OUTER_REASON, out);
        }
        if self.push_block(no, level, false, Some(name), out) {
            self.top_block_mut().level = None;
        }
    }

    fn on_meta(&mut self, key: &[u8], value: &[u8]) {
        if key != b"ktap_test" {
            return; // other KTAP v2 metadata (arch, speed, file ...) is not kept
        }
        let value = lossy(value);
        let top = self.top_block_mut();
        if top.fresh() && !top.root && top.name.is_none() {
            top.name = Some(value);
            self.rename_top();
        } else if !(top.fresh() && top.root) {
            top.hint = Some(value);
        }
    }

    fn on_bail(&mut self, no: u64, raw: &[u8], level: Level, reason: &[u8], out: &mut Out) {
        let reason = String::from_utf8_lossy(reason);
        let msg = if reason.is_empty() {
            "Bail out!".to_string()
        } else {
            format!("Bail out! {reason}")
        };
        // The innermost open test at or above the bail-out's level gave up.
        while self.stack.len() > 1 && self.top_block().eff_level() > level {
            self.cut_top(no, OUTER_REASON, out);
        }
        let top = self.top_block_mut();
        top.diag.push(raw);
        if top.root {
            out.issues.push(no, format!("the test run gave up: {msg}"));
            self.cut = true;
            self.end_document(no, END_REASON, out);
        } else {
            top.bailed = Some(msg);
        }
    }

    fn on_result(&mut self, no: u64, raw: &[u8], level: Level, r: ResultLine<'_>, out: &mut Out) {
        loop {
            let n = self.stack.len();
            if n == 1 {
                break;
            }
            let top_level = self.stack[n - 1].eff_level();
            let parent_level = self.stack[n - 2].eff_level();
            if level < top_level {
                if level >= parent_level {
                    self.close_top(no, raw, r, out);
                    return;
                }
                self.cut_top(no, OUTER_REASON, out);
                continue;
            }
            let top = &mut self.stack[n - 1];
            if top.level.is_none() {
                top.level = Some(level);
            }
            if top.eff_level() == parent_level {
                // No indentation: the subtest ends when its plan is met or a result names it.
                let plan_met = top.plan.is_some_and(|p| top.done >= p);
                let named =
                    !r.name.is_empty() && top.name.as_deref().map(str::as_bytes) == Some(r.name);
                if plan_met || named {
                    self.close_top(no, raw, r, out);
                    return;
                }
            }
            break;
        }
        self.leaf(no, raw, r, out);
    }

    fn leaf(&mut self, no: u64, raw: &[u8], r: ResultLine<'_>, out: &mut Out) {
        let keep = out.keep_tree;
        let idx = self.stack.len() - 1;
        let b = &mut self.stack[idx];
        b.done += 1;
        check_number(b.done, r.num, no, out);
        let result = r.result();
        let hint = b.hint.take();
        let excerpt = match result {
            NodeResult::Fail => {
                b.diag.push(raw);
                b.diag.text()
            }
            NodeResult::Skip => Some(excerpt_line(raw)),
            NodeResult::Pass | NodeResult::Incomplete => None,
        };
        b.diag.clear();
        let id = out.new_id();
        if out.progress {
            self.ensure_path(idx);
        }
        let b = &mut self.stack[idx];
        let Block {
            root,
            id: block_id,
            path,
            children,
            done,
            ..
        } = b;
        let children = if *root { &mut self.top } else { children };
        let parent = (!*root).then_some(*block_id);
        let path = path.as_ref().unwrap_or(&self.root_path);
        if keep {
            let name = test_name(r.name, hint, r.num, *done);
            let mut node = TestNode::leaf(children.unique_name(keep, name), result);
            node.log_excerpt = excerpt;
            children.record(result, out.emit_owned(id, parent, path, node, true, no));
            return;
        }
        if out.progress {
            // No tree: the name goes straight into the record handed out, no `String`.
            let name = Name::given(r.name)
                .or_else(|| hint.and_then(|h| Name::given(h.as_bytes())))
                .unwrap_or_else(|| Name::number(r.num.unwrap_or(*done)));
            let node = CompletedNode {
                name,
                result,
                details: excerpt.map(|e| {
                    Box::new(Details {
                        log_excerpt: Some(e),
                        ..Details::default()
                    })
                }),
            };
            out.emit_node(id, parent, path, node, true, no);
        } else {
            out.emit_node(
                id,
                parent,
                path,
                CompletedNode::new(Name::default(), result),
                true,
                no,
            );
        }
        children.record(result, None);
    }

    fn push_block(
        &mut self,
        no: u64,
        level: Level,
        version: bool,
        name: Option<String>,
        out: &mut Out,
    ) -> bool {
        if self.stack.len() >= MAX_DEPTH {
            out.issues.push(
                no,
                format!("tests nested deeper than {MAX_DEPTH} levels: line ignored"),
            );
            return false;
        }
        let id = out.new_id();
        let number = self.top_block().done + 1;
        self.stack.push(Block {
            id,
            root: false,
            level: Some(level),
            header_level: level,
            has_version: version,
            name,
            plan: None,
            done: 0,
            hint: None,
            bailed: None,
            children: Children::default(),
            diag: Excerpt::default(),
            path: None,
            number,
            line: no,
        });
        true
    }

    /// Recomputes the innermost block's path after it got its name.
    fn rename_top(&mut self) {
        if let Some(top) = self.stack.last_mut()
            && !top.root
        {
            top.path = None;
        }
    }

    /// Builds the path of block `idx` (and its parents') if not built yet.
    fn ensure_path(&mut self, idx: usize) {
        if self.stack[idx].path.is_some() {
            return;
        }
        if idx == 0 {
            self.stack[0].path = Some(Arc::clone(&self.root_path));
            return;
        }
        self.ensure_path(idx - 1);
        let b = &self.stack[idx];
        let shown = b
            .name
            .as_deref()
            .and_then(|name| Name::given(name.as_bytes()))
            .unwrap_or_else(|| Name::number(b.number));
        let parent = self.stack[idx - 1].path.as_ref().unwrap_or(&self.root_path);
        let path = child_path(parent, shown);
        self.stack[idx].path = Some(path);
    }

    #[inline]
    fn top_block(&self) -> &Block {
        &self.stack[self.stack.len() - 1]
    }

    fn top_block_mut(&mut self) -> &mut Block {
        let n = self.stack.len() - 1;
        &mut self.stack[n]
    }

    fn children_mut(&mut self, idx: usize) -> &mut Children {
        if self.stack[idx].root {
            &mut self.top
        } else {
            &mut self.stack[idx].children
        }
    }
}

/// A group's result from its own result line and its members' aggregate.
fn combine(own: NodeResult, kids: NodeResult) -> NodeResult {
    use NodeResult::*;
    if own == Fail || kids == Fail {
        Fail
    } else if kids == Incomplete {
        Incomplete
    } else if own == Skip {
        Skip
    } else {
        Pass
    }
}

#[inline]
fn check_number(expected: u64, got: Option<u64>, no: u64, out: &mut Out) {
    if let Some(n) = got
        && n != expected
    {
        out.issues
            .push(no, format!("test number {n} where {expected} was expected"));
    }
}

/// A leaf's name: the one on its result line, else its KTAP v2 `#:ktap_test:` name, else
/// its number; each cleaned by the common rule, an empty one skipped.
#[inline]
fn test_name(name: &[u8], hint: Option<String>, num: Option<u64>, position: u64) -> String {
    Name::given(name)
        .or_else(|| hint.and_then(|h| Name::given(h.as_bytes())))
        .map_or_else(|| num.unwrap_or(position).to_string(), String::from)
}

/// The test a KUnit diagnostic names (`# test_name: message`), the first one in `diag`:
/// the name of a test that was cut before its result line.
fn diag_test_name(diag: &Excerpt, leadin: Option<&LeadIn>) -> Option<String> {
    diag.lines().find_map(|raw| {
        let body = leadin.and_then(|l| l.strip(raw)).unwrap_or(raw);
        let rest = body.trim_ascii_start().strip_prefix(b"# ")?;
        let len = rest
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
            .count();
        let name = &rest[..len];
        // Suite attributes (`# module: x`, `# speed: slow`) are not test names.
        (len > 0 && rest[len..].starts_with(b": ") && name != b"module" && name != b"speed")
            .then(|| String::from_utf8_lossy(name).into_owned())
    })
}

fn excerpt_line(raw: &[u8]) -> String {
    let mut s = lossy(&raw[..raw.len().min(crate::report::MAX_EXCERPT_BYTES - 1)]);
    s.push('\n');
    s
}
