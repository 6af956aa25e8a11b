//! One job attempt: the job folder, the journal entry and the start, the driver's run with
//! the job's log and parser, and the result queued in the outbox; and the jobs an earlier run
//! of the agent left unfinished.

use super::{Agent, RunningJob};
use crate::devices::Device;
use crate::driver::{JobContext, Outcome};
use crate::joblog::JobLog;
use crate::outbox::Item;
use crate::sources;
use labwire_common::{ErrorCode, NodeResult};
use labwire_proto::{convert, v1};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Jobs journalled by an earlier run of the agent and not finished then. A job that goes on
/// without the agent (a LAVA job) is returned with the device of its source that takes it
/// back, to be followed again. The others died with that run: each is reported
/// `incomplete` with `error_code=agent_restart`, and its device is brought back to a known
/// state (a board is powered off).
pub(super) async fn recover_journal(
    agent: &Agent,
    sources: &[Arc<dyn sources::DeviceSource>],
) -> anyhow::Result<Vec<(crate::outbox::JournalEntry, Arc<Device>)>> {
    let mut resumed = Vec::new();
    for e in agent.outbox.journal()? {
        if e.finished {
            continue;
        }
        let dir = job_dir(agent, e.job, e.attempt);
        if let Some(d) = sources.iter().find_map(|s| s.resume(&e.device, &dir)) {
            tracing::info!(job = e.job, attempt = e.attempt, device = %e.device, "job still running on its back end; following it again");
            resumed.push((e, d));
            continue;
        }
        if let Some(d) = agent.device(&e.device)
            && let Err(err) = d.driver.recover().await
        {
            tracing::error!(device = %e.device, error = %err, "could not reset the device after a restart");
        }
        tracing::warn!(job = e.job, attempt = e.attempt, device = %e.device, "job interrupted by an agent restart; reporting it incomplete");
        // The log as the killed run wrote it, whole: the outbox may lack its last moment.
        let log_length = crate::joblog::resend_after_restart(
            &dir,
            &agent.outbox,
            e.job,
            e.attempt,
            "the agent restarted while the job ran; the log ends here",
        )
        .unwrap_or_else(|err| {
            tracing::error!(job = e.job, error = %err, "cannot send the interrupted job's log");
            0
        });
        let report = v1::ReportResultRequest {
            job: Some(v1::JobRef {
                job: e.job,
                attempt: e.attempt,
            }),
            result: v1::NodeResult::Incomplete as i32,
            error_code: ErrorCode::AgentRestart.to_string(),
            error_msg: format!("the agent restarted while the job ran on `{}`", e.device),
            log_length,
            ..Default::default()
        };
        agent.outbox.push(e.job, e.attempt, Item::Result(report))?;
    }
    Ok(resumed)
}

/// The folder of a job attempt.
pub(super) fn job_dir(agent: &Agent, job: i64, attempt: i32) -> std::path::PathBuf {
    crate::state::job_dir(&agent.cfg.state_dir, job, attempt)
}

/// Runs a job on a device already counted busy for it (`resume`: a job an earlier run of
/// the agent started, followed again), and frees the device when it ends.
pub(super) fn spawn_job(
    agent: &Arc<Agent>,
    jr: v1::JobRef,
    spec: v1::JobSpec,
    device: Arc<Device>,
    resume: bool,
    jobs: &mut JoinSet<()>,
) {
    let cancel = CancellationToken::new();
    agent.lock().running.insert(
        (jr.job, jr.attempt),
        RunningJob {
            cancel: cancel.clone(),
        },
    );
    let span = tracing::info_span!("job", job = jr.job, attempt = jr.attempt, device = %device.info.name, lab = %agent.cfg.lab);
    let agent2 = agent.clone();
    jobs.spawn(
        async move {
            run_job(&agent2, jr.job, jr.attempt, spec, &device, cancel, resume).await;
            {
                let mut st = agent2.lock();
                st.running.remove(&(jr.job, jr.attempt));
                let name = &device.info.name;
                if let Some(s) = st.devs.get_mut(name) {
                    s.busy = s.busy.saturating_sub(1);
                    s.last_used = Some(Instant::now());
                }
                // A device removed by a reload while it ran is forgotten now.
                if !st.devices.iter().any(|d| &d.info.name == name)
                    && st.devs.get(name).is_some_and(|s| s.busy == 0 && !s.polling)
                {
                    st.devs.remove(name);
                }
            }
            agent2.bump();
        }
        .instrument(span),
    );
}

/// Runs one job attempt on a device and queues its result. With `resume`, the attempt was
/// started by an earlier run of the agent (journalled, its start sent): the driver follows
/// it again and its log is written again from the start (the coordinator keeps each byte
/// offset once).
pub(super) async fn run_job(
    agent: &Agent,
    job: i64,
    attempt: i32,
    spec: v1::JobSpec,
    device: &Arc<Device>,
    cancel: CancellationToken,
    resume: bool,
) {
    tracing::info!(name = %spec.name, resume, "job starting");
    let started = Instant::now();
    let push = |item: Item| {
        if let Err(e) = agent.outbox.push(job, attempt, item) {
            tracing::error!(error = %e, "cannot write to the outbox");
        }
    };
    let dir = job_dir(agent, job, attempt);
    if resume {
        let _ = std::fs::remove_file(dir.join("console.log"));
    } else {
        if let Err(e) = agent
            .outbox
            .journal_add(job, attempt, &device.info.name, &spec)
        {
            tracing::error!(error = %e, "cannot journal the job");
        }
        push(Item::Start(v1::StartJobRequest {
            session: agent.lock().session.clone().unwrap_or_default(),
            job: Some(v1::JobRef { job, attempt }),
            device: device.info.name.clone(),
        }));
    }
    let parser = match make_parser(&spec) {
        Ok(p) => p,
        Err(e) => {
            push(Item::Result(v1::ReportResultRequest {
                job: Some(v1::JobRef { job, attempt }),
                result: v1::NodeResult::Incomplete as i32,
                error_code: ErrorCode::InvalidJob.to_string(),
                error_msg: e,
                ..Default::default()
            }));
            return;
        }
    };
    let outcome = match crate::state::private_dir(&dir)
        .map_err(|e| std::io::Error::other(format!("{e:#}")))
        .and_then(|_| JobLog::create(&dir, agent.outbox.clone(), job, attempt, parser))
        .map(|log| log.with_secrets(&device.secrets))
    {
        Err(e) => (
            Outcome::infra(
                ErrorCode::Infrastructure,
                format!("cannot create the job folder {}: {e}", dir.display()),
            ),
            0,
        ),
        Ok(log) => {
            let timeout = if spec.timeout_seconds > 0 {
                Duration::from_secs(u64::from(spec.timeout_seconds))
            } else {
                agent.lock().limits.job_timeout
            };
            let mut ctx = JobContext {
                job,
                attempt,
                spec: spec.clone(),
                dir: dir.clone(),
                log,
                cancel,
                timeout,
                artifacts: Default::default(),
                left_on: false,
            };
            let mut outcome = if resume {
                device.driver.resume(&mut ctx).await
            } else {
                device.driver.run(&mut ctx).await
            };
            if let Some(report) = ctx.log.finish_parse() {
                merge_report(&mut outcome, report);
            }
            if ctx.left_on {
                if outcome.result == NodeResult::Fail && outcome.error_code.is_none() {
                    ctx.log.note("hold on failure: the board stays powered and logged in, reserved for the submitter");
                    tracing::info!(device = %device.info.name, "job failed; its board is held for its submitter");
                    agent.hold(&device.info.name);
                } else if let Err(e) = device.driver.recover().await {
                    ctx.log.note(&format!("power off: {e}"));
                    tracing::error!(device = %device.info.name, error = %e, "power off failed");
                }
            }
            ctx.log.finish();
            (outcome, ctx.log.len())
        }
    };
    let (o, log_length) = outcome;
    let mut data = o.data.clone();
    data.insert("device".into(), device.info.name.clone().into());
    data.insert("device_type".into(), device.info.device_type.clone().into());
    // A driver that knows better (LAVA's own start and end times, which also hold after an
    // agent restart) has set it already.
    data.entry("duration_ms")
        .or_insert_with(|| (started.elapsed().as_millis() as u64).into());
    tracing::info!(result = %o.result, error_code = %o.error_code.as_ref().map_or("", |c| c.as_str()), "job finished");
    let quarantine_after = agent.cfg.health.quarantine_after;
    let error = o
        .error_code
        .as_ref()
        .map(|c| (c, o.error_msg.as_deref().unwrap_or("")));
    if agent
        .health_book()
        .job_ended(&device.info.name, error, quarantine_after)
    {
        // A quarantined device with a health check is checked at once: it comes back
        // only after a passing check.
        if !agent.health_book().get(&device.info.name).health.usable()
            && agent
                .cfg
                .health
                .check_for(&device.info.name, &device.info.device_type)
                .is_some()
        {
            agent.lock().checks_due.insert(device.info.name.clone());
        }
        agent.health_changed();
    }
    push(Item::Result(v1::ReportResultRequest {
        job: Some(v1::JobRef { job, attempt }),
        result: convert::result_to_proto(Some(o.result)) as i32,
        error_code: o.error_code.map(|c| c.to_string()).unwrap_or_default(),
        error_msg: o.error_msg.unwrap_or_default(),
        tests: o.tests.iter().map(convert::test_to_proto).collect(),
        data: Some(convert::map_to_struct(&data)),
        log_length,
    }));
}

/// The parser a job asks for (`spec.parser`: auto by default, `none` for none). The pattern
/// parser takes its expression from the job parameter `parser_pattern`.
pub(super) fn make_parser(
    spec: &v1::JobSpec,
) -> Result<Option<labwire_parsers::LogParser>, String> {
    use labwire_parsers::{Format, LogParser, ParserOptions, PatternSpec};
    let format = match spec.parser.as_str() {
        "" | "auto" => Format::Auto,
        "ktap" => Format::Ktap,
        "lava" => Format::Lava,
        "kmsg" => Format::Kmsg,
        "pattern" => Format::Pattern,
        "none" => return Ok(None),
        other => {
            return Err(format!(
                "parser `{other}` is not one of auto, ktap, lava, kmsg, pattern, none"
            ));
        }
    };
    let pattern = spec
        .params
        .get("parser_pattern")
        .map(|p| PatternSpec::new(p.clone()));
    let opts = ParserOptions {
        format,
        pattern,
        keep_tree: true,
        // Nobody drains results one by one (yet): don't queue them.
        progress: false,
    };
    LogParser::new(opts).map(Some).map_err(|e| e.to_string())
}

/// Adds the parser's results to the driver's outcome. Parsed test failures make the job
/// `fail`; a parsed test left incomplete (a crash, a cut log) makes it `incomplete` with
/// `error_code=test_incomplete`; an infrastructure failure the driver reported stays as it is.
pub(super) fn merge_report(outcome: &mut Outcome, report: labwire_parsers::ParseReport) {
    if !report.errors.is_empty() {
        let errors: Vec<serde_json::Value> = report
            .errors
            .iter()
            .take(20)
            .map(|e| serde_json::json!({"line": e.line, "message": e.message}))
            .collect();
        outcome.data.insert("parse_errors".into(), errors.into());
    }
    if report.tests.is_empty() {
        return;
    }
    let parsed = NodeResult::aggregate(report.tests.iter().map(|t| t.result));
    outcome.tests.extend(report.tests);
    if outcome.error_code.is_some() {
        return;
    }
    match parsed {
        NodeResult::Fail => outcome.result = NodeResult::Fail,
        NodeResult::Incomplete if outcome.result != NodeResult::Fail => {
            outcome.result = NodeResult::Incomplete;
            outcome.error_code = Some(ErrorCode::TestIncomplete);
            outcome.error_msg =
                Some("some tests did not complete (see the tests marked incomplete)".into());
        }
        _ => {}
    }
}
