//! `GET /ui/labs`: every lab with its connection, queue-wait estimate and free slots, and its
//! devices by type with their health (its reason, the last health check, the
//! infrastructure-failure streak) and the job each one runs.

use super::view::{Time, secs};
use super::{Page, fail, last_seq, page_auth, show};
use crate::model::NodeId;
use crate::shared::{LabOverview, SharedRef, lab_overview};
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A lab's section.
#[derive(Serialize)]
struct Lab {
    name: String,
    connected: bool,
    revoked: bool,
    seen: Option<Time>,
    in_flight: i64,
    /// The queue wait, from the lab's moving averages.
    estimate: String,
    free: i64,
    types: Vec<DeviceType>,
}

/// The devices of one type.
#[derive(Serialize)]
struct DeviceType {
    device_type: String,
    devices: Vec<Device>,
}

/// One device's row.
#[derive(Serialize)]
struct Device {
    name: String,
    driver: String,
    health: String,
    /// Why it is in that health (empty when good).
    reason: String,
    /// When its last health check ended, if it had one.
    last_check: Option<String>,
    /// Jobs in a row that ended with an infrastructure error.
    streak: u32,
    /// The job it runs, if busy.
    job: Option<i64>,
}

/// `GET /ui/labs`.
pub(super) async fn page(State(shared): State<SharedRef>, headers: HeaderMap) -> Page {
    let who = page_auth(&shared, &headers).await?;
    let seq = last_seq(&shared).await;
    let overview = lab_overview(&shared).await.map_err(fail)?;
    let (leased, stats) = shared
        .store
        .read(|c| {
            Ok((
                crate::store::jobs::list_jobs(c, Some(crate::store::JobStatus::Leased), 10_000)?,
                crate::store::jobs::job_stats(c)?,
            ))
        })
        .await
        .map_err(fail)?;
    // (lab, device) → the job it runs.
    let busy: HashMap<(String, String), NodeId> = leased
        .iter()
        .filter_map(|j| Some(((j.lease_owner.clone()?, j.device.clone()?), j.id)))
        .collect();
    let labs: Vec<Lab> = overview
        .iter()
        .map(
            |LabOverview {
                 row,
                 devices,
                 connected,
                 jobs_in_flight,
             }| {
                // Queue wait estimate: the lab's moving averages, weighted by runs.
                let (runs, wait) = stats
                    .iter()
                    .filter(|((_, lab), _)| *lab == row.name)
                    .fold((0i64, 0f64), |(r, w), (_, s)| {
                        (r + s.runs, w + s.wait_ms * s.runs as f64)
                    });
                let estimate = if runs > 0 {
                    format!("{} (over {runs} runs)", secs(wait / runs as f64))
                } else {
                    "no runs yet".into()
                };
                let mut by_type: BTreeMap<&str, Vec<Device>> = BTreeMap::new();
                for d in devices {
                    by_type.entry(&d.device_type).or_default().push(Device {
                        name: d.name.clone(),
                        driver: d.driver.clone(),
                        health: d.health.to_string(),
                        reason: d.health_reason.clone(),
                        last_check: (d.last_check > 0)
                            .then(|| chrono::DateTime::from_timestamp(d.last_check, 0))
                            .flatten()
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
                        streak: d.failure_streak,
                        job: busy.get(&(row.name.clone(), d.name.clone())).map(|j| j.0),
                    });
                }
                Lab {
                    name: row.name.clone(),
                    connected: *connected,
                    revoked: row.revoked_at.is_some(),
                    seen: row.last_seen.as_ref().map(Time::from),
                    in_flight: *jobs_in_flight as i64,
                    estimate,
                    free: row.free_slots as i64,
                    types: by_type
                        .into_iter()
                        .map(|(t, devices)| DeviceType {
                            device_type: t.to_string(),
                            devices,
                        })
                        .collect(),
                }
            },
        )
        .collect();
    Ok(show(
        "labs.html",
        "Labs",
        &who,
        seq,
        minijinja::context! { labs => labs },
    ))
}
