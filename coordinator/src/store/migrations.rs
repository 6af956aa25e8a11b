//! Named, append-only schema migrations, one list with an SQLite and a PostgreSQL text each
//! (the same tables and columns in each dialect). Each runs once, in its own transaction, and
//! is recorded in `schema_migrations`. Never edit a migration that has shipped: add a new one.
//!
//! SQLite stores are migrated when the coordinator opens them. PostgreSQL stores, which
//! several replicas share, are migrated by `labwire-coordinator migrate`; a replica refuses
//! to start on a schema that is behind (or ahead of) its own.

use super::db::{Backend, Connection, params};
use crate::error::{Error, Result};

/// (name, SQLite text, PostgreSQL text), in order. Names are stable identifiers.
const MIGRATIONS: &[(&str, &str, &str)] = &[
    (
        "0001_initial",
        include_str!("0001_initial.sql"),
        include_str!("pg/0001_initial.sql"),
    ),
    (
        "0002_scheduling",
        include_str!("0002_scheduling.sql"),
        include_str!("pg/0002_scheduling.sql"),
    ),
    (
        "0003_pipeline",
        include_str!("0003_pipeline.sql"),
        include_str!("pg/0003_pipeline.sql"),
    ),
    (
        "0004_node_result_index",
        include_str!("0004_node_result_index.sql"),
        include_str!("pg/0004_node_result_index.sql"),
    ),
    (
        "0005_leadership",
        include_str!("0005_leadership.sql"),
        include_str!("pg/0005_leadership.sql"),
    ),
    (
        "0006_kernelci",
        include_str!("0006_kernelci.sql"),
        include_str!("pg/0006_kernelci.sql"),
    ),
    (
        "0007_health",
        include_str!("0007_health.sql"),
        include_str!("pg/0007_health.sql"),
    ),
    (
        "0009_reservations",
        include_str!("0009_reservations.sql"),
        include_str!("pg/0009_reservations.sql"),
    ),
    (
        "0010_health_alerts",
        include_str!("0010_health_alerts.sql"),
        include_str!("pg/0010_health_alerts.sql"),
    ),
];

/// A session-level advisory lock key, so that two `migrate` runs on one PostgreSQL database
/// take turns.
const MIGRATION_LOCK: i64 = 0x6c61_6277_6972_6501;

fn ensure_table(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            name TEXT PRIMARY KEY,
            applied_at BIGINT NOT NULL
        )",
    )
}

/// Applies every migration not yet recorded; returns the names applied now.
pub(crate) fn apply(conn: &Connection) -> Result<Vec<String>> {
    let pg = conn.backend() == Backend::Postgres;
    if pg {
        conn.query_row(
            "SELECT pg_advisory_lock(?1)",
            params![MIGRATION_LOCK],
            |_| Ok(()),
        )?;
    }
    let out = apply_locked(conn);
    if pg {
        conn.query_row(
            "SELECT pg_advisory_unlock(?1)",
            params![MIGRATION_LOCK],
            |_| Ok(()),
        )?;
    }
    out
}

fn apply_locked(conn: &Connection) -> Result<Vec<String>> {
    ensure_table(conn)?;
    let mut done_now = Vec::new();
    for (name, sqlite, pg) in MIGRATIONS {
        conn.execute_batch("BEGIN")?;
        let res = (|| -> Result<bool> {
            let done: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE name = ?1)",
                params![name],
                |r| r.get(0),
            )?;
            if !done {
                tracing::info!(migration = name, "applying schema migration");
                conn.execute_batch(match conn.backend() {
                    Backend::Sqlite => sqlite,
                    Backend::Postgres => pg,
                })?;
                conn.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?1, ?2)",
                    params![name, chrono::Utc::now().timestamp_micros()],
                )?;
            }
            Ok(!done)
        })();
        match res {
            Ok(applied) => {
                conn.execute_batch("COMMIT")?;
                if applied {
                    done_now.push(name.to_string());
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(Error::Internal(format!("migration {name} failed: {e}")));
            }
        }
    }
    Ok(done_now)
}

/// Checks that the schema is exactly what this coordinator expects; the error says what to
/// do.
pub(crate) fn check(conn: &Connection) -> Result<()> {
    ensure_table(conn)?;
    let have = applied(conn)?;
    let known = known();
    if let Some(unknown) = have.iter().find(|n| !known.contains(&n.as_str())) {
        return Err(Error::Invalid(format!(
            "the store's schema has migration {unknown}, which this coordinator does not know: \
             it was migrated by a newer labwire-coordinator; upgrade this one"
        )));
    }
    let pending: Vec<&str> = known
        .iter()
        .filter(|n| !have.iter().any(|h| h == *n))
        .copied()
        .collect();
    if !pending.is_empty() {
        return Err(Error::Invalid(format!(
            "the store's schema is not up to date (pending: {}); run `labwire-coordinator migrate`",
            pending.join(", ")
        )));
    }
    Ok(())
}

/// Names of the applied migrations, in order.
pub(crate) fn applied(conn: &Connection) -> Result<Vec<String>> {
    conn.query_map(
        "SELECT name FROM schema_migrations ORDER BY name",
        params![],
        |r| r.get(0),
    )
}

/// Names of every migration this coordinator knows, in order.
pub(crate) fn known() -> Vec<&'static str> {
    MIGRATIONS.iter().map(|(n, _, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once() {
        let (_dir, store) = crate::store::temp_store();
        // Applying again applies nothing, and the schema checks out.
        assert!(store.read_blocking(apply).unwrap().is_empty());
        store.read_blocking(check).unwrap();
        let names = store.read_blocking(applied).unwrap();
        assert_eq!(names, known());
    }
}
