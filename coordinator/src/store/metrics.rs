//! The figures `/metrics` shows, read from the store at each scrape (so they survive restarts
//! and agree with what the API shows): jobs by queue state, nodes by kind and state, a
//! histogram of dispatch latency, and the newest event number.

use super::db::{Connection, params};
use crate::error::Result;
use std::fmt::Write;

/// What one scrape reads from the store.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Jobs per queue state.
    pub(crate) jobs: Vec<(String, i64)>,
    /// Nodes per (kind, state).
    pub(crate) nodes: Vec<(String, String, i64)>,
    /// Jobs leased within each bucket's bound, in the order of the bounds asked for.
    pub(crate) latency_buckets: Vec<i64>,
    /// Jobs leased at least once.
    pub(crate) latency_count: i64,
    /// The sum of their dispatch latencies, µs.
    pub(crate) latency_sum_us: i64,
    /// The newest event sequence number.
    pub(crate) last_seq: i64,
}

/// Reads the figures; `buckets` are the histogram's upper bounds in seconds. Dispatch latency
/// is the time from (last) queueing to the lease, for every job leased at least once.
pub(crate) fn snapshot(c: &Connection, buckets: &[f64]) -> Result<Snapshot> {
    let mut s = Snapshot {
        jobs: c.query_map(
            "SELECT status, COUNT(*) FROM jobs GROUP BY status",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?,
        nodes: c.query_map(
            "SELECT kind, state, COUNT(*) FROM nodes GROUP BY kind, state",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?,
        ..Default::default()
    };
    // Sums are cast: PostgreSQL sums BIGINTs as NUMERIC.
    let mut sql = String::from("SELECT COUNT(*), CAST(COALESCE(SUM(d), 0) AS BIGINT)");
    for b in buckets {
        let _ = write!(
            sql,
            ", CAST(COALESCE(SUM(CASE WHEN d <= {} THEN 1 ELSE 0 END), 0) AS BIGINT)",
            (b * 1e6) as i64
        );
    }
    sql.push_str(
        " FROM (SELECT CASE WHEN leased_at > queued_at THEN leased_at - queued_at ELSE 0 END \
         AS d FROM jobs WHERE leased_at IS NOT NULL) AS leased",
    );
    c.query_row(&sql, params![], |r| {
        s.latency_count = r.get(0)?;
        s.latency_sum_us = r.get(1)?;
        for i in 0..buckets.len() {
            s.latency_buckets.push(r.get(2 + i)?);
        }
        Ok(())
    })?;
    s.last_seq = super::events::last_seq(c)?;
    Ok(s)
}
