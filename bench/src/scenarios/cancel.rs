//! Cancel latency: one lab with one device has its session stream open (as the real agent
//! does) and runs a job; an admin cancels it (CancelJob); the time from sending CancelJob to
//! the agent holding the cancel on its stream is measured. The lab's heartbeats stay at the
//! coordinator's interval (15 s by default), so a cancel that waited for the next heartbeat
//! would take seconds, not milliseconds.

use crate::Opts;
use crate::report::{Figure, Goal, median, ms, quantile, spread};
use crate::rig::Rig;
use crate::sim::{SimAgent, job_spec};
use anyhow::Context;
use labwire_proto::v1::{self, coordinator_message};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const WARMUP: usize = 5;

/// Runs the scenario.
pub async fn run(o: &Opts) -> anyhow::Result<Vec<Figure>> {
    let mut rig = Rig::new(&o.store, "")?;
    let certs = rig.issue_labs("cancel-", 1)?;
    rig.start()?;
    let mut client = rig.client().await?;
    let agent = SimAgent::register(&rig.url(), &rig.ca_pem, &certs[0], 1).await?;
    let (_up, mut down) = agent.open_stream().await?;
    let stop = CancellationToken::new();
    let hb = agent.spawn_heartbeats(stop.clone(), agent.heartbeat);
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for run in 0..=o.runs.max(1) {
        // Run 0 is a warm-up, not counted.
        let n = if run == 0 { WARMUP } else { o.cancels.max(1) };
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            client
                .nodes
                .submit_job(v1::SubmitJobRequest {
                    spec: Some(job_spec(&format!("cancel-{run}-{i}"))),
                    parent: 0,
                    submitter: "bench".into(),
                })
                .await
                .context("SubmitJob failed")?;
            let mut a = agent.clone();
            let asg = a
                .acquire(Duration::from_secs(30))
                .await?
                .context("the agent got no job")?;
            let job = asg.job.context("an assignment without its job")?;
            a.start(&asg).await?;
            let t0 = Instant::now();
            client
                .admin
                .cancel_job(v1::CancelJobRequest {
                    job: job.job,
                    reason: "labwire-bench".into(),
                })
                .await
                .context("CancelJob failed")?;
            loop {
                let m = tokio::time::timeout(Duration::from_secs(60), down.message())
                    .await
                    .context("no cancel on the session stream within 60 s")?
                    .context("the session stream failed")?
                    .context("the session stream ended")?;
                if let Some(coordinator_message::Kind::Cancel(c)) = m.kind
                    && c.jobs.contains(&job)
                {
                    break;
                }
            }
            lat.push(ms(t0.elapsed()));
        }
        if run > 0 {
            p50s.push(quantile(&lat, 0.5));
            p99s.push(quantile(&lat, 0.99));
        }
    }
    stop.cancel();
    let failures = hb.await?;
    anyhow::ensure!(failures == 0, "{failures} heartbeats failed");
    let note = |v: &[f64]| {
        format!(
            "median of {} runs of {} cancels (runs: {} ms); CancelJob sent -> cancel received \
             on the running agent's session stream",
            v.len(),
            o.cancels,
            spread(v)
        )
    };
    Ok(vec![
        Figure::new(
            "cancel",
            "latency p50",
            median(&p50s),
            "ms",
            Some(Goal::Below(50.0)),
        )
        .note(note(&p50s)),
        Figure::new("cancel", "latency p99", median(&p99s), "ms", None).note(note(&p99s)),
    ])
}
