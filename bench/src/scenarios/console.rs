//! Console relay: a borrowed board's console through the coordinator, on loopback. A real
//! coordinator and a real agent process; the board is a pty whose other side this process
//! holds, opened by the agent's console engine as a serial tty (`labwire_agent::serial`).
//! The client reserves the device and opens `BorrowService.Console` as `labwire console`
//! does: keystroke -> coordinator -> the agent's session stream -> the pty, echoed back by
//! this process at once -> agent -> coordinator -> client.
//!
//! - latency: one byte typed, the time until the client receives its echo; 100 keystrokes per
//!   run, the median of each run's median;
//! - throughput: `--console-mb` MB (20 by default) of every byte value written into the pty,
//!   received by the client through the relay, every byte checked (count and hash).

use super::serial::{fnv, openpty};
use crate::Opts;
use crate::report::{Figure, median, ms, spread};
use crate::rig::Rig;
use anyhow::Context;
use labwire_proto::v1::{self, console_reply, console_request};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEYSTROKES: usize = 100;
const WARMUP: usize = 10;

/// Data of every byte value, from a fixed generator.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Puts the pty in raw mode from the start (no echo by the line discipline, no line
/// editing), as the agent's console engine sets it when it opens the tty.
fn make_raw(fd: &std::os::fd::OwnedFd) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed termios is a valid value for tcgetattr to fill; the fd is open and
    // owned by the caller for the duration of these calls.
    let ok = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(fd.as_raw_fd(), &mut t) == 0 && {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) == 0
        }
    };
    anyhow::ensure!(
        ok,
        "cannot set the pty raw: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The next bytes the client receives (from `output` replies), or an error if the console
/// closed or was silent for 30 s.
async fn next_output(inbound: &mut tonic::Streaming<v1::ConsoleReply>) -> anyhow::Result<Vec<u8>> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), inbound.message())
            .await
            .context("no console output within 30 s")??
            .context("the console closed")?;
        match m.kind {
            Some(console_reply::Kind::Output(d)) => return Ok(d),
            Some(console_reply::Kind::Closed(why)) => anyhow::bail!("console closed: {why}"),
            _ => {}
        }
    }
}

/// Runs the scenario.
pub async fn run(o: &Opts) -> anyhow::Result<Vec<Figure>> {
    let mut rig = Rig::new(&o.store, "leases: {duration: 30s, heartbeat: 2s}\n")?;
    let cert = rig.issue_labs("console-", 1)?.remove(0);
    let bundle = rig.write_bundle(&cert)?;
    rig.start()?;
    let (master, slave, pty) = openpty()?;
    make_raw(&slave)?;
    let yaml = format!(
        "lab: {lab}\ncoordinator:\n  url: {url}\n  ca: {b}/ca.pem\n  cert: {b}/agent.pem\n  key: {b}/agent.key\nstate_dir: {b}/state\n\
         devices:\n\
         \x20 - name: board\n    device_type: qemu-x86_64\n    driver:\n      type: serial\n\
         \x20     console: {{tty: {{path: '{pty}'}}}}\n\
         \x20     power_on_command: ['true']\n\
         \x20     power_off_command: ['true']\n",
        lab = cert.lab,
        url = rig.url(),
        b = bundle.display(),
    );
    let cfg = bundle.join("agent.yaml");
    std::fs::write(&cfg, yaml)?;
    let log = std::fs::File::create(rig.path("agent.log"))?;
    let mut agent = Command::new(crate::self_exe()?)
        .args(["agent", "run", "--config"])
        .arg(&cfg)
        .env("LABWIRE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start the agent")?;
    let result = measure(o, &rig, &cert.lab, master).await;
    drop(slave);
    let _ = agent.kill();
    let _ = agent.wait();
    let (lat, rates) = result?;
    Ok(vec![
        Figure::new(
            "console",
            "keystroke to echo",
            median(&lat),
            "ms",
            None,
        )
        .note(format!(
            "median of {} runs of {KEYSTROKES} keystrokes (run medians: {} ms); client -> coordinator -> agent stream -> pty -> echo -> back, loopback",
            lat.len(),
            spread(&lat)
        )),
        Figure::new(
            "console",
            "relay throughput",
            median(&rates),
            "MB/s",
            None,
        )
        .note(format!(
            "median of {} runs of {} MB of every byte value, pty -> agent -> coordinator -> client, every byte checked (runs: {} MB/s)",
            rates.len(),
            o.console_mb,
            spread(&rates)
        )),
    ])
}

/// Reserves the device, opens its console and measures; returns the run medians of the
/// latency (ms) and the throughput of each run (MB/s).
async fn measure(
    o: &Opts,
    rig: &Rig,
    lab: &str,
    master: std::fs::File,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut c = rig.client().await?;
    // The device is reservable once its agent advertised it.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c
            .borrow
            .reserve(v1::ReserveRequest {
                lab: lab.into(),
                device: "board".into(),
                seconds: 3600,
                reason: "labwire-bench".into(),
                now: false,
                extend: false,
                criteria: None,
            })
            .await;
        match r {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::NotFound && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => anyhow::bail!("cannot reserve the device: {s}"),
        }
    }
    // The agent opens its session stream at its first heartbeat after Register.
    let (tx, mut inbound) = loop {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tx.send(v1::ConsoleRequest {
            kind: Some(console_request::Kind::Open(v1::ConsoleOpen {
                lab: lab.into(),
                device: "board".into(),
                watch: false,
            })),
        })
        .await?;
        match c
            .borrow
            .console(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => break (tx, r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => anyhow::bail!("cannot open the console: {s}"),
        }
    };
    match inbound.message().await?.and_then(|m| m.kind) {
        Some(console_reply::Kind::Opened(op)) if op.typing => {}
        other => anyhow::bail!("the console did not open for typing: {other:?}"),
    }
    // The board says one byte; once the client has it, the agent holds the pty open (what
    // the pty got before the agent opened it waits in it) and keystrokes reach the board.
    let mut writer = master.try_clone()?;
    writer.write_all(b"$")?;
    anyhow::ensure!(
        next_output(&mut inbound).await? == b"$",
        "the board's first byte did not come through"
    );
    let runs = o.runs.max(1);
    // The board: echoes every keystroke at once, as a shell does, then stops.
    let keystrokes = WARMUP + KEYSTROKES * runs;
    let mut echo_end = master.try_clone()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; 256];
        let mut seen = 0;
        while seen < keystrokes {
            let n = echo_end.read(&mut buf)?;
            if n == 0 {
                break;
            }
            echo_end.write_all(&buf[..n])?;
            seen += n;
        }
        Ok(())
    });
    let mut lat = Vec::new();
    let mut k = 0u8;
    for run in 0..=runs {
        let n = if run == 0 { WARMUP } else { KEYSTROKES };
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            k = k.wrapping_add(1);
            let key = b'a' + k % 26;
            let t = Instant::now();
            tx.send(v1::ConsoleRequest {
                kind: Some(console_request::Kind::Input(vec![key])),
            })
            .await?;
            let got = next_output(&mut inbound).await?;
            anyhow::ensure!(got == [key], "typed {key:?}, the echo was {got:?}");
            v.push(ms(t.elapsed()));
        }
        if run > 0 {
            lat.push(median(&v));
        }
    }
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    // Throughput: the board prints, the client reads it all.
    let len = o.console_mb * 1_000_000;
    let data = pattern(len);
    let want = fnv(0xcbf29ce484222325, &data);
    let mut rates = Vec::new();
    for _ in 0..runs.clamp(1, 3) {
        let owned = data.clone();
        let mut w = writer.try_clone()?;
        let t = Instant::now();
        let th = std::thread::spawn(move || w.write_all(&owned));
        let (mut got, mut h) = (0usize, 0xcbf29ce484222325u64);
        while got < len {
            let d = next_output(&mut inbound).await?;
            h = fnv(h, &d);
            got += d.len();
        }
        let secs = t.elapsed().as_secs_f64();
        th.join()
            .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
        anyhow::ensure!(
            got == len && h == want,
            "bytes lost or changed through the relay: {got} of {len}"
        );
        rates.push(len as f64 / 1e6 / secs);
    }
    writer.flush()?;
    Ok((lat, rates))
}
