//! Named, append-only schema migrations. Each runs once, in its own transaction, and is
//! recorded in `schema_migrations`. Never edit a migration that has shipped: add a new one.

use crate::error::Result;
use rusqlite::{Connection, params};

/// The migrations, in order. Names are stable identifiers.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_initial", include_str!("0001_initial.sql")),
    ("0002_scheduling", include_str!("0002_scheduling.sql")),
    ("0003_pipeline", include_str!("0003_pipeline.sql")),
    (
        "0004_node_result_index",
        include_str!("0004_node_result_index.sql"),
    ),
];

/// Applies every migration not yet recorded.
pub fn apply(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            name TEXT PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
    )?;
    for (name, sql) in MIGRATIONS {
        let tx = conn.transaction()?;
        let done: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )?;
        if !done {
            tracing::info!(migration = name, "applying schema migration");
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (name, applied_at) VALUES (?1, ?2)",
                params![name, chrono::Utc::now().timestamp_micros()],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// Names of the applied migrations, in order.
pub fn applied(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM schema_migrations ORDER BY name")?;
    let names = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once() {
        let (_dir, store) = crate::store::temp_store();
        // Opening again must not re-apply anything.
        let again = crate::store::Store::open(store.path()).unwrap();
        let names = again.read_blocking(applied).unwrap();
        let want: Vec<String> = MIGRATIONS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, want);
    }
}
