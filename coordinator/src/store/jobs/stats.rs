//! Job statistics: per signature (job name and device type) and lab, moving averages of the
//! queue wait and the run time, which placement uses to estimate where a job starts soonest.

use super::super::db::{Connection, params};
use super::super::{Write, micros};
use super::JobRow;
use crate::error::Result;

/// A job's statistics signature: its name and device type (`name@device_type`, or the name
/// alone when it does not ask for one).
pub(crate) fn signature(row: &JobRow) -> String {
    match row
        .device_type
        .as_deref()
        .or(row.criteria.device_type.as_deref())
    {
        Some(dt) => format!("{}@{dt}", row.spec.name),
        None => row.spec.name.clone(),
    }
}

/// Statistics of one signature in one lab.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobStats {
    /// Finished attempts counted.
    pub(crate) runs: i64,
    /// Moving average of the queue wait, ms.
    pub(crate) wait_ms: f64,
    /// Moving average of the run time, ms.
    pub(crate) run_ms: f64,
}

/// Every statistics row: (signature, lab) → stats.
pub(crate) fn job_stats(
    conn: &Connection,
) -> Result<std::collections::HashMap<(String, String), JobStats>> {
    let rows = conn.query_map(
        "SELECT signature, lab, runs, wait_ms_avg, run_ms_avg FROM job_stats",
        params![],
        |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                JobStats {
                    runs: r.get(2)?,
                    wait_ms: r.get(3)?,
                    run_ms: r.get(4)?,
                },
            ))
        },
    )?;
    Ok(rows.into_iter().collect())
}

impl Write<'_> {
    /// Folds a finished attempt's queue wait and run time into the statistics of its
    /// signature in its lab (moving averages, the newest run weighing a fifth).
    pub(super) fn record_stats(&mut self, row: &JobRow, lab: &str) -> Result<()> {
        let (leased, started): (Option<i64>, Option<i64>) = self.tx.query_row(
            "SELECT leased_at, started_at FROM jobs WHERE node_id = ?1",
            params![row.id.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let Some(leased) = leased else { return Ok(()) };
        let wait_ms = (leased - micros(row.queued_at)).max(0) as f64 / 1000.0;
        let run_ms = (micros(self.now) - started.unwrap_or(leased)).max(0) as f64 / 1000.0;
        self.tx.execute(
            "INSERT INTO job_stats (signature, lab, runs, wait_ms_avg, run_ms_avg, updated) \
                 VALUES (?1, ?2, 1, ?3, ?4, ?5) \
                 ON CONFLICT(signature, lab) DO UPDATE SET runs = job_stats.runs + 1, \
                 wait_ms_avg = job_stats.wait_ms_avg * 0.8 + excluded.wait_ms_avg * 0.2, \
                 run_ms_avg = job_stats.run_ms_avg * 0.8 + excluded.run_ms_avg * 0.2, \
                 updated = excluded.updated",
            params![signature(row), lab, wait_ms, run_ms, micros(self.now)],
        )?;
        Ok(())
    }

    /// Sets the statistics of a signature in a lab (tests that need a known history).
    #[cfg(test)]
    pub(crate) fn set_job_stats(&mut self, signature: &str, lab: &str, s: &JobStats) -> Result<()> {
        self.tx.execute(
            "INSERT INTO job_stats (signature, lab, runs, wait_ms_avg, run_ms_avg, updated) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(signature, lab) DO UPDATE SET \
             runs = excluded.runs, wait_ms_avg = excluded.wait_ms_avg, \
             run_ms_avg = excluded.run_ms_avg, updated = excluded.updated",
            params![
                signature,
                lab,
                s.runs,
                s.wait_ms,
                s.run_ms,
                micros(self.now)
            ],
        )?;
        Ok(())
    }
}
