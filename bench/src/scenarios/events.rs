//! Event replay: a subscriber asks for every stored event (`after_seq` 0, `catch_up_only`)
//! and counts them as they arrive, decoded, over TLS.

use super::bigstore::BigStore;
use crate::Opts;
use crate::report::{Figure, Goal, median, spread};
use labwire_proto::v1;
use std::time::Instant;

/// Runs the scenario.
pub async fn run(o: &Opts, big: &BigStore) -> anyhow::Result<Vec<Figure>> {
    let c = big.rig.client().await?;
    let mut rates = Vec::new();
    // Each run replays the whole log; three runs at most keep `all` within its budget.
    for _ in 0..o.runs.clamp(1, 3) {
        let t = Instant::now();
        let mut s = c
            .events
            .clone()
            .subscribe(v1::SubscribeRequest {
                after_seq: 0,
                catch_up_only: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        let (mut n, mut last) = (0u64, 0i64);
        while let Some(e) = s.message().await? {
            anyhow::ensure!(e.seq > last, "event {} after {last}: out of order", e.seq);
            last = e.seq;
            n += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(n == big.events, "replayed {n} events of {}", big.events);
        rates.push(n as f64 / secs);
    }
    Ok(vec![
        Figure::new(
            "events",
            "replay",
            median(&rates),
            "events/s",
            Some(Goal::AtLeast(100_000.0)),
        )
        .note(format!(
            "median of {} replays of {} events, each checked in order (runs: {}/s)",
            rates.len(),
            big.events,
            spread(&rates)
        )),
    ])
}
