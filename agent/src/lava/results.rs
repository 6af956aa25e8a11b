//! LAVA's results as labwire's: the `lava` suite becomes the job's `setup` results (`login`,
//! `kernel-messages`), every other suite a test suite (its `N_` prefix dropped), as
//! KernelCI's LAVA callback does; the job's health and LAVA's error type (from the
//! `lava`/`job` test case) become the result and `error_code`.

use super::client::{JobStatus, Suite, TestCase};
use crate::driver::Outcome;
use labwire_common::{ErrorCode, NodeResult, TestNode};
use std::collections::BTreeMap;

/// The labwire error code of a LAVA error type.
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

fn leaf(c: &TestCase) -> TestNode {
    let mut t = TestNode::leaf(c.name.clone(), result_of(&c.result));
    if !matches!(c.result.as_str(), "pass" | "fail" | "skip") {
        t.error = Some(format!("LAVA result `{}`", c.result));
    }
    if let Some(m) = c.measurement.as_deref().and_then(|m| m.parse::<f64>().ok()) {
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

/// The outcome of a finished LAVA job.
pub(crate) fn outcome(job: &JobStatus, suites: &[Suite], cases: &[TestCase]) -> Outcome {
    let names: BTreeMap<i64, &str> = suites.iter().map(|s| (s.id, s.name.as_str())).collect();
    let mut setup = Vec::new();
    let mut groups: Vec<(String, Vec<TestNode>)> = Vec::new();
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
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, tests)) => tests.push(leaf(c)),
            None => groups.push((name, vec![leaf(c)])),
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
        let mut s = TestNode::leaf(
            "setup",
            NodeResult::aggregate(setup.iter().map(|t| t.result)),
        );
        s.tests = setup;
        tests.push(s);
    }
    for (name, members) in groups {
        let mut g = TestNode::leaf(
            name,
            NodeResult::aggregate(members.iter().map(|t| t.result)),
        );
        g.tests = members;
        tests.push(g);
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
            format!("LAVA job {} was canceled", job.id),
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
        let o = outcome(&job("Complete"), &suites(), &cases);
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
        let o = outcome(&job("Incomplete"), &suites(), &cases);
        assert_eq!(o.result, NodeResult::Incomplete);
        assert_eq!(o.error_code, Some(ErrorCode::Infrastructure));
        assert_eq!(o.error_msg.as_deref(), Some("tftp: timed out"));
        assert_eq!(o.data["lava_error_type"], "Infrastructure");
        let o = outcome(&job("Incomplete"), &suites(), &[]);
        assert_eq!(o.error_code, Some(ErrorCode::LavaIncomplete));
        assert_eq!(o.error_msg.as_deref(), Some("comment"));
        let o = outcome(&job("Canceled"), &suites(), &[]);
        assert_eq!(o.error_code, Some(ErrorCode::Cancelled));
    }

    #[test]
    fn a_failed_case_fails_a_complete_job() {
        let o = outcome(
            &job("Complete"),
            &suites(),
            &[case(2, "dmesg-crit", "fail", "")],
        );
        assert_eq!(o.result, NodeResult::Fail);
        assert_eq!(suite_name("12_kselftest_net"), "kselftest_net");
        assert_eq!(suite_name("lava"), "lava");
    }
}
