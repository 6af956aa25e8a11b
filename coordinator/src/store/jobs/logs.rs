//! Job logs: appended chunk by chunk by the agent holding the lease (idempotent, no gaps),
//! read back by offset, and which attempt's log a reader gets.

use super::super::Write;
use super::super::db::{Connection, params};
use crate::error::{Error, Result};
use crate::model::{AttemptNo, LabName, NodeId};

/// The attempt whose log a reader wants: the reported one, else the newest with a log.
pub(crate) fn log_attempt(conn: &Connection, job: NodeId) -> Result<Option<i32>> {
    let reported: Option<i32> = conn.query_opt(
        "SELECT attempt FROM job_reports WHERE job = ?1 ORDER BY attempt DESC LIMIT 1",
        params![job.0],
        |r| r.get(0),
    )?;
    if reported.is_some() {
        return Ok(reported);
    }
    conn.query_opt(
        "SELECT attempt FROM logs WHERE job = ?1 ORDER BY attempt DESC LIMIT 1",
        params![job.0],
        |r| r.get(0),
    )
}

/// Reads up to `max` bytes of chunks of a job attempt's log starting at chunk offset `from`.
/// Returns (offset, data) pairs in order.
pub(crate) fn read_log(
    conn: &Connection,
    job: NodeId,
    attempt: i32,
    from: u64,
    max: usize,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let (mut out, mut size) = (Vec::new(), 0usize);
    conn.query_each(
        "SELECT \"offset\", data FROM log_chunks WHERE job = ?1 AND attempt = ?2 \
         AND \"offset\" >= ?3 ORDER BY \"offset\"",
        params![job.0, attempt, from as i64],
        |r| {
            let off: i64 = r.get(0)?;
            let data: Vec<u8> = r.get(1)?;
            size += data.len();
            out.push((off as u64, data));
            Ok(size < max)
        },
    )?;
    Ok(out)
}

impl Write<'_> {
    /// Appends bytes to an attempt's log; bytes already stored are skipped. Returns the
    /// stored length.
    pub(crate) fn append_log(
        &mut self,
        lab: &LabName,
        job: NodeId,
        attempt: AttemptNo,
        offset: u64,
        data: &[u8],
    ) -> Result<u64> {
        let reported_by: Option<String> = self.tx.query_opt(
            "SELECT lab FROM job_reports WHERE job = ?1 AND attempt = ?2",
            params![job.0, attempt],
            |r| r.get(0),
        )?;
        match &reported_by {
            Some(l) if l == lab.as_str() => {}
            Some(_) => {
                return Err(Error::LeaseLost(format!(
                    "job {job} attempt {attempt} was reported by another lab"
                )));
            }
            None => {
                self.leased_to(lab, job, attempt)?;
            }
        }
        let length: u64 = self
            .tx
            .query_opt(
                "SELECT length FROM logs WHERE job = ?1 AND attempt = ?2",
                params![job.0, attempt],
                |r| r.get::<_, i64>(0),
            )?
            .unwrap_or(0) as u64;
        if offset > length {
            return Err(Error::Invalid(format!(
                "log of job {job} attempt {attempt} has {length} bytes; a chunk at offset {offset} would leave a gap"
            )));
        }
        let end = offset + data.len() as u64;
        if end <= length {
            return Ok(length);
        }
        if reported_by.is_some() {
            return Err(Error::LeaseLost(format!(
                "job {job} attempt {attempt} is finished; its log is closed at {length} bytes"
            )));
        }
        let fresh = &data[(length - offset) as usize..];
        self.tx.execute(
            "INSERT INTO log_chunks (job, attempt, \"offset\", data) VALUES (?1, ?2, ?3, ?4)",
            params![job.0, attempt, length as i64, fresh],
        )?;
        self.tx.execute(
            "INSERT INTO logs (job, attempt, length) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(job, attempt) DO UPDATE SET length = excluded.length",
            params![job.0, attempt, end as i64],
        )?;
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::NewJob;
    use crate::store::temp_store;
    use labwire_proto::v1;

    fn spec(name: &str) -> v1::JobSpec {
        v1::JobSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn log_appends_are_idempotent() {
        let (_d, store) = temp_store();
        let (node, _) = store
            .write_blocking(|w| {
                w.submit_job(NewJob {
                    spec: spec("j"),
                    parent: None,
                    submitter: String::new(),
                    owner: String::new(),
                    ..Default::default()
                })
            })
            .unwrap();
        let id = node.id;
        let later = chrono::Utc::now() + chrono::Duration::seconds(60);
        store
            .write_blocking(move |w| w.claim_for_test(id, "lab", later))
            .unwrap();
        let append = |off: u64, data: &'static [u8]| {
            store.write_blocking(move |w| {
                w.append_log(&LabName::new("lab"), id, AttemptNo(1), off, data)
            })
        };
        assert_eq!(append(0, b"hello ").unwrap(), 6);
        assert_eq!(append(0, b"hello ").unwrap(), 6);
        assert_eq!(append(3, b"lo world").unwrap(), 11);
        assert!(append(20, b"gap").is_err());
        let chunks = store
            .read_blocking(move |c| read_log(c, id, 1, 0, 1 << 20))
            .unwrap();
        let all: Vec<u8> = chunks.into_iter().flat_map(|(_, d)| d).collect();
        assert_eq!(all, b"hello world");
        assert!(
            store
                .write_blocking(move |w| w.append_log(
                    &LabName::new("other"),
                    id,
                    AttemptNo(1),
                    11,
                    b"x"
                ))
                .is_err()
        );
    }
}
