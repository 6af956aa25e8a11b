//! `labwire-coordinator token ...`: client tokens (created and shown once, listed without
//! secrets, revoked by name).

use super::TokenCommand;
use crate::config::CoordinatorConfig;
use crate::setup::open_store;
use crate::store::labs::{Scope, TokenInfo};

/// Runs a `token` subcommand.
pub(super) fn run(cfg: &CoordinatorConfig, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { name, scopes } => create(cfg, &name, &scopes),
        TokenCommand::List => list(cfg),
        TokenCommand::Revoke { name } => revoke(cfg, &name),
    }
}

/// `token create NAME --scope ...`: prints the new token (stored only as a hash).
fn create(cfg: &CoordinatorConfig, name: &str, scopes: &[String]) -> anyhow::Result<()> {
    let scopes = scopes
        .iter()
        .map(|s| s.parse::<Scope>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = open_store(cfg)?;
    let token = store.write_blocking(|w| w.create_token(name, &scopes))?;
    labwire_common::outln!("{token}")?;
    Ok(())
}

/// `token list`: names, scopes and dates, never secrets.
fn list(cfg: &CoordinatorConfig) -> anyhow::Result<()> {
    let store = open_store(cfg)?;
    let tokens = store.read_blocking(crate::store::labs::list_tokens)?;
    labwire_common::outln!("{:<24} {:<20} {:<22} STATE", "NAME", "SCOPES", "CREATED")?;
    for t in tokens {
        labwire_common::outln!("{}", row(&t))?;
    }
    Ok(())
}

/// One line of `token list`.
fn row(t: &TokenInfo) -> String {
    format!(
        "{:<24} {:<20} {:<22} {}",
        t.name,
        t.scopes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(","),
        t.created.format("%Y-%m-%d %H:%M:%S"),
        t.revoked_at.map_or("active".to_string(), |r| format!(
            "revoked {}",
            r.format("%Y-%m-%d")
        ))
    )
}

/// `token revoke NAME`.
fn revoke(cfg: &CoordinatorConfig, name: &str) -> anyhow::Result<()> {
    let store = open_store(cfg)?;
    store.write_blocking(|w| w.revoke_token(name))?;
    labwire_common::outln!("token `{name}` revoked")?;
    Ok(())
}
