//! The outbox sender: delivers the outbox in order (starts, log chunks, results), each item
//! removed only once the coordinator acknowledged it, with back-off while it cannot be
//! reached.
//!
//! A refusal for good is handled by what was refused, so that no job is left to run out its
//! lease (which would run it again on a board):
//! - a **result** the coordinator refuses (INVALID_ARGUMENT, FAILED_PRECONDITION: a tree it
//!   will not store) is replaced, in its place in the outbox, by the job's end as
//!   `incomplete` with `error_code=invalid_result`, the coordinator's reason as
//!   `error_msg`, no tests and the same log; if that is refused too (the lease is gone), the
//!   attempt's updates are dropped;
//! - a **log chunk** refused as INVALID_ARGUMENT is dropped alone (a gap in the log, said in
//!   the agent's log); the rest of the job still goes;
//! - anything else refused (the lease is gone, the job was withdrawn) drops the attempt's
//!   pending updates and stops the attempt if it still runs.

use super::Agent;
use crate::client::{backoff, is_transient};
use crate::outbox::Item;
use labwire_common::ErrorCode;
use labwire_proto::{convert, v1};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// Sends the outbox in order; each item is removed only once the coordinator acknowledged it.
pub(super) async fn send_outbox(agent: Arc<Agent>) {
    let mut failures = 0u32;
    loop {
        let next = match agent.outbox.peek() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                None
            }
        };
        let Some((id, item)) = next else {
            tokio::select! {
                _ = agent.outbox.added.notified() => continue,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = agent.stop.cancelled() => return,
            }
        };
        let co = &agent.coordinator;
        let (job, res) = match &item {
            Item::Start(r) => (
                r.job,
                co.call(|mut c| async move { c.start_job(r.clone()).await.map(|_| ()) })
                    .await,
            ),
            Item::Log(r) => (
                r.job,
                co.call(|mut c| async move { c.append_log(r.clone()).await.map(|_| ()) })
                    .await,
            ),
            Item::Result(r) => (
                r.job,
                co.call(|mut c| async move { c.report_result(r.clone()).await.map(|_| ()) })
                    .await,
            ),
        };
        match res {
            Ok(()) => {
                failures = 0;
                if let Err(e) = agent.outbox.ack(id, &item) {
                    tracing::error!(error = %e, "cannot remove a delivered item from the outbox");
                }
            }
            Err(s) if !is_transient(&s) && refused_for_good(&agent, id, &item, &s) => {}
            Err(s) if !is_transient(&s) => {
                let j = job.unwrap_or_default();
                tracing::warn!(job = j.job, attempt = j.attempt, code = ?s.code(), error = %s.message(), "the coordinator refused this job's update; dropping the job's pending updates");
                if let Err(e) = agent.outbox.drop_attempt(j.job, j.attempt) {
                    tracing::error!(error = %e, "cannot drop refused updates");
                }
                if let Some(r) = agent.lock().running.get(&(j.job, j.attempt)) {
                    r.cancel.cancel();
                }
            }
            Err(s) => {
                failures += 1;
                let wait = backoff(
                    failures,
                    Duration::from_millis(200),
                    Duration::from_secs(15),
                );
                tracing::debug!(code = ?s.code(), error = %s.message(), retry_in = ?wait, "outbox delivery failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = agent.stop.cancelled() => return,
                }
            }
        }
    }
}

/// Handles a refusal that has a better answer than dropping the attempt (see the module's
/// text); returns whether it did.
fn refused_for_good(agent: &Agent, id: i64, item: &Item, s: &tonic::Status) -> bool {
    match (item, s.code()) {
        (Item::Result(r), Code::InvalidArgument | Code::FailedPrecondition)
            if r.error_code != ErrorCode::InvalidResult.as_str() =>
        {
            let j = r.job.unwrap_or_default();
            tracing::warn!(job = j.job, attempt = j.attempt, code = ?s.code(), error = %s.message(), "the coordinator refused the job's result; reporting the job incomplete (invalid_result) with its log instead");
            let fallback = refused_result(r, s.message());
            if let Err(e) = agent.outbox.replace(id, &Item::Result(fallback)) {
                tracing::error!(error = %e, "cannot replace the refused result in the outbox");
                return false;
            }
            true
        }
        (Item::Log(l), Code::InvalidArgument) => {
            let j = l.job.unwrap_or_default();
            tracing::warn!(job = j.job, attempt = j.attempt, offset = l.offset, bytes = l.data.len(), error = %s.message(), "the coordinator refused a piece of the job's log; leaving a gap");
            if let Err(e) = agent.outbox.ack(id, item) {
                tracing::error!(error = %e, "cannot remove a refused log chunk from the outbox");
            }
            true
        }
        _ => false,
    }
}

/// Longest part of the coordinator's reason kept in `error_msg`.
const MAX_REASON: usize = 2000;

/// The report that replaces a refused result: the job ended `incomplete` with
/// `error_code=invalid_result` and the coordinator's reason, no tests, the same log length;
/// of the job's data only what the agent itself wrote (device, timings), plus what was
/// refused (the result, the error code and the number of tests).
pub(super) fn refused_result(r: &v1::ReportResultRequest, reason: &str) -> v1::ReportResultRequest {
    fn count(tests: &[v1::TestResult]) -> usize {
        tests.iter().map(|t| 1 + count(&t.tests)).sum()
    }
    let old = r
        .data
        .as_ref()
        .map(convert::struct_to_map)
        .unwrap_or_default();
    let mut data = serde_json::Map::new();
    for k in ["device", "device_type", "duration_ms", "exit_code"] {
        if let Some(v) = old.get(k).filter(|v| !v.is_object() && !v.is_array()) {
            data.insert(k.into(), v.clone());
        }
    }
    let result = convert::result_from_proto(r.result)
        .map(|n| n.to_string())
        .unwrap_or_default();
    data.insert(
        "refused_result".into(),
        serde_json::json!({
            "result": result,
            "error_code": r.error_code,
            "tests": count(&r.tests),
        }),
    );
    let mut reason: String = reason.chars().take(MAX_REASON).collect();
    if reason.is_empty() {
        reason = "no reason given".into();
    }
    v1::ReportResultRequest {
        job: r.job,
        result: v1::NodeResult::Incomplete as i32,
        error_code: ErrorCode::InvalidResult.to_string(),
        error_msg: format!("the coordinator refused the job's result: {reason}"),
        tests: Vec::new(),
        data: Some(convert::map_to_struct(&data)),
        log_length: r.log_length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_result_becomes_incomplete_with_the_reason_and_the_log() {
        let leaf = |n: &str| v1::TestResult {
            name: n.into(),
            ..Default::default()
        };
        let mut group = leaf("suite");
        group.tests = vec![leaf("a"), leaf("\u{a0}")];
        let mut data = serde_json::Map::new();
        data.insert("device".into(), "board-1".into());
        data.insert("duration_ms".into(), 1234.into());
        data.insert("parse_errors".into(), serde_json::json!([{"line": 1}]));
        let r = v1::ReportResultRequest {
            job: Some(v1::JobRef { job: 7, attempt: 2 }),
            result: v1::NodeResult::Fail as i32,
            error_code: String::new(),
            error_msg: String::new(),
            tests: vec![group],
            data: Some(convert::map_to_struct(&data)),
            log_length: 4096,
        };
        let f = refused_result(&r, "test name 2 of suite is empty");
        assert_eq!(f.job, r.job);
        assert_eq!(f.result, v1::NodeResult::Incomplete as i32);
        assert_eq!(f.error_code, "invalid_result");
        assert_eq!(
            f.error_msg,
            "the coordinator refused the job's result: test name 2 of suite is empty"
        );
        assert!(f.tests.is_empty());
        assert_eq!(f.log_length, 4096);
        let d = convert::struct_to_map(f.data.as_ref().unwrap());
        assert_eq!(d["device"], "board-1");
        assert_eq!(d["duration_ms"], 1234.0);
        assert!(!d.contains_key("parse_errors"));
        assert_eq!(d["refused_result"]["tests"], 3.0);
        assert_eq!(d["refused_result"]["result"], "fail");
        let long = "x".repeat(10_000);
        assert!(refused_result(&r, &long).error_msg.len() < 2100);
    }
}
