//! Administration commands (an `admin` token): `labs`, `jobs`, `jobs explain`, `cancel`,
//! `revoke`.

use super::read::{result_name, state_name};
use crate::client::Clients;
use crate::output::outln;
use anyhow::bail;
use clap::Subcommand;
use labwire_proto::convert;
use labwire_proto::v1;

/// `labwire jobs ...` subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum JobsAction {
    /// Tell, lab by lab, why the job was or was not placed there (admin).
    Explain {
        /// The job's node id.
        job: i64,
    },
}

/// `labwire labs`: every lab, its state, devices, free slots and last contact.
pub(super) async fn labs(c: &mut Clients) -> anyhow::Result<()> {
    let labs = c
        .admin
        .list_labs(v1::ListLabsRequest {})
        .await?
        .into_inner()
        .labs;
    outln!(
        "{:<20} {:<10} {:<8} {:<6} {:<8} LAST SEEN",
        "LAB",
        "STATE",
        "DEVICES",
        "FREE",
        "IN FLIGHT"
    )?;
    for l in labs {
        let state = if l.revoked {
            "revoked"
        } else if l.connected {
            "connected"
        } else {
            "offline"
        };
        let seen = l
            .last_seen
            .as_ref()
            .and_then(convert::from_timestamp)
            .map_or("-".into(), |t| t.to_rfc3339());
        outln!(
            "{:<20} {:<10} {:<8} {:<6} {:<8} {seen}",
            l.name,
            state,
            l.devices.len(),
            l.free_slots,
            l.jobs_in_flight
        )?;
    }
    Ok(())
}

/// `labwire jobs explain JOB`: the job's status and, lab by lab, whether it fits and why.
pub(super) async fn explain(c: &mut Clients, job: i64) -> anyhow::Result<()> {
    let r = c
        .admin
        .explain_job(v1::ExplainJobRequest { job })
        .await?
        .into_inner();
    let st = match v1::JobStatus::try_from(r.status) {
        Ok(v1::JobStatus::Queued) => "queued".to_string(),
        Ok(v1::JobStatus::Leased) => format!("leased to {} on {}", r.lab, r.device),
        Ok(v1::JobStatus::Finished) => format!("finished (last in {} on {})", r.lab, r.device),
        _ => "unknown".to_string(),
    };
    outln!("job {job}: {st}")?;
    outln!("criteria:   {}", r.criteria)?;
    outln!("attributes: {}", r.attributes)?;
    if r.labs.is_empty() {
        outln!("no labs are known to the coordinator")?;
    }
    for l in r.labs {
        let mark = if l.eligible { "yes" } else { "no " };
        let score = l
            .score
            .map(|s| format!(" (score {s:.0}s)"))
            .unwrap_or_default();
        outln!("{mark} {}{score}", l.lab)?;
        for why in l.reasons {
            outln!("      {why}")?;
        }
    }
    Ok(())
}

/// `labwire jobs`: jobs with their queue status, lab, device and attempt.
pub(super) async fn jobs(c: &mut Clients, status: Option<&str>, limit: u32) -> anyhow::Result<()> {
    let status = match status {
        None => 0,
        Some("queued") => v1::JobStatus::Queued as i32,
        Some("leased") => v1::JobStatus::Leased as i32,
        Some("finished") => v1::JobStatus::Finished as i32,
        Some(s) => bail!("--status `{s}`: expected queued, leased or finished"),
    };
    let jobs = c
        .admin
        .list_jobs(v1::ListJobsRequest { status, limit })
        .await?
        .into_inner()
        .jobs;
    outln!(
        "{:<8} {:<30} {:<9} {:<16} {:<16} {:<7} RESULT",
        "ID",
        "NAME",
        "STATUS",
        "LAB",
        "DEVICE",
        "ATTEMPT"
    )?;
    for j in jobs {
        let n = j.node.unwrap_or_default();
        let st = match v1::JobStatus::try_from(j.status) {
            Ok(v1::JobStatus::Queued) => "queued",
            Ok(v1::JobStatus::Leased) => "leased",
            Ok(v1::JobStatus::Finished) => "finished",
            _ => "-",
        };
        outln!(
            "{:<8} {:<30} {:<9} {:<16} {:<16} {:<7} {}",
            n.id,
            n.name,
            st,
            j.lease_owner,
            j.device,
            j.attempt,
            result_name(&n)
        )?;
    }
    Ok(())
}

/// `labwire cancel JOB`: cancels the job and prints its state.
pub(super) async fn cancel(c: &mut Clients, job: i64, reason: String) -> anyhow::Result<()> {
    let n = c
        .admin
        .cancel_job(v1::CancelJobRequest { job, reason })
        .await?
        .into_inner();
    outln!("job {job}: {}", n.node.map_or("-", |n| state_name(&n)))
}

/// `labwire revoke LAB`: revokes the lab's certificates; its jobs go back to the queue.
pub(super) async fn revoke(c: &mut Clients, lab: String) -> anyhow::Result<()> {
    let r = c
        .admin
        .revoke_lab(v1::RevokeLabRequest { lab: lab.clone() })
        .await?
        .into_inner();
    outln!(
        "lab `{lab}`: {} certificate(s) revoked, {} job(s) back in the queue",
        r.certificates,
        r.jobs_requeued
    )
}
