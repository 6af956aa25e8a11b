//! Borrowing a board: the coordinator's side of reservations. The store keeps them
//! ([`crate::store::reservations`]); after each change, and on every sweep, the dispatcher's
//! picture of the reserved devices is replaced from the store and each lab whose list
//! changed is told at once on its session streams (its agent powers off a device that left
//! the list and offers it again). The sweep also ends the leases that ran out, so a
//! reservation never outlives its lease by more than one sweep, whoever forgot it.

use crate::error::Result;
use crate::shared::{Shared, SharedRef};
use std::time::Duration;

/// How often leases that ran out are ended and the reserved devices read again.
pub(crate) const SWEEP: Duration = Duration::from_secs(1);

/// Reads the live reservations, replaces the dispatcher's picture, and tells every lab whose
/// list changed. A lab whose reserved device came back has its waiting agents re-offered
/// the queue by their next poll.
pub(crate) async fn refresh(shared: &Shared) -> Result<()> {
    let now = shared.store.clock().now();
    let live = shared
        .store
        .read(move |c| crate::store::reservations::live(c, None, now))
        .await?;
    let changed = shared
        .dispatcher
        .reserved
        .replace(live.into_iter().map(|r| (r.lab, r.device)));
    for (lab, devices) in changed {
        let n = shared.dispatcher.links.reserved(&lab, devices.clone());
        tracing::debug!(lab = %lab, reserved = ?devices, streams = n, "reserved devices told");
    }
    crate::console::close_unreserved(shared).await;
    Ok(())
}

/// Ends the leases that ran out, every [`SWEEP`], until shutdown; then refreshes.
pub(crate) async fn sweep(shared: SharedRef) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        match shared.store.write(|w| w.expire_reservations()).await {
            Ok(gone) => {
                for r in gone {
                    tracing::info!(lab = %r.lab, device = %r.device, owner = %r.owner, "reservation expired; the board goes back to the pool");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot end the reservations that ran out"),
        }
        if let Err(e) = refresh(&shared).await {
            tracing::warn!(error = %e, "cannot read the reservations");
        }
    }
}
