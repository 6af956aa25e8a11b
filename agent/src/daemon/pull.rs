//! The pull loop: a long poll open for every free device (polls carry disjoint device
//! sets) while the agent has free slots; an assignment is matched to a device and started, or
//! handed back.

use super::Agent;
use super::job::spawn_job;
use crate::client::backoff;
use crate::devices::{self, Device};
use labwire_proto::{convert, v1};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Keeps a long poll open for every free device (polls carry disjoint device sets) while
/// the agent has free slots; returns the running jobs when draining starts.
pub(super) async fn pull_loop(
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
    // The open polls' devices, to end a poll whose device is withdrawn.
    let mut open: HashMap<tokio::task::Id, (tokio::task::AbortHandle, Vec<String>)> =
        HashMap::new();
    let mut changed = agent.changed.subscribe();
    loop {
        if agent.draining.is_cancelled() {
            break;
        }
        // Start a poll for the free devices not yet covered by one.
        // The devices that may take jobs (the health book is locked apart from the state).
        let usable: std::collections::HashSet<String> = {
            let devices = agent.lock().devices.clone();
            devices
                .iter()
                .filter(|d| agent.usable(d))
                .map(|d| d.info.name.clone())
                .collect()
        };
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
                            (!s.polling
                                && s.busy < d.max_jobs
                                && usable.contains(&d.info.name)
                                && st.advertised_names.contains(&d.info.name))
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
            let covered = names.clone();
            let h = polls.spawn(async move { poll(a, session, names).await });
            open.insert(h.id(), (h, covered));
            continue;
        }
        tokio::select! {
            _ = changed.changed() => withdraw_polls(&agent, &open),
            _ = agent.draining.cancelled() => {}
            Some(done) = polls.join_next_with_id() => {
                match done {
                    Ok((id, (assignment, names))) => {
                        open.remove(&id);
                        if let Some(a) = assignment {
                            start_job(&agent, a, &names, &mut jobs);
                        }
                        release_poll(&agent, &names);
                    }
                    Err(e) => {
                        if let Some((_, names)) = open.remove(&e.id()) {
                            release_poll(&agent, &names);
                        }
                    }
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

/// Ends the open polls that name a device no longer offered (the coordinator would lease a
/// job on it that the agent must refuse); their other devices go into the next poll.
fn withdraw_polls(
    agent: &Agent,
    open: &HashMap<tokio::task::Id, (tokio::task::AbortHandle, Vec<String>)>,
) {
    let st = agent.lock();
    for (h, names) in open.values() {
        if let Some(gone) = names
            .iter()
            .find(|n| !st.devices.iter().any(|d| &d.info.name == *n) || st.checks_due.contains(*n))
        {
            tracing::info!(device = %gone, "device withdrawn: ending the request for work that offers it");
            h.abort();
        }
    }
}

/// One long poll. Returns the assignment (if any) and the devices it covered, which are
/// released for the next poll.
pub(super) async fn poll(
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
pub(super) fn release_poll(agent: &Agent, names: &[String]) {
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

pub(super) async fn reject(agent: &Agent, a: &v1::Assignment, reason: &str) {
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
pub(super) fn start_job(
    agent: &Arc<Agent>,
    a: v1::Assignment,
    polled: &[String],
    jobs: &mut JoinSet<()>,
) {
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
