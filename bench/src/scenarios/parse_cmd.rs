//! The `parse` command: the real `labwire-agent` binary (next to `labwire-bench` in the
//! target folder, or `LABWIRE_AGENT_BIN`) parses the generated KTAP log (the 8 MiB block of
//! `labwire_parsers::testgen` repeated to `--log-mb` MB, written to a temporary file) with
//! `--output jsonl` and `--output summary`, its standard output read (and counted) by this
//! process through a pipe. Per output: MB/s (median of `--runs`, wall time from start to
//! exit) and peak RSS of the child (`wait4`'s `ru_maxrss`); the counts the binary prints
//! must equal the parser library's on the same file. When `kunit.py` is present
//! (`KUNIT_PY=/path/to/linux/tools/testing/kunit/kunit.py`), it parses the first 20 MB of
//! the same log in the same run (`kunit.py parse FILE`), for the ratio; the tests each side
//! counted are printed with it, as kunit.py stops at the end of the log's first KTAP
//! document (the generated log has thousands), so its rate is not like for like.

use crate::Opts;
use crate::report::{Figure, Goal, median, spread};
use anyhow::{Context, bail};
use labwire_parsers::{Counts, LogParser, ParserOptions};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The program to measure and the arguments before `parse`: the `labwire-agent` binary
/// (`LABWIRE_AGENT_BIN`, or next to `labwire-bench`); when it was not built (the smoke
/// test builds only this package), `labwire-bench agent`, which runs the same command code.
fn agent_bin() -> anyhow::Result<(PathBuf, Vec<&'static str>)> {
    if let Some(p) = std::env::var_os("LABWIRE_AGENT_BIN") {
        return Ok((PathBuf::from(p), Vec::new()));
    }
    let me = crate::self_exe()?;
    let p = me
        .parent()
        .context("labwire-bench has no folder")?
        .join("labwire-agent");
    if p.exists() {
        return Ok((p, Vec::new()));
    }
    eprintln!(
        "parse-cmd: {} not found (cargo build --release --bin labwire-agent); measuring `labwire-bench agent parse` instead",
        p.display()
    );
    Ok((me, vec!["agent"]))
}

/// Writes `mb` MB of generated log to `path`: the 8 MiB block over and over.
fn write_log(path: &Path, mb: usize) -> anyhow::Result<()> {
    let block = labwire_parsers::testgen::generate(8 * 1024 * 1024);
    let total = mb * 1_000_000;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = total;
    while left > 0 {
        let n = left.min(block.len());
        f.write_all(&block[..n])?;
        left -= n;
    }
    f.flush()?;
    Ok(())
}

/// The library's counts on `path` (streaming, tree off).
fn library_counts(path: &Path) -> anyhow::Result<Counts> {
    let mut p = LogParser::new(ParserOptions {
        keep_tree: false,
        progress: false,
        ..ParserOptions::default()
    })?;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        p.feed(&buf[..n]);
    }
    Ok(p.finish().counts)
}

/// One run of a program.
struct Run {
    /// Wall time from start to exit.
    secs: f64,
    /// The child's CPU time (user and system): what the command costs when other work
    /// shares the cores and stretches the wall time.
    cpu: f64,
    /// Peak RSS in bytes.
    peak: f64,
    /// The last line it printed, or its `tests:` line.
    last: String,
    /// Bytes it printed.
    bytes: u64,
}

/// One run of `program args`.
fn measure(program: &Path, args: &[&str]) -> anyhow::Result<Run> {
    measure_accepting(program, args, &[])
}

/// [`measure`], also taking the exit codes in `accept` as success (kunit.py exits 1 when
/// a test failed).
fn measure_accepting(program: &Path, args: &[&str], accept: &[i32]) -> anyhow::Result<Run> {
    let t = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let mut out = child.stdout.take().context("no stdout")?;
    // Read like `cat > /dev/null` would, so that the reader costs next to nothing: raw
    // chunks, the bytes counted, only the last MiB kept for the line wanted at the end.
    let (mut buf, mut tail, mut bytes) = (vec![0u8; 1 << 20], Vec::new(), 0u64);
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        bytes += n as u64;
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 << 20 {
            tail.drain(..tail.len() - (1 << 20));
        }
    }
    // The summary's counts line, else the last line (jsonl's summary line).
    let text = String::from_utf8_lossy(&tail);
    let last = text
        .lines()
        .find(|l| l.starts_with("tests: "))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or_default()
        .to_string();
    let pid = i32::try_from(child.id()).context("pid")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value, filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `usage` are valid for writing.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = t.elapsed().as_secs_f64();
    if r != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let st = std::process::ExitStatus::from_raw(status);
    if !st.success() && !st.code().is_some_and(|c| accept.contains(&c)) {
        bail!("{} {args:?} failed: {st}", program.display());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Run {
        secs,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        peak: usage.ru_maxrss as f64 * 1024.0,
        last,
        bytes,
    })
}

/// The counts in `summary` output (`tests: N (pass P, fail F, skip S, incomplete I)`).
fn summary_counts(text: &str) -> Option<Counts> {
    let inner = text.split_once('(')?.1.trim_end().trim_end_matches(')');
    let mut c = Counts::default();
    for part in inner.split(", ") {
        let (k, v) = part.split_once(' ')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "pass" => c.pass = v,
            "fail" => c.fail = v,
            "skip" => c.skip = v,
            "incomplete" => c.incomplete = v,
            _ => return None,
        }
    }
    Some(c)
}

/// Runs the scenario.
pub async fn run(o: &Opts) -> anyhow::Result<Vec<Figure>> {
    let (agent, pre) = agent_bin()?;
    let args = |output: &'static str, file: &str| -> Vec<String> {
        pre.iter()
            .map(|s| s.to_string())
            .chain(["parse", "--output", output, file].map(String::from))
            .collect()
    };
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("generated.log");
    write_log(&log, o.log_mb)?;
    let log_s = log.to_str().context("temporary path is not UTF-8")?;
    let want = library_counts(&log)?;
    let mb = o.log_mb as f64;
    let mut figs = Vec::new();
    for output in ["jsonl", "summary"] {
        let (mut rates, mut cpu_rates, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
        let mut printed = 0;
        for _ in 0..o.runs.max(1) {
            let a = args(output, log_s);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let Run {
                secs,
                cpu,
                peak,
                last,
                bytes,
            } = measure(&agent, &a)?;
            let got = if output == "jsonl" {
                let v: serde_json::Value =
                    serde_json::from_str(&last).context("the last jsonl line is not JSON")?;
                serde_json::from_value::<Counts>(v["counts"].clone())
                    .context("the summary line has no counts")?
            } else {
                summary_counts(&last).context("no `tests:` line in the summary")?
            };
            anyhow::ensure!(
                got == want,
                "--output {output} counted {got:?}, the library {want:?}"
            );
            rates.push(mb / secs);
            cpu_rates.push(mb / cpu.max(1e-6));
            peaks.push(peak / 1e6);
            printed = bytes;
        }
        let peak = peaks.iter().cloned().fold(0.0, f64::max);
        figs.push(
            Figure::new("parse-cmd", &format!("labwire-agent parse --output {output}"), median(&rates), "MB/s", Some(Goal::AtLeast(300.0)))
                .note(format!(
                    "{}: median of {} runs on the {} MB generated log (runs: {} MB/s), output read through a pipe ({} MB printed); per CPU second of the command (user+system) {:.0} MB/s (runs: {}); counts equal the library's: {} tests",
                    agent.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
                    rates.len(),
                    o.log_mb,
                    spread(&rates),
                    printed / 1_000_000,
                    median(&cpu_rates),
                    spread(&cpu_rates),
                    want.total()
                )),
        );
        figs.push(
            Figure::new(
                "parse-cmd",
                &format!("labwire-agent parse --output {output} peak RSS"),
                peak,
                "MB",
                Some(Goal::Below(64.0)),
            )
            .note("the highest ru_maxrss of the child over the runs"),
        );
    }
    if let Some(kunit) = std::env::var_os("KUNIT_PY") {
        let small = dir.path().join("generated-20mb.log");
        write_log(&small, 20)?;
        let small_s = small.to_str().context("path")?;
        let kunit_run = measure_accepting(
            Path::new("python3"),
            &[&kunit.to_string_lossy(), "parse", small_s],
            &[1],
        )
        .context("kunit.py parse failed")?;
        // Its last line: `... Testing complete. Ran N tests: passed: ...`.
        let kunit_tests = kunit_run
            .last
            .split_once("Ran ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        let a = args("jsonl", small_s);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let ours = measure(&agent, &a)?;
        let our_tests = serde_json::from_str::<serde_json::Value>(&ours.last)
            .ok()
            .and_then(|v| serde_json::from_value::<Counts>(v["counts"].clone()).ok())
            .map(|c| c.total().to_string())
            .unwrap_or_else(|| "?".to_string());
        let (secs, peak) = (kunit_run.secs, kunit_run.peak);
        figs.push(
            Figure::new("parse-cmd", "kunit.py parse (20 MB)", 20.0 / secs, "MB/s", None)
                .note(format!(
                    "peak RSS {:.0} MB, {kunit_tests} tests counted; labwire-agent parse --output jsonl on the same file: {:.0} MB/s, {our_tests} tests, {:.0}x the speed (kunit.py reads only the log's first KTAP document)",
                    peak / 1e6,
                    20.0 / ours.secs,
                    secs / ours.secs
                )),
        );
    }
    Ok(figs)
}
