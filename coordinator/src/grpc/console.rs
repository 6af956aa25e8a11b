//! `BorrowService.Console` and `BorrowService.Power`: a reserved board's console relayed
//! through its agent's session stream ([`crate::console`]), and its power switched by its
//! agent. Anyone with `console` may watch a reserved board; only the reservation's owner or
//! an admin types or switches the power.

use crate::console::{self, VIEWER_DEPTH};
use crate::model::LabName;
use crate::shared::SharedRef;
use crate::store::labs::{Scope, TokenInfo};
use crate::store::reservations::Reservation;
use labwire_proto::convert;
use labwire_proto::v1::{self, console_reply, console_request, coordinator_message};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

/// The client's side of a console relay.
pub(crate) type ConsoleStream =
    Pin<Box<dyn futures::Stream<Item = Result<v1::ConsoleReply, Status>> + Send>>;

/// How long the agent may take to switch a board's power.
const POWER_WAIT: Duration = Duration::from_secs(120);

/// Checks a lab or device name from a request.
fn name(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field}: expected a name of 1 to 128 printable characters"
        )));
    }
    Ok(())
}

/// The live reservation of `device` of `lab`, or why there is none.
async fn reservation(shared: &SharedRef, lab: &str, device: &str) -> Result<Reservation, Status> {
    name("lab", lab)?;
    name("device", device)?;
    let now = shared.store.clock().now();
    let (lab2, dev2) = (lab.to_string(), device.to_string());
    shared
        .store
        .read(move |c| crate::store::reservations::live(c, Some(&lab2), now))
        .await?
        .into_iter()
        .find(|r| r.device == dev2)
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "{lab}/{device} is not reserved: `labwire reserve {lab}/{device} --for 1h` first"
            ))
        })
}

/// Records a console session's start or end as a device event.
async fn record(shared: &SharedRef, data: serde_json::Value) {
    let res = shared
        .store
        .write(move |w| {
            w.append_device_event_op("console", data.to_string());
            Ok(())
        })
        .await;
    if let Err(e) = res {
        tracing::warn!(error = %e, "cannot record a console session");
    }
}

/// Opens a console relay for `who`: reads the `open` message, joins the device's hub (the
/// agent is asked to open the board's console for the first viewer), and relays keystrokes
/// until the client goes.
pub(crate) async fn console(
    shared: SharedRef,
    who: TokenInfo,
    mut incoming: tonic::Streaming<v1::ConsoleRequest>,
) -> Result<ConsoleStream, Status> {
    let first = incoming
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the console stream ended before `open`"))?;
    let open = match first.kind {
        Some(console_request::Kind::Open(o)) => o,
        _ => {
            return Err(Status::invalid_argument(
                "the first console message must be `open`",
            ));
        }
    };
    let res = reservation(&shared, &open.lab, &open.device).await?;
    let lab = LabName::new(open.lab.clone());
    if shared.dispatcher.links.sender(&lab).is_none() {
        return Err(Status::unavailable(format!(
            "the agent of lab `{lab}` is not connected (or has no session stream)"
        )));
    }
    let may_type = !open.watch && (res.owner == who.name || who.allows(Scope::Admin));
    let (path, file) = match console::transcript(&shared, &open.lab, &open.device, &who.name) {
        Ok((p, f)) => (Some(p), Some(f)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open a console transcript");
            (None, None)
        }
    };
    let (tx, rx) = mpsc::channel(VIEWER_DEPTH);
    let device = open.device.clone();
    let joined = {
        // `opened` goes first, then the window.
        let opened = v1::ConsoleReply {
            kind: Some(console_reply::Kind::Opened(v1::ConsoleOpened {
                typing: may_type,
                owner: res.owner.clone(),
                expires: Some(convert::timestamp(res.expires)),
            })),
        };
        let _ = tx.try_send(opened);
        shared
            .consoles
            .join(&lab, &device, &who.name, may_type, tx.clone(), file)
    };
    if joined.typing != may_type {
        let _ = tx.try_send(v1::ConsoleReply {
            kind: Some(console_reply::Kind::Output(
                b"\r\n[labwire: someone else types on this console; you watch]\r\n".to_vec(),
            )),
        });
    }
    drop(tx);
    let started = shared.store.clock().now();
    let event = serde_json::json!({
        "lab": open.lab,
        "device": device,
        "who": who.name,
        "typing": joined.typing,
        "transcript": path.as_ref().map(|p| p.display().to_string()),
    });
    let mut opened_ev = event.clone();
    opened_ev["session"] = "opened".into();
    record(&shared, opened_ev).await;
    tracing::info!(lab = %lab, device = %device, who = %who.name, typing = joined.typing, "console session opened");
    if let Some(id) = joined.attach {
        let attach = coordinator_message::Kind::ConsoleAttach(v1::ConsoleAttach {
            console: id,
            device: device.clone(),
        });
        if !console::to_agent(&shared, &lab, attach).await {
            shared.consoles.ended(&lab, id, "the lab's agent went away");
        }
    }
    let viewer = joined.viewer;
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                m = incoming.message() => m,
                _ = shared.shutdown.cancelled() => break,
            };
            let data = match next {
                Ok(Some(v1::ConsoleRequest {
                    kind: Some(console_request::Kind::Input(d)),
                })) => d,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            };
            if let Some(id) = shared.consoles.typer(&lab, &device, viewer) {
                let input =
                    coordinator_message::Kind::ConsoleInput(v1::ConsoleData { console: id, data });
                console::to_agent(&shared, &lab, input).await;
            }
        }
        if let Some(id) = shared.consoles.leave(&lab, &device, viewer) {
            console::detach(&shared, &lab, id, "the last viewer left").await;
        }
        let mut closed = event;
        closed["session"] = "closed".into();
        closed["opened"] = started
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .into();
        record(&shared, closed).await;
        tracing::info!(lab = %lab, device = %device, "console session closed");
    });
    let out = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Box::pin(futures::StreamExt::map(out, Ok)))
}

/// Switches a reserved board's power through its agent (the owner or an admin).
pub(crate) async fn power(
    shared: &SharedRef,
    who: &TokenInfo,
    r: v1::PowerRequest,
) -> Result<(), Status> {
    let action = match v1::PowerAction::try_from(r.action) {
        Ok(a @ (v1::PowerAction::On | v1::PowerAction::Off | v1::PowerAction::Reset)) => a,
        _ => {
            return Err(Status::invalid_argument(
                "action: expected on, off or reset",
            ));
        }
    };
    let res = reservation(shared, &r.lab, &r.device).await?;
    if res.owner != who.name && !who.allows(Scope::Admin) {
        return Err(Status::permission_denied(format!(
            "{}/{} is reserved by `{}`; only they or an admin may switch its power",
            r.lab, r.device, res.owner
        )));
    }
    let lab = LabName::new(r.lab.clone());
    let (id, rx) = shared.consoles.power_request(&lab);
    let ask = coordinator_message::Kind::Power(v1::DevicePower {
        request: id,
        device: r.device.clone(),
        action: action as i32,
    });
    if !console::to_agent(shared, &lab, ask).await {
        shared.consoles.power_forget(id);
        return Err(Status::unavailable(format!(
            "the agent of lab `{lab}` is not connected (or has no session stream)"
        )));
    }
    tracing::info!(lab = %lab, device = %r.device, who = %who.name, action = ?action, "power switched by a borrower");
    match tokio::time::timeout(POWER_WAIT, rx).await {
        Ok(Ok(e)) if e.is_empty() => Ok(()),
        Ok(Ok(e)) => Err(Status::failed_precondition(format!(
            "the agent could not switch the power: {e}"
        ))),
        Ok(Err(_)) => Err(Status::unavailable("the agent went away")),
        Err(_) => {
            shared.consoles.power_forget(id);
            Err(Status::deadline_exceeded(
                "the agent did not answer in time",
            ))
        }
    }
}
