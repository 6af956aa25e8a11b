//! Health checks: a small job of agent.yaml's `health.checks` that the agent runs itself on
//! a device, through the device's own driver (power, boot, login, commands), at agent
//! start, every `health.interval`, after an admin's resume and after a quarantine. A device
//! whose check is due is not offered until the check has run; a passing check makes it
//! good, a failing one bad with the reason. The outcome and the log of the last check of
//! each device are kept in `STATE_DIR/health/DEVICE/` (`result.json`, `console.log`).

use super::Agent;
use super::job::{make_parser, merge_report};
use crate::devices::Device;
use crate::driver::{JobContext, Outcome};
use crate::health::HealthCheck;
use crate::joblog::JobLog;
use labwire_common::{NodeResult, TestNode};
use labwire_proto::v1;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Health checks run as jobs with negative ids, one per check, so that what a driver keys by
/// job (a TFTP folder) never meets a real job's.
static NEXT_ID: AtomicI64 = AtomicI64::new(-1);

/// An admin resumed `device`. With a health check, its streak starts over and the check
/// runs next (the device stays bad until it passes); without, it is good again at once.
/// Returns whether the device's health changed.
pub(super) fn resumed(agent: &Agent, device: &str) -> bool {
    let device_type = agent
        .device(device)
        .map(|d| d.info.device_type.clone())
        .unwrap_or_default();
    if agent.cfg.health.check_for(device, &device_type).is_none() {
        return agent.health_book().resume(device);
    }
    tracing::info!(
        device,
        "device resumed by an admin; running its health check"
    );
    agent.lock().checks_due.insert(device.to_string());
    agent.bump();
    agent.health_book().resume_pending_check(device)
}

/// Runs the checks as they fall due, until the agent drains.
pub(super) async fn check_loop(agent: Arc<Agent>) {
    let mut running: HashSet<String> = HashSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The devices checked since the agent started (a device a source finds later is
    // checked when first seen).
    let mut seen: HashSet<String> = HashSet::new();
    let interval = agent.cfg.health.interval;
    loop {
        let devices = agent.lock().devices.clone();
        let now = now_secs();
        let mut newly_due = false;
        for d in &devices {
            let name = &d.info.name;
            let Some(check) = agent.cfg.health.check_for(name, &d.info.device_type) else {
                continue;
            };
            if running.contains(name) {
                continue;
            }
            let last = agent.health_book().get(name).last_check;
            let periodic = !interval.is_zero()
                && now.saturating_sub(last) >= i64::try_from(interval.as_secs()).unwrap_or(0);
            let claimed = {
                let mut st = agent.lock();
                if seen.insert(name.clone()) || periodic {
                    newly_due |= st.checks_due.insert(name.clone());
                }
                if !st.checks_due.contains(name)
                    || !st.reservations_known
                    || st.reserved.contains(name)
                {
                    false
                } else {
                    match st.devs.get_mut(name) {
                        Some(s) if s.busy == 0 && !s.polling => {
                            s.busy += 1;
                            true
                        }
                        _ => false,
                    }
                }
            };
            if claimed {
                running.insert(name.clone());
                let (agent2, d2, c2, tx) =
                    (agent.clone(), d.clone(), check.clone(), done_tx.clone());
                tokio::spawn(async move {
                    run_check(&agent2, &d2, &c2).await;
                    let _ = tx.send(d2.info.name.clone());
                });
            }
        }
        if newly_due {
            // Ends the open requests for work that offer a device now due.
            agent.bump();
        }
        tokio::select! {
            Some(name) = done_rx.recv() => {
                running.remove(&name);
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = agent.draining.cancelled() => break,
        }
    }
}

/// Runs one check on a device the loop claimed (counted busy), records its outcome and
/// frees the device.
async fn run_check(agent: &Agent, device: &Arc<Device>, check: &HealthCheck) {
    let name = &device.info.name;
    tracing::info!(device = %name, "health check starting");
    let started = now_secs();
    let dir = agent
        .cfg
        .state_dir
        .join("health")
        .join(labwire_common::names::clean(name).as_ref());
    let outcome = check_outcome(agent, device, check, &dir).await;
    let failure = failure_reason(&outcome);
    let ended = now_secs();
    let record = serde_json::json!({
        "device": name,
        "device_type": device.info.device_type,
        "started": started,
        "ended": ended,
        "passed": failure.is_none(),
        "result": outcome.result.to_string(),
        "error_code": outcome.error_code.as_ref().map(|c| c.to_string()),
        "error_msg": outcome.error_msg,
        "reason": failure,
    });
    if let Err(e) = std::fs::write(dir.join("result.json"), record.to_string()) {
        tracing::error!(device = %name, error = %e, "cannot record the health check");
    }
    match &failure {
        None => tracing::info!(device = %name, "health check passed"),
        Some(r) => tracing::warn!(device = %name, reason = %r, "health check failed"),
    }
    agent.health_book().check_ended(name, failure, ended);
    {
        let mut st = agent.lock();
        st.checks_due.remove(name);
        if let Some(s) = st.devs.get_mut(name) {
            s.busy = s.busy.saturating_sub(1);
        }
    }
    // The last check's time goes out with the device list even when the health is the same.
    agent.health_changed();
}

/// Runs the check's job through the device's driver and its log through the parser.
async fn check_outcome(
    agent: &Agent,
    device: &Arc<Device>,
    check: &HealthCheck,
    dir: &std::path::Path,
) -> Outcome {
    let spec = v1::JobSpec {
        name: format!("health-check-{}", device.info.name),
        params: check.params.clone().into_iter().collect(),
        artifacts: check
            .artifacts
            .iter()
            .map(|(role, url)| {
                (
                    role.clone(),
                    v1::Artifact {
                        url: url.clone(),
                        sha256: String::new(),
                    },
                )
            })
            .collect(),
        commands: check.commands.clone(),
        timeout_seconds: u32::try_from(check.timeout.as_secs()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    let infra = |msg: String| Outcome::infra(labwire_common::ErrorCode::Infrastructure, msg);
    let _ = std::fs::remove_dir_all(dir);
    if let Err(e) = crate::state::private_dir(dir) {
        return infra(format!("cannot create {}: {e:#}", dir.display()));
    }
    let parser = match make_parser(&spec) {
        Ok(p) => p,
        Err(e) => return infra(e),
    };
    let log = match JobLog::local(dir, parser) {
        Ok(l) => l.with_secrets(&device.secrets),
        Err(e) => return infra(format!("cannot create the check's log: {e}")),
    };
    let cancel = CancellationToken::new();
    let stop = agent.stop.clone();
    let guard = cancel.clone();
    let watcher = tokio::spawn(async move {
        stop.cancelled().await;
        guard.cancel();
    });
    let mut ctx = JobContext {
        job: NEXT_ID.fetch_sub(1, Ordering::Relaxed),
        attempt: 1,
        spec,
        dir: dir.to_path_buf(),
        log,
        cancel,
        timeout: check.timeout,
        artifacts: Default::default(),
        left_on: false,
    };
    let mut outcome = device.driver.run(&mut ctx).await;
    watcher.abort();
    if let Some(report) = ctx.log.finish_parse() {
        merge_report(&mut outcome, report);
    }
    ctx.log.finish();
    outcome
}

/// Why a check failed (its error code and message, or the tests that failed), or None when
/// it passed.
fn failure_reason(o: &Outcome) -> Option<String> {
    if o.result == NodeResult::Pass && o.error_code.is_none() {
        return None;
    }
    let why = match (&o.error_code, &o.error_msg) {
        (Some(code), msg) => format!(
            "{code}: {}",
            labwire_common::names::shorten(msg.as_deref().unwrap_or(""), 200)
        ),
        (None, _) => {
            let mut failed = Vec::new();
            collect_failed(&o.tests, "", &mut failed);
            if failed.is_empty() {
                format!("result {}", o.result)
            } else {
                format!("{} failed", failed.join(", "))
            }
        }
    };
    Some(format!("health check failed: {why}"))
}

fn collect_failed(tests: &[TestNode], prefix: &str, out: &mut Vec<String>) {
    for t in tests {
        let path = if prefix.is_empty() {
            t.name.clone()
        } else {
            format!("{prefix}.{}", t.name)
        };
        if t.tests.is_empty() {
            if t.result == NodeResult::Fail && out.len() < 5 {
                out.push(path);
            }
        } else {
            collect_failed(&t.tests, &path, out);
        }
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use labwire_common::ErrorCode;

    #[test]
    fn the_reason_names_the_error_code_or_the_failing_commands() {
        let o = Outcome::infra(ErrorCode::KernelPanic, "Kernel panic - not syncing");
        assert_eq!(
            failure_reason(&o).as_deref(),
            Some("health check failed: kernel_panic: Kernel panic - not syncing")
        );
        let mut o = Outcome::finished(NodeResult::Fail);
        o.tests.push(TestNode {
            name: "command-2".into(),
            result: NodeResult::Fail,
            tests: Vec::new(),
            log_excerpt: None,
            measurement: None,
            units: None,
            error: None,
        });
        assert_eq!(
            failure_reason(&o).as_deref(),
            Some("health check failed: command-2 failed")
        );
        assert_eq!(failure_reason(&Outcome::finished(NodeResult::Pass)), None);
    }
}
