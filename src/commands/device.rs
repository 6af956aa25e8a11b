//! `labwire device ...` (admin): the devices of the labs with their health, and an admin's
//! say over one: `maintenance`, `retire`, `resume`.

use super::admin::health_name;
use crate::client::Clients;
use crate::output::outln;
use anyhow::bail;
use clap::Subcommand;
use labwire_proto::v1;

/// `labwire device ...` subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum DeviceCommand {
    /// List the devices of every lab (or of one) with their health, its reason, the last
    /// health check, the infrastructure-failure streak and who holds a reservation of it.
    List {
        /// Only this lab.
        lab: Option<String>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Take a device out of service: no new job is placed on it; a running job finishes
    /// first (`--now` cancels it). Kept across restarts until `resume`.
    Maintenance {
        /// LAB/DEVICE.
        target: String,
        /// Why (shown with the device and in `jobs explain`).
        #[arg(long, default_value = "")]
        reason: String,
        /// Cancel the job running on the device now.
        #[arg(long)]
        now: bool,
    },
    /// Retire a device: no job is placed on it again (until `resume`).
    Retire {
        /// LAB/DEVICE.
        target: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        /// Cancel the job running on the device now.
        #[arg(long)]
        now: bool,
    },
    /// Put a device in maintenance or retired back in service: its agent's own health
    /// counts again.
    Resume {
        /// LAB/DEVICE.
        target: String,
    },
}

/// Splits `LAB/DEVICE`.
pub(super) fn target(t: &str) -> anyhow::Result<(String, String)> {
    match t.split_once('/') {
        Some((lab, dev)) if !lab.is_empty() && !dev.is_empty() && !dev.contains('/') => {
            Ok((lab.to_string(), dev.to_string()))
        }
        _ => bail!("`{t}`: expected LAB/DEVICE"),
    }
}

/// Runs a `labwire device` command.
pub(super) async fn device(
    c: &mut Clients,
    cmd: DeviceCommand,
    global_json: bool,
) -> anyhow::Result<()> {
    let (t, state, reason, now) = match cmd {
        DeviceCommand::List { lab, json } => return list(c, lab, json || global_json).await,
        DeviceCommand::Maintenance {
            target,
            reason,
            now,
        } => (target, v1::DeviceAdminState::Maintenance, reason, now),
        DeviceCommand::Retire {
            target,
            reason,
            now,
        } => (target, v1::DeviceAdminState::Retired, reason, now),
        DeviceCommand::Resume { target } => {
            (target, v1::DeviceAdminState::Resume, String::new(), false)
        }
    };
    let (lab, device) = target(&t)?;
    let r = c
        .admin
        .set_device_health(v1::SetDeviceHealthRequest {
            lab: lab.clone(),
            device: device.clone(),
            state: state as i32,
            reason,
            now,
        })
        .await?
        .into_inner();
    outln!(
        "{lab}/{device}: {} -> {}",
        health_name(r.previous),
        health_name(r.health)
    )?;
    for j in r.cancelled_jobs {
        outln!("cancelled job {j}")?;
    }
    if state == v1::DeviceAdminState::Resume {
        outln!("its agent clears its own quarantine of it at its next heartbeat")?;
    }
    Ok(())
}

async fn list(c: &mut Clients, only: Option<String>, json: bool) -> anyhow::Result<()> {
    let labs = c
        .admin
        .list_labs(v1::ListLabsRequest {})
        .await?
        .into_inner()
        .labs;
    if !json {
        outln!(
            "{:<32} {:<20} {:<12} {:<20} {:<6} {:<36} REASON",
            "DEVICE",
            "TYPE",
            "HEALTH",
            "LAST CHECK",
            "STREAK",
            "RESERVED"
        )?;
    }
    for l in labs
        .iter()
        .filter(|l| only.as_deref().is_none_or(|o| o == l.name))
    {
        for d in &l.devices {
            let res = l.reservations.iter().find(|r| r.device == d.name);
            let until = res.and_then(|r| r.expires.as_ref()).and_then(|t| {
                chrono::DateTime::from_timestamp(t.seconds, 0)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            });
            let check = if d.last_check > 0 {
                chrono::DateTime::from_timestamp(d.last_check, 0)
                    .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            } else {
                "-".into()
            };
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "lab": l.name,
                        "device": d.name,
                        "device_type": d.device_type,
                        "health": health_name(d.health),
                        "reason": d.health_reason,
                        "last_check": (d.last_check > 0).then_some(d.last_check),
                        "failure_streak": d.failure_streak,
                        "reserved_by": res.map(|r| r.owner.as_str()),
                        "reserved_until": until,
                    })
                )?;
            } else {
                let reserved = match (res, &until) {
                    (Some(r), Some(u)) => format!("{} until {u}", r.owner),
                    _ => "-".into(),
                };
                outln!(
                    "{:<32} {:<20} {:<12} {:<20} {:<6} {:<36} {}",
                    format!("{}/{}", l.name, d.name),
                    d.device_type,
                    health_name(d.health),
                    check,
                    d.failure_streak,
                    reserved,
                    d.health_reason
                )?;
            }
        }
    }
    Ok(())
}
