//! Kernel messages: whether the kernel started, and the problems it reported (panic,
//! Oops, BUG, WARNING, RCU stall, hung task), as tests of a `kernelmsg` suite.
//!
//! Messages are recognised at their start, after the console's prefixes: printk
//! timestamps, caller ids and syslog levels always, plus the lead-in learned from the
//! kernel's first line (`Linux version ...` / `Booting Linux on physical CPU ...`), and one
//! optional subsystem tag (`watchdog: BUG: soft lockup`, `rcu: INFO: rcu_sched ...`).
//!
//! A problem line opens an incident whose lines are kept (at most 100 lines / 16 KiB)
//! until its end: the end marker (`---[ end trace ... ]---`, `---[ end Kernel panic ...
//! ]---`) for an Oops, panic or WARNING; for other stack dumps (BUG, hung task, RCU stall),
//! `</TASK>` or the first unindented line after `Call trace:`; the next problem; or the
//! bound. The Oops or panic that follows a BUG (or a WARNING, or an Oops) in the same trace
//! belongs to the same incident and is counted too.
//!
//! The suite holds `boot` (`pass` when the kernel start was seen) and one test per
//! problem: `fail` with the first incident as `log_excerpt` and the number of incidents
//! as `measurement` when found, `pass` when not found and the kernel start was seen
//! (without a kernel start, only the problems found are listed).

use crate::line::{LeadIn, Line, strip_printk};
use crate::prefilter::KMSG;
use crate::report::{Children, Excerpt, Name, Out, child_path};
use labwire_common::{NodeResult, TestNode};
use memchr::memmem;
use std::sync::Arc;

/// The name of the suite this module reports.
pub const SUITE: &str = "kernelmsg";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    Panic,
    Oops,
    Bug,
    Warning,
    RcuStall,
    HungTask,
}

impl Problem {
    const ALL: [Problem; 6] = [
        Problem::Panic,
        Problem::Oops,
        Problem::Bug,
        Problem::Warning,
        Problem::RcuStall,
        Problem::HungTask,
    ];

    fn name(self) -> &'static str {
        match self {
            Problem::Panic => "panic",
            Problem::Oops => "oops",
            Problem::Bug => "bug",
            Problem::Warning => "warning",
            Problem::RcuStall => "rcu_stall",
            Problem::HungTask => "hung_task",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
struct Found {
    count: u64,
    excerpt: Option<String>,
    /// Id it was handed out with, once handed out.
    id: Option<u64>,
}

#[derive(Debug)]
struct Incident {
    kinds: [bool; 6],
    lines: Excerpt,
    /// Started with arm's `Unable to handle kernel ...`.
    unable: bool,
    /// Saw arm's `Internal error: Oops`.
    internal_error: bool,
    /// Saw `Call Trace:`.
    call_trace: bool,
}

/// Which line of a problem a trigger is, where it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Unable,
    InternalError,
    Other,
}

/// The kernel message detector.
#[derive(Debug)]
pub(crate) struct Kmsg {
    linux: memmem::Finder<'static>,
    leadin: Option<LeadIn>,
    boots: u64,
    last_boot_line: u64,
    boot_excerpt: Option<String>,
    boot_id: Option<u64>,
    found: [Found; 6],
    incident: Option<Incident>,
    /// The last `cut here` line and its number.
    cut_here: Option<(u64, Vec<u8>)>,
    suite_id: u64,
    path: Arc<[Name]>,
    root_path: Arc<[Name]>,
    pub(crate) top: Children,
    pub(crate) seen: bool,
}

impl Kmsg {
    pub(crate) fn new(out: &mut Out) -> Self {
        let root_path: Arc<[Name]> = Arc::from(Vec::new());
        Kmsg {
            linux: memmem::Finder::new(b"Linux "),
            leadin: None,
            boots: 0,
            last_boot_line: 0,
            boot_excerpt: None,
            boot_id: None,
            found: Default::default(),
            incident: None,
            cut_here: None,
            suite_id: out.new_id(),
            path: child_path(&root_path, Name::from(SUITE)),
            root_path,
            top: Children::default(),
            seen: false,
        }
    }

    #[inline]
    pub(crate) fn line(&mut self, line: &Line<'_>, kinds: u8, out: &mut Out) {
        if self.incident.is_some() || kinds & KMSG != 0 {
            self.candidate(line, out);
        }
    }

    /// A line that may matter: it holds one of the prefilter's kernel words, or a problem
    /// is being captured.
    #[inline(never)]
    fn candidate(&mut self, line: &Line<'_>, out: &mut Out) {
        let raw = line.bytes;
        if let Some(pos) = self.linux.find(raw) {
            self.kernel_start(line.no, raw, pos, out);
        }
        let msg = match self.leadin.as_ref().and_then(|l| l.strip(raw)) {
            // The lead-in stops before the blank that separates it from the message.
            Some(rest) => strip_printk(rest.strip_prefix(b" ").unwrap_or(rest)),
            None => strip_printk(raw),
        };
        let body = msg.trim_ascii_start();
        let trigger = trigger(body);
        if let Some(inc) = &mut self.incident {
            match trigger {
                Some((_, Marker::InternalError)) if inc.unable && !inc.internal_error => {
                    // arm's `Internal error: Oops` after `Unable to handle kernel ...`.
                    inc.internal_error = true;
                    inc.lines.push(raw);
                }
                Some((p, _))
                    if !inc.kinds[p.index()] && matches!(p, Problem::Oops | Problem::Panic) =>
                {
                    // The Oops or panic that a BUG, an Oops or a warning led to.
                    inc.kinds[p.index()] = true;
                    inc.lines.push(raw);
                    self.found[p.index()].count += 1;
                }
                Some(_) => self.close_incident(line.no, out),
                None => {
                    let end_marker = inc.kinds[Problem::Oops.index()]
                        || inc.kinds[Problem::Panic.index()]
                        || inc.kinds[Problem::Warning.index()];
                    let indented = msg.first().is_some_and(u8::is_ascii_whitespace);
                    if !end_marker && inc.call_trace && !indented && !body.starts_with(b"<") {
                        // A stack dump without end marker ends with its last trace line.
                        self.close_incident(line.no, out);
                    } else {
                        inc.lines.push(raw);
                        if body.starts_with(b"Call Trace:") || body.starts_with(b"Call trace:") {
                            inc.call_trace = true;
                        }
                        if body.starts_with(b"---[ end ")
                            || (!end_marker && body.starts_with(b"</TASK>"))
                        {
                            self.close_incident(line.no, out);
                        } else if inc.lines.is_full() {
                            inc.lines.mark_truncated();
                            self.close_incident(line.no, out);
                        }
                    }
                }
            }
        }
        if self.incident.is_none()
            && let Some((p, marker)) = trigger
        {
            self.seen = true;
            let mut lines = Excerpt::default();
            if let Some((cut_no, cut)) = self.cut_here.take()
                && cut_no + 1 == line.no
            {
                lines.push(&cut);
            }
            lines.push(raw);
            let mut kinds = [false; 6];
            kinds[p.index()] = true;
            self.found[p.index()].count += 1;
            self.incident = Some(Incident {
                kinds,
                lines,
                unable: marker == Marker::Unable,
                internal_error: marker == Marker::InternalError,
                call_trace: false,
            });
        }
        if body.starts_with(b"------------[ cut here ]") {
            self.cut_here = Some((line.no, raw.to_vec()));
        }
    }

    fn kernel_start(&mut self, no: u64, raw: &[u8], pos: usize, out: &mut Out) {
        let after = &raw[pos..];
        let start = if after.starts_with(b"Linux version ") {
            pos
        } else if after.starts_with(b"Linux on physical CPU")
            && pos >= 8
            && &raw[pos - 8..pos] == b"Booting "
        {
            pos - 8
        } else {
            return;
        };
        if start > 256 {
            return;
        }
        self.seen = true;
        // arm64 prints `Booting Linux on physical CPU` just before `Linux version`.
        let same_boot = self.boots > 0 && no.saturating_sub(self.last_boot_line) <= 3;
        self.last_boot_line = no;
        self.leadin = Some(LeadIn::learn(&raw[..start]));
        if same_boot {
            return;
        }
        self.boots += 1;
        if self.boots == 1 {
            let mut e = Excerpt::default();
            e.push(raw);
            self.boot_excerpt = e.text();
            let mut node = TestNode::leaf("boot", NodeResult::Pass);
            node.log_excerpt = self.boot_excerpt.clone();
            let id = out.new_id();
            self.boot_id = Some(id);
            out.emit(id, Some(self.suite_id), &self.path, &node, true, no);
        }
    }

    fn close_incident(&mut self, no: u64, out: &mut Out) {
        let Some(inc) = self.incident.take() else {
            return;
        };
        for p in Problem::ALL {
            if !inc.kinds[p.index()] {
                continue;
            }
            let f = &mut self.found[p.index()];
            if f.excerpt.is_none() {
                f.excerpt = inc.lines.text();
            }
            if f.id.is_none() {
                let id = out.new_id();
                f.id = Some(id);
                let node = problem_node(p, f);
                out.emit(id, Some(self.suite_id), &self.path, &node, true, no);
            }
        }
    }

    pub(crate) fn finish(&mut self, last_line: u64, out: &mut Out) {
        self.close_incident(last_line, out);
        if !self.seen {
            return;
        }
        let keep = out.keep_tree;
        let mut members = Children::default();
        if self.boots > 0 {
            let mut boot = TestNode::leaf("boot", NodeResult::Pass);
            boot.log_excerpt = self.boot_excerpt.take();
            if self.boots > 1 {
                boot.error = Some(format!(
                    "the kernel started {} times in this log",
                    self.boots
                ));
            }
            members.push(keep, boot);
        }
        for p in Problem::ALL {
            let f = &self.found[p.index()];
            if f.count > 0 {
                members.push(keep, problem_node(p, f));
            } else if self.boots > 0 {
                let node = TestNode::leaf(p.name(), NodeResult::Pass);
                let id = out.new_id();
                out.emit(id, Some(self.suite_id), &self.path, &node, true, last_line);
                members.push(keep, node);
            }
        }
        let result = members.tally.result().unwrap_or(NodeResult::Skip);
        let mut suite = TestNode::leaf(SUITE, result);
        out.emit(
            self.suite_id,
            None,
            &self.root_path,
            &suite,
            false,
            last_line,
        );
        suite.tests = members.nodes;
        self.top.push(keep, suite);
    }
}

fn problem_node(p: Problem, f: &Found) -> TestNode {
    let mut node = TestNode::leaf(p.name(), NodeResult::Fail);
    node.log_excerpt = f.excerpt.clone();
    node.measurement = Some(f.count as f64);
    node.units = Some("occurrences".into());
    node
}

/// The problem a message (prefixes stripped) reports, if any.
fn trigger(body: &[u8]) -> Option<(Problem, Marker)> {
    trigger_at(body).or_else(|| {
        // One subsystem tag: `watchdog: BUG: soft lockup`, `rcu: INFO: rcu_preempt ...`.
        if !body.first()?.is_ascii_lowercase() {
            return None;
        }
        let tag = body
            .iter()
            .take(24)
            .take_while(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_' || **b == b'-'
            })
            .count();
        body[tag..].strip_prefix(b": ").and_then(trigger_at)
    })
}

fn trigger_at(b: &[u8]) -> Option<(Problem, Marker)> {
    let contains = |needle: &[u8]| memmem::find(b, needle).is_some();
    let p = match *b.first()? {
        b'K' if b.starts_with(b"Kernel panic - not syncing") => Problem::Panic,
        b'O' if b.starts_with(b"Oops") && matches!(b.get(4), Some(b':' | b' ' | b'#')) => {
            Problem::Oops
        }
        b'I' if b.starts_with(b"Internal error: Oops") => {
            return Some((Problem::Oops, Marker::InternalError));
        }
        b'I' if b.starts_with(b"INFO: task ") && contains(b" blocked for more than ") => {
            Problem::HungTask
        }
        b'I' if b.starts_with(b"INFO: rcu_") && contains(b"stall") => Problem::RcuStall,
        b'U' if b.starts_with(b"Unable to handle kernel ") => {
            return Some((Problem::Oops, Marker::Unable));
        }
        b'g' if b.starts_with(b"general protection fault") => Problem::Oops,
        b'B' if b.starts_with(b"BUG: ") => Problem::Bug,
        b'k' if b.starts_with(b"kernel BUG at ") => Problem::Bug,
        b'W' if b.starts_with(b"WARNING: ") => Problem::Warning,
        _ => return None,
    };
    Some((p, Marker::Other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers() {
        let t = |s: &str| trigger(s.as_bytes()).map(|(p, _)| p.name());
        assert_eq!(
            t("Kernel panic - not syncing: Fatal exception"),
            Some("panic")
        );
        assert_eq!(t("Oops: 0000 [#1] PREEMPT SMP NOPTI"), Some("oops"));
        assert_eq!(t("Oopsie"), None);
        assert_eq!(
            t("BUG: kernel NULL pointer dereference, address: 0"),
            Some("bug")
        );
        assert_eq!(
            t("watchdog: BUG: soft lockup - CPU#1 stuck for 22s!"),
            Some("bug")
        );
        assert_eq!(
            t("WARNING: CPU: 1 PID: 1 at mm/slub.c:1 f+0x1/0x2"),
            Some("warning")
        );
        assert_eq!(
            t("rcu: INFO: rcu_sched self-detected stall on CPU"),
            Some("rcu_stall")
        );
        assert_eq!(
            t("INFO: rcu_preempt detected stalls on CPUs/tasks:"),
            Some("rcu_stall")
        );
        assert_eq!(
            t("INFO: task kworker/0:1:12 blocked for more than 122 seconds."),
            Some("hung_task")
        );
        assert_eq!(t("random: crng init done"), None);
        assert_eq!(t("ok 1 bug_test"), None);
    }
}
