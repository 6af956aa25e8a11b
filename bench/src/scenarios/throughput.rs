//! Throughput: simulated agents, each its own lab with one device, take jobs as fast as they
//! come (AcquireJob, StartJob, ReportResult with child tests) while four client tasks submit
//! them. A run's figure is its jobs divided by the time from its first submission to its last
//! result acknowledged (every acknowledged result has made its job `done`).

use crate::Opts;
use crate::report::{Figure, Goal, median, spread};
use crate::rig::Rig;
use crate::sim::{SimAgent, job_spec};
use anyhow::Context;
use futures::future::try_join_all;
use labwire_proto::v1;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SUBMITTERS: usize = 4;

/// Runs the scenario.
pub async fn run(o: &Opts) -> anyhow::Result<Vec<Figure>> {
    let mut rig = Rig::new(&o.store, "")?;
    let certs = rig.issue_labs("tput-", o.agents.max(1))?;
    rig.start()?;
    let url = rig.url();
    let agents = try_join_all(
        certs
            .iter()
            .map(|c| SimAgent::register(&url, &rig.ca_pem, c, 1)),
    )
    .await?;
    let stop = CancellationToken::new();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let phase = a.heartbeat.mul_f64(i as f64 / agents.len() as f64);
        tasks.push(tokio::spawn({
            let hb = a.spawn_heartbeats(stop.clone(), phase);
            async move {
                anyhow::ensure!(hb.await? == 0, "heartbeats failed");
                Ok(())
            }
        }));
        let (mut a, stop, done, tests) = (a.clone(), stop.clone(), done.clone(), o.tests);
        tasks.push(tokio::spawn(async move {
            // Never cancelled mid-poll: a poll dropped after the coordinator granted it a
            // job would leave that job leased to nobody until the lease ran out.
            while !stop.is_cancelled() {
                if let Some(asg) = a.acquire(Duration::from_millis(500)).await? {
                    a.finish(&asg, tests).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }));
    }
    let client = rig.client().await?;
    let mut rates = Vec::new();
    let per_run = o.jobs.max(SUBMITTERS);
    let mut expected = 0u64;
    for run in 0..=o.runs.max(1) {
        // Run 0 (a tenth of the size) is a warm-up, not counted.
        let n = if run == 0 {
            (per_run / 10).max(SUBMITTERS)
        } else {
            per_run
        };
        let n = n - n % SUBMITTERS;
        let t0 = Instant::now();
        let subs = (0..SUBMITTERS).map(|s| {
            let mut c = client.clone();
            async move {
                for i in 0..n / SUBMITTERS {
                    c.nodes
                        .submit_job(v1::SubmitJobRequest {
                            spec: Some(job_spec(&format!("tput-{run}-{s}-{i}"))),
                            parent: 0,
                            submitter: "bench".into(),
                        })
                        .await
                        .context("SubmitJob failed")?;
                }
                anyhow::Ok(())
            }
        });
        try_join_all(subs).await?;
        expected += n as u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        while done.load(Ordering::Relaxed) < expected {
            anyhow::ensure!(
                Instant::now() < deadline,
                "jobs did not finish: {} of {expected} done",
                done.load(Ordering::Relaxed)
            );
            if let Some(t) = tasks.iter().position(|t| t.is_finished()) {
                let t = tasks.remove(t);
                t.await??;
                anyhow::bail!("a simulated agent stopped");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        if run > 0 {
            rates.push(n as f64 / secs);
        }
    }
    stop.cancel();
    for t in tasks {
        t.await??;
    }
    // Every job is done: none is left running.
    let running = client
        .clone()
        .nodes
        .query_nodes(v1::QueryNodesRequest {
            kind: v1::NodeKind::Job as i32,
            state: v1::NodeState::Running as i32,
            limit: 10,
            ..Default::default()
        })
        .await?
        .into_inner()
        .nodes;
    anyhow::ensure!(running.is_empty(), "{} jobs still running", running.len());
    Ok(vec![
        Figure::new(
            "throughput",
            "job cycles/s",
            median(&rates),
            "/s",
            Some(Goal::AtLeast(2000.0)),
        )
        .note(format!(
            "median of {} runs of {per_run} jobs, {} agents, {} child tests each (runs: {}/s)",
            rates.len(),
            o.agents,
            o.tests,
            spread(&rates)
        )),
    ])
}
