//! Report e-mails: when a checkout goes `done`, its report (see [`crate::report`]) is sent
//! to the configured recipients over SMTP. The mailer follows the event log from a cursor
//! kept in the store, and records each mailed checkout, so a restart neither loses nor
//! repeats a report; an SMTP failure is retried with a growing pause.

use super::config::{EmailConfig, SmtpSecurity};
use crate::error::Result;
use crate::model::{Node, NodeId, NodeKind, NodeState};
use crate::report::Report;
use crate::store::db::{Connection, params};
use crate::store::nodes::{get_node, query_nodes};
use crate::store::{NodeFilter, Store};
use anyhow::Context;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

const CURSOR_KEY: &str = "report_mail_cursor";

/// The checkout and every node of its tree.
pub fn checkout_tree(conn: &Connection, checkout: NodeId) -> Result<(Node, Vec<Node>)> {
    let root = get_node(conn, checkout)?;
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = query_nodes(
            conn,
            &NodeFilter {
                treeid: Some(root.treeid.clone()),
                cursor,
                limit: 1000,
                ..Default::default()
            },
        )?;
        let full = page.len() == 1000;
        cursor = page.last().map(|n| n.id);
        out.extend(page.into_iter().filter(|n| n.id != root.id));
        if !full {
            break;
        }
    }
    Ok((root, out))
}

/// The message for `report`.
pub fn message(cfg: &EmailConfig, report: &Report) -> anyhow::Result<Message> {
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
pub fn transport(cfg: &EmailConfig) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
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
pub async fn send_report(store: &Store, cfg: &EmailConfig, checkout: NodeId) -> anyhow::Result<()> {
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
fn permanent(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<lettre::transport::smtp::Error>()
            .is_some_and(|s| s.is_permanent())
    })
}

fn load_cursor(conn: &Connection) -> Result<Option<i64>> {
    let v: Option<String> = conn.query_opt(
        "SELECT value FROM meta WHERE key = ?1",
        params![CURSOR_KEY],
        |r| r.get(0),
    )?;
    Ok(v.and_then(|s| s.parse().ok()))
}

/// Follows the event log and mails each checkout's report once, when it goes `done`.
/// Starts, the first time, from the newest event: older checkouts are not mailed.
pub async fn run(store: Store, cfg: EmailConfig, shutdown: CancellationToken) {
    let start = match store.read(load_cursor).await {
        Ok(Some(c)) => c,
        Ok(None) => *store.last_seq().borrow(),
        Err(e) => {
            tracing::error!(error = %e, "report mailer cannot read its cursor; not started");
            return;
        }
    };
    let mut events = ReceiverStream::new(crate::store::events::follow(
        store.clone(),
        start,
        Some(NodeKind::Checkout),
        false,
        shutdown.clone(),
    ));
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(error = %e, "report mailer stopped reading events");
                return;
            }
        };
        let id = ev.node.id;
        let finished =
            ev.node.state == NodeState::Done && ev.previous_state != Some(NodeState::Done);
        if finished {
            let mut pause = Duration::from_secs(1);
            loop {
                let sent: bool = match store
                    .read(move |c| {
                        c.query_row(
                            "SELECT EXISTS(SELECT 1 FROM mailed_reports WHERE checkout = ?1)",
                            params![id.0],
                            |r| r.get(0),
                        )
                    })
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "report mailer cannot read the store");
                        false
                    }
                };
                if sent {
                    break;
                }
                match send_report(&store, &cfg, id).await {
                    Ok(()) => {
                        tracing::info!(checkout = %id, to = cfg.to.len(), "report mailed");
                        let r = store
                            .write(move |w| {
                                let now = crate::store::micros(w.now());
                                w.conn().execute(
                                    "INSERT INTO mailed_reports (checkout, sent) \
                                     VALUES (?1, ?2) ON CONFLICT (checkout) DO NOTHING",
                                    params![id.0, now],
                                )?;
                                Ok(())
                            })
                            .await;
                        if let Err(e) = r {
                            tracing::error!(error = %e, "cannot record a mailed report");
                        }
                        break;
                    }
                    Err(e) if permanent(&e) => {
                        // The server refused this message for good (a bad recipient, a
                        // message too big): retrying cannot help, and would hold up the
                        // reports after it.
                        tracing::error!(checkout = %id, error = %format!("{e:#}"), "report refused by the SMTP server; not retried");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(checkout = %id, error = %format!("{e:#}"), retry_in = ?pause, "report not mailed");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        pause = (pause * 2).min(Duration::from_secs(300));
                    }
                }
            }
        }
        let seq = ev.seq;
        let r = store
            .write(move |w| {
                w.conn().execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![CURSOR_KEY, seq.to_string()],
                )?;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot store the report mailer's cursor");
        }
    }
}
