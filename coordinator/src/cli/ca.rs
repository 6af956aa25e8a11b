//! `labwire-coordinator ca ...`: the CA and server certificate, lab certificates, and
//! revocation.

use super::CaCommand;
use crate::config::CoordinatorConfig;
use crate::model::LabName;
use crate::pki;
use crate::setup::open_store;
use crate::store::labs::Scope;
use anyhow::Context;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Runs a `ca` subcommand.
pub(super) fn run(cfg: &CoordinatorConfig, cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init {
            dns,
            ip,
            token_file,
        } => init(cfg, &dns, &ip, token_file.as_deref()),
        CaCommand::IssueAgent { lab, out } => issue_agent(cfg, &lab, out),
        CaCommand::Revoke { lab } => revoke(cfg, &lab),
    }
}

/// `ca init`: the CA, the server certificate and the first admin token.
fn init(
    cfg: &CoordinatorConfig,
    dns: &[String],
    ip: &[IpAddr],
    token_file: Option<&Path>,
) -> anyhow::Result<()> {
    let token = ca_init(cfg, dns, ip)?;
    labwire_common::outln!(
        "CA and server certificate written to {}",
        cfg.pki_dir().display()
    )?;
    match token_file {
        Some(f) => {
            pki::write_private(f, &token)?;
            labwire_common::outln!("admin token written to {}", f.display())?;
        }
        None => labwire_common::outln!("admin token (shown once; keep it safe): {token}")?,
    }
    Ok(())
}

/// `ca issue-agent LAB`: a lab's certificate and the folder to copy to the lab host.
fn issue_agent(cfg: &CoordinatorConfig, lab: &str, out: Option<PathBuf>) -> anyhow::Result<()> {
    let out = out.unwrap_or_else(|| PathBuf::from(lab));
    let issued = ca_issue_agent(cfg, lab, &out)?;
    labwire_common::outln!(
        "lab `{lab}`: certificate {} (valid until {}) written to {}/\n\
         copy that folder to the lab host and put its files in /etc/labwire/ \
         (install -m 0640 -g labwire-agent ...), add devices to agent.yaml, \
         then `systemctl enable --now labwire-agent` (docs/install.md)",
        issued.fingerprint,
        issued.not_after.format("%Y-%m-%d"),
        out.display()
    )?;
    Ok(())
}

/// `ca revoke LAB`: the lab's certificates revoked and its leased jobs back in the queue, in
/// one transaction. Running coordinators hear of it through the store and offer the jobs to
/// other labs at once (see `store::watch`).
fn revoke(cfg: &CoordinatorConfig, lab: &str) -> anyhow::Result<()> {
    let store = open_store(cfg)?;
    let name = LabName::new(lab);
    let (certs, jobs) = store.write_blocking(|w| {
        let jobs = w.requeue_lab_jobs(&name)?;
        Ok((w.revoke_lab(lab)?, jobs.len()))
    })?;
    labwire_common::outln!(
        "lab `{lab}`: {certs} certificate(s) revoked, {jobs} job(s) back in the queue \
         (a running coordinator offers them to other labs at once)"
    )?;
    Ok(())
}

/// Creates the CA, server certificate and admin token for `cfg`. Returns the token.
pub fn ca_init(cfg: &CoordinatorConfig, dns: &[String], ip: &[IpAddr]) -> anyhow::Result<String> {
    let files = pki::init_ca(&cfg.pki_dir(), dns, ip)?;
    let store = open_store(cfg)?;
    let token = store
        .write_blocking(|w| w.create_token("admin", &[Scope::Admin]))
        .context("cannot create the admin token")?;
    tracing::info!(ca = %files.ca_cert.display(), "CA created");
    Ok(token)
}

/// Issues a lab certificate, registers it and writes the bundle to `out`.
pub fn ca_issue_agent(
    cfg: &CoordinatorConfig,
    lab: &str,
    out: &Path,
) -> anyhow::Result<pki::Issued> {
    let issued = pki::issue_agent_cert(&cfg.pki_dir(), lab)?;
    let store = open_store(cfg)?;
    let fp = issued.fingerprint.clone();
    let not_after = issued.not_after;
    store.write_blocking(|w| w.register_lab_cert(lab, &fp, Some(not_after)))?;
    pki::write_agent_bundle(out, &cfg.pki_dir(), lab, &issued, &cfg.public_url)?;
    Ok(issued)
}
