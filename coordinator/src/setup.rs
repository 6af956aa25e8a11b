//! Start-up steps that the daemon (`serve`) and the admin commands (`ca`, `token`,
//! `migrate`) share: opening the config's store.

use crate::config::CoordinatorConfig;
use crate::store::{Location, Schema, Store};
use anyhow::Context;

/// Opens the config's store. An SQLite store is migrated on the way; a PostgreSQL one must
/// be up to date already (`labwire-coordinator migrate`).
pub fn open_store(cfg: &CoordinatorConfig) -> anyhow::Result<Store> {
    let loc = cfg.store_location();
    let schema = match loc {
        Location::Sqlite(_) => Schema::Migrate,
        Location::Postgres(_) => Schema::Check,
    };
    Store::connect(&loc, crate::clock::Clock::system(), schema)
        .with_context(|| format!("cannot open the store {loc}"))
}
