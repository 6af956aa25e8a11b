//! Console relays and power switches for borrowed boards, asked for by the coordinator on
//! the session stream: `console_attach` opens a reserved device's console through its
//! driver (as a job opens it) and sends what the board prints up the stream as it comes;
//! `console_input` writes keystrokes to it; `console_detach` closes it. A console that
//! closes while the relay is attached (the board was powered off or reset, its pty went) is
//! opened again every [`REOPEN`] until it is back; keystrokes typed meanwhile reach nobody.
//! `power` switches a reserved, idle device's power through its driver. Nothing here
//! touches a device that is not reserved.

use super::Agent;
use crate::driver::PowerAction;
use crate::serial::console::ConsoleEvent;
use labwire_proto::v1::{self, agent_message};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long to wait before opening a console again.
const REOPEN: Duration = Duration::from_millis(300);

/// An attached console relay.
pub(super) struct Relay {
    device: String,
    input: mpsc::Sender<Vec<u8>>,
    stop: CancellationToken,
}

/// Where the agent's side of the stream goes.
pub(super) type Up = mpsc::Sender<v1::AgentMessage>;

fn up_msg(kind: agent_message::Kind) -> v1::AgentMessage {
    v1::AgentMessage { kind: Some(kind) }
}

async fn ended(up: &Up, console: u64, reason: &str) {
    let _ = up
        .send(up_msg(agent_message::Kind::ConsoleEnded(
            v1::ConsoleEnded {
                console,
                reason: reason.to_string(),
            },
        )))
        .await;
}

/// `console_attach`: opens the relay of a reserved device.
pub(super) fn attach(agent: &Arc<Agent>, a: v1::ConsoleAttach, up: Up) {
    let device = match agent.device(&a.device) {
        Some(d) if agent.lock().reserved.contains(&a.device) => d,
        _ => {
            tracing::warn!(device = %a.device, "console asked for a device that is not reserved here; refused");
            tokio::spawn(async move {
                ended(&up, a.console, "the device is not reserved on its agent").await;
            });
            return;
        }
    };
    let (input, mut input_rx) = mpsc::channel::<Vec<u8>>(256);
    let stop = agent.stop.child_token();
    agent.lock().consoles.insert(
        a.console,
        Relay {
            device: a.device.clone(),
            input,
            stop: stop.clone(),
        },
    );
    tracing::info!(device = %a.device, console = a.console, "console relay attached");
    let agent = agent.clone();
    tokio::spawn(async move {
        let id = a.console;
        let mut told = false;
        let why = 'relay: loop {
            if stop.is_cancelled() {
                break 'relay None;
            }
            let mut c = match device.driver.open_console(Duration::from_secs(1)).await {
                Ok(c) => c,
                Err(e) => {
                    if !told {
                        tracing::info!(device = %a.device, error = %e, "board console not open yet; retrying while the relay is attached");
                        told = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(REOPEN) => continue 'relay,
                        _ = stop.cancelled() => break 'relay None,
                    }
                }
            };
            told = false;
            tracing::debug!(device = %a.device, console = %c.describe, "board console open for the relay");
            loop {
                tokio::select! {
                    ev = c.rx.recv() => match ev {
                        Some(ConsoleEvent::Data(data)) => {
                            let m = up_msg(agent_message::Kind::ConsoleOutput(v1::ConsoleData {
                                console: id,
                                data,
                            }));
                            if up.send(m).await.is_err() {
                                break 'relay Some("the session stream closed");
                            }
                        }
                        Some(ConsoleEvent::Closed(e)) => {
                            tracing::debug!(device = %a.device, reason = %e, "board console closed; opening it again");
                            break;
                        }
                        None => break,
                    },
                    k = input_rx.recv() => match k {
                        Some(k) => {
                            if c.writer.write_all(&k).await.is_err() || c.writer.flush().await.is_err() {
                                break;
                            }
                        }
                        None => break 'relay None,
                    },
                    _ = stop.cancelled() => break 'relay None,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(REOPEN) => {}
                _ = stop.cancelled() => break 'relay None,
            }
        };
        agent.lock().consoles.remove(&id);
        if let Some(why) = why {
            ended(&up, id, why).await;
        }
        tracing::info!(console = id, "console relay detached");
    });
}

/// `console_input`: keystrokes for relay `id`, unchanged.
pub(super) async fn input(agent: &Agent, d: v1::ConsoleData) {
    let tx = agent
        .lock()
        .consoles
        .get(&d.console)
        .map(|r| r.input.clone());
    if let Some(tx) = tx {
        let _ = tx.send(d.data).await;
    }
}

/// `console_detach`: closes relay `id`.
pub(super) fn detach(agent: &Agent, id: u64) {
    if let Some(r) = agent.lock().consoles.remove(&id) {
        r.stop.cancel();
    }
}

/// Closes every relay of `device` (its reservation ended).
pub(super) fn detach_device(agent: &Agent, device: &str) {
    let mut st = agent.lock();
    st.consoles.retain(|_, r| {
        if r.device == device {
            r.stop.cancel();
            false
        } else {
            true
        }
    });
}

/// `power`: switches a reserved, idle device's power; the answer goes up the stream.
pub(super) fn power(agent: &Arc<Agent>, p: v1::DevicePower, up: Up) {
    let action = match v1::PowerAction::try_from(p.action) {
        Ok(v1::PowerAction::On) => Some(PowerAction::On),
        Ok(v1::PowerAction::Off) => Some(PowerAction::Off),
        Ok(v1::PowerAction::Reset) => Some(PowerAction::Reset),
        _ => None,
    };
    let device = agent.device(&p.device);
    let refusal = {
        let st = agent.lock();
        if action.is_none() {
            Some("unknown power action".to_string())
        } else if device.is_none() || !st.reserved.contains(&p.device) {
            Some(format!(
                "`{}` is not a reserved device of this lab",
                p.device
            ))
        } else if st.devs.get(&p.device).is_some_and(|s| s.busy > 0) {
            Some(format!(
                "`{}` still runs a job or a power change; try again when it ends",
                p.device
            ))
        } else {
            None
        }
    };
    tokio::spawn(async move {
        let error = match (refusal, device, action) {
            (Some(e), _, _) => e,
            (None, Some(d), Some(a)) => match d.driver.power(a).await {
                Ok(()) => {
                    tracing::info!(device = %p.device, action = ?a, "power switched for the borrower");
                    String::new()
                }
                Err(e) => {
                    tracing::warn!(device = %p.device, action = ?a, error = %e, "power switch for the borrower failed");
                    e
                }
            },
            _ => "internal: no device".to_string(),
        };
        let _ = up
            .send(up_msg(agent_message::Kind::PowerDone(v1::PowerDone {
                request: p.request,
                error,
            })))
            .await;
    });
}
