//! A big result among small ones: one lab reports a result tree of 150,000 tests (300 suites
//! of 500; `--big-tests`) while eight other labs keep running small job cycles (StartJob, ReportResult with
//! 10 tests) and a client keeps submitting their jobs. Two figures per run: how long the big
//! ReportResult takes (sent to acknowledged: normalised and committed), and the longest of
//! the other calls (SubmitJob, StartJob, ReportResult) that overlapped it, so that a big
//! write that held up the store for everyone else shows.

use crate::Opts;
use crate::report::{Figure, Goal, median, ms, spread};
use crate::rig::Rig;
use crate::sim::{DEVICE_TYPE, SimAgent, job_spec};
use anyhow::Context;
use labwire_proto::v1;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Labs running small cycles next to the big one.
const SMALL_LABS: usize = 8;
/// Tests in each suite of the big tree (`--big-tests` of them in all).
const PER_SUITE: usize = 500;
/// The big lab's device type: only its job asks for it.
const BIG_TYPE: &str = "bench-big";

/// Calls of the small labs and the submitter: (started, latency).
type Calls = Arc<Mutex<Vec<(Instant, Duration)>>>;

fn note(calls: &Calls, t0: Instant) -> impl FnOnce() {
    let calls = calls.clone();
    move || {
        if let Ok(mut c) = calls.lock() {
            c.push((t0, t0.elapsed()));
        }
    }
}

fn big_tree(suites: usize, per_suite: usize) -> Vec<v1::TestResult> {
    (0..suites)
        .map(|s| v1::TestResult {
            name: format!("suite_{s}"),
            result: v1::NodeResult::Pass as i32,
            tests: (0..per_suite)
                .map(|t| v1::TestResult {
                    name: format!("case_{t}"),
                    result: if t % 50 == 7 {
                        v1::NodeResult::Fail as i32
                    } else {
                        v1::NodeResult::Pass as i32
                    },
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect()
}

/// One small cycle of a lab, each call timed.
async fn small_cycle(a: &mut SimAgent, calls: &Calls) -> anyhow::Result<bool> {
    let Some(asg) = a.acquire(Duration::from_millis(500)).await? else {
        return Ok(false);
    };
    let t = Instant::now();
    a.start(&asg).await?;
    note(calls, t)();
    let tests = (0..10)
        .map(|i| v1::TestResult {
            name: format!("test_{i}"),
            result: v1::NodeResult::Pass as i32,
            ..Default::default()
        })
        .collect();
    let t = Instant::now();
    a.client
        .report_result(v1::ReportResultRequest {
            job: asg.job,
            result: v1::NodeResult::Pass as i32,
            tests,
            ..Default::default()
        })
        .await
        .context("ReportResult of a small job failed")?;
    note(calls, t)();
    Ok(true)
}

/// Runs the scenario.
pub async fn run(o: &Opts) -> anyhow::Result<Vec<Figure>> {
    let max_tests = (o.big_tests + o.big_tests / 10).max(1000);
    let mut rig = Rig::new(&o.store, &format!("results:\n  max_tests: {max_tests}\n"))?;
    let certs = rig.issue_labs("big-", SMALL_LABS + 1)?;
    rig.start()?;
    let url = rig.url();
    let mut big = rig.agent_client(&certs[0]).await?;
    let session = big
        .register(v1::RegisterRequest {
            agent_version: "labwire-bench".into(),
            devices: vec![v1::Device {
                name: "big0".into(),
                device_type: BIG_TYPE.into(),
                driver: "shell".into(),
                health: v1::DeviceHealth::Good as i32,
                ..Default::default()
            }],
            free_slots: 1,
            held_jobs: vec![],
        })
        .await
        .context("the big lab's Register failed")?
        .into_inner()
        .session;
    let mut small = Vec::new();
    for c in &certs[1..] {
        small.push(SimAgent::register(&url, &rig.ca_pem, c, 1).await?);
    }
    let stop = CancellationToken::new();
    let calls: Calls = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for a in small {
        let (mut a, stop, calls, done) = (a, stop.clone(), calls.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                if small_cycle(&mut a, &calls).await? {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    let client = rig.client().await?;
    // The submitter keeps about two jobs per small lab waiting or running.
    tasks.push(tokio::spawn({
        let (mut c, stop, calls, done) =
            (client.clone(), stop.clone(), calls.clone(), done.clone());
        async move {
            let mut spec = job_spec("small");
            if let Some(cr) = spec.criteria.as_mut() {
                cr.device_type = DEVICE_TYPE.into();
            }
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                if sent >= done.load(Ordering::Relaxed) + 2 * SMALL_LABS as u64 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let t = Instant::now();
                c.nodes
                    .submit_job(v1::SubmitJobRequest {
                        spec: Some(spec.clone()),
                        parent: 0,
                        submitter: "bench".into(),
                    })
                    .await
                    .context("SubmitJob failed")?;
                note(&calls, t)();
                sent += 1;
            }
            anyhow::Ok(())
        }
    }));
    let per_suite = PER_SUITE.min(o.big_tests.max(1));
    let suites = (o.big_tests / per_suite).max(1);
    let tests = suites * per_suite;
    let tree = big_tree(suites, per_suite);
    let mut stored = Vec::new();
    let mut worst = Vec::new();
    let mut overlapping = Vec::new();
    for run in 0..=o.runs.max(1) {
        let mut spec = job_spec(&format!("big-{run}"));
        if let Some(cr) = spec.criteria.as_mut() {
            cr.device_type = BIG_TYPE.into();
        }
        let mut c = client.clone();
        c.nodes
            .submit_job(v1::SubmitJobRequest {
                spec: Some(spec),
                parent: 0,
                submitter: "bench".into(),
            })
            .await
            .context("SubmitJob of the big job failed")?;
        let asg = big
            .acquire_job(v1::AcquireJobRequest {
                session: session.clone(),
                free_devices: vec!["big0".into()],
                wait_ms: 30_000,
            })
            .await?
            .into_inner()
            .assignment
            .context("the big lab got no job")?;
        big.start_job(v1::StartJobRequest {
            session: session.clone(),
            job: asg.job,
            device: asg.device.clone(),
        })
        .await
        .context("StartJob of the big job failed")?;
        // The small labs run for a while before and after the big report.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        big.report_result(v1::ReportResultRequest {
            job: asg.job,
            result: v1::NodeResult::Fail as i32,
            tests: tree.clone(),
            ..Default::default()
        })
        .await
        .context("the big ReportResult failed")?;
        let t1 = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(t) = tasks.iter().position(|t| t.is_finished()) {
            tasks.remove(t).await??;
            anyhow::bail!("a small lab or the submitter stopped");
        }
        // The calls that were under way at some time between t0 and t1.
        let mut during: Vec<f64> = calls
            .lock()
            .map_err(|_| anyhow::anyhow!("calls lock poisoned"))?
            .drain(..)
            .filter(|(start, lat)| *start < t1 && *start + *lat > t0)
            .map(|(_, lat)| ms(lat))
            .collect();
        during.sort_by(f64::total_cmp);
        anyhow::ensure!(
            !during.is_empty(),
            "no other call overlapped the big report"
        );
        if run > 0 {
            stored.push(ms(t1 - t0));
            worst.push(during.last().copied().unwrap_or(0.0));
            overlapping.push(during.len() as f64);
        }
    }
    stop.cancel();
    for t in tasks {
        t.await??;
    }
    Ok(vec![
        Figure::new(
            "bigresult",
            &format!("{tests}-test result stored"),
            median(&stored),
            "ms",
            Some(Goal::Below(2000.0)),
        )
        .note(format!(
            "median of {} runs; ReportResult of {tests} tests ({suites} suites) sent -> \
             acknowledged (runs: {} ms)",
            stored.len(),
            spread(&stored)
        )),
        Figure::new(
            "bigresult",
            "longest other call meanwhile",
            median(&worst),
            "ms",
            Some(Goal::Below(100.0)),
        )
        .note(format!(
            "median over {} runs of the slowest SubmitJob/StartJob/ReportResult of {SMALL_LABS} \
             other labs that overlapped the big report (runs: {} ms; calls overlapping: {})",
            worst.len(),
            spread(&worst),
            spread(&overlapping)
        )),
    ])
}
