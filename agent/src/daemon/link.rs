//! The session stream (`AgentService.Session`): opened after Register, it carries the
//! agent's heartbeats up and brings down, at once, what the coordinator must say between two
//! heartbeats (a cancel: the job is stopped the moment it arrives; the reserved devices; a
//! borrowed board's console relay and power switch, [`super::console`]). A coordinator without
//! the stream answers `UNIMPLEMENTED`; the agent then heartbeats with the Heartbeat call and
//! hears of cancels in its answers, as before.

use super::Agent;
use labwire_proto::v1::{self, agent_message, coordinator_message};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// An open session stream.
pub(super) struct Link {
    /// The session it is bound to.
    pub(super) session: String,
    /// Messages to the coordinator.
    tx: mpsc::Sender<v1::AgentMessage>,
    /// Answers to heartbeats (or the status that ended the stream).
    acks: mpsc::Receiver<Result<v1::HeartbeatResponse, tonic::Status>>,
}

/// What opening a stream gave.
pub(super) enum Opened {
    /// The stream is open.
    Link(Link),
    /// The coordinator has no session stream.
    Unsupported,
    /// It could not be opened now (the coordinator is away, the session is unknown).
    Failed(tonic::Status),
}

/// Opens the stream of `session`: sends its `hello`, and starts the reader that stops
/// cancelled jobs at once and passes heartbeat answers on.
pub(super) async fn open(agent: &Arc<Agent>, session: &str) -> Opened {
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(8);
    let hello = v1::AgentMessage {
        kind: Some(agent_message::Kind::Hello(v1::SessionHello {
            session: session.to_string(),
        })),
    };
    if tx.try_send(hello).is_err() {
        return Opened::Failed(tonic::Status::internal("cannot queue the session hello"));
    }
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let opened = agent
        .coordinator
        .call(|mut c| async move { c.session(outbound).await })
        .await;
    let mut inbound = match opened {
        Ok(resp) => resp.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return Opened::Unsupported,
        Err(s) => return Opened::Failed(s),
    };
    let (ack_tx, acks) = mpsc::channel(4);
    let reader_agent = agent.clone();
    let up = tx.clone();
    tokio::spawn(async move {
        let agent = reader_agent;
        loop {
            let next = tokio::select! {
                m = inbound.message() => m,
                _ = agent.stop.cancelled() => return,
            };
            match next {
                Ok(Some(m)) => {
                    let answer = match m.kind {
                        Some(coordinator_message::Kind::Heartbeat(r)) => Some(r),
                        Some(coordinator_message::Kind::Cancel(c)) => {
                            tracing::info!(jobs = c.jobs.len(), reason = %c.reason, "the coordinator cancelled jobs");
                            agent.withdraw(&c.jobs);
                            None
                        }
                        Some(coordinator_message::Kind::Reserved(r)) => {
                            agent.set_reserved(&r.devices);
                            None
                        }
                        Some(coordinator_message::Kind::ConsoleAttach(a)) => {
                            super::console::attach(&agent, a, up.clone());
                            None
                        }
                        Some(coordinator_message::Kind::ConsoleInput(d)) => {
                            super::console::input(&agent, d).await;
                            None
                        }
                        Some(coordinator_message::Kind::ConsoleDetach(d)) => {
                            super::console::detach(&agent, d.console);
                            None
                        }
                        Some(coordinator_message::Kind::Power(p)) => {
                            super::console::power(&agent, p, up.clone());
                            None
                        }
                        // A kind this agent does not know (a newer coordinator).
                        None => None,
                    };
                    if let Some(r) = answer
                        && ack_tx.send(Ok(r)).await.is_err()
                    {
                        return;
                    }
                }
                Ok(None) => return,
                Err(s) => {
                    let _ = ack_tx.send(Err(s)).await;
                    return;
                }
            }
        }
    });
    Opened::Link(Link {
        session: session.to_string(),
        tx,
        acks,
    })
}

impl Link {
    /// Sends a heartbeat and waits up to `within` for its answer.
    pub(super) async fn heartbeat(
        &mut self,
        req: v1::HeartbeatRequest,
        within: Duration,
    ) -> Result<v1::HeartbeatResponse, tonic::Status> {
        let msg = v1::AgentMessage {
            kind: Some(agent_message::Kind::Heartbeat(req)),
        };
        self.tx
            .send(msg)
            .await
            .map_err(|_| tonic::Status::unavailable("the session stream closed"))?;
        match tokio::time::timeout(within, self.acks.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => Err(tonic::Status::unavailable("the session stream closed")),
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "no answer to the heartbeat on the session stream",
            )),
        }
    }
}
