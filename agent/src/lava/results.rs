//! LAVA's results as labwire's: the `lava` suite becomes the job's `setup` results (`login`,
//! `kernel-messages`), every other suite a group of tests (its `N_` prefix dropped, as
//! KernelCI's LAVA callback does) in LAVA's order, with LAVA's test sets as a level inside
//! it. The suite of labwire's own test definition is `commands`: one test per command (and
//! for the KUnit and kselftest steps) whose failure names the command and its exit status,
//! as the serial driver's `commands` do. The job's health and LAVA's error type (from the
//! `lava`/`job` test case) become the result and `error_code`.

use super::client::{JobStatus, Suite, TestCase};
use crate::driver::Outcome;
use labwire_common::{ErrorCode, NodeResult, TestNode};
use std::collections::BTreeMap;

/// The unit of the measurement labwire's test definition reports with a failed command: its
/// exit status.
pub(crate) const EXIT_STATUS_UNIT: &str = "exit-status";

/// The labwire error code of a LAVA error type. LAVA's `Infrastructure`, `Configuration`
/// and `Bug` are the lab's fault, and so are their codes ([`ErrorCode::is_infrastructure`]):
/// the coordinator's default retry list retries them.
pub(crate) fn error_code(error_type: &str) -> ErrorCode {
    match error_type {
        "Infrastructure" => ErrorCode::Infrastructure,
        "Configuration" => ErrorCode::LavaConfiguration,
        "Bug" => ErrorCode::LavaBug,
        "Job" => ErrorCode::InvalidJob,
        "Test" => ErrorCode::TestError,
        "LAVATimeout" => ErrorCode::TestTimeout,
        "Canceled" => ErrorCode::Cancelled,
        _ => ErrorCode::LavaIncomplete,
    }
}

fn result_of(r: &str) -> NodeResult {
    match r {
        "pass" => NodeResult::Pass,
        "fail" => NodeResult::Fail,
        _ => NodeResult::Skip,
    }
}

/// A test case as a leaf. `command` is the text of the job's command it reports, if it is one.
fn leaf(c: &TestCase, command: Option<&str>) -> TestNode {
    let mut t = TestNode::leaf(c.name.clone(), result_of(&c.result));
    if !matches!(c.result.as_str(), "pass" | "fail" | "skip") {
        t.error = Some(format!("LAVA result `{}`", c.result));
    }
    let value = c.measurement.as_deref().and_then(|m| m.parse::<f64>().ok());
    if c.unit.as_deref() == Some(EXIT_STATUS_UNIT) {
        let status = value.map_or_else(|| "?".to_string(), |v| format!("{v:.0}"));
        t.error = Some(match command {
            Some(cmd) => format!("`{cmd}` exited with status {status}"),
            None => format!("exited with status {status}"),
        });
    } else if let Some(m) = value {
        t.measurement = Some(m);
        t.units = c.unit.clone().filter(|u| !u.is_empty());
    }
    t
}

/// A test suite's name without LAVA's order prefix (`1_kselftest` is `kselftest`).
pub(crate) fn suite_name(name: &str) -> &str {
    match name.split_once('_') {
        Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => name,
    }
}

/// The details of a test case (its YAML metadata) as a map of strings.
fn metadata(c: &TestCase) -> BTreeMap<String, String> {
    let Some(text) = c.metadata.as_deref() else {
        return BTreeMap::new();
    };
    let Ok(yaml_serde::Value::Mapping(m)) = yaml_serde::from_str::<yaml_serde::Value>(text) else {
        return BTreeMap::new();
    };
    m.into_iter()
        .filter_map(|(k, v)| {
            let k = k.as_str()?.to_string();
            let v = match v {
                yaml_serde::Value::String(s) => s,
                yaml_serde::Value::Number(n) => n.to_string(),
                yaml_serde::Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k, v))
        })
        .collect()
}

/// The members of one suite, in LAVA's order: test cases, and test sets as groups placed
/// where their first case came.
#[derive(Default)]
struct SuiteTree {
    members: Vec<TestNode>,
    /// Index in `members` of each test set's group.
    sets: BTreeMap<String, usize>,
}

impl SuiteTree {
    fn push(&mut self, set: Option<String>, node: TestNode) {
        let Some(set) = set.filter(|s| !s.is_empty()) else {
            self.members.push(node);
            return;
        };
        let i = *self.sets.entry(set.clone()).or_insert_with(|| {
            self.members.push(TestNode::group(set, Vec::new()));
            self.members.len() - 1
        });
        let g = &mut self.members[i];
        g.tests.push(node);
        g.result = NodeResult::aggregate(g.tests.iter().map(|t| t.result));
    }
}

/// The command a test case of labwire's `commands` suite reports (`command-3` is the third).
fn command_of<'a>(name: &str, commands: &'a [String]) -> Option<&'a str> {
    let n: usize = name.strip_prefix("command-")?.parse().ok()?;
    commands.get(n.checked_sub(1)?).map(String::as_str)
}

/// The outcome of a finished LAVA job; `commands` are the job's commands (to name a failed one).
pub(crate) fn outcome(
    job: &JobStatus,
    suites: &[Suite],
    cases: &[TestCase],
    commands: &[String],
) -> Outcome {
    let names: BTreeMap<i64, &str> = suites.iter().map(|s| (s.id, s.name.as_str())).collect();
    let mut setup = Vec::new();
    let mut groups: Vec<(String, SuiteTree)> = Vec::new();
    let mut error_type = None;
    let mut error_msg = None;
    let (mut login, mut kmsg) = (None::<NodeResult>, None::<NodeResult>);
    for c in cases {
        let suite = names.get(&c.suite).copied().unwrap_or("unknown");
        if suite == "lava" {
            match c.name.as_str() {
                // With boot retries there are several logins: one that passed is enough.
                "auto-login-action" | "login-action" => {
                    let r = result_of(&c.result);
                    login = Some(match login {
                        Some(NodeResult::Pass) => NodeResult::Pass,
                        _ => r,
                    });
                }
                // A crash caught in any attempt counts.
                "kernel-messages" => {
                    let r = result_of(&c.result);
                    kmsg = Some(match kmsg {
                        Some(NodeResult::Fail) => NodeResult::Fail,
                        _ => r,
                    });
                }
                "job" if c.result == "fail" => {
                    let m = metadata(c);
                    error_type = m.get("error_type").cloned();
                    error_msg = m.get("error_msg").cloned();
                }
                _ => {}
            }
            continue;
        }
        let name = suite_name(suite).to_string();
        let command = if name == "commands" {
            command_of(&c.name, commands)
        } else {
            None
        };
        let set = metadata(c).remove("set");
        let node = leaf(c, command);
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, tree)) => tree.push(set, node),
            None => {
                let mut tree = SuiteTree::default();
                tree.push(set, node);
                groups.push((name, tree));
            }
        }
    }
    if let Some(r) = login {
        setup.push(TestNode::leaf("login", r));
    }
    if let Some(r) = kmsg {
        setup.push(TestNode::leaf("kernel-messages", r));
    }
    let mut tests = Vec::new();
    if !setup.is_empty() {
        tests.push(TestNode::group("setup", setup));
    }
    for (name, tree) in groups {
        tests.push(TestNode::group(name, tree.members));
    }
    let mut out = match job.health.as_str() {
        "Complete" => {
            let r = NodeResult::aggregate(tests.iter().map(|t| t.result));
            Outcome::finished(if r == NodeResult::Fail {
                NodeResult::Fail
            } else {
                NodeResult::Pass
            })
        }
        "Canceled" => Outcome::infra(
            ErrorCode::Cancelled,
            format!("LAVA job {} was cancelled", job.id),
        ),
        _ => {
            let code = error_code(error_type.as_deref().unwrap_or(""));
            let msg = error_msg
                .or_else(|| job.failure_comment.clone().filter(|c| !c.is_empty()))
                .unwrap_or_else(|| format!("LAVA job {} ended {}", job.id, job.health));
            Outcome::infra(code, msg)
        }
    };
    if let Some(t) = error_type {
        out.data.insert("lava_error_type".into(), t.into());
    }
    out.data
        .insert("lava_health".into(), job.health.clone().into());
    if let Some(d) = &job.actual_device {
        out.data.insert("lava_device".into(), d.clone().into());
    }
    out.tests = tests;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(suite: i64, name: &str, result: &str, md: &str) -> TestCase {
        TestCase {
            name: name.into(),
            result: result.into(),
            measurement: None,
            unit: None,
            metadata: Some(md.into()),
            suite,
        }
    }

    fn job(health: &str) -> JobStatus {
        JobStatus {
            id: 7,
            state: "Finished".into(),
            health: health.into(),
            actual_device: Some("qemu-01".into()),
            failure_comment: Some("comment".into()),
            start_time: None,
            end_time: None,
        }
    }

    fn suites() -> Vec<Suite> {
        vec![
            Suite {
                id: 1,
                name: "lava".into(),
            },
            Suite {
                id: 2,
                name: "0_baseline".into(),
            },
        ]
    }

    #[test]
    fn lava_suite_is_setup_and_prefixes_go() {
        let cases = vec![
            case(1, "auto-login-action", "fail", ""),
            case(1, "auto-login-action", "pass", ""),
            case(1, "kernel-messages", "pass", ""),
            case(1, "job", "pass", ""),
            case(2, "dmesg-crit", "pass", ""),
            case(2, "weird", "unknown", ""),
        ];
        let o = outcome(&job("Complete"), &suites(), &cases, &[]);
        assert_eq!(o.result, NodeResult::Pass);
        assert_eq!(o.tests[0].name, "setup");
        assert_eq!(o.tests[0].tests[0].name, "login");
        assert_eq!(o.tests[0].tests[0].result, NodeResult::Pass);
        assert_eq!(o.tests[1].name, "baseline");
        assert_eq!(o.tests[1].tests.len(), 2);
        assert_eq!(o.tests[1].tests[1].result, NodeResult::Skip);
    }

    #[test]
    fn incomplete_takes_the_error_type_and_message() {
        let cases = vec![case(
            1,
            "job",
            "fail",
            "case: job\nerror_type: Infrastructure\nerror_msg: 'tftp: timed out'\n",
        )];
        let o = outcome(&job("Incomplete"), &suites(), &cases, &[]);
        assert_eq!(o.result, NodeResult::Incomplete);
        assert_eq!(o.error_code, Some(ErrorCode::Infrastructure));
        assert_eq!(o.error_msg.as_deref(), Some("tftp: timed out"));
        assert_eq!(o.data["lava_error_type"], "Infrastructure");
        let o = outcome(&job("Incomplete"), &suites(), &[], &[]);
        assert_eq!(o.error_code, Some(ErrorCode::LavaIncomplete));
        assert_eq!(o.error_msg.as_deref(), Some("comment"));
        let o = outcome(&job("Canceled"), &suites(), &[], &[]);
        assert_eq!(o.error_code, Some(ErrorCode::Cancelled));
    }

    #[test]
    fn a_failed_case_fails_a_complete_job() {
        let o = outcome(
            &job("Complete"),
            &suites(),
            &[case(2, "dmesg-crit", "fail", "")],
            &[],
        );
        assert_eq!(o.result, NodeResult::Fail);
        assert_eq!(suite_name("12_kselftest_net"), "kselftest_net");
        assert_eq!(suite_name("lava"), "lava");
    }

    #[test]
    fn commands_name_their_failure_and_test_sets_are_a_level() {
        let suites = vec![
            Suite {
                id: 1,
                name: "lava".into(),
            },
            Suite {
                id: 3,
                name: "0_commands".into(),
            },
            Suite {
                id: 4,
                name: "1_smoke".into(),
            },
        ];
        let mut failed = case(3, "command-2", "fail", "");
        failed.measurement = Some("3.0000000000".into());
        failed.unit = Some(EXIT_STATUS_UNIT.into());
        let cases = vec![
            case(3, "command-1", "pass", ""),
            failed,
            case(4, "first", "pass", ""),
            case(4, "a", "pass", "case: a\nset: net\n"),
            case(4, "middle", "skip", ""),
            case(4, "b", "fail", "case: b\nset: net\n"),
            case(4, "c", "pass", "case: c\nset: fs\n"),
        ];
        let cmds = ["uname -a".to_string(), "false; exit 3".to_string()];
        let o = outcome(&job("Complete"), &suites, &cases, &cmds);
        assert_eq!(o.result, NodeResult::Fail);
        let c = &o.tests[0];
        assert_eq!(c.name, "commands");
        assert_eq!(c.tests[1].name, "command-2");
        assert_eq!(
            c.tests[1].error.as_deref(),
            Some("`false; exit 3` exited with status 3")
        );
        assert_eq!(c.tests[1].measurement, None);
        let s = &o.tests[1];
        let names: Vec<&str> = s.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["first", "net", "middle", "fs"]);
        assert_eq!(s.tests[1].tests.len(), 2);
        assert_eq!(s.tests[1].result, NodeResult::Fail);
        assert_eq!(s.tests[3].tests[0].name, "c");
    }

    #[test]
    fn lava_infrastructure_error_types_are_retried_by_default() {
        let retried = ErrorCode::infrastructure();
        for t in ["Infrastructure", "Configuration", "Bug"] {
            assert!(retried.contains(&error_code(t)), "{t}");
        }
        for t in ["Job", "Test", "LAVATimeout", "Canceled", "Whatever"] {
            assert!(!retried.contains(&error_code(t)), "{t}");
        }
        assert_eq!(error_code("Canceled").as_str(), "cancelled");
    }
}
