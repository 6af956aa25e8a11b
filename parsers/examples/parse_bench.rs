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
use labwire_parsers::{Format, LogParser, ParserOptions};
use std::fmt::Write as _;
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

/// A small deterministic random number generator (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const SUITES: &[&str] = &[
    "kunit_example",
    "list-kunit-test",
    "hash",
    "bitfields",
    "cpumask",
    "overflow",
    "memcpy",
    "siphash",
    "rational",
    "time_test_cases",
    "kfence",
    "drm_format",
    "ext4_inode_test",
    "sysctl_test",
    "string-stream-test",
    "kunit-resource-test",
    "mptcp-crypto",
    "qos-kunit-test",
];
const VERBS: &[&str] = &[
    "init", "add", "del", "parse", "copy", "lookup", "resize", "walk", "flush", "compare",
    "encode", "decode", "alloc", "free", "split", "merge", "shift", "rotate",
];
const OBJECTS: &[&str] = &[
    "empty",
    "single",
    "many",
    "tail",
    "head",
    "overlap",
    "boundary",
    "large",
    "unaligned",
    "negative",
    "zero",
    "max",
    "wraparound",
    "null",
    "nested",
];
const KMSGS: &[&str] = &[
    "random: crng reseeded on system resumption",
    "virtio_net virtio0 enp0s2: renamed from eth0",
    "EXT4-fs (vda): mounted filesystem 5a7c0e2b-4b1e-4b5e-9a3e-1f0d8c3b2a11 r/w with ordered data mode",
    "clocksource: tsc: mask: 0xffffffffffffffff max_cycles: 0x2e1e4a6a4a7, max_idle_ns: 440795235291 ns",
    "audit: type=1403 audit(1712570000.123:2): auid=4294967295 ses=4294967295 lsm=selinux res=1",
    "systemd[1]: Started systemd-journald.service - Journal Service.",
];

struct Gen {
    rng: Lcg,
    ts: u64,
    doc: u64,
}

impl Gen {
    fn stamp(&mut self, out: &mut String) {
        self.ts += 1 + self.rng.below(400);
        let _ = write!(
            out,
            "[{:5}.{:06}] ",
            self.ts / 1_000_000,
            self.ts % 1_000_000
        );
    }

    fn kline(&mut self, out: &mut String, text: &str) {
        self.stamp(out);
        out.push_str(text);
        out.push('\n');
    }

    fn test_name(&mut self, suite: &str, i: u64) -> String {
        let s = suite.replace('-', "_");
        format!(
            "{}_test_{}_{}_{}",
            s,
            self.rng.pick(VERBS),
            self.rng.pick(OBJECTS),
            i
        )
    }

    /// One KUnit document: a version line, a plan, several suites.
    fn kunit_doc(&mut self, out: &mut String) {
        self.doc += 1;
        let suites = 3 + self.rng.below(6);
        self.kline(out, "KTAP version 1");
        self.kline(out, &format!("1..{suites}"));
        for s in 1..=suites {
            let base = self.rng.pick(SUITES);
            let suite = format!("{base}-{}", self.doc % 1000);
            let tests = 4 + self.rng.below(20);
            self.kline(out, "    KTAP version 1");
            self.kline(out, &format!("    # Subtest: {suite}"));
            self.kline(out, &format!("    # module: {}", base.replace('-', "_")));
            self.kline(out, &format!("    1..{tests}"));
            let (mut pass, mut fail, mut skip) = (0, 0, 0);
            for t in 1..=tests {
                let name = self.test_name(base, t);
                if self.rng.below(12) == 0 {
                    let msg = self.rng.pick(KMSGS);
                    self.kline(out, msg);
                }
                if self.rng.below(400) == 0 {
                    self.warning(out);
                }
                let roll = self.rng.below(100);
                if roll < 8 {
                    self.kline(out, "        KTAP version 1");
                    self.kline(out, &format!("        # Subtest: {name}"));
                    let params = 2 + self.rng.below(6);
                    for p in 1..=params {
                        self.kline(out, &format!("        ok {p} {name} param-{p}"));
                    }
                    self.kline(
                        out,
                        &format!("    # {name}: pass:{params} fail:0 skip:0 total:{params}"),
                    );
                    self.kline(out, &format!("    ok {t} {name}"));
                    pass += 1;
                } else if roll < 11 {
                    let line = 20 + self.rng.below(900);
                    self.kline(
                        out,
                        &format!("    # {name}: EXPECTATION FAILED at lib/{base}.c:{line}"),
                    );
                    self.kline(out, "    Expected ptr == expected, but");
                    self.kline(out, "        ptr == ffff8880043e1c38");
                    self.kline(out, "        expected == ffff8880043e1c48");
                    self.kline(out, &format!("    not ok {t} {name}"));
                    fail += 1;
                } else if roll < 17 {
                    self.kline(
                        out,
                        &format!("    ok {t} {name} # SKIP not supported on this platform"),
                    );
                    skip += 1;
                } else {
                    if roll < 40 {
                        self.kline(out, &format!("    # {name}: initializing"));
                    }
                    self.kline(out, &format!("    ok {t} {name}"));
                    pass += 1;
                }
            }
            let total = pass + fail + skip;
            self.kline(
                out,
                &format!("# {suite}: pass:{pass} fail:{fail} skip:{skip} total:{total}"),
            );
            self.kline(
                out,
                &format!("# Totals: pass:{pass} fail:{fail} skip:{skip} total:{total}"),
            );
            let verdict = if fail > 0 { "not ok" } else { "ok" };
            self.kline(out, &format!("{verdict} {s} {suite}"));
        }
    }

    fn warning(&mut self, out: &mut String) {
        self.kline(out, "------------[ cut here ]------------");
        self.kline(
            out,
            "WARNING: CPU: 1 PID: 58 at lib/kunit/test.c:312 kunit_try_run_case+0x4e/0x110",
        );
        self.kline(out, "Modules linked in:");
        self.kline(
            out,
            "CPU: 1 PID: 58 Comm: kunit_try_catch Tainted: G N 6.9.0 #1",
        );
        self.kline(out, "Call Trace:");
        self.kline(out, " <TASK>");
        self.kline(out, " kunit_generic_run_threadfn_adapter+0x1c/0x40");
        self.kline(out, " kthread+0xe5/0x120");
        self.kline(out, " </TASK>");
        self.kline(out, "---[ end trace 0000000000000000 ]---");
    }

    /// One kselftest run as run_kselftest.sh prints it (user space: no timestamps).
    fn kselftest_doc(&mut self, out: &mut String) {
        let progs = 2 + self.rng.below(5);
        let col = self
            .rng
            .pick(&["timers", "net", "mm", "seccomp", "futex", "cgroup"]);
        let _ = writeln!(out, "TAP version 13\n1..{progs}");
        for p in 1..=progs {
            let prog = format!("{}_{}", self.rng.pick(VERBS), self.rng.below(100));
            let _ = writeln!(out, "# timeout set to 45\n# selftests: {col}: {prog}");
            let cases = 3 + self.rng.below(10);
            let _ = writeln!(out, "# TAP version 13\n# 1..{cases}");
            for c in 1..=cases {
                if self.rng.below(25) == 0 {
                    let _ = writeln!(out, "# ok {c} {prog} case {c} # SKIP missing CONFIG");
                } else {
                    let _ = writeln!(out, "# ok {c} {prog} case {c}");
                }
            }
            let _ = writeln!(
                out,
                "# # Totals: pass:{cases} fail:0 xfail:0 xpass:0 skip:0 error:0"
            );
            let _ = writeln!(out, "ok {p} selftests: {col}: {prog}");
        }
    }
}

fn generate(bytes: usize) -> Vec<u8> {
    let mut g = Gen {
        rng: Lcg(0x5eed),
        ts: 400_000,
        doc: 0,
    };
    let mut out = String::with_capacity(bytes + 64 * 1024);
    while out.len() < bytes {
        if g.rng.below(5) == 0 {
            g.kselftest_doc(&mut out);
        } else {
            g.kunit_doc(&mut out);
        }
    }
    out.into_bytes()
}

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
