//! Dispatch latency: one lab with one device long-polls; a client submits a job; the time
//! from sending SubmitJob to the agent holding the assignment is measured. The agent then
//! starts and finishes the job (not timed) and polls again; the next job is submitted
//! 5 ms after the poll was sent, so the agent is waiting, as an idle lab would be.

use crate::Opts;
use crate::report::{Figure, Goal, median, ms, quantile, spread};
use crate::rig::Rig;
use crate::sim::{SimAgent, job_spec};
use anyhow::Context;
use labwire_proto::v1;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const WARMUP: usize = 20;

/// Runs the scenario.
pub async fn run(o: &Opts) -> anyhow::Result<Vec<Figure>> {
    let mut rig = Rig::new(&o.store, "")?;
    let certs = rig.issue_labs("latency-", 1)?;
    rig.start()?;
    let mut client = rig.client().await?;
    let agent = SimAgent::register(&rig.url(), &rig.ca_pem, &certs[0], 1).await?;
    let stop = CancellationToken::new();
    let hb = agent.spawn_heartbeats(stop.clone(), agent.heartbeat);
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for run in 0..=o.runs.max(1) {
        // Run 0 is a warm-up (connections, statement caches), not counted.
        let n = if run == 0 {
            WARMUP
        } else {
            o.latency_jobs.max(1)
        };
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let mut a = agent.clone();
            let poll = tokio::spawn(async move {
                let got = a.acquire(Duration::from_secs(30)).await;
                (Instant::now(), got, a)
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t0 = Instant::now();
            client
                .nodes
                .submit_job(v1::SubmitJobRequest {
                    spec: Some(job_spec(&format!("latency-{run}-{i}"))),
                    parent: 0,
                    submitter: "bench".into(),
                })
                .await
                .context("SubmitJob failed")?;
            let (t1, got, mut a) = poll.await?;
            let asg = got?.context("the agent's poll ran out without a job")?;
            lat.push(ms(t1.duration_since(t0)));
            a.finish(&asg, 0).await?;
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
            "median of {} runs of {} jobs (runs: {} ms); SubmitJob sent -> assignment received",
            v.len(),
            o.latency_jobs,
            spread(v)
        )
    };
    Ok(vec![
        Figure::new(
            "dispatch",
            "latency p50",
            median(&p50s),
            "ms",
            Some(Goal::Below(2.0)),
        )
        .note(note(&p50s)),
        Figure::new(
            "dispatch",
            "latency p99",
            median(&p99s),
            "ms",
            Some(Goal::Below(10.0)),
        )
        .note(note(&p99s)),
    ])
}
