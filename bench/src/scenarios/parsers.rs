//! Parsers: a child process (`labwire-bench parse-worker`, so that its peak RSS is the
//! parser's alone) generates an 8 MiB block of KTAP console log with
//! `labwire_parsers::testgen`, then feeds it over and over in 64 KiB chunks until the size
//! asked for has gone through the streaming parser (auto mode, `keep_tree` off, completed
//! results drained after each chunk), three times; it prints the MB/s of each run and its
//! peak RSS.

use crate::Opts;
use crate::procstat::ProcStat;
use crate::report::{Figure, Goal, median, spread};
use anyhow::Context;
use labwire_parsers::{LogParser, ParserOptions};
use std::process::Command;
use std::time::Instant;

const CHUNK: usize = 64 * 1024;
const RUNS: usize = 3;

/// Runs the scenario.
pub async fn run(o: &Opts) -> anyhow::Result<Vec<Figure>> {
    let out = Command::new(crate::self_exe()?)
        .args(["parse-worker", &o.log_mb.to_string()])
        .output()
        .context("cannot start the parser worker")?;
    anyhow::ensure!(
        out.status.success(),
        "the parser worker failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the parser worker printed no JSON")?;
    let rates: Vec<f64> = v["mb_per_s"]
        .as_array()
        .context("no mb_per_s")?
        .iter()
        .filter_map(|x| x.as_f64())
        .collect();
    let peak = v["peak_rss"].as_f64().context("no peak_rss")?;
    let tests = v["tests"].as_f64().unwrap_or(0.0);
    anyhow::ensure!(tests > 0.0, "the parser found no test");
    Ok(vec![
        Figure::new("parsers", "KTAP parse speed", median(&rates), "MB/s", Some(Goal::AtLeast(300.0)))
            .note(format!(
                "median of {} runs of {} MB each, auto mode, results drained (runs: {} MB/s); {tests} leaf tests per run",
                rates.len(),
                o.log_mb,
                spread(&rates)
            )),
        Figure::new("parsers", "parser peak RSS", peak / 1e6, "MB", Some(Goal::Below(64.0)))
            .note("whole worker process (VmHWM), including the 8 MiB generated block"),
    ])
}

/// The worker: `parse-worker MB`.
pub fn worker(args: &[String]) -> anyhow::Result<()> {
    let mb: usize = args
        .first()
        .context("usage: labwire-bench parse-worker MB")?
        .parse()
        .context("MB must be a whole number")?;
    let block = labwire_parsers::testgen::generate(8 * 1024 * 1024);
    let total = mb * 1_000_000;
    let mut rates = Vec::new();
    let mut tests = 0;
    for _ in 0..RUNS {
        let mut p = LogParser::new(ParserOptions {
            keep_tree: false,
            ..ParserOptions::default()
        })?;
        let mut batch = Vec::new();
        let (mut fed, mut off) = (0usize, 0usize);
        let t = Instant::now();
        while fed < total {
            let want = (total - fed).min(CHUNK).min(block.len() - off);
            p.feed(&block[off..off + want]);
            p.drain_completed_into(&mut batch);
            batch.clear();
            fed += want;
            off = if off + want >= block.len() {
                0
            } else {
                off + want
            };
        }
        let report = p.finish();
        rates.push(fed as f64 / 1e6 / t.elapsed().as_secs_f64());
        tests = report.counts.total();
    }
    let me = ProcStat::own()?;
    println!(
        "{}",
        serde_json::json!({"mb_per_s": rates, "peak_rss": me.peak_rss, "tests": tests})
    );
    eprintln!("parse-worker: {} MB x {RUNS}: {} MB/s", mb, spread(&rates));
    Ok(())
}
