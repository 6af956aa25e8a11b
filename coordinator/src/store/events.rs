//! The durable event log: appending at commit, catch-up reads from a cursor, the newest
//! sequence number, pruning by age with a record of what was pruned, and (PostgreSQL) hearing
//! of other replicas' commits.
//!
//! Sequence numbers are strictly increasing, never reused, and a subscriber never sees a gap
//! that fills in later. On SQLite there is one writer, so commit order is sequence order. On
//! PostgreSQL several replicas commit at once: a transaction's events are inserted as the last
//! step before COMMIT, after `UPDATE event_seq SET last = last + n`, whose row lock is held
//! until the commit. Transactions with events therefore take their numbers and commit one
//! after another, and when seq N is visible, everything below N is too. (Only this final step
//! is serialized; the rest of the transactions run in parallel.) The same transaction sends
//! `NOTIFY labwire_events, 'N'`, which PostgreSQL delivers at commit; each replica listens
//! and wakes its subscribers.

use super::db::{Backend, Connection, params};
use super::{PendingEvent, Write, corrupt, from_micros, micros};
use crate::error::{Error, Result};
use crate::model::{Node, NodeKind, NodeState};
use chrono::{DateTime, Utc};
use labwire_common::NodeResult;
use std::time::Duration;

/// One stored event.
#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    /// Sequence number.
    pub(crate) seq: i64,
    /// When the change happened.
    pub(crate) time: DateTime<Utc>,
    /// `create` or `update`.
    pub(crate) op: String,
    /// State before an update.
    pub(crate) previous_state: Option<NodeState>,
    /// Result before an update.
    pub(crate) previous_result: Option<NodeResult>,
    /// The node after the change (for a device health event, an empty node nobody reads:
    /// only readers that ask for device events get those, and they read `health`).
    pub(crate) node: Node,
    /// For a device event: health `{lab, device, device_type, from, to, reason}`, or a
    /// reservation's `{lab, device, owner, reason, created, expires, by}`.
    pub(crate) health: Option<serde_json::Value>,
}

/// The `kind` of device health events in the log (never a node kind).
pub(crate) const DEVICE_KIND: &str = "device";

/// The empty node of a device health event.
fn no_node(time: DateTime<Utc>) -> Node {
    Node {
        id: crate::model::NodeId(0),
        kind: NodeKind::Process,
        name: String::new(),
        path: Vec::new(),
        group: None,
        parent: None,
        state: NodeState::Done,
        result: None,
        artifacts: Default::default(),
        data: Default::default(),
        created: time,
        updated: time,
        timeout: None,
        holdoff: None,
        owner: String::new(),
        submitter: String::new(),
        treeid: String::new(),
        retry_counter: 0,
    }
}

impl StoredEvent {
    /// The CloudEvents `type` of this event.
    pub(crate) fn event_type(&self) -> &'static str {
        if self.health.is_some() {
            match self.op.as_str() {
                "reserve" => "org.labwire.device.reserved",
                "extend" => "org.labwire.device.reservation_extended",
                "release" => "org.labwire.device.released",
                "expire" => "org.labwire.device.reservation_expired",
                "console" => "org.labwire.device.console",
                _ => "org.labwire.device.health",
            }
        } else if self.op == "create" {
            "org.labwire.node.created"
        } else {
            "org.labwire.node.updated"
        }
    }

    /// The event as a CloudEvents 1.0 JSON record; `data` is the node plus `op`,
    /// `previous_state` and `previous_result`.
    pub(crate) fn to_cloudevent(&self, source: &str) -> serde_json::Value {
        let mut data = match &self.health {
            Some(h) => h.clone(),
            None => serde_json::to_value(&self.node).unwrap_or_default(),
        };
        if let Some(obj) = data.as_object_mut().filter(|_| self.health.is_none()) {
            obj.insert("op".into(), self.op.clone().into());
            obj.insert(
                "previous_state".into(),
                self.previous_state.map(|s| s.as_str()).into(),
            );
            obj.insert(
                "previous_result".into(),
                self.previous_result.map(|r| r.as_str()).into(),
            );
        }
        serde_json::json!({
            "specversion": "1.0",
            "id": self.seq.to_string(),
            "type": self.event_type(),
            "source": source,
            "time": self.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "datacontenttype": "application/json",
            "data": data,
        })
    }
}

/// The newest sequence number ever assigned (0 if none). Pruned events still count.
pub fn last_seq(conn: &Connection) -> Result<i64> {
    let sql = match conn.backend() {
        Backend::Sqlite => "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
        Backend::Postgres => "SELECT last FROM event_seq",
    };
    let from_table: Option<i64> = conn.query_opt(sql, params![], |r| r.get(0))?;
    Ok(from_table.unwrap_or(0))
}

/// Inserts a committing transaction's events; returns the newest sequence number.
pub(crate) fn flush(conn: &Connection, events: Vec<PendingEvent>) -> Result<Option<i64>> {
    if events.is_empty() {
        return Ok(None);
    }
    let mut last = None;
    match conn.backend() {
        Backend::Sqlite => {
            for e in events {
                last = Some(conn.query_row(
                    "INSERT INTO events (time, node_id, kind, op, previous_state, \
                     previous_result, node) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING seq",
                    params![
                        e.time,
                        e.node_id,
                        e.kind,
                        e.op,
                        e.previous_state,
                        e.previous_result,
                        e.node
                    ],
                    |r| r.get::<_, i64>(0),
                )?);
            }
        }
        Backend::Postgres => {
            // One statement per batch of events: take the next numbers (the row lock on
            // event_seq, held until COMMIT, orders the committers), insert the events, and
            // with the last batch send the NOTIFY that PostgreSQL delivers at commit.
            let batches: Vec<&[PendingEvent]> = events.chunks(EVENT_BATCH).collect();
            for (b, batch) in batches.iter().enumerate() {
                let n = batch.len();
                let mut rows = Vec::with_capacity(n);
                let mut values = Vec::with_capacity(n * 7);
                for (k, e) in batch.iter().enumerate() {
                    let p = k * 7;
                    rows.push(format!(
                        "({}, CAST(?{} AS BIGINT), CAST(?{} AS BIGINT), CAST(?{} AS TEXT), \
                         CAST(?{} AS TEXT), CAST(?{} AS TEXT), CAST(?{} AS TEXT), \
                         CAST(?{} AS TEXT))",
                        k + 1,
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6,
                        p + 7
                    ));
                    values.extend_from_slice(params![
                        e.time,
                        e.node_id,
                        e.kind,
                        e.op,
                        e.previous_state,
                        e.previous_result,
                        e.node
                    ]);
                }
                let notify = if b + 1 == batches.len() {
                    ", pg_notify('labwire_events', CAST(last AS TEXT))"
                } else {
                    ""
                };
                let sql = format!(
                    "WITH s AS (UPDATE event_seq SET last = last + {n} RETURNING last), \
                     i AS (INSERT INTO events (seq, time, node_id, kind, op, previous_state, \
                     previous_result, node) SELECT s.last - {n} + v.ord, v.time, v.node_id, \
                     v.kind, v.op, v.ps, v.pr, v.node FROM s, (VALUES {}) \
                     AS v(ord, time, node_id, kind, op, ps, pr, node)) \
                     SELECT last{notify} FROM s",
                    rows.join(", ")
                );
                last = Some(conn.query_row(&sql, &values, |r| r.get::<_, i64>(0))?);
            }
        }
    }
    Ok(last)
}

/// At most this many events go into one INSERT on PostgreSQL (7 parameters each, well
/// under PostgreSQL's 65,535 parameters per statement).
const EVENT_BATCH: usize = 500;

/// The highest sequence number removed by pruning (0 if none).
pub(crate) fn pruned_through(conn: &Connection) -> Result<i64> {
    let v: Option<String> = conn.query_opt(
        "SELECT value FROM meta WHERE key = 'events_pruned_through'",
        params![],
        |r| r.get(0),
    )?;
    v.map_or(Ok(0), |s| {
        s.parse().map_err(|e| corrupt("events_pruned_through", e))
    })
}

/// Up to `limit` events with a sequence number greater than `after`, in order, optionally
/// only those of nodes of `kind`; device health events only with `devices` (and no `kind`).
/// Refuses a cursor older than what pruning kept.
pub(crate) fn events_after(
    conn: &Connection,
    after: i64,
    limit: usize,
    kind: Option<NodeKind>,
    devices: bool,
) -> Result<Vec<StoredEvent>> {
    let pruned = pruned_through(conn)?;
    if after < pruned {
        return Err(Error::OutOfRange(format!(
            "events up to sequence number {pruned} were pruned (retention); \
             resubscribe from {pruned} or later"
        )));
    }
    let rows = conn.query_map(
        "SELECT seq, time, op, previous_state, previous_result, node, kind FROM events \
         WHERE seq > ?1 AND (CAST(?2 AS TEXT) IS NULL OR kind = ?2) \
         AND (CAST(?4 AS BIGINT) = 1 OR kind <> 'device') ORDER BY seq LIMIT ?3",
        params![
            after,
            kind.map(|k| k.as_str()),
            limit as i64,
            i64::from(devices)
        ],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, time, op, ps, pr, node, row_kind) = row;
        if row_kind == DEVICE_KIND {
            out.push(StoredEvent {
                seq,
                time: from_micros(time),
                op,
                previous_state: None,
                previous_result: None,
                node: no_node(from_micros(time)),
                health: Some(serde_json::from_str(&node).map_err(|e| corrupt("device event", e))?),
            });
            continue;
        }
        out.push(StoredEvent {
            seq,
            time: from_micros(time),
            op,
            previous_state: ps
                .map(|s| s.parse().map_err(|e| corrupt("event state", e)))
                .transpose()?,
            previous_result: pr
                .map(|s| s.parse().map_err(|e| corrupt("event result", e)))
                .transpose()?,
            node: serde_json::from_str(&node).map_err(|e| corrupt("event node", e))?,
            health: None,
        });
    }
    Ok(out)
}

/// How many events [`follow`] reads per store call.
pub(crate) const FOLLOW_BATCH: usize = 1000;

/// Follows the event log after `after`: the stored events in order, then each newer one as
/// its transaction commits, until the receiver is dropped or `shutdown` is cancelled (or,
/// with `catch_up_only`, once the stored events are sent). It reads the durable log only and
/// wakes on the store's announcement of a newer sequence number, so a slow reader misses
/// nothing. The gRPC `Subscribe` and the HTTP event stream both use it. A store error is sent
/// and ends the stream.
pub(crate) fn follow(
    store: super::Store,
    after: i64,
    kind: Option<NodeKind>,
    devices: bool,
    catch_up_only: bool,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::sync::mpsc::Receiver<Result<StoredEvent>> {
    let (tx, rx) = tokio::sync::mpsc::channel(FOLLOW_BATCH);
    tokio::spawn(async move {
        let mut cursor = after;
        let mut seq_watch = store.last_seq();
        loop {
            // Mark the current announcement seen before reading, so a commit that lands
            // after the read wakes us up.
            seq_watch.borrow_and_update();
            let batch = match store
                .read(move |c| events_after(c, cursor, FOLLOW_BATCH, kind, devices))
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let full = batch.len() == FOLLOW_BATCH;
            for e in batch {
                let seq = e.seq;
                if tx.send(Ok(e)).await.is_err() {
                    return; // the reader left
                }
                cursor = seq;
            }
            if full {
                continue;
            }
            if catch_up_only {
                return;
            }
            tokio::select! {
                changed = seq_watch.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
            }
        }
    });
    rx
}

/// How long a service that follows the log from its cursor waits before it reads again
/// after a failed read.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Follows the log for a service that keeps a stored cursor (the scheduler, the report
/// mailer): the events after the cursor in order, then each newer one as it commits, until
/// `shutdown` (or the receiver is dropped). The first time, the cursor starts at the end of
/// the log. The service handles each event and moves the cursor itself
/// ([`Write::move_cursor`]), in the transaction that records what it did. The stream only
/// carries events: a cursor older than what pruning kept skips to the oldest kept event
/// (logged as an error, since events were missed), and a failed read is tried again after a
/// pause, resuming after the last event sent.
pub(crate) fn follow_cursor(
    store: super::Store,
    cursor: super::cursor::EventCursor,
    kind: Option<NodeKind>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::sync::mpsc::Receiver<StoredEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel(FOLLOW_BATCH);
    let name = cursor.name();
    tokio::spawn(async move {
        let pause = || async {
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => true,
                _ = shutdown.cancelled() => false,
            }
        };
        let mut pos = loop {
            match store.write(move |w| w.start_cursor(cursor)).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::error!(cursor = name, error = %e, "cannot read an event cursor; retrying");
                    if !pause().await {
                        return;
                    }
                }
            }
        };
        loop {
            let mut events = follow(store.clone(), pos, kind, false, false, shutdown.clone());
            while let Some(ev) = events.recv().await {
                match ev {
                    Ok(e) => {
                        pos = e.seq;
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                    Err(Error::OutOfRange(m)) => {
                        match store.read(pruned_through).await {
                            Ok(p) => {
                                tracing::error!(
                                    cursor = name,
                                    from = pos,
                                    to = p,
                                    "{m}; skipping to the oldest kept event"
                                );
                                pos = p;
                            }
                            Err(e) => {
                                tracing::error!(cursor = name, error = %e, "cannot read the event log");
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::error!(cursor = name, error = %e, "cannot read the event log; retrying");
                        if !pause().await {
                            return;
                        }
                        break;
                    }
                }
            }
            if shutdown.is_cancelled() || tx.is_closed() {
                return;
            }
        }
    });
    rx
}

impl Write<'_> {
    /// Deletes events older than `before` and records the highest pruned sequence number.
    /// Returns how many were deleted.
    pub(crate) fn prune_events(&mut self, before: DateTime<Utc>) -> Result<usize> {
        let max: Option<i64> = self.tx.query_row(
            "SELECT MAX(seq) FROM events WHERE time < ?1",
            params![micros(before)],
            |r| r.get(0),
        )?;
        let Some(max) = max else { return Ok(0) };
        let n = self
            .tx
            .execute("DELETE FROM events WHERE seq <= ?1", params![max])?;
        self.tx.execute(
            "INSERT INTO meta (key, value) VALUES ('events_pruned_through', ?1) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![max.to_string()],
        )?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewNode, temp_store};

    #[test]
    fn read_from_cursor_and_prune() {
        let (_d, store) = temp_store();
        for i in 0..10 {
            store
                .write_blocking(move |w| {
                    w.create_node(NewNode::new(NodeKind::Checkout, format!("c{i}")))
                })
                .unwrap();
        }
        let evs = store
            .read_blocking(|c| events_after(c, 3, 100, None, false))
            .unwrap();
        assert_eq!(
            evs.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (4..=10).collect::<Vec<_>>()
        );
        assert_eq!(*store.last_seq().borrow(), 10);
        let n = store
            .write_blocking(|w| {
                let later = w.now() + chrono::Duration::seconds(1);
                w.prune_events(later)
            })
            .unwrap();
        assert_eq!(n, 10);
        let err = store
            .read_blocking(|c| events_after(c, 3, 100, None, false))
            .unwrap_err();
        assert!(matches!(err, Error::OutOfRange(_)), "{err}");
        assert!(
            store
                .read_blocking(|c| events_after(c, 10, 100, None, false))
                .unwrap()
                .is_empty()
        );
        // Sequence numbers are never reused after pruning.
        store
            .write_blocking(|w| w.create_node(NewNode::new(NodeKind::Checkout, "again")))
            .unwrap();
        let evs = store
            .read_blocking(|c| events_after(c, 10, 100, None, false))
            .unwrap();
        assert_eq!(evs[0].seq, 11);
    }
}
