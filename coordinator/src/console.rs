//! Console relays of borrowed boards: people connect to the coordinator
//! (`BorrowService.Console`), the coordinator asks the device's agent on its session stream
//! to open the board's console (`console_attach`), and bytes flow unchanged both ways over
//! connections that already exist (the lab only dials out). One hub per device: the last
//! [`WINDOW`] bytes of output for whoever connects, any number of viewers, one typer. Each
//! session is an event (`org.labwire.device.console`, who, when, which device, whether they
//! typed) and its output is kept in a transcript file under
//! `{data_dir}/consoles/LAB/DEVICE/`, at most [`TRANSCRIPT_MAX`] bytes per session.
//!
//! A viewer that falls more than [`VIEWER_DEPTH`] messages behind is closed with a message
//! (the relay never waits for one person's terminal: the agent's stream also carries its
//! heartbeats).

use crate::model::LabName;
use crate::shared::Shared;
use labwire_proto::v1::{self, console_reply};
use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// How much recent output a client gets when it connects.
pub(crate) const WINDOW: usize = 64 * 1024;
/// The most a session's transcript keeps.
pub(crate) const TRANSCRIPT_MAX: u64 = 16 * 1024 * 1024;
/// Messages queued per viewer before it counts as stuck.
pub(crate) const VIEWER_DEPTH: usize = 4096;

/// The replies a viewer receives.
pub(crate) type ReplyTx = mpsc::Sender<v1::ConsoleReply>;

struct Viewer {
    id: u64,
    who: String,
    typing: bool,
    tx: ReplyTx,
    transcript: Option<(std::fs::File, u64)>,
}

struct Hub {
    id: u64,
    lab: LabName,
    device: String,
    window: VecDeque<u8>,
    viewers: Vec<Viewer>,
}

#[derive(Default)]
struct Inner {
    /// (lab, device) → its hub.
    hubs: HashMap<(LabName, String), Hub>,
    /// Pending power requests: request → the lab asked and where its answer goes.
    power: HashMap<u64, (LabName, oneshot::Sender<String>)>,
}

/// Every console relay of this coordinator.
#[derive(Default)]
pub(crate) struct Consoles {
    inner: Mutex<Inner>,
    next: AtomicU64,
}

/// One viewer's place in a hub, as [`Consoles::join`] gave it.
pub(crate) struct Joined {
    /// The viewer's id.
    pub(crate) viewer: u64,
    /// Whether its keystrokes reach the board.
    pub(crate) typing: bool,
    /// The relay's id, if the agent must be asked to open the console (first viewer).
    pub(crate) attach: Option<u64>,
}

fn reply(kind: console_reply::Kind) -> v1::ConsoleReply {
    v1::ConsoleReply { kind: Some(kind) }
}

fn msg(kind: v1::coordinator_message::Kind) -> v1::CoordinatorMessage {
    v1::CoordinatorMessage { kind: Some(kind) }
}

impl Consoles {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds a viewer to the device's hub (made if missing). It types if it `may_type` and
    /// nobody else types. The window of recent output is queued for it first.
    pub(crate) fn join(
        &self,
        lab: &LabName,
        device: &str,
        who: &str,
        may_type: bool,
        tx: ReplyTx,
        transcript: Option<std::fs::File>,
    ) -> Joined {
        let viewer = self.id();
        let mut inner = self.lock();
        let key = (lab.clone(), device.to_string());
        let mut attach = None;
        let hub = inner.hubs.entry(key).or_insert_with(|| {
            let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
            attach = Some(id);
            Hub {
                id,
                lab: lab.clone(),
                device: device.to_string(),
                window: VecDeque::new(),
                viewers: Vec::new(),
            }
        });
        let typing = may_type && !hub.viewers.iter().any(|v| v.typing);
        if !hub.window.is_empty() {
            let (a, b) = hub.window.as_slices();
            let _ = tx.try_send(reply(console_reply::Kind::Output([a, b].concat())));
        }
        hub.viewers.push(Viewer {
            id: viewer,
            who: who.to_string(),
            typing,
            tx,
            transcript: transcript.map(|f| (f, 0)),
        });
        Joined {
            viewer,
            typing,
            attach,
        }
    }

    /// Whether `viewer` types on the console of `device`, and the relay's id.
    pub(crate) fn typer(&self, lab: &LabName, device: &str, viewer: u64) -> Option<u64> {
        let inner = self.lock();
        let hub = inner.hubs.get(&(lab.clone(), device.to_string()))?;
        hub.viewers
            .iter()
            .any(|v| v.id == viewer && v.typing)
            .then_some(hub.id)
    }

    /// Removes a viewer; returns the relay's id when it was the last (detach the agent).
    pub(crate) fn leave(&self, lab: &LabName, device: &str, viewer: u64) -> Option<u64> {
        let mut inner = self.lock();
        let key = (lab.clone(), device.to_string());
        let hub = inner.hubs.get_mut(&key)?;
        hub.viewers.retain(|v| v.id != viewer);
        if hub.viewers.is_empty() {
            return inner.hubs.remove(&key).map(|h| h.id);
        }
        None
    }

    /// Output of relay `id` from an agent of `lab` (an id of another lab is ignored): kept
    /// in the window and the transcripts, sent to every viewer.
    pub(crate) fn output(&self, lab: &LabName, id: u64, data: &[u8]) {
        let mut inner = self.lock();
        let Some(hub) = inner
            .hubs
            .values_mut()
            .find(|h| h.id == id && &h.lab == lab)
        else {
            return;
        };
        hub.window.extend(data);
        let extra = hub.window.len().saturating_sub(WINDOW);
        hub.window.drain(..extra);
        let device = hub.device.clone();
        hub.viewers.retain_mut(|v| {
            if let Some((f, n)) = &mut v.transcript
                && *n < TRANSCRIPT_MAX
            {
                let take = data.len().min((TRANSCRIPT_MAX - *n) as usize);
                if f.write_all(&data[..take]).is_err() {
                    v.transcript = None;
                } else {
                    *n += take as u64;
                }
            }
            match v.tx.try_send(reply(console_reply::Kind::Output(data.to_vec()))) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(lab = %lab, device = %device, who = %v.who, "console viewer too slow; closed");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Closes every viewer of the hubs matching `pick` with `why`; returns (lab, relay id) of
    /// each hub closed, for the agents.
    fn close_where(&self, why: &str, mut pick: impl FnMut(&Hub) -> bool) -> Vec<(LabName, u64)> {
        let mut inner = self.lock();
        let keys: Vec<_> = inner
            .hubs
            .iter()
            .filter(|(_, h)| pick(h))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in keys {
            if let Some(h) = inner.hubs.remove(&k) {
                for v in &h.viewers {
                    let _ =
                        v.tx.try_send(reply(console_reply::Kind::Closed(why.to_string())));
                }
                out.push((h.lab, h.id));
            }
        }
        out
    }

    /// The agent ended relay `id` of `lab`: its viewers are told why.
    pub(crate) fn ended(&self, lab: &LabName, id: u64, why: &str) {
        self.close_where(&format!("the board's console closed: {why}"), |h| {
            h.id == id && &h.lab == lab
        });
    }

    /// Registers a power request; the agent's answer arrives on the receiver.
    pub(crate) fn power_request(&self, lab: &LabName) -> (u64, oneshot::Receiver<String>) {
        let id = self.id();
        let (tx, rx) = oneshot::channel();
        self.lock().power.insert(id, (lab.clone(), tx));
        (id, rx)
    }

    /// Forgets a power request that timed out.
    pub(crate) fn power_forget(&self, id: u64) {
        self.lock().power.remove(&id);
    }

    /// The answer of an agent of `lab` to a power request (of that lab only).
    pub(crate) fn power_done(&self, lab: &LabName, id: u64, error: String) {
        let mut inner = self.lock();
        if inner.power.get(&id).is_some_and(|(l, _)| l == lab)
            && let Some((_, tx)) = inner.power.remove(&id)
        {
            let _ = tx.send(error);
        }
    }
}

/// Sends `m` to the lab's session stream, waiting for room (console data must not be
/// dropped). `false` if the lab has no stream.
pub(crate) async fn to_agent(
    shared: &Shared,
    lab: &LabName,
    m: v1::coordinator_message::Kind,
) -> bool {
    match shared.dispatcher.links.sender(lab) {
        Some(tx) => tx.send(msg(m)).await.is_ok(),
        None => false,
    }
}

/// Closes the consoles of devices that are not reserved any more (released, expired), with
/// a message, and detaches their agents.
pub(crate) async fn close_unreserved(shared: &Shared) {
    let reserved = &shared.dispatcher.reserved;
    let closed = shared.consoles.close_where(
        "the reservation ended: the board is powered off and back in the pool",
        |h| !reserved.contains(h.lab.as_str(), &h.device),
    );
    for (lab, id) in closed {
        detach(shared, &lab, id, "the reservation ended").await;
    }
}

/// Tells the agent to close relay `id`.
pub(crate) async fn detach(shared: &Shared, lab: &LabName, id: u64, why: &str) {
    to_agent(
        shared,
        lab,
        v1::coordinator_message::Kind::ConsoleDetach(v1::ConsoleEnded {
            console: id,
            reason: why.to_string(),
        }),
    )
    .await;
}

/// A new transcript file for a session of `who` on `device` of `lab`.
pub(crate) fn transcript(
    shared: &Shared,
    lab: &str,
    device: &str,
    who: &str,
) -> std::io::Result<(PathBuf, std::fs::File)> {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
            .trim_start_matches('.')
            .to_string()
    };
    let dir = shared
        .config
        .data_dir
        .join("consoles")
        .join(safe(lab))
        .join(safe(device));
    std::fs::create_dir_all(&dir)?;
    let now = shared.store.clock().now();
    let path = dir.join(format!(
        "{}-{}.log",
        now.format("%Y%m%dT%H%M%S%.6fZ"),
        safe(who)
    ));
    let f = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    Ok((path, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn viewers_get_the_window_then_the_output_and_one_types() {
        let c = Consoles::default();
        let lab = LabName::new("lab");
        let (t1, mut r1) = mpsc::channel(VIEWER_DEPTH);
        let a = c.join(&lab, "b1", "ana", true, t1, None);
        assert!(a.typing && a.attach.is_some());
        let id = a.attach.expect("an id");
        // Output of another lab's agent under the same id is ignored.
        c.output(&LabName::new("other"), id, b"forged");
        c.output(&lab, id, &vec![b'x'; WINDOW]);
        c.output(&lab, id, b"login: ");
        let (t2, mut r2) = mpsc::channel(VIEWER_DEPTH);
        let b = c.join(&lab, "b1", "root", true, t2, None);
        assert!(!b.typing && b.attach.is_none(), "one typer at a time");
        match r2.recv().await.and_then(|r| r.kind) {
            Some(console_reply::Kind::Output(w)) => {
                assert_eq!(w.len(), WINDOW);
                assert!(w.ends_with(b"login: "));
            }
            other => panic!("{other:?}"),
        }
        let mut got = Vec::new();
        while let Ok(r) = r1.try_recv() {
            if let Some(console_reply::Kind::Output(d)) = r.kind {
                got.extend(d);
            }
        }
        assert_eq!(got.len(), WINDOW + 7, "no forged bytes, nothing lost");
        assert_eq!(c.typer(&lab, "b1", a.viewer), Some(id));
        assert_eq!(c.typer(&lab, "b1", b.viewer), None);
        assert_eq!(c.leave(&lab, "b1", a.viewer), None);
        assert_eq!(
            c.leave(&lab, "b1", b.viewer),
            Some(id),
            "last one out detaches"
        );
    }
}
