//! Table-driven tests over the log corpus in `agent/tests/data/parse/`: each `NAME.log` goes
//! through the `parse` command (`cli::run_to`) with the arguments in `NAME.args` (one per
//! line; no file means `--format auto`), and the JSON printed must equal `NAME.json`.
//! `LABWIRE_BLESS=1 cargo test -p labwire-parsers --test corpus` rewrites the expected
//! files; review every change by eye.

use clap::Parser;
use labwire_parsers::cli::{ParseArgs, run_to};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    args: ParseArgs,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/data/parse")
}

fn args_for(log: &Path) -> Vec<String> {
    let mut args = vec!["parse".to_string()];
    if let Ok(text) = std::fs::read_to_string(log.with_extension("args")) {
        args.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
    }
    args.push(log.display().to_string());
    args
}

fn run_json(args: &[String]) -> anyhow::Result<Value> {
    let cmd = Cmd::try_parse_from(args)?;
    let mut out = Vec::new();
    run_to(&cmd.args, &mut out)?;
    Ok(serde_json::from_slice(&out)?)
}

fn logs() -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

#[test]
fn corpus_matches_expected_reports() {
    let bless = std::env::var("LABWIRE_BLESS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    let logs = logs();
    assert!(logs.len() >= 25, "corpus too small: {}", logs.len());
    for log in &logs {
        let got = run_json(&args_for(log)).unwrap_or_else(|e| panic!("{}: {e:#}", log.display()));
        let expected_path = log.with_extension("json");
        if bless {
            let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
            std::fs::write(&expected_path, text).expect("write expected");
            continue;
        }
        let expected: Value = match std::fs::read(&expected_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).expect("expected json"),
            Err(e) => {
                failures.push(format!("{}: {e}", expected_path.display()));
                continue;
            }
        };
        if got != expected {
            failures.push(format!(
                "{}: report differs from {}\n--- got:\n{}",
                log.display(),
                expected_path.display(),
                serde_json::to_string_pretty(&got).unwrap_or_default()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every case the issue asks for has a log.
#[test]
fn corpus_covers_every_case() {
    let names: Vec<String> = logs()
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    for case in [
        "ktap_nested",
        "ktap_subtest_header",
        "ktap_attributes",
        "ktap_cut",
        "ktap_unmet_plan",
        "ktap_missing_plan",
        "ktap_none",
        "ktap_interleaved",
        "ktap_printk",
        "ktap_multi_prefix",
        "ktap_syslog_level",
        "ktap_board_prefix",
        "tap13_kselftest",
        "ktap_v2",
        "ktap_unindented",
        "tap_bailout",
        "lava_signals",
        "lava_cut",
        "kmsg_panic",
        "kmsg_oops",
        "kmsg_bug",
        "kmsg_warning",
        "kmsg_rcu_stall",
        "kmsg_hung_task",
        "pattern",
        "garbage",
        "crlf",
        "auto_mixed",
        "auto_kunit_crash",
        "auto_none",
    ] {
        assert!(names.iter().any(|n| n == case), "no corpus log for {case}");
    }
}

#[test]
fn unreadable_input_names_the_file() {
    let missing = corpus_dir().join("no-such-file.log");
    let args = vec!["parse".to_string(), missing.display().to_string()];
    let e = run_json(&args).expect_err("must fail");
    let msg = format!("{e:#}");
    assert!(msg.contains("no-such-file.log"), "{msg}");
}

#[test]
fn bad_pattern_is_refused_with_the_reason() {
    let log = corpus_dir().join("pattern.log").display().to_string();
    let args = |re: &str| -> Vec<String> {
        ["parse", "--format", "pattern", "--pattern", re, &log]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let msg = format!(
        "{:#}",
        run_json(&args("(?P<result>PASS)")).expect_err("must fail")
    );
    assert!(msg.contains("`test_case_id`"), "{msg}");
    let msg = format!(
        "{:#}",
        run_json(&args("(?P<test_case_id>\\w+")).expect_err("must fail")
    );
    assert!(msg.contains("invalid --pattern"), "{msg}");
    let no_pattern: Vec<String> = ["parse", "--format", "pattern", &log]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let msg = format!("{:#}", run_json(&no_pattern).expect_err("must fail"));
    assert!(msg.contains("needs a pattern"), "{msg}");
    let bad_map: Vec<String> = ["parse", "--result-map", "BROKEN=maybe", &log]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(run_json(&bad_map).is_err());
}
