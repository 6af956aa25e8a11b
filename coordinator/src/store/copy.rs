//! Copying a whole store into another, empty one: how an SQLite store moves to PostgreSQL
//! (`labwire-coordinator migrate --from sqlite://PATH`). Everything is copied in one
//! transaction of the target, so a failed copy leaves the target as empty as it was. Ids,
//! sequence numbers, leases and tokens keep their values: agents, clients and event
//! subscribers carry on where they were.

use super::db::{Backend, Value, params};
use super::{Store, events};
use crate::error::{Error, Result};

/// The tables and columns copied, parents before children. `leadership` is not copied (it
/// is who runs the services right now, not data) nor `schema_migrations` (the target has its
/// own).
const TABLES: &[(&str, &str)] = &[
    (
        "nodes",
        "id, kind, name, path, grp, parent, state, result, artifacts, data, created, updated, \
         timeout, holdoff, owner, submitter, treeid, retry_counter",
    ),
    (
        "events",
        "seq, time, node_id, kind, op, previous_state, previous_result, node",
    ),
    ("meta", "key, value"),
    (
        "jobs",
        "node_id, spec, criteria, runtime, priority, status, lease_owner, lease_session, \
         lease_expires, attempt, device, queued_at, leased_at, started_at, finished_at, attrs, \
         run_group, variant, variant_mode, device_type",
    ),
    ("job_reports", "job, attempt, lab, reported"),
    ("log_chunks", "job, attempt, \"offset\", data"),
    ("logs", "job, attempt, length"),
    (
        "labs",
        "name, created, last_seen, devices, free_slots, revoked_at",
    ),
    (
        "lab_certs",
        "fingerprint, lab, issued, not_after, revoked_at",
    ),
    ("tokens", "id, name, hash, scopes, created, revoked_at"),
    ("scheduled", "event_seq, job, platform, run, node_id"),
    (
        "job_stats",
        "signature, lab, runs, wait_ms_avg, run_ms_avg, updated",
    ),
    (
        "trigger_commits",
        "tree, branch, commit_hash, node_id, seen",
    ),
    ("mailed_reports", "checkout, sent"),
    (
        "device_health",
        "lab, device, device_type, health, reason, reported, reported_reason, admin, admin_reason, last_check, \
         failure_streak, since, resumed",
    ),
    (
        "device_health_log",
        "lab, device, device_type, at, from_health, to_health, reason",
    ),
];

/// Copies every row of `source` into `target`, which must hold no nodes, labs or tokens.
/// Calls `progress(table, rows, finished)` every 100,000 rows and after each table. Returns the number of rows copied. Blocks:
/// call it from a plain thread or tokio's blocking pool, not from async code.
pub(crate) fn copy_all(
    source: &Store,
    target: &Store,
    mut progress: impl FnMut(&str, u64, bool),
) -> Result<u64> {
    let last_seq = source.inner.with_conn(false, events::last_seq)?;
    target
        .inner
        .write_blocking(|w| {
            let tx = w.conn();
            for table in ["nodes", "labs", "tokens", "events"] {
                let n: i64 =
                    tx.query_row(&format!("SELECT COUNT(*) FROM {table}"), params![], |r| {
                        r.get(0)
                    })?;
                if n > 0 {
                    return Err(Error::Invalid(format!(
                        "the target store is not empty ({n} rows in {table}); copy only into a \
                     freshly migrated database"
                    )));
                }
            }
            let mut total = 0u64;
            for (table, cols) in TABLES {
                let width = cols.split(',').count();
                let placeholders = (1..=width)
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let insert = format!("INSERT INTO {table} ({cols}) VALUES ({placeholders})");
                let select = format!("SELECT {cols} FROM {table}");
                let mut n = 0u64;
                source.inner.with_conn(false, |src| {
                    src.query_each(&select, params![], |row| {
                        let values = (0..width)
                            .map(|i| row.get::<_, Value>(i))
                            .collect::<Result<Vec<_>>>()?;
                        tx.execute(&insert, &values)?;
                        n += 1;
                        if n.is_multiple_of(100_000) {
                            progress(table, n, false);
                        }
                        Ok(true)
                    })
                })?;
                progress(table, n, true);
                total += n;
            }
            if tx.backend() == Backend::Postgres {
                // Identity columns and the event sequence go on after the copied values.
                for (table, col) in [("nodes", "id"), ("tokens", "id")] {
                    tx.query_row(
                        &format!(
                            "SELECT setval(pg_get_serial_sequence('{table}', '{col}'), \
                         COALESCE(MAX({col}), 0) + 1, false) FROM {table}"
                        ),
                        params![],
                        |_| Ok(()),
                    )?;
                }
                tx.execute("UPDATE event_seq SET last = ?1", params![last_seq])?;
            } else if last_seq > 0 {
                tx.execute(
                    "INSERT INTO sqlite_sequence (name, seq) SELECT 'events', ?1 \
                 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events')",
                    params![last_seq],
                )?;
                tx.execute(
                    "UPDATE sqlite_sequence SET seq = MAX(seq, ?1) WHERE name = 'events'",
                    params![last_seq],
                )?;
            }
            Ok(total)
        })
        .map(|(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeKind;
    use crate::store::labs::Scope;
    use crate::store::{NewJob, NewNode, temp_store};

    #[test]
    fn a_store_copies_whole_and_goes_on_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let source = Store::open(&dir.path().join("src.db")).unwrap();
        let checkout = source
            .write_blocking(|w| w.create_node(NewNode::new(NodeKind::Checkout, "c")))
            .unwrap();
        let (job, _) = source
            .write_blocking(move |w| {
                w.submit_job(NewJob {
                    spec: labwire_proto::v1::JobSpec {
                        name: "boot".into(),
                        ..Default::default()
                    },
                    parent: Some(checkout.id),
                    ..Default::default()
                })
            })
            .unwrap();
        let token = source
            .write_blocking(|w| w.create_token("ci", &[Scope::Submit]))
            .unwrap();
        let until = chrono::Utc::now() + chrono::Duration::seconds(60);
        source
            .write_blocking(move |w| {
                w.register_lab_cert("lab-a", "ff00", None)?;
                w.claim_for_test(job.id, "lab-a", until)?;
                w.append_log(
                    &crate::model::LabName::new("lab-a"),
                    job.id,
                    crate::model::AttemptNo(1),
                    0,
                    b"hello",
                )
            })
            .unwrap();
        let last = *source.last_seq().borrow();

        let (_d2, target) = temp_store();
        let mut tables = Vec::new();
        let n = copy_all(&source, &target, |t, _, done| {
            if done {
                tables.push(t.to_string())
            }
        })
        .unwrap();
        assert!(n >= 8, "{n}");
        assert_eq!(tables.len(), TABLES.len());
        // The same data, read through the target.
        let back = target
            .read_blocking(move |c| crate::store::nodes::get_node(c, job.id))
            .unwrap();
        assert_eq!(back.name, "boot");
        let log = target
            .read_blocking(move |c| crate::store::jobs::read_log(c, job.id, 1, 0, 1 << 20))
            .unwrap();
        assert_eq!(log[0].1, b"hello");
        let info = target
            .read_blocking(move |c| crate::store::labs::verify_token(c, &token))
            .unwrap();
        assert_eq!(info.name, "ci");
        // Ids and sequence numbers go on after the copied ones.
        let next = target
            .write_blocking(|w| w.create_node(NewNode::new(NodeKind::Checkout, "next")))
            .unwrap();
        assert!(next.id.0 > job.id.0);
        let evs = target
            .read_blocking(move |c| events::events_after(c, last, 10, None, false))
            .unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].seq, last + 1);
        // A second copy is refused: the target is not empty.
        let err = copy_all(&source, &target, |_, _, _| {}).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
    }
}
