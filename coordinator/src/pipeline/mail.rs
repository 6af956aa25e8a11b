//! Report e-mails: when a checkout goes `done`, its report (see [`crate::report`]) is sent
//! to the configured recipients over SMTP. The mailer follows the event log from a cursor
//! kept in the store, and records each mailed checkout, so a restart neither loses nor
//! repeats a report; an SMTP failure is retried with a growing pause.

use super::config::{EmailConfig, SmtpSecurity};
use crate::model::{NodeId, NodeKind, NodeState};
use crate::report::Report;
use crate::store::Store;
use crate::store::cursor::EventCursor;
use crate::store::reports::{checkout_tree, report_mailed};
use anyhow::Context;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The message for `report`.
pub(crate) fn message(cfg: &EmailConfig, report: &Report) -> anyhow::Result<Message> {
    let mut b = Message::builder()
        .from(
            cfg.from
                .parse()
                .with_context(|| format!("reports.email.from `{}`", cfg.from))?,
        )
        .subject(report.subject());
    for to in &cfg.to {
        b = b.to(to
            .parse()
            .with_context(|| format!("reports.email.to `{to}`"))?);
    }
    let ct = match cfg.format {
        crate::report::Format::Text => ContentType::TEXT_PLAIN,
        crate::report::Format::Markdown => {
            ContentType::parse("text/markdown; charset=utf-8").context("markdown content type")?
        }
    };
    Ok(b.header(ct).body(report.render(cfg.format))?)
}

/// The SMTP transport for `cfg`.
pub(crate) fn transport(cfg: &EmailConfig) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    type T = AsyncSmtpTransport<Tokio1Executor>;
    let mut b = match cfg.security {
        SmtpSecurity::None => T::builder_dangerous(&cfg.smtp_host),
        SmtpSecurity::Starttls => T::starttls_relay(&cfg.smtp_host)?,
        SmtpSecurity::Tls => T::relay(&cfg.smtp_host)?,
    }
    .port(cfg.smtp_port)
    .timeout(Some(Duration::from_secs(30)));
    if let (Some(user), Some(file)) = (&cfg.username, &cfg.password_file) {
        let password = std::fs::read_to_string(file).with_context(|| {
            format!("cannot read reports.email.password_file {}", file.display())
        })?;
        b = b.credentials(Credentials::new(user.clone(), password.trim().to_string()));
    }
    Ok(b.build())
}

/// Builds and sends the report of one checkout.
pub(crate) async fn send_report(
    store: &Store,
    cfg: &EmailConfig,
    checkout: NodeId,
) -> anyhow::Result<()> {
    let (root, nodes) = store.read(move |c| checkout_tree(c, checkout)).await?;
    let report = Report::build(&root, &nodes);
    let msg = message(cfg, &report)?;
    transport(cfg)?
        .send(msg)
        .await
        .with_context(|| format!("cannot send the report of checkout {checkout}"))?;
    Ok(())
}

/// Whether a sending error is an SMTP 5xx answer: final for that message.
pub(crate) fn permanent(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<lettre::transport::smtp::Error>()
            .is_some_and(|s| s.is_permanent())
    })
}

/// Follows the event log from the mailer's cursor and mails each checkout's report once,
/// when it goes `done`. Starts, the first time, from the newest event: older checkouts are
/// not mailed.
pub(crate) async fn run(store: Store, cfg: EmailConfig, shutdown: CancellationToken) {
    let mut events = crate::store::events::follow_cursor(
        store.clone(),
        EventCursor::REPORT_MAIL,
        Some(NodeKind::Checkout),
        shutdown.clone(),
    );
    while let Some(ev) = events.recv().await {
        let id = ev.node.id;
        let finished =
            ev.node.state == NodeState::Done && ev.previous_state != Some(NodeState::Done);
        if finished && !mail_once(&store, &cfg, id, &shutdown).await {
            return;
        }
        let seq = ev.seq;
        let r = store
            .write(move |w| w.move_cursor(EventCursor::REPORT_MAIL, seq))
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot store the report mailer's cursor");
        }
    }
}

/// Mails the report of `id` unless it was mailed before, retrying with a growing pause;
/// `false` when the coordinator stops meanwhile.
async fn mail_once(
    store: &Store,
    cfg: &EmailConfig,
    id: NodeId,
    shutdown: &CancellationToken,
) -> bool {
    let mut pause = Duration::from_secs(1);
    loop {
        let sent = match store.read(move |c| report_mailed(c, id)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "report mailer cannot read the store");
                false
            }
        };
        if sent {
            return true;
        }
        match send_report(store, cfg, id).await {
            Ok(()) => {
                tracing::info!(checkout = %id, to = cfg.to.len(), "report mailed");
                if let Err(e) = store.write(move |w| w.record_report_mailed(id)).await {
                    tracing::error!(error = %e, "cannot record a mailed report");
                }
                return true;
            }
            Err(e) if permanent(&e) => {
                // The server refused this message for good (a bad recipient, a message too
                // big): retrying cannot help, and would hold up the reports after it.
                tracing::error!(checkout = %id, error = %format!("{e:#}"), "report refused by the SMTP server; not retried");
                return true;
            }
            Err(e) => {
                tracing::warn!(checkout = %id, error = %format!("{e:#}"), retry_in = ?pause, "report not mailed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return false,
                }
                pause = (pause * 2).min(Duration::from_secs(300));
            }
        }
    }
}
