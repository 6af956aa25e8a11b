//! The timeout service: applies the timeout, holdoff and closing rules
//! ([`crate::store::timeouts`]) every `timeouts.interval`, on the replica that leads. It goes
//! through the job queue, so a job that timed out is no longer offered to the agents.

/// Sweeps every `interval` until `shutdown`.
pub(crate) async fn run(
    queue: crate::dispatch::JobQueue,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match queue.sweep_timeouts().await {
            Ok(s) if s.is_empty() => {}
            Ok(s) => tracing::info!(
                timed_out = s.timed_out.len(),
                closing = s.closing.len(),
                closed = s.closed.len(),
                "timeout service"
            ),
            Err(e) => tracing::error!(error = %e, "timeout sweep failed"),
        }
    }
}
