//! Serial console: a generated KTAP log written into the master side of a pty, read on the
//! other side by the agent's console engine (`labwire_agent::serial::open`, a tty console
//! opened with tokio-serial, as for a board) and fed to the streaming parser, as a job log is.
//! Every byte is checked (count and hash). Then the same at 115200 baud (the writer paced to
//! 11,520 bytes/s) to see the CPU this process (console reader and parser; the pacing writer
//! is a sleeping thread) uses while following a console.

use crate::Opts;
use crate::procstat::ProcStat;
use crate::report::{Figure, median, spread};
use anyhow::Context;
use labwire_agent::config::ConsoleConfig;
use labwire_agent::serial::console::ConsoleEvent;
use labwire_parsers::{LogParser, ParserOptions};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub(crate) fn fnv(h: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

/// Opens a pty; returns the master and the slave's path (the slave fd is kept open too, so
/// the pty does not hang up between the reader's reads).
pub(crate) fn openpty() -> anyhow::Result<(std::fs::File, OwnedFd, String)> {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two fds into the given ints; the other arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    anyhow::ensure!(
        rc == 0,
        "openpty failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: both fds were just returned by openpty and are owned by nobody else.
    let (master, slave) = unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    let path = std::fs::read_link(format!("/proc/self/fd/{s}"))
        .context("cannot find the pty's path")?
        .to_string_lossy()
        .into_owned();
    Ok((master, slave, path))
}

/// Sends `data` through a pty into the console engine and the parser; `rate` paces the
/// writer (bytes per second). Returns (seconds, bytes received, hash matched, leaf tests,
/// CPU fraction of this process).
async fn pass(data: &[u8], rate: Option<f64>) -> anyhow::Result<(f64, usize, bool, u64, f64)> {
    let (mut master, _slave, path) = openpty()?;
    let cfg = ConsoleConfig::Tty {
        path: path.clone().into(),
        baud: 115_200,
    };
    let mut console = labwire_agent::serial::open(&cfg, None, Duration::from_secs(5))
        .await
        .with_context(|| format!("cannot open the console on {path}"))?;
    let want = fnv(0xcbf29ce484222325, data);
    let owned = data.to_vec();
    let cpu0 = ProcStat::own()?;
    let t = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk = if rate.is_some() { 1024 } else { 64 * 1024 };
        let start = Instant::now();
        for (i, c) in owned.chunks(chunk).enumerate() {
            if let Some(r) = rate {
                let due = Duration::from_secs_f64((i * chunk) as f64 / r);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            master.write_all(c)?;
        }
        // Keep the master open until the reader has everything.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    });
    let mut parser = LogParser::new(ParserOptions {
        keep_tree: false,
        ..ParserOptions::default()
    })?;
    let (mut got, mut h) = (0usize, 0xcbf29ce484222325u64);
    let mut batch = Vec::new();
    while got < data.len() {
        match tokio::time::timeout(Duration::from_secs(10), console.rx.recv()).await {
            Ok(Some(ConsoleEvent::Data(d))) => {
                h = fnv(h, &d);
                got += d.len();
                parser.feed(&d);
                parser.drain_completed_into(&mut batch);
                batch.clear();
            }
            Ok(Some(ConsoleEvent::Closed(why))) => {
                anyhow::bail!("console closed after {got} bytes: {why}")
            }
            Ok(None) => anyhow::bail!("console reader ended after {got} bytes"),
            Err(_) => anyhow::bail!(
                "no console data for 10 s after {got} of {} bytes",
                data.len()
            ),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = ProcStat::own()?.cpu_since(&cpu0);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let report = parser.finish();
    Ok((secs, got, h == want, report.counts.total(), cpu))
}

/// Runs the scenario.
pub async fn run(o: &Opts) -> anyhow::Result<Vec<Figure>> {
    let data = labwire_parsers::testgen::generate(o.console_mb * 1_000_000);
    let data = &data[..o.console_mb * 1_000_000];
    let mut rates = Vec::new();
    let mut tests = 0;
    for _ in 0..o.runs.clamp(1, 3) {
        let (secs, got, same, t, _) = pass(data, None).await?;
        anyhow::ensure!(
            got == data.len() && same,
            "bytes lost or changed: {got} of {}",
            data.len()
        );
        rates.push(got as f64 / 1e6 / secs);
        tests = t;
    }
    let slow_len = (11_520.0 * o.console_window.as_secs_f64()) as usize;
    let (_, got, same, _, cpu) = pass(&data[..slow_len.min(data.len())], Some(11_520.0)).await?;
    anyhow::ensure!(
        same,
        "bytes lost or changed at 115200 baud ({got} received)"
    );
    Ok(vec![
        Figure::new(
            "serial",
            "pty -> console -> parser",
            median(&rates),
            "MB/s",
            None,
        )
        .note(format!(
            "median of {} runs of {} MB, every byte checked; {tests} leaf tests (runs: {} MB/s)",
            rates.len(),
            o.console_mb,
            spread(&rates)
        )),
        Figure::new(
            "serial",
            "CPU following 115200 baud",
            cpu * 100.0,
            "% of a core",
            None,
        )
        .note(format!(
            "{got} bytes over {:.0} s, this process (console reader and parser)",
            o.console_window.as_secs_f64()
        )),
    ])
}
