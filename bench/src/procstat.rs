//! Memory and CPU of a process, read from `/proc/PID/status` and `/proc/PID/stat`.

use anyhow::Context;
use std::time::Instant;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    /// Resident set size now, bytes.
    pub rss: u64,
    /// Peak resident set size (VmHWM), bytes.
    pub peak_rss: u64,
    /// User plus system CPU time used so far, seconds.
    pub cpu_secs: f64,
    /// When it was read.
    pub at: Instant,
}

/// Clock ticks per second of `/proc` CPU times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl ProcStat {
    /// Reads the counters of process `pid`.
    pub fn read(pid: u32) -> anyhow::Result<ProcStat> {
        Self::read_path(&format!("/proc/{pid}"))
    }

    /// Reads the counters of this process.
    pub fn own() -> anyhow::Result<ProcStat> {
        Self::read_path("/proc/self")
    }

    fn read_path(base: &str) -> anyhow::Result<ProcStat> {
        let status = std::fs::read_to_string(format!("{base}/status"))
            .with_context(|| format!("cannot read {base}/status"))?;
        let stat = std::fs::read_to_string(format!("{base}/stat"))
            .with_context(|| format!("cannot read {base}/stat"))?;
        // The command name (field 2) may hold spaces; fields after its closing parenthesis
        // start at field 3, so utime (14) and stime (15) are the 12th and 13th after it.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<f64> {
            Ok(fields
                .get(i)
                .context("short /proc stat")?
                .parse::<u64>()
                .context("malformed /proc stat")? as f64)
        };
        let cpu = (ticks(11)? + ticks(12)?) / clock_ticks();
        Ok(ProcStat {
            rss: status_kib(&status, "VmRSS:").unwrap_or(0) * 1024,
            peak_rss: status_kib(&status, "VmHWM:").unwrap_or(0) * 1024,
            cpu_secs: cpu,
            at: Instant::now(),
        })
    }

    /// CPU used between `earlier` and `self`, as a fraction of one core.
    pub fn cpu_since(&self, earlier: &ProcStat) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (self.cpu_secs - earlier.cpu_secs) / wall
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let a = ProcStat::own().unwrap();
        assert!(a.rss > 0 && a.peak_rss >= a.rss);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = ProcStat::own().unwrap();
        assert!(b.cpu_secs >= a.cpu_secs);
    }
}
