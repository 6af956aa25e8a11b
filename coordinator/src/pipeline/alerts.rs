//! Health alerts: the leader looks at the store every `alerts.interval` and mails a lab's
//! contacts (`alerts.labs.LAB.contacts`, and `alerts.contacts` for every lab) when one of its
//! devices is `bad` (the reason, since when, the last check) and when the lab's agent has
//! not called for `alerts.lab_unreachable_after`. Mails go through the SMTP server and
//! sender of `reports.email`.
//!
//! One alert per incident: an incident is a device's stretch of `bad` (from its `since`) or
//! a lab's silence (from its last call); each mailed one is recorded in the store
//! (`health_alerts`), so a restart neither mails it again nor loses it. A device (or lab)
//! mailed less than `alerts.repeat_after` ago is not mailed again meanwhile: a flapping
//! board gets one mail, and the next one, if it is still bad after the pause, counts the
//! flaps in between.

use super::config::{AlertConfig, EmailConfig};
use crate::store::Store;
use crate::store::alerts::{
    AlertKey, AlertKind, BadDevice, alerted, bad_devices, last_alert, silent_labs, times_bad_since,
};
use anyhow::Context;
use chrono::{DateTime, Utc};
use lettre::message::header::ContentType;
use lettre::{AsyncTransport, Message};
use std::fmt::Write as _;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the alerter needs from the config.
#[derive(Debug, Clone)]
pub(crate) struct Alerter {
    /// The SMTP server and sender.
    pub(crate) email: EmailConfig,
    /// `alerts:`.
    pub(crate) alerts: AlertConfig,
}

/// One alert to mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alert {
    /// Device bad or lab unreachable.
    pub(crate) kind: AlertKind,
    /// The lab.
    pub(crate) lab: String,
    /// The device (`""` for a lab).
    pub(crate) device: String,
    /// The start of the incident.
    pub(crate) incident: DateTime<Utc>,
    /// Who gets it.
    pub(crate) to: Vec<String>,
    /// The subject line.
    pub(crate) subject: String,
    /// The text.
    pub(crate) body: String,
}

impl Alert {
    /// What identifies it in the store.
    pub(crate) fn key(&self) -> AlertKey<'_> {
        AlertKey {
            kind: self.kind,
            lab: &self.lab,
            device: &self.device,
            incident: self.incident,
        }
    }
}

impl Alerter {
    /// Whether any lab has someone to alert.
    pub(crate) fn has_contacts(&self) -> bool {
        !self.alerts.contacts.is_empty()
            || self.alerts.labs.values().any(|l| !l.contacts.is_empty())
    }

    /// The contacts of `lab`: its own, then every lab's, without repeats.
    fn contacts(&self, lab: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let own = self.alerts.labs.get(lab).map(|l| l.contacts.as_slice());
        for c in own.unwrap_or_default().iter().chain(&self.alerts.contacts) {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }

    /// The alerts due at `now`: incidents not mailed yet whose device (or lab) was not
    /// mailed within `repeat_after`. A lab counts as silent from `max(last call, started)`,
    /// so that a coordinator that was down itself does not take every lab for unreachable.
    pub(crate) fn due(
        &self,
        conn: &crate::store::db::Connection,
        now: DateTime<Utc>,
        started: DateTime<Utc>,
    ) -> crate::error::Result<Vec<Alert>> {
        let repeat =
            chrono::Duration::from_std(self.alerts.repeat_after).unwrap_or(chrono::Duration::MAX);
        let unreachable = chrono::Duration::from_std(self.alerts.lab_unreachable_after)
            .unwrap_or(chrono::Duration::MAX);
        let mut out = Vec::new();
        for d in bad_devices(conn)? {
            let to = self.contacts(&d.lab);
            if to.is_empty() || alerted(conn, AlertKind::DeviceBad, &d.lab, &d.device, d.since)? {
                continue;
            }
            let last = last_alert(conn, AlertKind::DeviceBad, &d.lab, &d.device)?;
            if last.is_some_and(|t| now - t < repeat) {
                continue;
            }
            let flaps = match last {
                Some(t) => times_bad_since(conn, &d.lab, &d.device, t)?,
                None => 1,
            };
            out.push(device_alert(&d, to, flaps, now));
        }
        let silent_since = now - unreachable;
        if started <= silent_since {
            for (lab, seen) in silent_labs(conn, silent_since)? {
                let to = self.contacts(&lab);
                if to.is_empty() || alerted(conn, AlertKind::LabUnreachable, &lab, "", seen)? {
                    continue;
                }
                let last = last_alert(conn, AlertKind::LabUnreachable, &lab, "")?;
                if last.is_some_and(|t| now - t < repeat) {
                    continue;
                }
                out.push(lab_alert(&lab, seen, to, now));
            }
        }
        Ok(out)
    }
}

/// A time as the mails show it.
fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A length of time, to the minute (to the second under one).
fn ago(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0) as u64;
    let rounded = if s < 60 { s } else { s - s % 60 };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

fn device_alert(d: &BadDevice, to: Vec<String>, flaps: i64, now: DateTime<Utc>) -> Alert {
    let target = format!("{}/{}", d.lab, d.device);
    let mut body = String::new();
    let _ = writeln!(body, "The device {target} is bad and takes no jobs.\n");
    let _ = writeln!(body, "lab:         {}", d.lab);
    let _ = writeln!(body, "device:      {}", d.device);
    let _ = writeln!(body, "device type: {}", d.device_type);
    let _ = writeln!(body, "reason:      {}", d.reason);
    let _ = writeln!(
        body,
        "bad since:   {} ({} ago)",
        at(d.since),
        ago(now - d.since)
    );
    let check = d.last_check.map_or("never".to_string(), at);
    let _ = writeln!(body, "last check:  {check}");
    let _ = writeln!(
        body,
        "streak:      {} infrastructure failures in a row",
        d.failure_streak
    );
    if flaps > 1 {
        let _ = writeln!(
            body,
            "\nIt went bad {flaps} times since the last alert about it (it flaps)."
        );
    }
    let _ = writeln!(
        body,
        "\nAfter repairing it: labwire device resume {target}\n\
         Its health: labwire device list {}",
        d.lab
    );
    Alert {
        kind: AlertKind::DeviceBad,
        lab: d.lab.clone(),
        device: d.device.clone(),
        incident: d.since,
        to,
        subject: format!("[labwire] {target} is bad: {}", d.reason),
        body,
    }
}

fn lab_alert(lab: &str, seen: DateTime<Utc>, to: Vec<String>, now: DateTime<Utc>) -> Alert {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "The agent of lab {lab} has not called the coordinator for {}: its boards take no \
         jobs.\n",
        ago(now - seen)
    );
    let _ = writeln!(body, "lab:        {lab}");
    let _ = writeln!(body, "last call:  {}", at(seen));
    let _ = writeln!(
        body,
        "\nCheck the agent (systemctl status labwire-agent) and its network path to the \
         coordinator."
    );
    Alert {
        kind: AlertKind::LabUnreachable,
        lab: lab.to_string(),
        device: String::new(),
        incident: seen,
        to,
        subject: format!("[labwire] lab {lab} is unreachable since {}", at(seen)),
        body,
    }
}

/// The mail of `alert`.
fn message(email: &EmailConfig, alert: &Alert) -> anyhow::Result<Message> {
    let mut b = Message::builder()
        .from(
            email
                .from
                .parse()
                .with_context(|| format!("reports.email.from `{}`", email.from))?,
        )
        .subject(alert.subject.clone());
    for to in &alert.to {
        b = b.to(to.parse().with_context(|| format!("contact `{to}`"))?);
    }
    Ok(b.header(ContentType::TEXT_PLAIN).body(alert.body.clone())?)
}

/// Looks at the store every `alerts.interval` and mails the alerts that are due, until
/// `shutdown`. An alert that cannot be sent (the SMTP server is away) is tried again at the
/// next round; one the server refuses for good is recorded as `refused`, not retried.
pub(crate) async fn run(store: Store, alerter: Alerter, shutdown: CancellationToken) {
    let started = store.clock().now();
    loop {
        let now = store.clock().now();
        let a = alerter.clone();
        match store.read(move |c| a.due(c, now, started)).await {
            Ok(due) => {
                for alert in due {
                    send(&store, &alerter.email, alert).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "the health alerter cannot read the store"),
        }
        tokio::select! {
            _ = tokio::time::sleep(alerter.alerts.interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn send(store: &Store, email: &EmailConfig, alert: Alert) {
    let sent = match message(email, &alert) {
        Ok(msg) => match super::mail::transport(email) {
            Ok(t) => t.send(msg).await.map(|_| ()).map_err(anyhow::Error::from),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let outcome = match sent {
        Ok(()) => "sent",
        Err(e) if super::mail::permanent(&e) => {
            tracing::error!(lab = %alert.lab, device = %alert.device, error = %format!("{e:#}"), "health alert refused by the SMTP server; not retried");
            "refused"
        }
        Err(e) => {
            tracing::warn!(lab = %alert.lab, device = %alert.device, error = %format!("{e:#}"), "health alert not mailed; trying again at the next round");
            return;
        }
    };
    if outcome == "sent" {
        tracing::info!(lab = %alert.lab, device = %alert.device, kind = alert.kind.as_str(), to = alert.to.len(), "health alert mailed");
    }
    let a = alert.clone();
    let r = store
        .write(move |w| w.record_alert(a.key(), outcome, &a.to, &a.subject))
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "cannot record a mailed health alert");
    }
}

#[cfg(test)]
#[path = "alerts_tests.rs"]
mod tests;
