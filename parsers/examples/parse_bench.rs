//! Throughput and memory benchmark of the streaming log parser.
//!
//! `cargo run --release -p labwire-parsers --example parse_bench -- --size-mb 100`
//!
//! Generates (once, before timing) a set of KTAP documents in the style of real KUnit and
//! kselftest console output — printk timestamps, nested suites, parameterised tests,
//! diagnostics, failures with expectation text, skips, interleaved kernel messages, an
//! occasional WARNING trace, kselftest TAP 13 with `# ` nesting — with varying names,
//! `--block-mb` long. It then feeds that block over and over, in 64 KiB chunks, until
//! `--size-mb` have gone through the parser, draining completed results after each chunk
//! with `drain_completed_into` (the parser runs with `keep_tree: false`, the mode whose
//! memory stays flat). The time inside `feed` and `drain_completed` is the parser's; the
//! time the consumer spends on the results (here reading each one's name and path, then
//! dropping them) is shown apart. Prints the median MiB/s over `--runs` runs and the
//! process's peak RSS (VmHWM from /proc/self/status).

use clap::Parser;
use labwire_parsers::testgen::generate;
use labwire_parsers::{Format, LogParser, ParserOptions};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// MiB of log fed to the parser per run.
    #[arg(long, default_value_t = 100)]
    size_mb: u64,
    /// Number of runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Size of the generated block of log that is fed repeatedly, in MiB.
    #[arg(long, default_value_t = 8)]
    block_mb: usize,
    /// Parser format.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
    /// Do not hand results out (progress off): counts and result only, to see what the
    /// hand-out costs.
    #[arg(long)]
    no_progress: bool,
}

const CHUNK: usize = 64 * 1024;

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t0 = Instant::now();
    let block = generate(args.block_mb.max(1) * 1024 * 1024);
    let gen_secs = t0.elapsed().as_secs_f64();
    let total = args.size_mb * 1024 * 1024;
    println!(
        "block: {:.1} MiB of generated KUnit/kselftest log in {gen_secs:.2}s (not timed below); \
         feeding {} MiB per run in {} KiB chunks, format {:?}, keep_tree off",
        block.len() as f64 / 1048576.0,
        args.size_mb,
        CHUNK / 1024,
        args.format
    );
    let rss_before = status_kib("VmRSS:").unwrap_or(0);
    let mut parser_speeds = Vec::new();
    let mut total_speeds = Vec::new();
    for run in 1..=args.runs.max(1) {
        let mut parser = LogParser::new(ParserOptions {
            format: args.format,
            keep_tree: false,
            progress: !args.no_progress,
            ..ParserOptions::default()
        })?;
        let mut fed: u64 = 0;
        let mut off = 0usize;
        let mut completed: u64 = 0;
        let mut touched: u64 = 0;
        let mut batch = Vec::new();
        // Time spent in the parser (feed + drain_completed), apart from the time the
        // consumer (here: reading names and paths, then dropping them) spends on the
        // results handed out.
        let mut in_parser = Duration::ZERO;
        let start = Instant::now();
        while fed < total {
            let end = (off + CHUNK).min(block.len());
            let want = (total - fed).min((end - off) as u64) as usize;
            let t = Instant::now();
            parser.feed(&block[off..off + want]);
            parser.drain_completed_into(&mut batch);
            in_parser += t.elapsed();
            // The consumer looks at every result (its name and its group's path), as a
            // real one would, then drops the batch.
            for c in &batch {
                touched += (c.node.name.len() + c.path.len()) as u64;
            }
            completed += batch.len() as u64;
            batch.clear();
            fed += want as u64;
            off = if off + want >= block.len() {
                0
            } else {
                off + want
            };
        }
        let lines = parser.lines();
        let t = Instant::now();
        let (report, rest) = parser.finish_with_completed();
        in_parser += t.elapsed();
        completed += rest.len() as u64;
        touched += rest
            .iter()
            .map(|c| (c.node.name.len() + c.path.len()) as u64)
            .sum::<u64>();
        let wall = start.elapsed().as_secs_f64();
        let secs = in_parser.as_secs_f64();
        let mib = fed as f64 / 1048576.0;
        parser_speeds.push(mib / secs);
        total_speeds.push(mib / wall);
        println!(
            "run {run}: {mib:.1} MiB, parser {secs:.3}s = {:.0} MiB/s ({:.1} M lines/s); \
             with the consumer reading and dropping the results {wall:.3}s = {:.0} MiB/s; {completed} \
             results handed out ({touched} name bytes + path levels read; {} leaves: pass {} fail {} skip {} incomplete {}), result {}",
            mib / secs,
            lines as f64 / secs / 1e6,
            mib / wall,
            report.counts.total(),
            report.counts.pass,
            report.counts.fail,
            report.counts.skip,
            report.counts.incomplete,
            report.result,
        );
    }
    parser_speeds.sort_by(f64::total_cmp);
    total_speeds.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v[v.len() / 2];
    let hwm = status_kib("VmHWM:").unwrap_or(0);
    println!(
        "median over {} runs: parser {:.0} MiB/s (with the consumer reading and dropping the results {:.0} \
         MiB/s); peak RSS (VmHWM) {:.1} MiB (before parsing, with the {:.1} MiB block: {:.1} MiB)",
        parser_speeds.len(),
        median(&parser_speeds),
        median(&total_speeds),
        hwm as f64 / 1024.0,
        block.len() as f64 / 1048576.0,
        rss_before as f64 / 1024.0
    );
    Ok(())
}
