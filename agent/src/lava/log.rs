//! LAVA's log: read from the API's YAML lines (tags and damaged lines included), and written
//! into a labwire job's log: the board's output goes to the job's parser, except
//! LAVA's signal lines (their results come from LAVA's result sets); LAVA's own lines are
//! marked with their level; the board's password is masked where LAVA logs typing it. And
//! whether what was read after LAVA's callback holds the whole job ([`Early::complete`]).

use super::client::{LogLine, Suite, TestCase};
use crate::joblog::JobLog;

/// Parses LAVA's log format: a YAML list of `{dt, lvl, msg}` maps, one per line. YAML tags
/// LAVA writes (`"endtc": ! "604"`) are read as the value they tag. A line that does not
/// parse becomes a note saying so and still counts as one line, so that the line offsets
/// stay those of the server.
pub(crate) fn parse_log(body: &[u8]) -> Vec<LogLine> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let Some(item) = line.strip_prefix("- ") else {
            out.push(LogLine {
                dt: String::new(),
                lvl: "labwire".into(),
                msg: format!("unreadable LAVA log line: {line:.200}").into(),
            });
            continue;
        };
        let parsed = yaml_serde::from_str::<yaml_serde::Value>(item)
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::from_value::<LogLine>(untag(v)).map_err(|e| e.to_string()));
        match parsed {
            Ok(l) => out.push(l),
            Err(e) => out.push(LogLine {
                dt: String::new(),
                lvl: "labwire".into(),
                msg: format!("unreadable LAVA log line ({e}): {item:.200}").into(),
            }),
        }
    }
    out
}

/// A YAML value as JSON, its tags dropped (`! "604"` is the string `604`). Keys that are
/// not strings are written as YAML would print them.
fn untag(v: yaml_serde::Value) -> serde_json::Value {
    use yaml_serde::Value as Y;
    match v {
        Y::Null => serde_json::Value::Null,
        Y::Bool(b) => b.into(),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Y::String(s) => s.into(),
        Y::Sequence(items) => items.into_iter().map(untag).collect(),
        Y::Mapping(m) => m
            .into_iter()
            .map(|(k, v)| {
                let k = match untag(k) {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, untag(v))
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Y::Tagged(t) => untag(t.value),
    }
}

/// Writes LAVA log lines to the job's log. The device's output (`target`) goes as it is to
/// the job's parser, except LAVA's own signal lines (their results come from LAVA's result
/// sets, in LAVA's order); LAVA's lines are marked with their level and not parsed; the
/// board's password, where LAVA logs typing it, is masked.
pub(crate) fn write_lines(log: &mut JobLog, lines: &[LogLine], password: Option<&str>) {
    for l in lines {
        let text = match &l.msg {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if l.lvl == "target" {
            let signal = text.contains("<LAVA_SIGNAL_");
            let mut b = text.into_bytes();
            b.push(b'\n');
            if signal {
                log.write_unparsed(&b);
            } else {
                log.write(&b);
            }
        } else {
            let text = match password {
                Some(p) if l.lvl == "input" && text.trim_end_matches(['\r', '\n']) == p => {
                    "[MASKED]".to_string()
                }
                _ => text,
            };
            log.write_unparsed(format!("[lava {}] {}\n", l.lvl, text).as_bytes());
        }
    }
}

/// What the driver read at once after LAVA's callback, besides the job's state.
pub(crate) struct Early {
    /// The log from where the driver was.
    pub(crate) lines: Vec<LogLine>,
    /// The job's suites.
    pub(crate) suites: Vec<Suite>,
    /// The job's test cases.
    pub(crate) tests: Vec<TestCase>,
}

impl Early {
    /// Whether LAVA had recorded the whole job when these were read: its last result (the
    /// `lava`/`job` test case) is in both the log and the results. (LAVA writes a batch of
    /// log lines before it saves their results, so neither alone tells.)
    pub(crate) fn complete(&self) -> bool {
        let in_log = self
            .lines
            .iter()
            .any(|l| l.lvl == "results" && l.msg["definition"] == "lava" && l.msg["case"] == "job");
        let lava = self.suites.iter().find(|s| s.name == "lava").map(|s| s.id);
        let in_results = self
            .tests
            .iter()
            .any(|t| Some(t.suite) == lava && t.name == "job");
        in_log && in_results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use std::sync::Arc;

    fn line(lvl: &str, msg: serde_json::Value) -> LogLine {
        LogLine {
            dt: String::new(),
            lvl: lvl.into(),
            msg,
        }
    }

    #[test]
    fn the_parser_reads_the_board_and_the_password_is_masked() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open(dir.path()).unwrap());
        let parser = labwire_parsers::LogParser::new(Default::default()).unwrap();
        let mut log = JobLog::create(dir.path(), outbox, 1, 1, Some(parser)).unwrap();
        write_lines(
            &mut log,
            &[
                line("input", "hunter2\n".into()),
                line("target", "KTAP version 1".into()),
                line("target", "1..1".into()),
                line(
                    "target",
                    "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=command-1 RESULT=fail>".into(),
                ),
                line("target", "ok 1 works".into()),
                line("results", serde_json::json!({"case": "job"})),
            ],
            Some("hunter2"),
        );
        log.finish();
        let report = log.finish_parse().unwrap();
        let names: Vec<&str> = report.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["works"],
            "the signal line is not parsed: {report:?}"
        );
        let text = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
        assert!(text.starts_with("[lava input] [MASKED]\n"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("TEST_CASE_ID=command-1"),
            "kept, unparsed: {text}"
        );
        assert!(text.contains("[lava results] {\"case\":\"job\"}"), "{text}");
    }

    #[test]
    fn a_read_is_complete_once_the_job_result_is_in_log_and_results() {
        let job_line = line(
            "results",
            serde_json::json!({"definition": "lava", "case": "job", "result": "pass"}),
        );
        let case = |suite: i64, name: &str| TestCase {
            name: name.into(),
            result: "pass".into(),
            measurement: None,
            unit: None,
            metadata: None,
            suite,
        };
        let suites = vec![
            Suite {
                id: 1,
                name: "lava".into(),
            },
            Suite {
                id: 2,
                name: "0_commands".into(),
            },
        ];
        let early = |lines: Vec<LogLine>, tests: Vec<TestCase>| Early {
            lines,
            suites: suites.clone(),
            tests,
        };
        assert!(early(vec![job_line.clone()], vec![case(1, "job")]).complete());
        // LAVA writes a batch's lines before it saves their results.
        assert!(!early(vec![job_line.clone()], vec![case(1, "login-action")]).complete());
        assert!(!early(vec![], vec![case(1, "job")]).complete());
        // A test case named `job` of another suite is not LAVA's.
        assert!(!early(vec![job_line], vec![case(2, "job")]).complete());
    }

    #[test]
    fn log_lines_parse_and_damaged_ones_are_kept_as_notes() {
        let body = b"- {\"dt\": \"x\", \"lvl\": \"target\", \"msg\": \"hello: world\"}\nnot yaml\n- {\"dt\": \"x\", \"lvl\": \"results\", \"msg\": {\"case\": \"a\", \"result\": \"pass\"}}\n- {\"dt\": \"x\", \"lvl\n";
        let l = parse_log(body);
        assert_eq!(l.len(), 4);
        assert_eq!(l[0].msg, "hello: world");
        assert_eq!(l[1].lvl, "labwire");
        assert_eq!(l[2].msg["case"], "a");
        assert_eq!(l[3].lvl, "labwire");
    }

    #[test]
    fn yaml_tags_lava_writes_are_read() {
        // Lines as lava-server 2023.01 serves them for a test case run with --shell.
        let body = br#"- {"dt": "2026-12-06T09:03:24.7", "lvl": "results", "msg": {"case": "uname", "definition": "0_tests", "endtc": ! "603", "result": "pass", "starttc": ! "600"}}
- {"dt": "2026-12-06T09:03:24.8", "lvl": "target", "msg": "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=failing RESULT=fail>"}
- {"dt": "x", "lvl": "debug", "msg": !!str 12, "extra": {1: [true, 2.5, null]}}
"#;
        let l = parse_log(body);
        assert_eq!(l.len(), 3);
        assert!(l.iter().all(|l| l.lvl != "labwire"), "{l:?}");
        assert_eq!(l[0].msg["endtc"], "603");
        assert_eq!(l[0].msg["starttc"], "600");
        assert_eq!(
            l[1].msg,
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=failing RESULT=fail>"
        );
        assert_eq!(l[2].msg, "12");
    }
}
