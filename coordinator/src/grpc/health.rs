//! An admin's say over a device's health: maintenance, retirement and resume
//! (`AdminService.SetDeviceHealth`). The say is stored ([`crate::store::health`]) and laid over
//! whatever the lab's agent reports from then on; the dispatcher stops (or starts again)
//! placing jobs on the device at once. A job running on the device finishes first, unless
//! the admin asked for `now`: then it is cancelled. Also the lab report
//! (`AdminService.LabReport`), read from the health log and the finished jobs.

use crate::model::LabName;
use crate::shared::SharedRef;
use crate::store::JobStatus;
use labwire_common::Health;
use labwire_proto::convert;
use labwire_proto::v1;
use tonic::{Response, Status};

/// The longest reason kept.
const MAX_REASON: usize = 500;

/// Checks a lab or device name from a request: not empty, printable, at most 128 bytes.
fn name(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field}: expected a name of 1 to 128 printable characters"
        )));
    }
    Ok(())
}

/// Sets a device's health in this replica's picture (the dispatcher's and the agent
/// sessions'), so that placement here follows it at once.
pub(crate) async fn apply_health(
    shared: &SharedRef,
    lab: &LabName,
    device: &str,
    to: Health,
    reason: &str,
) {
    shared
        .dispatcher
        .set_device_health(lab, device, to, reason)
        .await;
    if let Ok(mut map) = shared.sessions.write() {
        for s in map.values_mut().filter(|s| &s.lab == lab) {
            for d in s.devices.iter_mut().filter(|d| d.name == device) {
                d.health = to;
                d.health_reason = reason.to_string();
            }
        }
    }
}

/// Applies an admin's `SetDeviceHealth`; `who` is the token's name, for the log.
pub(crate) async fn set_device_health(
    shared: &SharedRef,
    who: &str,
    r: v1::SetDeviceHealthRequest,
) -> Result<Response<v1::SetDeviceHealthResponse>, Status> {
    name("lab", &r.lab)?;
    name("device", &r.device)?;
    if r.reason.len() > MAX_REASON || r.reason.chars().any(|c| c.is_control() && c != ' ') {
        return Err(Status::invalid_argument(format!(
            "reason: expected one line of at most {MAX_REASON} bytes"
        )));
    }
    let admin = match v1::DeviceAdminState::try_from(r.state) {
        Ok(v1::DeviceAdminState::Resume) => None,
        Ok(v1::DeviceAdminState::Maintenance) => Some(Health::Maintenance),
        Ok(v1::DeviceAdminState::Retired) => Some(Health::Retired),
        _ => {
            return Err(Status::invalid_argument(
                "state: expected resume, maintenance or retired",
            ));
        }
    };
    let reason = if r.reason.trim().is_empty() {
        match admin {
            Some(h) => format!("{h} (set by {who})"),
            None => String::new(),
        }
    } else {
        r.reason.trim().to_string()
    };
    let (lab, device) = (r.lab.clone(), r.device.clone());
    let reason2 = reason.clone();
    let (from, to) = shared
        .store
        .write(move |w| w.set_admin_health(&lab, &device, admin, &reason2))
        .await?;
    let lab = LabName::new(r.lab.clone());
    let shown = if admin.is_some() { reason.as_str() } else { "" };
    apply_health(shared, &lab, &r.device, to, shown).await;
    if admin.is_none() {
        shared.dispatcher.note_resume(&lab);
    }
    tracing::warn!(lab = %lab, device = %r.device, from = %from, to = %to, by = who, reason = %reason, "device health set by an admin");
    let mut cancelled = Vec::new();
    if r.now && admin.is_some() {
        let (lab_s, dev) = (r.lab.clone(), r.device.clone());
        let running = shared
            .store
            .read(move |c| {
                Ok(
                    crate::store::jobs::list_jobs(c, Some(JobStatus::Leased), 10_000)?
                        .into_iter()
                        .filter(|j| {
                            j.lease_owner.as_deref() == Some(lab_s.as_str())
                                && j.device.as_deref() == Some(dev.as_str())
                        })
                        .map(|j| j.id)
                        .collect::<Vec<_>>(),
                )
            })
            .await?;
        for id in running {
            let why = format!("device `{}` taken out of service now: {reason}", r.device);
            match shared.queue.cancel(id, why).await {
                Ok(_) => cancelled.push(id.0),
                // It may have ended meanwhile.
                Err(e) => tracing::info!(job = %id, error = %e, "job not cancelled"),
            }
        }
    }
    Ok(Response::new(v1::SetDeviceHealthResponse {
        health: convert::health_to_proto(to) as i32,
        previous: convert::health_to_proto(from) as i32,
        cancelled_jobs: cancelled,
    }))
}

/// The longest period a lab report covers.
const MAX_REPORT_SECONDS: i64 = 366 * 24 * 3600;

fn availability(a: &crate::store::lab_report::Availability) -> v1::DeviceAvailability {
    v1::DeviceAvailability {
        name: a.name.clone(),
        device_type: a.device_type.clone(),
        good_seconds: a.good_s,
        bad_seconds: a.bad_s,
        maintenance_seconds: a.maintenance_s,
        retired_seconds: a.retired_s,
        offline_seconds: a.offline_s,
        jobs: a.jobs,
        infra_failures: a.infra_failures,
        boot_ms_mean: a.boot_ms_mean().unwrap_or(0.0),
        boot_samples: a.boot_samples,
    }
}

/// `LabReport`: the lab's figures over the last `since_seconds`. A lab silent for longer
/// than the horizon of [`crate::shared::Shared::connected_labs`] counts as offline since.
pub(crate) async fn lab_report(
    shared: &SharedRef,
    r: v1::LabReportRequest,
) -> Result<Response<v1::LabReportResponse>, Status> {
    name("lab", &r.lab)?;
    if !(1..=MAX_REPORT_SECONDS).contains(&r.since_seconds) {
        return Err(Status::invalid_argument(format!(
            "since_seconds: expected 1 to {MAX_REPORT_SECONDS}"
        )));
    }
    let to = shared.store.clock().now();
    let from = to - chrono::Duration::seconds(r.since_seconds);
    let horizon = shared.config.leases.heartbeat * 2 + std::time::Duration::from_secs(5);
    let horizon = chrono::Duration::from_std(horizon)
        .map_err(|e| Status::internal(format!("heartbeat horizon: {e}")))?;
    let lab = r.lab.clone();
    let rep = shared
        .store
        .read(move |c| crate::store::lab_report::lab_report(c, &lab, from, to, horizon))
        .await?
        .ok_or_else(|| Status::not_found(format!("no lab `{}`", r.lab)))?;
    Ok(Response::new(v1::LabReportResponse {
        lab: r.lab,
        from: Some(convert::timestamp(rep.from)),
        to: Some(convert::timestamp(rep.to)),
        last_seen: rep.last_seen.map(convert::timestamp),
        devices: rep.devices.iter().map(availability).collect(),
        device_types: rep.device_types.iter().map(availability).collect(),
    }))
}
