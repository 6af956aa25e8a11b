//! The agent's outbox and job journal: one SQLite file in the state directory. Everything the
//! agent tells the coordinator about a job (start, log chunks, the result) is written here
//! first and deleted only when the coordinator has acknowledged it, so a coordinator outage or
//! an agent restart loses nothing. Every item names its job attempt and (for logs) its byte
//! offset, and the coordinator applies repeats once. The journal lists the jobs the agent has
//! taken and not yet reported, so that after a restart it knows what it was doing.

use anyhow::Context;
use labwire_proto::v1;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Mutex;
use tokio::sync::Notify;

/// One message waiting to be delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// The job started on a device.
    Start(v1::StartJobRequest),
    /// A piece of the job's log.
    Log(v1::AppendLogRequest),
    /// The job's final result.
    Result(v1::ReportResultRequest),
}

impl Item {
    fn kind(&self) -> &'static str {
        match self {
            Item::Start(_) => "start",
            Item::Log(_) => "log",
            Item::Result(_) => "result",
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Item::Start(m) => m.encode_to_vec(),
            Item::Log(m) => m.encode_to_vec(),
            Item::Result(m) => m.encode_to_vec(),
        }
    }

    fn decode(kind: &str, bytes: &[u8]) -> anyhow::Result<Self> {
        Ok(match kind {
            "start" => Item::Start(v1::StartJobRequest::decode(bytes)?),
            "log" => Item::Log(v1::AppendLogRequest::decode(bytes)?),
            "result" => Item::Result(v1::ReportResultRequest::decode(bytes)?),
            other => anyhow::bail!("unknown outbox item kind `{other}`"),
        })
    }
}

/// A job the agent took and has not finished reporting.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// The job.
    pub job: i64,
    /// The attempt.
    pub attempt: i32,
    /// The device it runs on.
    pub device: String,
    /// Its spec.
    pub spec: v1::JobSpec,
    /// Whether its result is already in the outbox (the run itself is over).
    pub finished: bool,
}

/// The outbox file.
pub struct Outbox {
    conn: Mutex<Connection>,
    /// Woken whenever an item is added.
    pub added: Notify,
}

impl Outbox {
    /// Opens (creating) the outbox in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        crate::state::private_dir(dir)?;
        let path = dir.join("outbox.db");
        // The database and its journal files are the agent's alone (SQLite gives the -wal
        // and -shm files the database's mode).
        crate::state::private_create()
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        for suffix in ["", "-wal", "-shm"] {
            let p = dir.join(format!("outbox.db{suffix}"));
            crate::state::private_file(&p)
                .with_context(|| format!("cannot make {} private (0600)", p.display()))?;
        }
        let conn =
            Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS outbox (
                id      INTEGER PRIMARY KEY AUTOINCREMENT,
                job     INTEGER NOT NULL,
                attempt INTEGER NOT NULL,
                kind    TEXT    NOT NULL,
                payload BLOB    NOT NULL
             );
             CREATE TABLE IF NOT EXISTS journal (
                job      INTEGER NOT NULL,
                attempt  INTEGER NOT NULL,
                device   TEXT    NOT NULL,
                spec     BLOB    NOT NULL,
                finished INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (job, attempt)
             );",
        )?;
        Ok(Outbox {
            conn: Mutex::new(conn),
            added: Notify::new(),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        match self.conn.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        }
    }

    /// Queues an item for delivery. When it is a result, the journal marks the job finished
    /// in the same transaction.
    pub fn push(&self, job: i64, attempt: i32, item: Item) -> anyhow::Result<()> {
        {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO outbox (job, attempt, kind, payload) VALUES (?1, ?2, ?3, ?4)",
                params![job, attempt, item.kind(), item.encode()],
            )?;
            if matches!(item, Item::Result(_)) {
                tx.execute(
                    "UPDATE journal SET finished = 1 WHERE job = ?1 AND attempt = ?2",
                    params![job, attempt],
                )?;
            }
            tx.commit()?;
        }
        self.added.notify_one();
        Ok(())
    }

    /// The oldest item, with its id.
    pub fn peek(&self) -> anyhow::Result<Option<(i64, Item)>> {
        let row: Option<(i64, String, Vec<u8>)> = self
            .conn()
            .query_row(
                "SELECT id, kind, payload FROM outbox ORDER BY id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(id, kind, bytes)| Ok((id, Item::decode(&kind, &bytes)?)))
            .transpose()
    }

    /// Removes a delivered item; a delivered result also closes the job's journal entry.
    pub fn ack(&self, id: i64, item: &Item) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
        if let Item::Result(r) = item
            && let Some(j) = &r.job
        {
            tx.execute(
                "DELETE FROM journal WHERE job = ?1 AND attempt = ?2",
                params![j.job, j.attempt],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces a waiting item by another of the same job attempt, in its place in the
    /// order (a refused result by the report that says it was refused).
    pub fn replace(&self, id: i64, item: &Item) -> anyhow::Result<()> {
        let n = self.conn().execute(
            "UPDATE outbox SET kind = ?2, payload = ?3 WHERE id = ?1",
            params![id, item.kind(), item.encode()],
        )?;
        anyhow::ensure!(n == 1, "outbox item {id} is gone");
        Ok(())
    }

    /// Forgets everything about a job attempt (the coordinator refused it for good).
    pub fn drop_attempt(&self, job: i64, attempt: i32) -> anyhow::Result<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM outbox WHERE job = ?1 AND attempt = ?2",
            params![job, attempt],
        )?;
        tx.execute(
            "DELETE FROM journal WHERE job = ?1 AND attempt = ?2",
            params![job, attempt],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Records that the agent took a job.
    pub fn journal_add(
        &self,
        job: i64,
        attempt: i32,
        device: &str,
        spec: &v1::JobSpec,
    ) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO journal (job, attempt, device, spec, finished) VALUES (?1, ?2, ?3, ?4, 0)",
            params![job, attempt, device, spec.encode_to_vec()],
        )?;
        Ok(())
    }

    /// Every journalled job.
    pub fn journal(&self) -> anyhow::Result<Vec<JournalEntry>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT job, attempt, device, spec, finished FROM journal ORDER BY job")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i32>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, bool>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (job, attempt, device, spec, finished) = row?;
            out.push(JournalEntry {
                job,
                attempt,
                device,
                spec: v1::JobSpec::decode(spec.as_slice()).context("damaged journal entry")?,
                finished,
            });
        }
        Ok(out)
    }

    /// How many items wait.
    pub fn len(&self) -> anyhow::Result<usize> {
        Ok(self
            .conn()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))?
            as usize)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        let spec = v1::JobSpec {
            name: "j".into(),
            ..Default::default()
        };
        {
            let ob = Outbox::open(dir.path()).unwrap();
            ob.journal_add(7, 1, "dev", &spec).unwrap();
            ob.push(
                7,
                1,
                Item::Log(v1::AppendLogRequest {
                    job: Some(v1::JobRef { job: 7, attempt: 1 }),
                    offset: 0,
                    data: b"hi".to_vec(),
                }),
            )
            .unwrap();
            ob.push(
                7,
                1,
                Item::Result(v1::ReportResultRequest {
                    job: Some(v1::JobRef { job: 7, attempt: 1 }),
                    ..Default::default()
                }),
            )
            .unwrap();
        }
        let ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ob.len().unwrap(), 2);
        let j = ob.journal().unwrap();
        assert_eq!((j[0].job, j[0].finished), (7, true));
        let (id, item) = ob.peek().unwrap().unwrap();
        assert!(matches!(item, Item::Log(_)));
        ob.ack(id, &item).unwrap();
        let (id, item) = ob.peek().unwrap().unwrap();
        ob.ack(id, &item).unwrap();
        assert!(ob.is_empty().unwrap());
        assert!(ob.journal().unwrap().is_empty());
    }
}
