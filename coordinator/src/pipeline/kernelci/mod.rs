//! KernelCI interop on the coordinator's side: this installation joins KernelCI as a pull
//! lab (KernelCI's PULL_LABS runtime: kernelci-core `kernelci/runtime/pull_labs.py` and
//! `config/runtime/base/pull_labs.jinja2` at commit 69a285e, kernelci-pipeline
//! `doc/connecting-pull-lab.md` at commit e81bdeb).
//!
//! Two tasks run on the leader, like the scheduler:
//!
//! - the **follower** reads KernelCI's job events from a stored position (`GET
//!   events?kind=job&from=TIMESTAMP&recursive=true`). A job node of one of its runtimes
//!   that becomes `available` with a `job_definition` artifact is taken: the definition is
//!   fetched and turned into a labwire job ([`definition`]), queued through the job queue
//!   in the transaction that records the KernelCI job and moves the position, so a restart
//!   neither loses nor doubles it. A definition that cannot run here is recorded as refused
//!   and KernelCI hears why. A definition KernelCI's storage cannot serve now stops the
//!   follower at that event until it can (nothing behind it is skipped). A job node that
//!   ends on KernelCI's side while its labwire job runs (KernelCI's timeout) has the
//!   labwire job cancelled.
//! - the **callback poster** posts the results callback ([`callback`]) of every KernelCI
//!   job whose labwire job ended, woken by the coordinator's own event log. A failed post
//!   is tried again after `retry_min`, doubling up to `retry_max`, until KernelCI accepts
//!   it (a 4xx answer other than 401, 403, 408 and 429 says the callback itself is wrong:
//!   it is kept as `rejected` with the answer and not sent again); each try is written down before it is sent. Before each try, the poster reads
//!   KernelCI's node: a node that is `done` already (KernelCI took the callback before a
//!   crash let labwire write that down, or gave up on the job) gets no (second) callback.

pub(crate) mod callback;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod definition;

use crate::shared::SharedRef;
use crate::store::kernelci::{self as kstore, KciJob, KciStatus, KciTake, KciTaken};
use client::{KciClient, KciError};
use config::PullLabConfig;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// KernelCI's largest page of events with nodes.
const PAGE: usize = 1000;

/// Where callbacks may go: `callback_url`, else the API's origin; always ends with `/`.
pub(crate) fn callback_prefix(cfg: &PullLabConfig) -> String {
    let base = match &cfg.callback_url {
        Some(c) => c.clone(),
        None => match url::Url::parse(&cfg.api) {
            Ok(u) => u.origin().ascii_serialization(),
            Err(_) => cfg.api.clone(),
        },
    };
    if base.ends_with('/') {
        base
    } else {
        format!("{base}/")
    }
}

/// The callback tokens by runtime, read from their files.
pub(crate) fn callback_tokens(cfg: &PullLabConfig) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (i, r) in cfg.runtimes.iter().enumerate() {
        let t = std::fs::read_to_string(&r.callback_token_file).map_err(|e| {
            anyhow::anyhow!(
                "kernelci.pull_lab.runtimes[{i}].callback_token_file {}: {e}",
                r.callback_token_file.display()
            )
        })?;
        let t = t.trim().to_string();
        if t.is_empty() {
            anyhow::bail!(
                "kernelci.pull_lab.runtimes[{i}].callback_token_file {} is empty",
                r.callback_token_file.display()
            );
        }
        out.insert(r.name.clone(), t);
    }
    Ok(out)
}

/// Checks at start-up what the services need (the token files, the API URL), so that a bad
/// set-up fails the start, not the first callback.
pub(crate) fn check(cfg: &PullLabConfig) -> anyhow::Result<()> {
    callback_tokens(cfg)?;
    KciClient::new(cfg)?;
    Ok(())
}

/// Starts the follower and the callback poster; both stop when `stop` is cancelled.
pub(crate) fn start(
    shared: &SharedRef,
    cfg: &PullLabConfig,
    stop: &CancellationToken,
    set: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    let client = KciClient::new(cfg)?;
    let tokens = callback_tokens(cfg)?;
    set.spawn(follow(
        shared.clone(),
        cfg.clone(),
        client.clone(),
        stop.clone(),
    ));
    set.spawn(post_callbacks(
        shared.clone(),
        cfg.clone(),
        client,
        tokens,
        stop.clone(),
    ));
    Ok(())
}

/// KernelCI's time format for `from` (its event timestamps are naive ISO 8601, UTC).
fn kci_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// Sleeps `d` unless `stop` comes first; false when stopped.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}

fn backoff(cfg: &PullLabConfig, failures: u32) -> Duration {
    let f = 2u32.saturating_pow(failures.min(20));
    cfg.retry_min.saturating_mul(f).min(cfg.retry_max)
}

/// The follower: KernelCI's job events become labwire jobs (and cancels), exactly once.
async fn follow(shared: SharedRef, cfg: PullLabConfig, client: KciClient, stop: CancellationToken) {
    let runtimes: Vec<String> = cfg.runtimes.iter().map(|r| r.name.clone()).collect();
    let lookback = chrono::Duration::from_std(cfg.first_lookback).unwrap_or_default();
    let mut failures = 0u32;
    tracing::info!(api = %cfg.api, runtimes = ?runtimes, "following KernelCI as a pull lab");
    loop {
        let from = match shared.store.read(kstore::cursor).await {
            Ok(Some(c)) => c,
            Ok(None) => kci_time(chrono::Utc::now() - lookback),
            Err(e) => {
                tracing::error!(error = %e, "kernelci: cannot read the stored position; retrying");
                if !pause(backoff(&cfg, failures), &stop).await {
                    return;
                }
                failures += 1;
                continue;
            }
        };
        let page = match client.job_events(&from, PAGE).await {
            Ok(p) => p,
            Err(e) => {
                failures += 1;
                let wait = backoff(&cfg, failures);
                tracing::warn!(error = %e, retry_in = ?wait, "kernelci: cannot read KernelCI's events");
                if !pause(wait, &stop).await {
                    return;
                }
                continue;
            }
        };
        let full = page.len() >= PAGE;
        let mut ok = true;
        for ev in &page {
            if let Err(e) = handle(&shared, &cfg, &client, &runtimes, ev).await {
                failures += 1;
                let wait = backoff(&cfg, failures);
                tracing::warn!(error = %e, retry_in = ?wait, "kernelci: an event cannot be handled now; stopping there");
                ok = false;
                if !pause(wait, &stop).await {
                    return;
                }
                break;
            }
        }
        if ok {
            failures = 0;
            if !full && !pause(cfg.poll_interval, &stop).await {
                return;
            }
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// Handles one KernelCI event; an error means "not now": the position stays before it.
async fn handle(
    shared: &SharedRef,
    cfg: &PullLabConfig,
    client: &KciClient,
    runtimes: &[String],
    ev: &Value,
) -> Result<(), String> {
    let Some(ts) = text(ev, &["timestamp"]).map(str::to_string) else {
        tracing::warn!("kernelci: an event without a timestamp; ignored");
        return Ok(());
    };
    let node = ev.get("node").unwrap_or(&Value::Null);
    let id = text(ev, &["data", "id"])
        .or_else(|| text(node, &["id"]))
        .unwrap_or("");
    let runtime = text(ev, &["data", "data", "runtime"])
        .or_else(|| text(node, &["data", "runtime"]))
        .unwrap_or("");
    let state = text(ev, &["data", "state"])
        .or_else(|| text(node, &["state"]))
        .unwrap_or("");
    let mine = runtimes.iter().any(|r| r == runtime) && client::valid_node_id(id);
    let move_only = |ts: String| async move {
        shared
            .store
            .write(move |w| w.move_kernelci_cursor(&ts))
            .await
            .map_err(|e| e.to_string())
    };
    if !mine {
        return move_only(ts).await;
    }
    let (id, runtime) = (id.to_string(), runtime.to_string());
    let held = {
        let id = id.clone();
        shared
            .store
            .read(move |c| kstore::find(c, &id))
            .await
            .map_err(|e| e.to_string())?
    };
    match (state, held) {
        ("available", None) => {
            let Some(def_url) = text(node, &["artifacts", "job_definition"]) else {
                return move_only(ts).await;
            };
            let take_job = |job: Result<NewJobWithUrl, String>| {
                let fallback = format!("{}node/{id}", callback_prefix(cfg));
                let (job, url) = match job {
                    Ok((j, u)) => (Ok(j), u),
                    Err(why) => (Err(why), fallback),
                };
                (job, url)
            };
            let translated = match client.job_definition(def_url).await {
                Err(KciError::Transient(e)) => return Err(e),
                Err(KciError::Refused(e) | KciError::Unauthorized(e)) => Err(e),
                Ok(bytes) => definition::parse(&bytes).and_then(|d| {
                    let origin = definition::Origin {
                        kci_node: &id,
                        name: text(node, &["name"]).unwrap_or("kernelci-job"),
                        runtime: &runtime,
                        kernel_revision: node.get("data").and_then(|d| d.get("kernel_revision")),
                    };
                    definition::translate(cfg, &origin, &d).map(|t| (t.job, t.callback_url))
                }),
            };
            let (job, callback_url) = take_job(translated);
            let take = KciTake {
                kci_node: id.clone(),
                runtime: runtime.clone(),
                callback_url,
            };
            let taken = shared
                .queue
                .write(move |w| {
                    let r = w.take_kernelci_job(&take, job)?;
                    w.move_kernelci_cursor(&ts)?;
                    Ok(r)
                })
                .await
                .map_err(|e| e.to_string())?;
            match taken {
                KciTaken::Queued(n) => {
                    tracing::info!(kernelci_node = %id, job = %n.id, runtime = %runtime, "kernelci: took a job")
                }
                KciTaken::Refused(why) => {
                    tracing::warn!(kernelci_node = %id, runtime = %runtime, reason = %why, "kernelci: refused a job; KernelCI will hear why")
                }
                KciTaken::Before => {}
            }
            Ok(())
        }
        ("done", Some(k)) if matches!(k.status, KciStatus::Running | KciStatus::Refused) => {
            let result = text(ev, &["data", "result"]).unwrap_or("none").to_string();
            let reason = format!(
                "KernelCI ended its node {id} first (result {result}): it no longer wants this job"
            );
            let kci = id.clone();
            let cancelled = shared
                .queue
                .write_and_cancel("cancelled", move |w| {
                    let r = w.kernelci_cancel(&kci, &reason)?;
                    w.move_kernelci_cursor(&ts)?;
                    Ok(r)
                })
                .await
                .map_err(|e| e.to_string())?;
            if let Some(n) = cancelled {
                tracing::warn!(kernelci_node = %id, job = %n.id, "kernelci: KernelCI ended the job's node; job cancelled");
            }
            Ok(())
        }
        _ => move_only(ts).await,
    }
}

type NewJobWithUrl = (crate::store::NewJob, String);

/// Reads a job's whole log (the attempt that produced its result).
fn read_whole_log(
    c: &crate::store::Connection,
    job: crate::model::NodeId,
) -> crate::error::Result<Vec<u8>> {
    let Some(attempt) = crate::store::jobs::log_attempt(c, job)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    loop {
        let chunks = crate::store::jobs::read_log(c, job, attempt, out.len() as u64, 4 << 20)?;
        if chunks.is_empty() {
            return Ok(out);
        }
        for (off, data) in chunks {
            if off as usize == out.len() {
                out.extend_from_slice(&data);
            }
        }
        if out.len() > 4 * callback::MAX_LOG_BYTES {
            return Ok(out);
        }
    }
}

/// The callback of a due job, from the store.
async fn payload(shared: &SharedRef, k: &KciJob) -> crate::error::Result<Value> {
    let public = shared.config.public_url.clone();
    let Some(job) = k.job_node else {
        return Ok(callback::refused(k, &public));
    };
    let k2 = k.clone();
    shared
        .store
        .read(move |c| {
            let node = crate::store::nodes::get_node(c, job)?;
            let tree = kstore::result_tree(c, job, 200_000)?;
            let log = read_whole_log(c, job)?;
            Ok(callback::finished(&k2, &node, &tree, &log, &public))
        })
        .await
}

/// The callback poster: every due callback, tried until KernelCI accepts it.
async fn post_callbacks(
    shared: SharedRef,
    cfg: PullLabConfig,
    client: KciClient,
    tokens: HashMap<String, String>,
    stop: CancellationToken,
) {
    let mut seq = shared.store.last_seq();
    loop {
        let now = chrono::Utc::now();
        match shared
            .store
            .read(move |c| kstore::due_callbacks(c, now, 50))
            .await
        {
            Ok(due) => {
                for k in due {
                    if stop.is_cancelled() {
                        return;
                    }
                    post_one(&shared, &cfg, &client, &tokens, k).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "kernelci: cannot read the due callbacks"),
        }
        // Wake when a labwire job may have ended, when a retry comes due, or every 30 s.
        let next = shared.store.read(kstore::next_due).await.ok().flatten();
        let wait = next
            .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(30))
            .min(Duration::from_secs(30));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = seq.changed() => if r.is_err() { return; },
            _ = stop.cancelled() => return,
        }
    }
}

async fn post_one(
    shared: &SharedRef,
    cfg: &PullLabConfig,
    client: &KciClient,
    tokens: &HashMap<String, String>,
    k: KciJob,
) {
    let id = k.kci_node.clone();
    let Some(token) = tokens.get(&k.runtime) else {
        tracing::error!(kernelci_node = %id, runtime = %k.runtime, "kernelci: no callback token for this runtime any more (kernelci.pull_lab.runtimes); the callback waits");
        let next =
            chrono::Utc::now() + chrono::Duration::from_std(cfg.retry_max).unwrap_or_default();
        let i2 = id.clone();
        let _ = shared.store.write(move |w| w.kernelci_try(&i2, next)).await;
        return;
    };
    // KernelCI may have ended the node itself (its timeout), or taken this callback on an
    // earlier try that a crash kept labwire from writing down: then no callback is sent.
    // A node that cannot be read now (KernelCI's API down) does not stop the try.
    if let Ok(found) = client.node(&id).await {
        let done = match &found {
            None => Some("KernelCI has no such node any more"),
            Some(n) if text(n, &["state"]) == Some("done") => {
                Some("KernelCI's node is done already")
            }
            _ => None,
        };
        if let Some(why) = done {
            // Tried before and now done: KernelCI took it (or gave up in between).
            let taken = found.is_some() && k.tries > 0;
            let i2 = id.clone();
            let wrote = shared
                .store
                .write(move |w| {
                    if taken {
                        w.kernelci_posted(&i2)
                    } else {
                        w.kernelci_dropped(&i2)
                    }
                })
                .await;
            match wrote {
                Ok(()) => {
                    tracing::info!(kernelci_node = %id, tries = k.tries, "kernelci: no callback sent: {why}")
                }
                Err(e) => {
                    tracing::error!(kernelci_node = %id, error = %e, "kernelci: cannot write down that no callback is due")
                }
            }
            return;
        }
    }
    let wait = backoff(cfg, k.tries.max(0) as u32);
    let next = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
    let i2 = id.clone();
    if let Err(e) = shared.store.write(move |w| w.kernelci_try(&i2, next)).await {
        tracing::error!(kernelci_node = %id, error = %e, "kernelci: cannot note a callback try");
        return;
    }
    let body = match payload(shared, &k).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(kernelci_node = %id, error = %e, "kernelci: cannot build the callback; retrying later");
            return;
        }
    };
    match client.callback(&k.callback_url, token, &body).await {
        Ok(()) => {
            let i2 = id.clone();
            match shared.store.write(move |w| w.kernelci_posted(&i2)).await {
                Ok(()) => {
                    tracing::info!(kernelci_node = %id, tries = k.tries + 1, "kernelci: callback posted")
                }
                Err(e) => {
                    tracing::error!(kernelci_node = %id, error = %e, "kernelci: callback posted, but cannot write that down")
                }
            }
        }
        Err(KciError::Refused(e)) => {
            // The same body would be refused again: keep the answer, stop trying.
            tracing::error!(kernelci_node = %id, error = %e, "kernelci: KernelCI refused the callback itself; it is not sent again");
            let i2 = id.clone();
            if let Err(e) = shared
                .store
                .write(move |w| w.kernelci_rejected(&i2, &e))
                .await
            {
                tracing::error!(kernelci_node = %id, error = %e, "kernelci: cannot write down the refused callback");
            }
        }
        Err(e) => {
            tracing::warn!(kernelci_node = %id, error = %e, retry_in = ?wait, "kernelci: callback not accepted; trying again later");
            let (i2, msg) = (id.clone(), e.to_string());
            let _ = shared
                .store
                .write(move |w| w.kernelci_try_failed(&i2, &msg))
                .await;
        }
    }
}
