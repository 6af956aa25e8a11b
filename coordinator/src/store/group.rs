//! Group commit on SQLite: one writer thread takes every write that is waiting and commits
//! them together, in one transaction, instead of one transaction (and one hop to tokio's
//! blocking pool) per call.
//!
//! Each write runs in a savepoint of the shared transaction, so a write that fails is undone
//! alone and the others go on; its caller gets its own error at once. The callers whose
//! writes succeeded hear back only after the COMMIT: an acknowledged write is as durable as
//! before (WAL, `synchronous=NORMAL`), and the commit is shared among the writes that were
//! waiting when the batch began. Events are inserted in the order of the writes, as the last
//! step before the COMMIT, so sequence order is still commit order.
//!
//! There is no waiting for a batch to fill: the thread takes what is queued when it is free,
//! so a lone write is committed as soon as it arrives, and under load the batches grow by
//! themselves. `Store::write_blocking` (command-line tools, tests) still takes the writer
//! connection directly; the writer connection's mutex orders it with the batches.

use super::{Inner, QueueChange, Write, events};
use crate::error::{Error, Result};
use std::panic::AssertUnwindSafe;
use std::sync::Weak;
use std::sync::mpsc::{Receiver, Sender};

/// Told the outcome of a write once its batch has committed (or failed).
pub(super) type Finish = Box<dyn FnOnce(Result<Vec<QueueChange>>) + Send>;

/// One write waiting for the writer thread: runs inside the batch's transaction and returns
/// its [`Finish`], or `None` when it failed (it has then told its caller already).
pub(super) type Job = Box<dyn FnOnce(&mut Write<'_>) -> Option<Finish> + Send>;

/// The most writes one transaction takes; the rest wait for the next one.
const MAX_BATCH: usize = 256;

/// Starts the writer thread of the store `inner`; it ends when the store is dropped (the
/// last sender with it).
pub(super) fn start(inner: Weak<Inner>, jobs: Receiver<Job>) -> Result<()> {
    std::thread::Builder::new()
        .name("labwire-writer".into())
        .spawn(move || {
            while let Ok(first) = jobs.recv() {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                commit(&inner, batch);
            }
        })
        .map(|_| ())
        .map_err(|e| Error::Internal(format!("cannot start the store's writer thread: {e}")))
}

/// Queues `f` for the writer thread and waits for its batch to commit.
pub(super) async fn write<T, F>(to: &Sender<Job>, f: F) -> Result<(T, Vec<QueueChange>)>
where
    T: Send + 'static,
    F: FnOnce(&mut Write<'_>) -> Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move |w| match f(w) {
        Ok(out) => Some(Box::new(move |res: Result<Vec<QueueChange>>| {
            let _ = tx.send(res.map(|queue| (out, queue)));
        })),
        Err(e) => {
            let _ = tx.send(Err(e));
            None
        }
    });
    to.send(job)
        .map_err(|_| Error::Internal("the store's writer thread has stopped".into()))?;
    rx.await.map_err(|_| {
        Error::Internal("the write was not committed: its batch failed before it ran".into())
    })?
}

/// Runs `batch` in one transaction and tells each write how it ended.
fn commit(inner: &Inner, batch: Vec<Job>) {
    let mut done: Vec<(Finish, Vec<QueueChange>)> = Vec::with_capacity(batch.len());
    let res = inner.with_conn(true, |conn| {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut events = Vec::new();
        let mut labs = false;
        let res = (|| {
            for job in batch {
                conn.execute_batch("SAVEPOINT labwire_write")?;
                let mut w = Write {
                    tx: conn,
                    now: inner.clock.now(),
                    events: Vec::new(),
                    queue: Vec::new(),
                    labs_changed: false,
                };
                // A write that panics is undone like one that fails; its caller sees its
                // answer dropped.
                match std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut w))) {
                    Ok(Some(finish)) => {
                        conn.execute_batch("RELEASE SAVEPOINT labwire_write")?;
                        events.append(&mut w.events);
                        labs |= w.labs_changed;
                        done.push((finish, w.queue));
                    }
                    Ok(None) | Err(_) => conn.execute_batch(
                        "ROLLBACK TO SAVEPOINT labwire_write; RELEASE SAVEPOINT labwire_write",
                    )?,
                }
            }
            let last = events::flush(conn, events)?;
            conn.execute_batch("COMMIT")?;
            Ok((last, labs))
        })();
        if res.is_err() {
            // A failed COMMIT has already ended the transaction; ROLLBACK then only warns.
            let _ = conn.execute_batch("ROLLBACK");
        }
        res
    });
    match res {
        Ok((last, labs)) => {
            if let Some(seq) = last {
                inner.announce(seq);
            }
            if labs {
                inner.labs.send_modify(|n| *n = n.wrapping_add(1));
            }
            for (finish, queue) in done {
                finish(Ok(queue));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, writes = done.len(), "a batch of writes failed to commit");
            let msg = e.to_string();
            for (finish, _) in done {
                finish(Err(Error::Internal(format!(
                    "the write was rolled back with its batch: {msg}"
                ))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NewNode, events, temp_store};
    use crate::error::Error;
    use crate::model::NodeKind;

    /// Many writes at once, every tenth failing after it wrote: each caller gets its own
    /// answer, a failed write leaves nothing behind, and the events of the others are
    /// numbered without a gap, in commit order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_commit_together_and_fail_alone() {
        let (_t, store) = temp_store();
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move {
                    s.write(move |w| {
                        w.create_node(NewNode::new(NodeKind::Checkout, format!("n{i}")))?;
                        if i % 10 == 0 {
                            return Err(Error::Refused(format!("write {i} refuses")));
                        }
                        Ok(i)
                    })
                    .await
                })
            })
            .collect();
        let mut want = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.expect("task") {
                Ok(got) => {
                    assert_ne!(i % 10, 0, "write {i} should have failed");
                    assert_eq!(got, i);
                    want.push(format!("n{i}"));
                }
                Err(e) => {
                    assert_eq!(i % 10, 0, "write {i} failed: {e}");
                    assert_eq!(e.to_string(), format!("write {i} refuses"));
                }
            }
        }
        let evs = store
            .read(|c| events::events_after(c, 0, 1000, None, false))
            .await
            .expect("events");
        let seqs: Vec<i64> = evs.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=270).collect::<Vec<_>>());
        let mut names: Vec<String> = evs.into_iter().map(|e| e.node.name).collect();
        names.sort();
        want.sort();
        assert_eq!(names, want);
        assert_eq!(*store.last_seq().borrow(), 270);
    }
}
