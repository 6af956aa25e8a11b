//! The pipeline services that run inside the coordinator next to dispatch: the scheduler
//! (events become jobs), the trigger (new commits become `checkout` nodes), the timeout
//! service (timeouts, holdoffs, closing), the e-mailed checkout reports and the health
//! alerts.

pub(crate) mod alerts;
pub(crate) mod config;
pub(crate) mod kernelci;
pub(crate) mod mail;
pub(crate) mod scheduler;
pub(crate) mod timeout;
pub(crate) mod trigger;

use crate::shared::SharedRef;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Starts the HTTP side on `http`, when given; it stops when the shared shutdown token is
/// cancelled. Every replica serves it.
pub(crate) fn start_http(
    shared: &SharedRef,
    http: Option<TcpListener>,
) -> anyhow::Result<JoinSet<()>> {
    let cfg = &shared.config;
    let mut set = JoinSet::new();
    if let Some(listener) = http {
        let tls = if cfg.http.tls {
            Some(crate::http::tls_config(cfg)?)
        } else {
            None
        };
        let addr = listener.local_addr()?;
        if !cfg.http.tls && !addr.ip().is_loopback() {
            tracing::warn!(%addr, "HTTP side without TLS on a non-loopback address: bearer tokens cross the network in clear");
        }
        tracing::info!(%addr, tls = cfg.http.tls, "HTTP side listening");
        set.spawn(crate::http::serve(
            shared.clone(),
            listener,
            tls,
            shared.shutdown.clone(),
        ));
    }
    Ok(set)
}

/// Checks, at start-up, that the services' settings can work (so that a bad mail set-up
/// fails the start, not the first report).
pub(crate) fn check(shared: &SharedRef) -> anyhow::Result<()> {
    if let Some(email) = &shared.config.reports.email {
        mail::transport(email)?;
    }
    if let Some(k) = &shared.config.kernelci.pull_lab {
        kernelci::check(k)?;
    }
    Ok(())
}

/// Starts the pipeline services the config turns on, on the replica that leads: the timeout
/// service always, the trigger when trees are configured, the report mailer when
/// `reports.email` is set, the health alerter when some lab has contacts, the KernelCI
/// follower when `kernelci.pull_lab` is set. Each stops when `stop` is cancelled.
pub(crate) fn start_leader(
    shared: &SharedRef,
    stop: &tokio_util::sync::CancellationToken,
    set: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let cfg = &shared.config;
    set.spawn(timeout::run(
        shared.queue.clone(),
        cfg.timeouts.interval,
        stop.clone(),
    ));
    if !cfg.trigger.trees.is_empty() {
        set.spawn(trigger::run(
            shared.store.clone(),
            cfg.trigger.clone(),
            stop.clone(),
        ));
    }
    if let Some(email) = &cfg.reports.email {
        mail::transport(email)?;
        set.spawn(mail::run(shared.store.clone(), email.clone(), stop.clone()));
        let alerter = alerts::Alerter {
            email: email.clone(),
            alerts: cfg.alerts.clone(),
        };
        if alerter.has_contacts() {
            set.spawn(alerts::run(shared.store.clone(), alerter, stop.clone()));
        }
    }
    if let Some(k) = &cfg.kernelci.pull_lab {
        kernelci::start(shared, k, stop, set)?;
    }
    Ok(())
}
