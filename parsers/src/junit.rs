//! JUnit XML for CI systems that read it (GitLab, Jenkins): `labwire-agent parse --output
//! junit` and `labwire export junit JOB` write a tree of results this way. Each top-level
//! test is a `<testsuite>`; each leaf below it a `<testcase>` whose `classname` is the path
//! of its groups joined by `.`; a top-level leaf is a suite of one case. `fail` gives a
//! `<failure>` (its text the log excerpt), `incomplete` an `<error>` (its text the reason),
//! `skip` a `<skipped/>`; a measurement goes into `<system-out>`. Text that XML 1.0 cannot
//! hold (control characters) is replaced by U+FFFD, so any log makes a valid document.

use labwire_common::{NodeResult, TestNode};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use std::borrow::Cow;
use std::io::{self, Write};

/// Leaf counts of a tree, as JUnit names them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JunitCounts {
    /// All leaf tests.
    pub tests: u64,
    /// Leaves that failed.
    pub failures: u64,
    /// Leaves that did not complete.
    pub errors: u64,
    /// Leaves that were skipped.
    pub skipped: u64,
}

impl JunitCounts {
    fn of(nodes: &[TestNode]) -> JunitCounts {
        let mut c = JunitCounts::default();
        let mut todo: Vec<&TestNode> = nodes.iter().collect();
        while let Some(n) = todo.pop() {
            if n.tests.is_empty() {
                c.tests += 1;
                match n.result {
                    NodeResult::Fail => c.failures += 1,
                    NodeResult::Incomplete => c.errors += 1,
                    NodeResult::Skip => c.skipped += 1,
                    NodeResult::Pass => {}
                }
            } else {
                todo.extend(n.tests.iter());
            }
        }
        c
    }

    fn attrs(self, e: BytesStart<'_>) -> BytesStart<'_> {
        e.with_attributes([
            ("tests", self.tests.to_string().as_str()),
            ("failures", self.failures.to_string().as_str()),
            ("errors", self.errors.to_string().as_str()),
            ("skipped", self.skipped.to_string().as_str()),
        ])
    }
}

/// Text as XML 1.0 can hold it: characters it forbids become U+FFFD.
pub fn xml_text(s: &str) -> Cow<'_, str> {
    let ok = |c: char| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..);
    if s.chars().all(ok) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(
            s.chars()
                .map(|c| if ok(c) { c } else { '\u{FFFD}' })
                .collect(),
        )
    }
}

/// Writes `tests` as one JUnit document named `name`.
pub fn write(out: &mut impl Write, name: &str, tests: &[TestNode]) -> io::Result<()> {
    let mut w = Writer::new_with_indent(out, b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let name = xml_text(name);
    let top = JunitCounts::of(tests)
        .attrs(BytesStart::new("testsuites").with_attributes([("name", name.as_ref())]));
    w.write_event(Event::Start(top))?;
    for t in tests {
        let suite_name = xml_text(&t.name);
        let counts = JunitCounts::of(std::slice::from_ref(t));
        let start = counts
            .attrs(BytesStart::new("testsuite").with_attributes([("name", suite_name.as_ref())]));
        w.write_event(Event::Start(start))?;
        if t.tests.is_empty() {
            case(&mut w, &t.name, t)?;
        } else {
            let mut todo: Vec<(String, &TestNode)> =
                t.tests.iter().rev().map(|c| (t.name.clone(), c)).collect();
            while let Some((class, n)) = todo.pop() {
                if n.tests.is_empty() {
                    case(&mut w, &class, n)?;
                } else {
                    let inner = format!("{class}.{}", n.name);
                    todo.extend(n.tests.iter().rev().map(|c| (inner.clone(), c)));
                }
            }
        }
        w.write_event(Event::End(BytesEnd::new("testsuite")))?;
    }
    w.write_event(Event::End(BytesEnd::new("testsuites")))?;
    w.get_mut().write_all(b"\n")
}

/// One `<testcase>`.
fn case<W: Write>(w: &mut Writer<W>, class: &str, n: &TestNode) -> io::Result<()> {
    let class = xml_text(class);
    let name = xml_text(&n.name);
    let start = BytesStart::new("testcase")
        .with_attributes([("classname", class.as_ref()), ("name", name.as_ref())]);
    let out = n.measurement.map(|m| match &n.units {
        Some(u) => format!("measurement: {m} {u}"),
        None => format!("measurement: {m}"),
    });
    let (tag, message, text) = match n.result {
        NodeResult::Pass => (None, "", None),
        NodeResult::Skip => (Some("skipped"), "skipped", None),
        NodeResult::Fail => (Some("failure"), "fail", n.log_excerpt.as_deref()),
        NodeResult::Incomplete => (
            Some("error"),
            "incomplete",
            n.error.as_deref().or(n.log_excerpt.as_deref()),
        ),
    };
    if tag.is_none() && out.is_none() {
        return w.write_event(Event::Empty(start));
    }
    w.write_event(Event::Start(start))?;
    if let Some(tag) = tag {
        let e = BytesStart::new(tag).with_attributes([("message", message)]);
        match text {
            Some(t) => {
                w.write_event(Event::Start(e))?;
                w.write_event(Event::Text(BytesText::new(&xml_text(t))))?;
                w.write_event(Event::End(BytesEnd::new(tag)))?;
            }
            None => w.write_event(Event::Empty(e))?,
        }
    }
    if let Some(o) = out {
        w.write_event(Event::Start(BytesStart::new("system-out")))?;
        w.write_event(Event::Text(BytesText::new(&o)))?;
        w.write_event(Event::End(BytesEnd::new("system-out")))?;
    }
    w.write_event(Event::End(BytesEnd::new("testcase")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_becomes_suites_of_cases_with_counts_and_safe_text() {
        let mut suite = TestNode::leaf("suite", NodeResult::Fail);
        let mut bad = TestNode::leaf("bad <case>", NodeResult::Fail);
        bad.log_excerpt = Some("expected 1 got 2 \u{1} & more".into());
        let mut group = TestNode::leaf("group", NodeResult::Incomplete);
        let mut cut = TestNode::leaf("cut", NodeResult::Incomplete);
        cut.error = Some("the log ended".into());
        group.tests = vec![cut, TestNode::leaf("skipped", NodeResult::Skip)];
        suite.tests = vec![TestNode::leaf("good", NodeResult::Pass), bad, group];
        let boot = TestNode::leaf("boot", NodeResult::Pass);
        let mut out = Vec::new();
        write(&mut out, "my.log", &[suite, boot]).expect("write");
        let xml = String::from_utf8(out).expect("utf-8");
        assert!(
            xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"<testsuites name="my.log" tests="5" failures="1" errors="1" skipped="1">"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testcase classname="suite" name="good"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testcase classname="suite" name="bad &lt;case&gt;">"#),
            "{xml}"
        );
        assert!(
            xml.contains(
                "<failure message=\"fail\">expected 1 got 2 \u{FFFD} &amp; more</failure>"
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testcase classname="suite.group" name="cut">"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<error message="incomplete">the log ended</error>"#),
            "{xml}"
        );
        assert!(xml.contains(r#"<skipped message="skipped"/>"#), "{xml}");
        assert!(
            xml.contains(
                r#"<testsuite name="boot" tests="1" failures="0" errors="0" skipped="0">"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testcase classname="boot" name="boot"/>"#),
            "{xml}"
        );
    }
}
