//! Administration commands (an `admin` token): `labs`, `jobs`, `jobs explain`, `cancel`,
//! `revoke`.

use super::read::{print_json, result_name, state_name};
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

/// A lab's state word: revoked, connected or offline.
fn lab_state(l: &v1::Lab) -> &'static str {
    if l.revoked {
        "revoked"
    } else if l.connected {
        "connected"
    } else {
        "offline"
    }
}

/// A device's health word, as the proto's number says it.
pub(super) fn health_name(h: i32) -> &'static str {
    convert::health_from_proto(h).as_str()
}

/// A timestamp as RFC 3339, if set.
fn rfc3339(t: &Option<prost_types::Timestamp>) -> Option<String> {
    t.as_ref()
        .and_then(convert::from_timestamp)
        .map(|t| t.to_rfc3339())
}

/// A device as JSON (see docs/cli.md).
fn device_json(d: &v1::Device) -> serde_json::Value {
    serde_json::json!({
        "name": d.name, "device_type": d.device_type, "driver": d.driver,
        "health": health_name(d.health), "busy": d.busy, "tags": d.tags,
        "features": d.features, "properties": d.properties, "count": d.count,
    })
}

/// `labwire labs`: every lab, its state, devices, free slots and last contact; with
/// `devices`, each lab's devices below it; with `json`, `{"labs": [LAB...]}` (devices always
/// included).
pub(super) async fn labs(c: &mut Clients, devices: bool, json: bool) -> anyhow::Result<()> {
    let labs = c
        .admin
        .list_labs(v1::ListLabsRequest {})
        .await?
        .into_inner()
        .labs;
    if json {
        let labs: Vec<serde_json::Value> = labs
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name, "state": lab_state(l), "connected": l.connected,
                    "revoked": l.revoked, "free_slots": l.free_slots,
                    "jobs_in_flight": l.jobs_in_flight, "last_seen": rfc3339(&l.last_seen),
                    "devices": l.devices.iter().map(device_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        return print_json(&serde_json::json!({ "labs": labs }));
    }
    outln!(
        "{:<20} {:<10} {:<8} {:<6} {:<8} LAST SEEN",
        "LAB",
        "STATE",
        "DEVICES",
        "FREE",
        "IN FLIGHT"
    )?;
    for l in labs {
        let seen = rfc3339(&l.last_seen).unwrap_or_else(|| "-".into());
        outln!(
            "{:<20} {:<10} {:<8} {:<6} {:<8} {seen}",
            l.name,
            lab_state(&l),
            l.devices.len(),
            l.free_slots,
            l.jobs_in_flight
        )?;
        if devices {
            for d in &l.devices {
                let tags = if d.tags.is_empty() {
                    "-".to_string()
                } else {
                    d.tags.join(",")
                };
                outln!(
                    "  {:<24} {:<22} {:<8} {:<12} {:<5} {tags}",
                    d.name,
                    d.device_type,
                    d.driver,
                    health_name(d.health),
                    if d.busy { "busy" } else { "idle" },
                )?;
            }
        }
    }
    Ok(())
}

/// `labwire jobs explain JOB`: the job's status and, lab by lab, whether it fits and why.
pub(super) async fn explain(c: &mut Clients, job: i64, json: bool) -> anyhow::Result<()> {
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
    if json {
        // `criteria` and `attributes` come as JSON text: embedded as JSON when they parse.
        let embed =
            |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap_or_else(|_| t.into());
        let labs: Vec<serde_json::Value> = r
            .labs
            .iter()
            .map(|l| {
                serde_json::json!({
                    "lab": l.lab, "eligible": l.eligible, "score": l.score, "reasons": l.reasons,
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "job": job, "status": status_name(r.status),
            "lab": (!r.lab.is_empty()).then_some(&r.lab),
            "device": (!r.device.is_empty()).then_some(&r.device),
            "criteria": embed(&r.criteria), "attributes": embed(&r.attributes), "labs": labs,
        }));
    }
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

/// A job status word: queued, leased, finished or `-`.
fn status_name(s: i32) -> &'static str {
    match v1::JobStatus::try_from(s) {
        Ok(v1::JobStatus::Queued) => "queued",
        Ok(v1::JobStatus::Leased) => "leased",
        Ok(v1::JobStatus::Finished) => "finished",
        _ => "-",
    }
}

/// `labwire jobs`: jobs with their queue status, lab, device and attempt; with `json`,
/// `{"jobs": [JOB...]}`.
pub(super) async fn jobs(
    c: &mut Clients,
    status: Option<&str>,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
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
    if json {
        let jobs: Vec<serde_json::Value> = jobs
            .iter()
            .map(|j| {
                let n = j.node.clone().unwrap_or_default();
                serde_json::json!({
                    "id": n.id, "name": n.name, "status": status_name(j.status),
                    "lab": (!j.lease_owner.is_empty()).then_some(&j.lease_owner),
                    "device": (!j.device.is_empty()).then_some(&j.device),
                    "attempt": j.attempt, "priority": j.priority,
                    "lease_until": rfc3339(&j.lease_until),
                    "state": state_name(&n),
                    "result": convert::result_from_proto(n.result).map(|r| r.as_str()),
                })
            })
            .collect();
        return print_json(&serde_json::json!({ "jobs": jobs }));
    }
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
        let st = status_name(j.status);
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

/// `labwire cancel JOB`: cancels the job and prints its state (`json`: `{"job", "state"}`).
pub(super) async fn cancel(
    c: &mut Clients,
    job: i64,
    reason: String,
    json: bool,
) -> anyhow::Result<()> {
    let n = c
        .admin
        .cancel_job(v1::CancelJobRequest { job, reason })
        .await?
        .into_inner();
    if json {
        let state = n.node.as_ref().map_or("-", state_name);
        return print_json(&serde_json::json!({"job": job, "state": state}));
    }
    outln!("job {job}: {}", n.node.map_or("-", |n| state_name(&n)))
}

/// `labwire revoke LAB`: revokes the lab's certificates; its jobs go back to the queue.
/// With `json`: `{"lab", "certificates", "jobs_requeued"}`.
pub(super) async fn revoke(c: &mut Clients, lab: String, json: bool) -> anyhow::Result<()> {
    let r = c
        .admin
        .revoke_lab(v1::RevokeLabRequest { lab: lab.clone() })
        .await?
        .into_inner();
    if json {
        return print_json(&serde_json::json!({
            "lab": lab, "certificates": r.certificates, "jobs_requeued": r.jobs_requeued,
        }));
    }
    outln!(
        "lab `{lab}`: {} certificate(s) revoked, {} job(s) back in the queue",
        r.certificates,
        r.jobs_requeued
    )
}
