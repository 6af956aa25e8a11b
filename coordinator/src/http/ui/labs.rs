//! `GET /ui/labs`: every lab with its connection, queue-wait estimate and free slots, and its
//! devices by type with their health (its reason, the last health check, the
//! infrastructure-failure streak), the job each one runs, its live reservation, and its
//! availability over the last week as a server-rendered SVG timeline (one coloured bar per
//! stretch of one health, from the lab report's figures in [`crate::store::lab_report`]).

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
    /// Its availability over the period, e.g. `97.5 %`.
    available: String,
    /// The bars of its timeline.
    timeline: Vec<Bar>,
    /// Its live reservation, if it is lent to someone.
    reserved: Option<Reserved>,
}

/// A device's live reservation, as shown.
#[derive(Serialize)]
struct Reserved {
    owner: String,
    until: String,
    reason: String,
}

/// One stretch of one health in a device's timeline, in SVG units (0 to [`WIDTH`]).
#[derive(Serialize)]
struct Bar {
    x: String,
    w: String,
    /// `good`, `bad`, `maintenance`, `retired`, `unknown` or `offline`.
    health: &'static str,
    /// From when to when, for the tooltip.
    title: String,
}

/// The timeline's width in SVG units.
const WIDTH: f64 = 300.0;
/// The period the timelines cover.
const PERIOD_DAYS: i64 = 7;

fn bars(spans: &[crate::store::lab_report::Span], from: i64, to: i64) -> Vec<Bar> {
    let len = (to - from).max(1) as f64;
    let at = |t: chrono::DateTime<chrono::Utc>| (t.timestamp() - from) as f64 / len * WIDTH;
    spans
        .iter()
        .map(|s| Bar {
            x: format!("{:.2}", at(s.from)),
            w: format!("{:.2}", (at(s.to) - at(s.from)).max(0.5)),
            health: s.health.map_or("offline", |h| h.as_str()),
            title: format!(
                "{} {} to {}",
                s.health.map_or("offline", |h| h.as_str()),
                s.from.format("%Y-%m-%d %H:%M"),
                s.to.format("%Y-%m-%d %H:%M")
            ),
        })
        .collect()
}

/// `GET /ui/labs`.
pub(super) async fn page(State(shared): State<SharedRef>, headers: HeaderMap) -> Page {
    let who = page_auth(&shared, &headers).await?;
    let seq = last_seq(&shared).await;
    let overview = lab_overview(&shared).await.map_err(fail)?;
    let to = shared.store.clock().now();
    let from = to - chrono::Duration::days(PERIOD_DAYS);
    let horizon = chrono::Duration::from_std(
        shared.config.leases.heartbeat * 2 + std::time::Duration::from_secs(5),
    )
    .unwrap_or(chrono::Duration::seconds(35));
    let names: Vec<String> = overview.iter().map(|o| o.row.name.clone()).collect();
    let (leased, stats, reports) = shared
        .store
        .read(move |c| {
            let mut reports = HashMap::new();
            for n in names {
                if let Some(r) = crate::store::lab_report::lab_report(c, &n, from, to, horizon)? {
                    reports.insert(n, r);
                }
            }
            Ok((
                crate::store::jobs::list_jobs(c, Some(crate::store::JobStatus::Leased), 10_000)?,
                crate::store::jobs::job_stats(c)?,
                reports,
            ))
        })
        .await
        .map_err(fail)?;
    let (from_s, to_s) = (from.timestamp(), to.timestamp());
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
                 reservations,
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
                let report = reports.get(&row.name);
                for d in devices {
                    let a = report.and_then(|r| r.devices.iter().find(|a| a.name == d.name));
                    let spans = report.and_then(|r| r.timelines.get(&d.name));
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
                        available: a
                            .map_or("-".into(), |a| format!("{:.1} %", 100.0 * a.availability())),
                        timeline: spans.map_or(Vec::new(), |s| bars(s, from_s, to_s)),
                        reserved: reservations.iter().find(|r| r.device == d.name).map(|r| {
                            Reserved {
                                owner: r.owner.clone(),
                                until: r.expires.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                                reason: r.reason.clone(),
                            }
                        }),
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
