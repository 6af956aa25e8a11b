//! The agent daemon: registers with the coordinator, keeps its leases alive with heartbeats,
//! long-polls for work with the devices it has free, runs each job on its device's driver,
//! and delivers everything through the outbox. On shutdown it drains: stops pulling, lets
//! running jobs finish (up to `limits.drain_timeout`, then stops them), flushes the outbox.

use crate::client::{Coordinator, backoff, is_transient};
use crate::config::AgentConfig;
use crate::devices::{self, Device};
use crate::driver::{JobContext, Outcome};
use crate::joblog::JobLog;
use crate::outbox::{Item, Outbox};
use crate::sources;
use labwire_common::{ErrorCode, NodeResult};
use labwire_proto::{convert, v1};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Default)]
struct DevState {
    busy: usize,
    polling: bool,
    last_used: Option<Instant>,
}

struct RunningJob {
    cancel: CancellationToken,
}

#[derive(Default)]
struct State {
    /// The devices offered now: those of the config file, then those of the sources.
    devices: Vec<Arc<Device>>,
    /// The devices of the config file, as last loaded (SIGHUP reloads them).
    configured: Vec<Arc<Device>>,
    /// The devices each source found, by source name.
    discovered: std::collections::BTreeMap<String, Vec<Arc<Device>>>,
    /// `limits.max_jobs` of the config file, if set.
    max_jobs_cfg: Option<usize>,
    /// At most this many jobs at once.
    max_jobs: usize,
    /// The limits, as last loaded.
    limits: crate::config::Limits,
    /// The device list changed: advertise it with the next heartbeat.
    advertise: bool,
    session: Option<String>,
    heartbeat: Duration,
    devs: HashMap<String, DevState>,
    polls: usize,
    running: HashMap<(i64, i32), RunningJob>,
}

/// The running agent.
pub struct Agent {
    cfg: AgentConfig,
    outbox: Arc<Outbox>,
    /// The coordinator (its replicas, one of them current).
    coordinator: Coordinator,
    state: Mutex<State>,
    /// Bumped on every change of device or session state; the pull loop waits on it.
    changed: watch::Sender<u64>,
    /// Cancelled when the agent starts draining.
    draining: CancellationToken,
    /// Cancelled when the agent must stop everything now.
    stop: CancellationToken,
    /// Woken when a call found the session unknown: register again at once.
    session_lost: tokio::sync::Notify,
}

impl Agent {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn device(&self, name: &str) -> Option<Arc<Device>> {
        self.lock()
            .devices
            .iter()
            .find(|d| d.info.name == name)
            .cloned()
    }

    fn advertised(&self) -> Vec<v1::Device> {
        let st = self.lock();
        st.devices
            .iter()
            .map(|d| {
                let busy = st.devs.get(&d.info.name).is_some_and(|s| s.busy > 0);
                let mut p = convert::device_to_proto(&d.info, busy);
                p.count = d.count as u32;
                p
            })
            .collect()
    }

    fn free_slots(&self) -> u32 {
        let st = self.lock();
        let busy: usize = st.devs.values().map(|d| d.busy).sum();
        st.max_jobs.saturating_sub(busy) as u32
    }

    fn held_jobs(&self) -> Vec<v1::JobRef> {
        match self.outbox.journal() {
            Ok(j) => j
                .into_iter()
                .map(|e| v1::JobRef {
                    job: e.job,
                    attempt: e.attempt,
                })
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job journal");
                Vec::new()
            }
        }
    }

    /// Stops the listed attempts (the coordinator withdrew them) and forgets their results.
    fn withdraw(&self, jobs: &[v1::JobRef]) {
        for j in jobs {
            tracing::warn!(
                job = j.job,
                attempt = j.attempt,
                "the coordinator withdrew this job; stopping it"
            );
            if let Some(r) = self.lock().running.get(&(j.job, j.attempt)) {
                r.cancel.cancel();
            }
            if let Err(e) = self.outbox.drop_attempt(j.job, j.attempt) {
                tracing::error!(error = %e, "cannot drop a withdrawn job from the outbox");
            }
        }
    }
}

/// Runs the agent until `shutdown` is cancelled, then drains and returns.
/// With `reload_from`, SIGHUP reloads that config file's devices and limits.
pub async fn run(
    cfg: AgentConfig,
    reload_from: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let lib = cfg.library()?;
    let configured = devices::build(&cfg, &lib)?;
    let sources = sources::build(&cfg)?;
    let outbox = Arc::new(Outbox::open(&cfg.state_dir)?);
    let coordinator = Coordinator::connect(&cfg.coordinator)?;
    let (changed, _) = watch::channel(0);
    let mut state = State {
        configured,
        max_jobs_cfg: cfg.limits.max_jobs,
        limits: cfg.limits.clone(),
        ..Default::default()
    };
    install_devices(&mut state);
    let (n_devices, max_jobs) = (state.devices.len(), state.max_jobs);
    let agent = Arc::new(Agent {
        outbox,
        coordinator,
        state: Mutex::new(state),
        changed,
        draining: CancellationToken::new(),
        stop: CancellationToken::new(),
        session_lost: tokio::sync::Notify::new(),
        cfg,
    });
    let resumed = recover_journal(&agent, &sources).await?;
    tracing::info!(lab = %agent.cfg.lab, devices = n_devices, max_jobs, sources = sources.len(), "agent starting");
    for source in sources {
        tokio::spawn(follow_source(agent.clone(), source));
    }
    if let Some(path) = reload_from {
        tokio::spawn(reload_on_sighup(agent.clone(), path));
    }

    let sender = tokio::spawn(send_outbox(agent.clone()));
    let session = tokio::spawn(keep_session(agent.clone()));
    let mut jobs = JoinSet::new();
    let puller = tokio::spawn(pull_loop(agent.clone(), resumed));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    shutdown.cancelled().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("draining: no new jobs; waiting for running ones");
    agent.draining.cancel();
    agent.bump();
    if let Ok(js) = puller.await {
        jobs = js;
    }
    let drain_timeout = agent.lock().limits.drain_timeout;
    let drain = tokio::time::sleep(drain_timeout);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            r = jobs.join_next() => if r.is_none() { break },
            _ = &mut drain => {
                tracing::warn!(running = jobs.len(), "drain timeout: stopping the running jobs");
                for r in agent.lock().running.values() {
                    r.cancel.cancel();
                }
                while jobs.join_next().await.is_some() {}
                break;
            }
        }
    }
    // Last chance to deliver what is pending; what is left stays in the outbox for the next
    // start.
    let flushed = tokio::time::timeout(Duration::from_secs(15), async {
        while !agent.outbox.is_empty().unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if flushed.is_err() {
        tracing::warn!(
            pending = agent.outbox.len().unwrap_or(0),
            "outbox not empty at exit; it will be sent at the next start"
        );
    }
    agent.stop.cancel();
    let _ = sender.await;
    let _ = session.await;
    tracing::info!("agent stopped");
    Ok(())
}

/// Jobs journalled by an earlier run of the agent and not finished then. A job that goes on
/// without the agent (a LAVA job) is returned with the device of its source that takes it
/// back, to be followed again. The others died with that run: each is reported
/// `incomplete` with `error_code=agent_restart`, and its device is brought back to a known
/// state (a board is powered off).
async fn recover_journal(
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
        if let Some(d) = agent.device(&e.device) {
            if let Err(err) = d.driver.recover().await {
                tracing::error!(device = %e.device, error = %err, "could not reset the device after a restart");
            }
        }
        tracing::warn!(job = e.job, attempt = e.attempt, device = %e.device, "job interrupted by an agent restart; reporting it incomplete");
        let report = v1::ReportResultRequest {
            job: Some(v1::JobRef {
                job: e.job,
                attempt: e.attempt,
            }),
            result: v1::NodeResult::Incomplete as i32,
            error_code: ErrorCode::AgentRestart.to_string(),
            error_msg: format!("the agent restarted while the job ran on `{}`", e.device),
            ..Default::default()
        };
        agent.outbox.push(e.job, e.attempt, Item::Result(report))?;
    }
    Ok(resumed)
}

/// The folder of a job attempt.
fn job_dir(agent: &Agent, job: i64, attempt: i32) -> std::path::PathBuf {
    agent
        .cfg
        .state_dir
        .join("jobs")
        .join(format!("{job}-{attempt}"))
}

/// Registers, then heartbeats; registers again whenever the coordinator forgot the session.
async fn keep_session(agent: Arc<Agent>) {
    let mut failures = 0u32;
    loop {
        let session = agent.lock().session.clone();
        let wait = match session {
            None => {
                let req = v1::RegisterRequest {
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    devices: agent.advertised(),
                    free_slots: agent.free_slots(),
                    held_jobs: agent.held_jobs(),
                };
                match agent
                    .coordinator
                    .call(|mut c| async move { c.register(req).await })
                    .await
                {
                    Ok(resp) => {
                        let r = resp.into_inner();
                        failures = 0;
                        if r.lab != agent.cfg.lab {
                            tracing::warn!(config = %agent.cfg.lab, certificate = %r.lab, "the certificate names another lab than the config; the certificate wins");
                        }
                        agent.withdraw(&r.lost_jobs);
                        let hb = Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(100)));
                        {
                            let mut st = agent.lock();
                            st.session = Some(r.session.clone());
                            st.heartbeat = hb;
                        }
                        agent.bump();
                        tracing::info!(lab = %r.lab, session = %r.session, url = %agent.coordinator.url(), "registered with the coordinator");
                        hb
                    }
                    Err(s) => {
                        failures += 1;
                        let wait = backoff(
                            failures,
                            Duration::from_millis(500),
                            Duration::from_secs(30),
                        );
                        tracing::warn!(code = ?s.code(), error = %s.message(), retry_in = ?wait, "cannot register with the coordinator");
                        wait
                    }
                }
            }
            Some(session) => {
                let running = agent.held_jobs();
                let advertise = std::mem::take(&mut agent.lock().advertise);
                let req = v1::HeartbeatRequest {
                    session,
                    running,
                    devices: if advertise {
                        agent.advertised()
                    } else {
                        Vec::new()
                    },
                    free_slots: agent.free_slots(),
                    draining: agent.draining.is_cancelled(),
                };
                match agent
                    .coordinator
                    .call(|mut c| async move { c.heartbeat(req).await })
                    .await
                {
                    Ok(resp) => {
                        failures = 0;
                        agent.withdraw(&resp.into_inner().cancel);
                    }
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        tracing::info!("the coordinator forgot this session; registering again");
                        agent.lock().session = None;
                        agent.bump();
                        continue;
                    }
                    Err(s) => {
                        failures += 1;
                        tracing::warn!(code = ?s.code(), error = %s.message(), "heartbeat failed");
                    }
                }
                agent.lock().heartbeat
            }
        };
        // The session loop never waits longer than 30 s, so systemd's watchdog (WatchdogSec in
        // the unit) hears from a healthy agent well within its period.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = agent.session_lost.notified() => {}
            _ = agent.stop.cancelled() => return,
        }
    }
}

/// Sends the outbox in order; each item is removed only once the coordinator acknowledged it.
async fn send_outbox(agent: Arc<Agent>) {
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

/// Keeps a long poll open for every free device (polls carry disjoint device sets) while
/// the agent has free slots; returns the running jobs when draining starts.
async fn pull_loop(
    agent: Arc<Agent>,
    resumed: Vec<(crate::outbox::JournalEntry, Arc<Device>)>,
) -> JoinSet<()> {
    let mut jobs: JoinSet<()> = JoinSet::new();
    for (e, device) in resumed {
        agent
            .lock()
            .devs
            .entry(device.info.name.clone())
            .or_default()
            .busy += 1;
        let jr = v1::JobRef {
            job: e.job,
            attempt: e.attempt,
        };
        spawn_job(&agent, jr, e.spec, device, true, &mut jobs);
    }
    let mut polls: JoinSet<(Option<v1::Assignment>, Vec<String>)> = JoinSet::new();
    let mut changed = agent.changed.subscribe();
    loop {
        if agent.draining.is_cancelled() {
            break;
        }
        // Start a poll for the free devices not yet covered by one.
        let start = {
            let mut guard = agent.lock();
            let st = &mut *guard;
            let busy: usize = st.devs.values().map(|d| d.busy).sum();
            match st.session.clone() {
                Some(session) if busy + st.polls < st.max_jobs => {
                    let mut free: Vec<(&Arc<Device>, Option<Instant>, usize)> = st
                        .devices
                        .iter()
                        .filter_map(|d| {
                            let s = st.devs.get(&d.info.name)?;
                            (!s.polling && s.busy < d.max_jobs && d.info.health.usable())
                                .then_some((d, s.last_used, s.busy))
                        })
                        .collect();
                    // Idle first, then least recently used.
                    free.sort_by_key(|(_, last, busy)| (*busy, *last));
                    let names: Vec<String> =
                        free.iter().map(|(d, _, _)| d.info.name.clone()).collect();
                    if names.is_empty() {
                        None
                    } else {
                        for n in &names {
                            if let Some(s) = st.devs.get_mut(n) {
                                s.polling = true;
                            }
                        }
                        st.polls += 1;
                        Some((session, names))
                    }
                }
                _ => None,
            }
        };
        if let Some((session, names)) = start {
            let a = agent.clone();
            polls.spawn(async move { poll(a, session, names).await });
            continue;
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = agent.draining.cancelled() => {}
            Some(done) = polls.join_next() => {
                if let Ok((assignment, names)) = done {
                    if let Some(a) = assignment {
                        start_job(&agent, a, &names, &mut jobs);
                    }
                    release_poll(&agent, &names);
                }
            }
            Some(_) = jobs.join_next() => {}
        }
    }
    // Draining: outstanding polls are abandoned; a job that raced in is handed back.
    polls.abort_all();
    while let Some(done) = polls.join_next().await {
        if let Ok((Some(a), _)) = done {
            reject(&agent, &a, "the agent is shutting down").await;
        }
    }
    jobs
}

/// One long poll. Returns the assignment (if any) and the devices it covered, which are
/// released for the next poll.
async fn poll(
    agent: Arc<Agent>,
    session: String,
    names: Vec<String>,
) -> (Option<v1::Assignment>, Vec<String>) {
    let req = v1::AcquireJobRequest {
        session,
        free_devices: names.clone(),
        wait_ms: agent.lock().limits.poll_wait.as_millis() as u32,
    };
    let res = agent
        .coordinator
        .call(|mut c| async move { c.acquire_job(req).await })
        .await;
    let out = match res {
        Ok(r) => r.into_inner().assignment,
        Err(s) => {
            if s.code() == tonic::Code::FailedPrecondition {
                agent.lock().session = None;
                agent.session_lost.notify_one();
            } else {
                tracing::warn!(code = ?s.code(), error = %s.message(), "polling for work failed");
            }
            tokio::time::sleep(backoff(
                2,
                Duration::from_millis(500),
                Duration::from_secs(5),
            ))
            .await;
            None
        }
    };
    (out, names)
}

/// Gives a finished poll's devices back to the pull loop. Called after a job it brought was
/// started, so that the job's device is busy before it could be offered again.
fn release_poll(agent: &Agent, names: &[String]) {
    {
        let mut st = agent.lock();
        for n in names {
            if let Some(s) = st.devs.get_mut(n) {
                s.polling = false;
            }
        }
        st.polls = st.polls.saturating_sub(1);
    }
    agent.bump();
}

async fn reject(agent: &Agent, a: &v1::Assignment, reason: &str) {
    let session = agent.lock().session.clone().unwrap_or_default();
    let req = v1::RejectJobRequest {
        session,
        job: a.job,
        reason: reason.to_string(),
    };
    if let Err(s) = agent
        .coordinator
        .call(|mut c| async move { c.reject_job(req).await })
        .await
    {
        tracing::warn!(error = %s.message(), "could not hand a job back; its lease will expire");
    }
}

/// Picks a device for an assignment and starts the job, or hands it back.
fn start_job(agent: &Arc<Agent>, a: v1::Assignment, polled: &[String], jobs: &mut JoinSet<()>) {
    let Some(jr) = a.job else { return };
    let spec = a.spec.clone().unwrap_or_default();
    let criteria = convert::criteria_from_proto(&spec.criteria.clone().unwrap_or_default());
    let chosen = {
        let mut guard = agent.lock();
        let st = &mut *guard;
        let free: Vec<&Arc<Device>> = polled
            .iter()
            .filter_map(|n| st.devices.iter().find(|d| &d.info.name == n))
            .filter(|d| {
                st.devs
                    .get(&d.info.name)
                    .is_some_and(|s| s.busy < d.max_jobs)
            })
            .collect();
        let chosen = devices::choose(&criteria, &a.device, &free).cloned();
        if let Some(d) = &chosen
            && let Some(s) = st.devs.get_mut(&d.info.name)
        {
            s.busy += 1;
        }
        chosen
    };
    let Some(device) = chosen else {
        let a2 = agent.clone();
        jobs.spawn(async move {
            reject(
                &a2,
                &a,
                "no free device of this lab matches the job's criteria any more",
            )
            .await;
        });
        return;
    };
    spawn_job(agent, jr, spec, device, false, jobs);
}

/// Runs a job on a device already counted busy for it (`resume`: a job an earlier run of
/// the agent started, followed again), and frees the device when it ends.
fn spawn_job(
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
async fn run_job(
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
    let outcome = match std::fs::create_dir_all(&dir)
        .and_then(|_| JobLog::create(&dir, agent.outbox.clone(), job, attempt, parser))
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
            };
            let mut outcome = if resume {
                device.driver.resume(&mut ctx).await
            } else {
                device.driver.run(&mut ctx).await
            };
            if let Some(report) = ctx.log.finish_parse() {
                merge_report(&mut outcome, report);
            }
            ctx.log.flush();
            (outcome, ctx.log.len())
        }
    };
    let (o, log_length) = outcome;
    let mut data = o.data.clone();
    data.insert("device".into(), device.info.name.clone().into());
    data.insert("device_type".into(), device.info.device_type.clone().into());
    data.insert(
        "duration_ms".into(),
        (started.elapsed().as_millis() as u64).into(),
    );
    tracing::info!(result = %o.result, error_code = %o.error_code.as_ref().map_or("", |c| c.as_str()), "job finished");
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
fn make_parser(spec: &v1::JobSpec) -> Result<Option<labwire_parsers::LogParser>, String> {
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
fn merge_report(outcome: &mut Outcome, report: labwire_parsers::ParseReport) {
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

/// Makes the configured and discovered devices the offered ones: a device that is gone is
/// forgotten now if idle, else when its job ends; the next heartbeat advertises the list.
fn install_devices(st: &mut State) {
    let devices: Vec<Arc<Device>> = st
        .configured
        .iter()
        .chain(st.discovered.values().flatten())
        .cloned()
        .collect();
    st.max_jobs = st
        .max_jobs_cfg
        .unwrap_or_else(|| devices.iter().map(|d| d.max_jobs).sum::<usize>().max(1));
    for d in &devices {
        st.devs.entry(d.info.name.clone()).or_default();
    }
    let names: std::collections::HashSet<&str> =
        devices.iter().map(|d| d.info.name.as_str()).collect();
    st.devs
        .retain(|name, s| names.contains(name.as_str()) || s.busy > 0 || s.polling);
    st.devices = devices;
    st.advertise = true;
}

/// Follows one device source: every list it publishes replaces that source's devices.
async fn follow_source(agent: Arc<Agent>, source: Arc<dyn sources::DeviceSource>) {
    let name = source.name();
    let (tx, mut rx) = watch::channel(Vec::new());
    tokio::spawn(source.run(tx, agent.stop.clone()));
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = agent.stop.cancelled() => return,
        }
        let list = rx.borrow_and_update().clone();
        tracing::info!(source = %name, devices = list.len(), "device source changed");
        {
            let mut st = agent.lock();
            st.discovered.insert(name.clone(), list);
            install_devices(&mut st);
        }
        agent.bump();
        // Advertise at once rather than at the next heartbeat.
        agent.session_lost.notify_one();
    }
}

/// Reloads the device list and limits from `path` on every SIGHUP. Jobs in flight keep
/// their device until they end; a device removed from the file is no longer offered; a bad
/// file is refused (logged) and the running configuration kept. The lab, the coordinator
/// link and the state directory need a restart to change.
async fn reload_on_sighup(agent: Arc<Agent>, path: std::path::PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    loop {
        tokio::select! {
            got = hup.recv() => if got.is_none() { return },
            _ = agent.stop.cancelled() => return,
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        match reload(&agent, &path) {
            Ok(n) => {
                tracing::info!(config = %path.display(), devices = n, "SIGHUP: configuration reloaded")
            }
            Err(e) => {
                tracing::error!(config = %path.display(), error = %format!("{e:#}"), "SIGHUP: configuration refused; keeping the running one")
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}

fn reload(agent: &Agent, path: &std::path::Path) -> anyhow::Result<usize> {
    let cfg = AgentConfig::load(path)?;
    if cfg.lab != agent.cfg.lab
        || !cfg.coordinator.same_link(&agent.cfg.coordinator)
        || cfg.state_dir != agent.cfg.state_dir
    {
        anyhow::bail!("`lab`, `coordinator` and `state_dir` cannot change without a restart");
    }
    let devices = devices::build(&cfg, &cfg.library()?)?;
    let n = devices.len();
    {
        let mut st = agent.lock();
        st.max_jobs_cfg = cfg.limits.max_jobs;
        st.limits = cfg.limits.clone();
        st.configured = devices;
        install_devices(&mut st);
    }
    agent.bump();
    agent.session_lost.notify_one();
    Ok(n)
}
