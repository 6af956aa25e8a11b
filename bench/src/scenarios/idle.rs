//! Idle agents: many simulated agents, each its own lab with its own certificate and
//! connection, registered, heartbeating at the coordinator's interval on its session stream
//! and each holding an AcquireJob long poll open, as an idle real agent does; no job flows. Measures the
//! coordinator's RSS and CPU over a window once every agent is connected and has sent at
//! least one heartbeat.

use crate::Opts;
use crate::report::{Figure, Goal};
use crate::rig::Rig;
use crate::sim::SimAgent;
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Runs the scenario.
pub async fn run(o: &Opts) -> anyhow::Result<Vec<Figure>> {
    let hb = humantime::format_duration(o.heartbeat);
    let lease = humantime::format_duration(o.heartbeat * 4);
    let mut rig = Rig::new(
        &o.store,
        &format!("leases: {{duration: {lease}, heartbeat: {hb}}}\n"),
    )?;
    let t = Instant::now();
    let n = o.idle_agents.max(1);
    let certs = tokio::task::block_in_place(|| rig.issue_labs("idle-", n))?;
    eprintln!(
        "    {n} lab certificates issued in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    rig.start()?;
    let t = Instant::now();
    let url = rig.url();
    let ca = rig.ca_pem.clone();
    let agents: Vec<SimAgent> = futures::stream::iter(certs.iter())
        .map(|c| SimAgent::register(&url, &ca, c, 1))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let connect_secs = t.elapsed().as_secs_f64();
    eprintln!("    {n} agents connected and registered in {connect_secs:.1}s");
    let stop = CancellationToken::new();
    let mut hbs = Vec::new();
    let mut polls = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let phase = o.heartbeat.mul_f64((i * 7919 % n) as f64 / n as f64);
        hbs.push(a.spawn_stream_heartbeats(stop.clone(), phase));
        polls.push(a.spawn_idle_poll(stop.clone(), Duration::from_secs(30)));
    }
    // One full heartbeat interval so that every agent is in its steady rhythm.
    tokio::time::sleep(o.heartbeat + Duration::from_secs(1)).await;
    let a = rig.stat()?;
    tokio::time::sleep(o.idle_window).await;
    let b = rig.stat()?;
    stop.cancel();
    let mut failures = 0;
    for h in hbs {
        failures += h.await?;
    }
    for p in polls {
        p.await??;
    }
    anyhow::ensure!(failures == 0, "{failures} heartbeats failed");
    let mib = |x: u64| x as f64 / 1048576.0;
    let note = format!(
        "{n} agents (one lab and TLS connection each), heartbeat every {hb} on its session stream, each with a long poll open; \
         measured over {:.0}s after one interval; connecting and registering all took {connect_secs:.0}s",
        b.at.duration_since(a.at).as_secs_f64()
    );
    Ok(vec![
        Figure::new(
            "idle",
            "coordinator RSS",
            mib(b.rss),
            "MiB",
            Some(Goal::Below(1024.0)),
        )
        .note(format!("{note}; peak {:.0} MiB", mib(b.peak_rss))),
        Figure::new(
            "idle",
            "coordinator CPU",
            b.cpu_since(&a) * 100.0,
            "% of a core",
            Some(Goal::Below(5.0)),
        )
        .note(note),
    ])
}
