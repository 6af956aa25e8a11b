//! `GET /ui/queue`: the jobs waiting for a device (the first 200), what each wants, how long
//! it has waited and may still wait, and lab by lab why it is not placed.

use super::view::{Time, secs};
use super::{Page, fail, last_seq, page_auth, show};
use crate::shared::SharedRef;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;

/// Most queued jobs the page lists.
const SHOWN: usize = 200;

/// One queued job's row.
#[derive(Serialize)]
struct Job {
    id: i64,
    name: String,
    /// Its criteria in words.
    wants: String,
    queued: Time,
    estimate: String,
    why: Why,
}

/// Why a job waits: a sentence, or each lab's reasons.
#[derive(Serialize)]
#[serde(untagged)]
enum Why {
    Text(&'static str),
    Labs(Vec<Verdict>),
}

/// One lab's reasons for not taking a job.
#[derive(Serialize)]
struct Verdict {
    lab: String,
    reasons: String,
}

/// `GET /ui/queue`.
pub(super) async fn page(State(shared): State<SharedRef>, headers: HeaderMap) -> Page {
    let who = page_auth(&shared, &headers).await?;
    let seq = last_seq(&shared).await;
    let (queued, stats, labs) = shared
        .store
        .read(|c| {
            let labs: Vec<String> = crate::store::labs::list_labs(c)?
                .into_iter()
                .filter(|l| l.revoked_at.is_none())
                .map(|l| l.name)
                .collect();
            Ok((
                crate::store::jobs::queued_jobs(c)?,
                crate::store::jobs::job_stats(c)?,
                labs,
            ))
        })
        .await
        .map_err(fail)?;
    let mut jobs = Vec::new();
    for job in queued.iter().take(SHOWN) {
        let verdicts = shared.dispatcher.explain(job, &labs).await;
        let sig = crate::store::jobs::signature(job);
        let estimate = stats
            .iter()
            .filter(|((s, _), _)| *s == sig)
            .map(|(_, s)| s.wait_ms)
            .fold(None, |m: Option<f64>, w| Some(m.map_or(w, |m| m.min(w))));
        let why = if labs.is_empty() {
            Why::Text("no lab has registered")
        } else if verdicts.iter().any(|v| v.eligible) {
            Why::Text("placeable now: waiting for an agent to take it")
        } else {
            Why::Labs(
                verdicts
                    .iter()
                    .map(|v| Verdict {
                        lab: v.lab.clone(),
                        reasons: v.reasons.join("; "),
                    })
                    .collect(),
            )
        };
        let c = &job.criteria;
        let wants = [
            c.device_type.as_deref().map(|d| format!("device type {d}")),
            c.arch.as_deref().map(|a| format!("arch {a}")),
            c.driver.as_deref().map(|d| format!("driver {d}")),
        ]
        .into_iter()
        .flatten()
        .chain(c.tags.iter().map(|t| format!("tag {t}")))
        .chain(c.features.iter().map(|f| format!("feature {f}")))
        .chain(c.properties.iter().map(|(k, v)| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(", ");
        jobs.push(Job {
            id: job.id.0,
            name: job.spec.name.clone(),
            wants: if wants.is_empty() {
                "any device".into()
            } else {
                wants
            },
            queued: (&job.queued_at).into(),
            estimate: estimate.map(secs).unwrap_or_else(|| "unknown".into()),
            why,
        });
    }
    Ok(show(
        "queue.html",
        "Queue",
        &who,
        seq,
        minijinja::context! { pending => queued.len(), jobs => jobs },
    ))
}
