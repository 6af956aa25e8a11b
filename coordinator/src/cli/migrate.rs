//! `labwire-coordinator migrate [--from sqlite://PATH]`: creates or upgrades the store's
//! schema, and moves an SQLite store into an empty PostgreSQL one.

use crate::config::CoordinatorConfig;
use crate::store::{Location, Schema, Store};
use anyhow::Context;

/// Migrates the config's store, then copies `from` into it when given.
pub(super) async fn run(cfg: &CoordinatorConfig, from: Option<&str>) -> anyhow::Result<()> {
    let loc = cfg.store_location();
    // Check the source before touching the target.
    let src = match from.map(Location::parse) {
        None => None,
        Some(Err(e)) => anyhow::bail!("--from: {e}"),
        Some(Ok(l @ Location::Sqlite(_))) if l == loc => {
            anyhow::bail!("--from {l} is the config's own store")
        }
        Some(Ok(Location::Sqlite(path))) if !path.is_file() => {
            anyhow::bail!("--from: no SQLite store at {}", path.display())
        }
        Some(Ok(l @ Location::Sqlite(_))) => Some(l),
        Some(Ok(other)) => anyhow::bail!("--from {other}: expected sqlite://PATH"),
    };
    let store = Store::connect(&loc, crate::clock::Clock::system(), Schema::AsIs)
        .with_context(|| format!("cannot open the store {loc}"))?;
    let applied = store.read_blocking(crate::store::migrations::apply)?;
    if applied.is_empty() {
        labwire_common::say!("{loc}: schema up to date");
    } else {
        labwire_common::say!("{loc}: applied {}", applied.join(", "));
    }
    if let Some(src) = src {
        let source = Store::connect(&src, crate::clock::Clock::system(), Schema::Migrate)
            .with_context(|| format!("cannot open {src}"))?;
        labwire_common::say!("copying {src} into {loc} (one transaction: all or nothing)");
        let target = store.clone();
        let copied = tokio::task::spawn_blocking(move || {
            crate::store::copy::copy_all(&source, &target, |table, n, done| {
                if done {
                    labwire_common::say!("  {table}: {n} rows");
                } else {
                    labwire_common::say!("  {table}: {n} rows so far...");
                }
            })
        })
        .await??;
        labwire_common::say!("copied {copied} rows from {src} into {loc}");
    }
    Ok(())
}
