//! Tests of result normalisation: table tests of each change, and a property test that
//! stores random hostile trees through the real store (SQLite, or PostgreSQL with
//! `LABWIRE_TEST_STORE=postgres`).

use super::*;
use crate::model::{Node, NodeId};
use crate::store::jobs::ResultReport;
use crate::store::{NewJob, ReportOutcome, RetryPolicy, Store, nodes};
use NodeResult::*;
use labwire_common::names;
use labwire_proto::v1;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};

fn cfg(max_tests: usize) -> ResultsConfig {
    ResultsConfig { max_tests }
}

#[test]
fn a_tree_in_shape_is_stored_as_it_came() {
    let tests = vec![
        TestNode::group(
            "suite",
            vec![TestNode::leaf("a", Pass), TestNode::leaf("b", Fail)],
        ),
        TestNode::leaf("lone test", Skip),
    ];
    let i = normalise_report(tests.clone(), &ResultsConfig::default());
    assert_eq!(i.tests, tests);
    assert!(i.data.is_empty(), "{:?}", i.data);
}

#[test]
fn names_and_nesting_are_fixed_with_a_note() {
    let mut deep = TestNode::leaf("bottom", Fail);
    for i in (1..=40).rev() {
        deep = TestNode::group(format!("level{i}"), vec![deep]);
    }
    let tests = vec![
        TestNode::leaf("nbsp\u{a0}", Pass),
        TestNode::leaf("", Pass),
        deep,
    ];
    let i = normalise_report(tests, &ResultsConfig::default());
    assert_eq!(i.tests[0].name, "nbsp");
    assert_eq!(i.tests[1].name, "2");
    let note = i.data["results_note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("the coordinator changed this result"),
        "{note}"
    );
    assert!(note.contains("moved up"), "{note}");
    let changes = &i.data["results_changes"];
    assert_eq!(
        changes["flattened"], 9,
        "levels 33 to 40 and the leaf at 41"
    );
    assert_eq!(changes["numbered"], 1);
    assert_eq!(changes["cleaned"], 1);
    assert_eq!(i.data["results_renamed"][0]["was"], "nbsp\u{a0}");
    assert!(i.data.get("results_truncated").is_none());
    assert!(normalise::depth(&i.tests) <= MAX_DEPTH);
}

#[test]
fn big_trees_keep_failures_first_and_count_everything() {
    let mut tests: Vec<TestNode> = (0..50)
        .map(|s| {
            let cases = (0..20)
                .map(|c| {
                    let r = if s == 49 && c == 19 { Fail } else { Pass };
                    TestNode::leaf(format!("case{c}"), r)
                })
                .collect();
            TestNode::group(format!("suite{s}"), cases)
        })
        .collect();
    tests.push(TestNode::leaf("late", Incomplete));
    let i = normalise_report(tests, &cfg(100));
    assert_eq!(TreeCounts::of(&i.tests).nodes, 100);
    // The one failure (with its suite) and the incomplete test made it; the rest in order.
    let last = i
        .tests
        .iter()
        .find(|t| t.name == "suite49")
        .expect("suite49");
    assert_eq!(last.result, Fail);
    assert_eq!(last.tests.len(), 1);
    assert_eq!(last.tests[0].name, "case19");
    assert!(i.tests.iter().any(|t| t.name == "late"));
    assert_eq!(i.tests[0].name, "suite0");
    assert_eq!(i.data["results_truncated"], true);
    assert_eq!(
        i.data["results_counts"],
        json!({"pass": 999, "fail": 1, "skip": 0, "incomplete": 1, "nodes": 1051})
    );
    assert_eq!(i.data["results_changes"]["dropped"], 951);
    let note = i.data["results_note"].as_str().unwrap_or_default();
    assert!(
        note.contains("100 of the 1051 tests sent were kept"),
        "{note}"
    );
}

#[test]
fn over_long_texts_are_cut() {
    let mut t = TestNode::leaf("t", Fail);
    t.log_excerpt = Some("é".repeat(MAX_TEXT_BYTES));
    t.units = Some("u".repeat(1000));
    let i = normalise_report(vec![t], &ResultsConfig::default());
    let t = &i.tests[0];
    assert!(t.log_excerpt.as_deref().unwrap_or_default().len() <= MAX_TEXT_BYTES + 40);
    assert_eq!(t.units.as_deref().map(str::len), Some(MAX_UNITS_BYTES));
    assert_eq!(i.data["results_changes"]["texts_cut"], 2);
}

#[test]
fn the_limit_is_checked() {
    assert!(cfg(0).validate().is_err());
    assert!(cfg(MAX_MAX_TESTS + 1).validate().is_err());
    let e = cfg(0).validate().unwrap_err().to_string();
    assert!(e.contains("results.max_tests"), "{e}");
    assert!(ResultsConfig::default().validate().is_ok());
}

/// A leased job in `store`, ready for a report by `lab-p`, attempt 1.
fn leased_job(store: &Store, name: &str) -> NodeId {
    let spec = v1::JobSpec {
        name: name.into(),
        ..Default::default()
    };
    let (node, _) = store
        .write_blocking(move |w| {
            w.submit_job(NewJob {
                spec,
                ..Default::default()
            })
        })
        .expect("submit");
    let id = node.id;
    let until = chrono::Utc::now() + chrono::Duration::seconds(600);
    store
        .write_blocking(move |w| w.claim_for_test(id, "lab-p", until))
        .expect("claim");
    id
}

/// The stored tree under `id`, depth first, with each node's depth below the job.
fn stored(store: &Store, id: NodeId) -> Vec<(usize, Node, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack = vec![(id, 0usize)];
    while let Some((at, depth)) = stack.pop() {
        let kids = store
            .read_blocking(move |c| nodes::children(c, at))
            .expect("children");
        let names: Vec<String> = kids.iter().map(|k| k.name.clone()).collect();
        for k in kids {
            stack.push((k.id, depth + 1));
            out.push((depth + 1, k, names.clone()));
        }
    }
    out
}

fn hostile_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z]{1,8}",
        2 => any::<String>(),
        1 => Just(String::new()),
        1 => "[ \\t\\u{a0}\\u{200b}\\u{3000}\\u{0}x]{0,6}",
        1 => "[a-z]{250,400}",
    ]
}

fn any_tree() -> impl Strategy<Value = Vec<TestNode>> {
    let leaf = || {
        (
            hostile_name(),
            proptest::sample::select(NodeResult::ALL.to_vec()),
        )
            .prop_map(|(n, r)| TestNode::leaf(n, r))
    };
    let tree = leaf().prop_recursive(6, 300, 8, |inner| {
        (hostile_name(), proptest::collection::vec(inner, 0..8))
            .prop_map(|(n, kids)| TestNode::group(n, kids))
    });
    let chain = (33usize..90, leaf()).prop_map(|(depth, mut t)| {
        for i in 0..depth {
            t = TestNode::group(format!("d{i}"), vec![t]);
        }
        t
    });
    proptest::collection::vec(prop_oneof![5 => tree, 1 => chain], 0..6)
}

/// Random trees with random Unicode names, depths and sizes, through normalisation and
/// the real store: always accepted, never more than the limit, names valid by the common
/// rule and unique among siblings, at most 32 levels, and the counts of what was sent kept
/// (all of it stored, or counted in `results_counts`).
#[test]
fn any_tree_is_accepted_and_nothing_is_lost() {
    let (_d, store) = crate::store::temp_store();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
    let case = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&(any_tree(), 1usize..400), |(tree, max)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let sent = TreeCounts::of(&tree);
            let mut by_result: BTreeMap<NodeResult, u64> = BTreeMap::new();
            let mut stack: Vec<&TestNode> = tree.iter().collect();
            while let Some(t) = stack.pop() {
                *by_result.entry(t.result).or_default() += 1;
                stack.extend(t.tests.iter());
            }
            let intake = normalise_report(tree, &cfg(max));
            let id = leased_job(&store, &format!("job{n}"));
            let out = store.write_blocking(move |w| {
                w.report_result(
                    ResultReport {
                        lab: crate::model::LabName::new("lab-p"),
                        job: id,
                        attempt: crate::model::AttemptNo(1),
                        result: NodeResult::Pass,
                        error_code: String::new(),
                        error_msg: String::new(),
                        tests: intake.tests,
                        extra: intake.data,
                    },
                    &RetryPolicy::default(),
                )
            });
            prop_assert!(
                matches!(out, Ok(ReportOutcome::Applied(_))),
                "{:?}",
                out.err()
            );
            let job = store
                .read_blocking(move |c| nodes::get_node(c, id))
                .expect("job");
            let kept = stored(&store, id);
            prop_assert_eq!(kept.len() as u64, sent.nodes.min(max as u64));
            for (depth, n, siblings) in &kept {
                prop_assert!(*depth <= MAX_DEPTH);
                prop_assert!(names::check(&n.name).is_ok(), "{:?}", n.name);
                let distinct: HashSet<&String> = siblings.iter().collect();
                prop_assert_eq!(distinct.len(), siblings.len());
            }
            if sent.nodes > max as u64 {
                prop_assert_eq!(&job.data["results_truncated"], &json!(true));
                let c = &job.data["results_counts"];
                prop_assert_eq!(
                    (
                        &c["pass"],
                        &c["fail"],
                        &c["skip"],
                        &c["incomplete"],
                        &c["nodes"]
                    ),
                    (
                        &json!(sent.pass),
                        &json!(sent.fail),
                        &json!(sent.skip),
                        &json!(sent.incomplete),
                        &json!(sent.nodes)
                    )
                );
            } else {
                let mut got: BTreeMap<NodeResult, u64> = BTreeMap::new();
                for (_, n, _) in &kept {
                    *got.entry(n.result.unwrap_or(Incomplete)).or_default() += 1;
                }
                prop_assert_eq!(got, by_result);
                prop_assert!(job.data.get("results_truncated").is_none());
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
