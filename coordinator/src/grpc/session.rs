//! An agent session's heartbeat, and its two-way stream (`AgentService.Session`): the
//! agent's heartbeats go up it, and the coordinator puts on it at once what the agent must
//! hear between two of its calls (a cancel: [`crate::dispatch::links`]). The stream is bound
//! to one session by its first message, `hello`; it ends when the agent closes it, the
//! connection goes, the coordinator shuts down, or the lab is revoked.

use super::agent::{devices_json, held, job_refs, lease_until, session_of};
use crate::model::{LabName, SessionId};
use crate::shared::{Shared, SharedRef};
use labwire_proto::convert;
use labwire_proto::v1::{self, agent_message, coordinator_message};
use std::pin::Pin;
use tokio::sync::oneshot;
use tonic::Status;

/// The coordinator's side of a session stream.
pub(crate) type SessionStream =
    Pin<Box<dyn futures::Stream<Item = Result<v1::CoordinatorMessage, Status>> + Send>>;

/// A heartbeat of `lab`, by call or on its stream: renews the leases of the attempts it
/// runs, records what it advertises, and names the attempts it must stop.
pub(super) async fn heartbeat(
    shared: &Shared,
    lab: &LabName,
    r: v1::HeartbeatRequest,
) -> Result<v1::HeartbeatResponse, Status> {
    let session = SessionId::new(r.session);
    session_of(shared, lab, &session)?;
    let reported: Option<Vec<_>> = (!r.devices.is_empty() || r.devices_changed)
        .then(|| r.devices.iter().map(convert::device_from_proto).collect());
    let running = held(&r.running);
    let dispatcher = &shared.dispatcher;
    let until = lease_until(shared);
    let slots = r.free_slots;
    let silent_after = shared.config.leases.silent_after();
    // Liveness stays in memory and is written in batches (dispatch::liveness): the attempts
    // the dispatcher knows are this lab's are renewed there. The store decides the rest
    // (lost, or leased through another replica this one has not heard of yet); a changed
    // device list is written at once (with the health that counts: an admin's maintenance
    // over the agent's word), for the lab views and other replicas; and an admin's resume
    // through this replica is read from the store for the agent.
    let (known, unsure) = dispatcher.held_by(lab, &running).await;
    let mut lost = dispatcher.liveness.take_lost(lab, &running);
    let resume_due = dispatcher.take_resume(lab);
    let mut devices = None;
    let mut resumed = Vec::new();
    if !unsure.is_empty() || reported.is_some() || resume_due {
        let lab2 = lab.clone();
        let (found, d, res) = shared
            .store
            .write(move |w| {
                let devices = match reported {
                    Some(d) => Some(w.report_health(&lab2, &d)?),
                    None => None,
                };
                if let Some(d) = &devices {
                    w.touch_lab(&lab2, Some(&devices_json(d)), Some(slots), silent_after)?;
                }
                let resumed = w.take_resumed(&lab2)?;
                Ok((w.renew_leases(&lab2, &unsure, until)?, devices, resumed))
            })
            .await?;
        lost.extend(found);
        devices = d;
        resumed = res;
    }
    if let Ok(mut map) = shared.sessions.write()
        && let Some(s) = map.get_mut(&session)
    {
        if let Some(d) = &devices {
            s.devices = d.clone();
        }
        s.free_slots = r.free_slots;
    }
    dispatcher
        .update_lab(lab, devices, r.free_slots, r.draining)
        .await;
    dispatcher.liveness.heartbeat(lab, slots, &known, until);
    lost.sort_unstable();
    lost.dedup();
    Ok(v1::HeartbeatResponse {
        cancel: job_refs(lost),
        lease_until: Some(convert::timestamp(until)),
        resumed,
        reserved: shared.dispatcher.reserved.of(lab),
    })
}

/// Opens the session stream of `lab`: reads its `hello`, registers the stream, and answers
/// the heartbeats that follow on it.
pub(super) async fn open(
    shared: SharedRef,
    lab: LabName,
    mut incoming: tonic::Streaming<v1::AgentMessage>,
) -> Result<SessionStream, Status> {
    let first = incoming
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the session stream ended before its `hello`"))?;
    let session = match first.kind {
        Some(agent_message::Kind::Hello(h)) => SessionId::new(h.session),
        _ => {
            return Err(Status::invalid_argument(
                "the first message on a session stream must be `hello`",
            ));
        }
    };
    session_of(&shared, &lab, &session)?;
    let (guard, tx, mut rx) = shared.dispatcher.links.open(&lab, &session);
    tracing::debug!(lab = %lab, session = %session, "session stream opened");
    // The reader answers heartbeats; an error it meets ends the stream with that status.
    let (fail, mut failed) = oneshot::channel::<Status>();
    let reader = {
        let (shared, lab, session) = (shared.clone(), lab.clone(), session.clone());
        async move {
            loop {
                let next = tokio::select! {
                    m = incoming.message() => m,
                    _ = shared.shutdown.cancelled() => return,
                };
                let hb = match next {
                    Ok(Some(v1::AgentMessage {
                        kind: Some(agent_message::Kind::Heartbeat(hb)),
                    })) => hb,
                    Ok(Some(v1::AgentMessage {
                        kind: Some(agent_message::Kind::ConsoleOutput(d)),
                    })) => {
                        shared.consoles.output(&lab, d.console, &d.data);
                        continue;
                    }
                    Ok(Some(v1::AgentMessage {
                        kind: Some(agent_message::Kind::ConsoleEnded(e)),
                    })) => {
                        let why: String = e.reason.chars().take(300).collect();
                        shared.consoles.ended(&lab, e.console, &why);
                        continue;
                    }
                    Ok(Some(v1::AgentMessage {
                        kind: Some(agent_message::Kind::PowerDone(p)),
                    })) => {
                        let why: String = p.error.chars().take(500).collect();
                        shared.consoles.power_done(&lab, p.request, why);
                        continue;
                    }
                    Ok(Some(_)) => {
                        let _ = fail.send(Status::invalid_argument(
                            "a session stream takes `hello` once, then heartbeats and console \
                             relays",
                        ));
                        return;
                    }
                    // The agent closed its side, or the connection went.
                    Ok(None) | Err(_) => return,
                };
                if hb.session != session.as_str() {
                    let _ = fail.send(Status::invalid_argument(format!(
                        "heartbeat for session `{}` on the stream of session `{session}`",
                        hb.session
                    )));
                    return;
                }
                match heartbeat(&shared, &lab, hb).await {
                    Ok(resp) => {
                        let msg = v1::CoordinatorMessage {
                            kind: Some(coordinator_message::Kind::Heartbeat(resp)),
                        };
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Err(s) => {
                        let _ = fail.send(s);
                        return;
                    }
                }
            }
        }
    };
    tokio::spawn(reader);
    let out = async_stream::stream! {
        // Registered while the stream lives.
        let _guard = guard;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => yield Ok(m),
                    // The lab was revoked (its streams dropped).
                    None => break,
                },
                e = &mut failed => {
                    if let Ok(s) = e {
                        yield Err(s);
                    }
                    break;
                }
            }
        }
    };
    Ok(Box::pin(out))
}
