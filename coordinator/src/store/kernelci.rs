//! KernelCI pull-lab jobs: the follower's durable record of every KernelCI job node it took
//! (one row per KernelCI node id, written in the transaction that creates the labwire job
//! or records why the job was refused), its position in KernelCI's event history, and the
//! state of each job's callback. A restart or a KernelCI outage therefore neither loses nor
//! doubles a job or a callback: taking a job twice changes nothing, and a callback is due
//! until it is marked posted.

use super::Write;
use super::db::{Connection, Row, params};
use super::jobs::NewJob;
use super::{from_micros, micros};
use crate::error::{Error, Result};
use crate::model::{Node, NodeId, NodeState};
use chrono::{DateTime, Utc};

/// The `meta` key of the follower's position in KernelCI's event history.
const CURSOR_KEY: &str = "kernelci_events_from";

/// Where a KernelCI job is, as the follower sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KciStatus {
    /// Its labwire job runs, or ended and its callback is due.
    Running,
    /// Its definition could not be used; a callback saying why is due.
    Refused,
    /// KernelCI accepted its callback.
    Posted,
    /// KernelCI no longer wanted it (its node ended there first); no callback.
    Cancelled,
    /// KernelCI refused the callback itself (a 4xx other than 401, 403, 408 and 429): the
    /// same body would be refused again, so it is never sent again; `last_error` says why.
    Rejected,
}

impl KciStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Refused => "refused",
            Self::Posted => "posted",
            Self::Cancelled => "cancelled",
            Self::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "running" => Self::Running,
            "refused" => Self::Refused,
            "posted" => Self::Posted,
            "cancelled" => Self::Cancelled,
            "rejected" => Self::Rejected,
            other => return Err(Error::Corrupt(format!("kernelci job status `{other}`"))),
        })
    }
}

/// One KernelCI job this installation took.
#[derive(Debug, Clone)]
pub(crate) struct KciJob {
    /// KernelCI's node id.
    pub(crate) kci_node: String,
    /// The KernelCI runtime it came for.
    pub(crate) runtime: String,
    /// The labwire job, unless the job was refused.
    pub(crate) job_node: Option<NodeId>,
    /// Where it is.
    pub(crate) status: KciStatus,
    /// Where its callback goes.
    pub(crate) callback_url: String,
    /// Why it was refused.
    pub(crate) refusal: Option<String>,
    /// Callbacks tried so far.
    pub(crate) tries: i32,
}

const COLUMNS: &str = "kci_node, runtime, job_node, status, callback_url, refusal, tries";

fn from_row(r: &Row<'_>) -> Result<KciJob> {
    let status: String = r.get(3)?;
    Ok(KciJob {
        kci_node: r.get(0)?,
        runtime: r.get(1)?,
        job_node: r.get::<_, Option<i64>>(2)?.map(NodeId),
        status: KciStatus::parse(&status)?,
        callback_url: r.get(4)?,
        refusal: r.get(5)?,
        tries: r.get(6)?,
    })
}

/// A KernelCI job to take: who it is and where its callback goes.
#[derive(Debug, Clone)]
pub(crate) struct KciTake {
    /// KernelCI's node id.
    pub(crate) kci_node: String,
    /// The runtime.
    pub(crate) runtime: String,
    /// The callback URL.
    pub(crate) callback_url: String,
}

/// What [`Write::take_kernelci_job`] did.
#[derive(Debug)]
pub(crate) enum KciTaken {
    /// The labwire job was created and queued.
    Queued(Box<Node>),
    /// The job was refused (its definition, or the store refused the spec); a callback
    /// saying why is due.
    Refused(String),
    /// Taken before: nothing changed.
    Before,
}

/// The follower's position in KernelCI's event history (the `timestamp` of the last event
/// handled, as KernelCI wrote it), if it has one.
pub(crate) fn cursor(conn: &Connection) -> Result<Option<String>> {
    conn.query_opt(
        "SELECT value FROM meta WHERE key = ?1",
        params![CURSOR_KEY],
        |r| r.get(0),
    )
}

/// The newest event sequence number at or before `t` (0 if none): KernelCI's `from` time
/// on labwire's event log (the read API's `GET /latest/events`).
pub(crate) fn last_seq_at(conn: &Connection, t: DateTime<Utc>) -> Result<i64> {
    let seq: Option<i64> = conn.query_row(
        "SELECT MAX(seq) FROM events WHERE time <= ?1",
        params![micros(t)],
        |r| r.get(0),
    )?;
    Ok(seq.unwrap_or(0))
}

/// One KernelCI job, if this installation took it.
pub(crate) fn find(conn: &Connection, kci_node: &str) -> Result<Option<KciJob>> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM kernelci_jobs WHERE kci_node = ?1"),
        params![kci_node],
        from_row,
    )
}

/// The callbacks due at `now`: refused jobs, and jobs whose labwire job is `done`, not
/// posted yet, whose next try has come. Oldest first, at most `limit`.
pub(crate) fn due_callbacks(
    conn: &Connection,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<KciJob>> {
    conn.query_map(
        &format!(
            "SELECT {} FROM kernelci_jobs k LEFT JOIN nodes n ON n.id = k.job_node \
             WHERE (k.status = 'refused' OR (k.status = 'running' AND n.state = 'done')) \
             AND (k.next_try IS NULL OR k.next_try <= ?1) ORDER BY k.created LIMIT ?2",
            COLUMNS
                .split(", ")
                .map(|c| format!("k.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        params![micros(now), limit as i64],
        from_row,
    )
}

/// When the next callback is due, if one waits for a try at a later time.
pub(crate) fn next_due(conn: &Connection) -> Result<Option<DateTime<Utc>>> {
    let t: Option<i64> = conn.query_row(
        "SELECT MIN(k.next_try) FROM kernelci_jobs k LEFT JOIN nodes n ON n.id = k.job_node \
         WHERE (k.status = 'refused' OR (k.status = 'running' AND n.state = 'done')) \
         AND k.next_try IS NOT NULL",
        params![],
        |r| r.get(0),
    )?;
    Ok(t.map(from_micros))
}

/// Every labwire node under `job` (its result tree), parents before children; at most
/// `max` nodes.
pub(crate) fn result_tree(conn: &Connection, job: NodeId, max: usize) -> Result<Vec<Node>> {
    let mut out = Vec::new();
    let mut next = vec![job];
    while let Some(id) = next.pop() {
        for c in super::nodes::children(conn, id)? {
            if out.len() >= max {
                return Ok(out);
            }
            next.push(c.id);
            out.push(c);
        }
    }
    Ok(out)
}

impl Write<'_> {
    /// Takes a KernelCI job exactly once: records it with the labwire job `job` creates (or
    /// the reason it is refused) in this transaction. A job taken before changes nothing.
    pub(crate) fn take_kernelci_job(
        &mut self,
        t: &KciTake,
        job: std::result::Result<NewJob, String>,
    ) -> Result<KciTaken> {
        if find(self.conn(), &t.kci_node)?.is_some() {
            return Ok(KciTaken::Before);
        }
        let now = micros(self.now());
        let outcome = match job {
            Ok(j) => match self.savepoint(|w| w.submit_job(j)) {
                Ok((node, _)) => Ok(node),
                Err(e) => Err(e.to_string()),
            },
            Err(why) => Err(why),
        };
        let (status, node, refusal) = match &outcome {
            Ok(n) => (KciStatus::Running, Some(n.id.0), None),
            Err(why) => (KciStatus::Refused, None, Some(why.clone())),
        };
        self.conn().execute(
            "INSERT INTO kernelci_jobs (kci_node, runtime, job_node, status, callback_url, \
             refusal, tries, created, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7)",
            params![
                t.kci_node.as_str(),
                t.runtime.as_str(),
                node,
                status.as_str(),
                t.callback_url.as_str(),
                refusal,
                now
            ],
        )?;
        Ok(match outcome {
            Ok(n) => KciTaken::Queued(Box::new(n)),
            Err(why) => KciTaken::Refused(why),
        })
    }

    /// Moves the follower's position in KernelCI's event history.
    pub(crate) fn move_kernelci_cursor(&mut self, timestamp: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![CURSOR_KEY, timestamp],
        )?;
        Ok(())
    }

    /// Notes a callback try before it is sent: one more try, and when the next may come if
    /// this one fails (so that a crash in the middle does not retry at once).
    pub(crate) fn kernelci_try(&mut self, kci_node: &str, next_try: DateTime<Utc>) -> Result<()> {
        self.conn().execute(
            "UPDATE kernelci_jobs SET tries = tries + 1, next_try = ?2, updated = ?3 \
             WHERE kci_node = ?1",
            params![kci_node, micros(next_try), micros(self.now())],
        )?;
        Ok(())
    }

    /// Notes what a failed callback try met.
    pub(crate) fn kernelci_try_failed(&mut self, kci_node: &str, error: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE kernelci_jobs SET last_error = ?2, updated = ?3 WHERE kci_node = ?1",
            params![kci_node, error, micros(self.now())],
        )?;
        Ok(())
    }

    /// KernelCI accepted the callback: it is never sent again.
    pub(crate) fn kernelci_posted(&mut self, kci_node: &str) -> Result<()> {
        self.set_status(kci_node, KciStatus::Posted)
    }

    /// KernelCI no longer wants the job (its node ended there) while its labwire job runs:
    /// the labwire job is cancelled with `reason`, the record marked cancelled, and no
    /// callback is sent. Returns the job node if it was cancelled now. A job whose labwire
    /// job ended already (or that was refused) has its callback due: this changes nothing
    /// then, and the callback poster decides (it reads KernelCI's node first).
    pub(crate) fn kernelci_cancel(&mut self, kci_node: &str, reason: &str) -> Result<Option<Node>> {
        let Some(k) = find(self.conn(), kci_node)? else {
            return Ok(None);
        };
        let (KciStatus::Running, Some(job)) = (k.status, k.job_node) else {
            return Ok(None);
        };
        if super::nodes::get_node(self.conn(), job)?.state == NodeState::Done {
            return Ok(None);
        }
        self.set_status(kci_node, KciStatus::Cancelled)?;
        self.cancel_job(job, reason).map(Some)
    }

    /// KernelCI ended the job's node (or forgot it) before any callback was sent: none will
    /// be.
    pub(crate) fn kernelci_dropped(&mut self, kci_node: &str) -> Result<()> {
        self.set_status(kci_node, KciStatus::Cancelled)
    }

    /// KernelCI refused the callback for what it says (see [`KciStatus::Rejected`]): it is
    /// never sent again, and `error` is kept.
    pub(crate) fn kernelci_rejected(&mut self, kci_node: &str, error: &str) -> Result<()> {
        self.kernelci_try_failed(kci_node, error)?;
        self.set_status(kci_node, KciStatus::Rejected)
    }

    fn set_status(&mut self, kci_node: &str, status: KciStatus) -> Result<()> {
        self.conn().execute(
            "UPDATE kernelci_jobs SET status = ?2, next_try = NULL, updated = ?3 \
             WHERE kci_node = ?1",
            params![kci_node, status.as_str(), micros(self.now())],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;
    use labwire_proto::v1;

    fn take(kci: &str) -> KciTake {
        KciTake {
            kci_node: kci.into(),
            runtime: "pull-labs-demo".into(),
            callback_url: format!("http://kci.example/node/{kci}"),
        }
    }

    fn job(name: &str) -> NewJob {
        NewJob {
            spec: v1::JobSpec {
                name: name.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_job_is_taken_once_and_its_callback_is_due_once_it_ended() {
        let (_d, store) = temp_store();
        let first = store
            .write_blocking(|w| {
                let t = take("aa01");
                let r = w.take_kernelci_job(&t, Ok(job("baseline")))?;
                w.move_kernelci_cursor("2026-01-01T00:00:00.000001")?;
                Ok(r)
            })
            .unwrap();
        let KciTaken::Queued(node) = first else {
            panic!("{first:?}")
        };
        // The same event again (a restart before the cursor moved): nothing new.
        let again = store
            .write_blocking(|w| w.take_kernelci_job(&take("aa01"), Ok(job("baseline"))))
            .unwrap();
        assert!(matches!(again, KciTaken::Before));
        assert_eq!(
            store.read_blocking(cursor).unwrap().as_deref(),
            Some("2026-01-01T00:00:00.000001")
        );
        let now = Utc::now();
        // Still running: no callback due.
        assert!(
            store
                .read_blocking(move |c| due_callbacks(c, now, 10))
                .unwrap()
                .is_empty()
        );
        let id = node.id;
        store
            .write_blocking(move |w| w.cancel_job(id, "test over").map(|_| ()))
            .unwrap();
        let due = store
            .read_blocking(move |c| due_callbacks(c, now, 10))
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].job_node, Some(id));
        // KernelCI ending its node now cancels nothing: the callback poster decides.
        assert!(
            store
                .write_blocking(|w| w.kernelci_cancel("aa01", "KernelCI's node ended"))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .read_blocking(move |c| due_callbacks(c, now, 10))
                .unwrap()
                .len(),
            1
        );
        // A try pushes the next one back; once posted it is never due again.
        let later = now + chrono::Duration::seconds(30);
        store
            .write_blocking(move |w| w.kernelci_try("aa01", later))
            .unwrap();
        assert!(
            store
                .read_blocking(move |c| due_callbacks(c, now, 10))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .read_blocking(next_due)
                .unwrap()
                .map(|t| t.timestamp()),
            Some(later.timestamp())
        );
        let at = later + chrono::Duration::seconds(1);
        assert_eq!(
            store
                .read_blocking(move |c| due_callbacks(c, at, 10))
                .unwrap()[0]
                .tries,
            1
        );
        store.write_blocking(|w| w.kernelci_posted("aa01")).unwrap();
        assert!(
            store
                .read_blocking(move |c| due_callbacks(c, at, 10))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .read_blocking(|c| find(c, "aa01"))
                .unwrap()
                .unwrap()
                .status,
            KciStatus::Posted
        );
    }

    #[test]
    fn a_refused_job_gets_a_callback_and_a_cancelled_one_none() {
        let (_d, store) = temp_store();
        let r = store
            .write_blocking(|w| {
                w.take_kernelci_job(&take("bb02"), Err("test type `x` is not mapped".into()))
            })
            .unwrap();
        assert!(matches!(r, KciTaken::Refused(ref m) if m.contains("not mapped")));
        // A spec the store refuses is a refusal too, and leaves no node behind.
        let r = store
            .write_blocking(|w| w.take_kernelci_job(&take("bb03"), Ok(job(" "))))
            .unwrap();
        assert!(
            matches!(r, KciTaken::Refused(ref m) if m.contains("spec.name")),
            "{r:?}"
        );
        let now = Utc::now();
        let due = store
            .read_blocking(move |c| due_callbacks(c, now, 10))
            .unwrap();
        assert_eq!(
            due.iter().map(|k| k.kci_node.as_str()).collect::<Vec<_>>(),
            ["bb02", "bb03"]
        );

        // A callback KernelCI refused for what it says is kept with the answer, never due.
        store
            .write_blocking(|w| w.kernelci_rejected("bb03", "HTTP 422: bad summary"))
            .unwrap();
        let due = store
            .read_blocking(move |c| due_callbacks(c, now, 10))
            .unwrap();
        assert_eq!(due.len(), 1);
        let rejected = store.read_blocking(|c| find(c, "bb03")).unwrap().unwrap();
        assert_eq!(rejected.status, KciStatus::Rejected);
        let error: Option<String> = store
            .read_blocking(|c| {
                c.query_opt(
                    "SELECT last_error FROM kernelci_jobs WHERE kci_node = ?1",
                    params!["bb03"],
                    |r| r.get(0),
                )
            })
            .unwrap()
            .flatten();
        assert_eq!(error.as_deref(), Some("HTTP 422: bad summary"));

        let KciTaken::Queued(node) = store
            .write_blocking(|w| w.take_kernelci_job(&take("cc04"), Ok(job("ltp"))))
            .unwrap()
        else {
            panic!()
        };
        let cancelled = store
            .write_blocking(|w| w.kernelci_cancel("cc04", "KernelCI's node timed out"))
            .unwrap()
            .expect("cancelled now");
        assert_eq!(cancelled.id, node.id);
        assert_eq!(cancelled.state, NodeState::Done);
        assert_eq!(cancelled.data["error_code"], "cancelled");
        // Cancelled jobs get no callback, and a second cancel does nothing.
        assert!(
            !store
                .read_blocking(move |c| due_callbacks(c, now, 10))
                .unwrap()
                .iter()
                .any(|k| k.kci_node == "cc04")
        );
        assert!(
            store
                .write_blocking(|w| w.kernelci_cancel("cc04", "again"))
                .unwrap()
                .is_none()
        );
    }
}
