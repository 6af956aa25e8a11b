//! The scheduler: follows the durable event log from its own stored cursor
//! ([`follow_cursor`]) and creates the
//! jobs that the pipeline configuration's `scheduler:` entries ask for.
//!
//! - **Edge-triggered**: an entry fires on the change that makes its `event` fields match
//!   (a checkout *becoming* `available`), using the event's previous state and result; an
//!   update that leaves a matching node matching fires nothing.
//! - **Exactly once**: every created job is recorded as (event, job, platform, run) in the
//!   same transaction that creates it and moves the cursor past the event, so an event seen
//!   twice, or a restart in the middle, creates nothing twice and loses nothing.
//! - On its first start the cursor is the current end of the log: a scheduler added to a
//!   running coordinator does not replay history (see [`crate::store::cursor`]).

use crate::model::{Node, NodeKind};
use crate::pipeline_config::{
    JobConfig, PipelineConfig, PlatformConfig, SchedulerEntry, Variant, param_value,
};
use crate::rules::Attrs;
use crate::shared::SharedRef;
use crate::store::cursor::EventCursor;
use crate::store::events::{StoredEvent, follow_cursor};
use crate::store::scheduled::{PlannedRun, Scheduled};
use crate::store::{NewJob, RunGroup};
use labwire_proto::v1;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// One job the scheduler wants to create for an event.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    /// The `jobs:` key.
    pub(crate) job: String,
    /// The platform (empty for none).
    pub(crate) platform: String,
    /// The run number, from 0.
    pub(crate) run: u32,
    /// The job to submit.
    pub(crate) new: NewJob,
}

/// Whether the entry fires for this event (edge-triggered).
pub(crate) fn fires(entry: &SchedulerEntry, ev: &StoredEvent) -> bool {
    let m = &entry.event;
    let n = &ev.node;
    let field_ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    let now = field_ok(&m.kind, n.kind.as_str())
        && field_ok(&m.name, &n.name)
        && field_ok(&m.state, n.state.as_str())
        && field_ok(&m.result, n.result.map(|r| r.as_str()).unwrap_or(""));
    if !now {
        return false;
    }
    if ev.op == "create" {
        return true;
    }
    // Did the node match before this change? Kind and name do not change.
    let before_state = ev.previous_state.map(|s| s.as_str()).unwrap_or("");
    let before_result = ev.previous_result.map(|r| r.as_str()).unwrap_or("");
    let before = field_ok(&m.state, before_state) && field_ok(&m.result, before_result);
    !before
}

/// The jobs that `cfg` creates for one event.
pub(crate) fn plan(cfg: &PipelineConfig, ev: &StoredEvent) -> Vec<Planned> {
    let mut out = Vec::new();
    for entry in &cfg.scheduler {
        if !fires(entry, ev) {
            continue;
        }
        let Some(job) = cfg.jobs.get(&entry.job) else {
            continue;
        };
        let runtime = cfg.runtime_type(entry);
        let base = Attrs::from_node_data(&ev.node.data);
        let platforms: Vec<(String, Option<&PlatformConfig>)> = if entry.platforms.is_empty() {
            vec![(String::new(), None)]
        } else {
            entry
                .platforms
                .iter()
                .map(|p| (p.clone(), cfg.platforms.get(p)))
                .collect()
        };
        for (pname, platform) in platforms {
            let mut attrs = base.clone();
            attrs
                .set("job", entry.job.clone())
                .set("kind", job.kind.clone());
            if !pname.is_empty() {
                attrs.set("platform", pname.clone());
            }
            if let Some(p) = platform {
                if let Some(a) = &p.arch {
                    // The kernel's arch (from a kbuild) wins over the platform's.
                    attrs.scalars.entry("arch".into()).or_insert(a.clone());
                }
                attrs.set("device_type", p.base_name.clone().unwrap_or(pname.clone()));
            }
            if let Some(r) = &runtime {
                attrs.set("runtime", r.clone());
            }
            let runtime_rules = entry
                .runtime
                .name
                .as_ref()
                .and_then(|n| cfg.runtimes.get(n))
                .map(|r| &r.rules);
            let refusal = job
                .rules
                .check(&attrs)
                .err()
                .or_else(|| platform.and_then(|p| p.rules.check(&attrs).err()))
                .or_else(|| runtime_rules.and_then(|r| r.check(&attrs).err()))
                .or_else(|| entry.rules.check(&attrs).err());
            if let Some(r) = refusal {
                tracing::debug!(event = ev.seq, job = %entry.job, platform = %pname, "not scheduled: {r}");
                continue;
            }
            let runs = entry.runs.or(job.runs);
            let number = runs.map_or(1, |r| r.number);
            for run in 0..number {
                let mut new = make_job(
                    &entry.job,
                    job,
                    &pname,
                    platform,
                    runtime.as_deref(),
                    &ev.node,
                );
                new.attrs = attrs.clone();
                // KernelCI's test suite name, for the KCIDB export.
                if let Some(v) = job.extra.get("kcidb_test_suite") {
                    new.data.insert("kcidb_test_suite".into(), v.clone());
                }
                new.data.insert(
                    "scheduler".into(),
                    json!({"job": entry.job, "platform": pname, "run": run,
                           "runs": number, "event": ev.seq}),
                );
                if let Some(r) = runs
                    && let Some(variant) = r.variant
                {
                    new.group = Some(RunGroup {
                        id: format!("{}/{}/{}", ev.seq, entry.job, pname),
                        variant,
                        mode: r.mode,
                    });
                    // Runs that must differ in device type cannot all ask for one.
                    if variant == Variant::DeviceType
                        && let Some(c) = new.spec.criteria.as_mut()
                    {
                        c.device_type.clear();
                    }
                }
                out.push(Planned {
                    job: entry.job.clone(),
                    platform: pname.clone(),
                    run,
                    new,
                });
            }
        }
    }
    out
}

fn make_job(
    name: &str,
    job: &JobConfig,
    pname: &str,
    platform: Option<&PlatformConfig>,
    runtime: Option<&str>,
    parent: &Node,
) -> NewJob {
    let mut params = std::collections::HashMap::new();
    if let Some(p) = platform {
        for (k, v) in &p.params {
            if let Ok(s) = param_value(v) {
                params.insert(k.clone(), s);
            }
        }
        if let Some(d) = &p.dtb {
            params.insert("dtb".into(), d.clone());
        }
    }
    for (k, v) in &job.params {
        if let Ok(s) = param_value(v) {
            params.insert(k.clone(), s);
        }
    }
    if let Some(t) = &job.template {
        params.insert("template".into(), t.clone());
    }
    if !pname.is_empty() {
        params.insert("platform".into(), pname.to_string());
    }
    if let Some(kr) = parent
        .data
        .get("kernel_revision")
        .and_then(|v| v.as_object())
    {
        for k in ["tree", "branch", "commit", "describe", "url"] {
            if let Some(s) = kr.get(k).and_then(|v| v.as_str()) {
                params.entry(k.to_string()).or_insert(s.to_string());
            }
        }
    }
    // Parameter names must be letters, digits and underscores.
    params.retain(|k, _| crate::store::jobs::valid_param_key(k));
    let artifacts = parent
        .artifacts
        .iter()
        .filter(|(_, url)| {
            ["http://", "https://", "file://"]
                .iter()
                .any(|s| url.starts_with(s))
        })
        .map(|(k, url)| {
            (
                k.clone(),
                v1::Artifact {
                    url: url.clone(),
                    sha256: String::new(),
                },
            )
        })
        .collect();
    let criteria = v1::Criteria {
        device_type: platform
            .map(|p| p.base_name.clone().unwrap_or(pname.to_string()))
            .unwrap_or_default(),
        arch: platform.and_then(|p| p.arch.clone()).unwrap_or_default(),
        driver: match runtime {
            Some(r @ ("lava" | "labgrid" | "serial" | "shell")) => r.to_string(),
            _ => String::new(),
        },
        ..Default::default()
    };
    NewJob {
        spec: v1::JobSpec {
            name: name.to_string(),
            criteria: Some(criteria),
            params,
            artifacts,
            commands: job.commands.clone(),
            timeout_seconds: job
                .timeout
                .map_or(0, |t| t.as_secs().min(u32::MAX as u64) as u32),
            priority: job.priority.unwrap_or(0),
            parser: job.parser.clone().unwrap_or_default(),
            hold_on_failure_seconds: 0,
        },
        parent: Some(parent.id),
        submitter: "scheduler".into(),
        owner: "scheduler".into(),
        kind: Some(match job.kind.as_str() {
            "kbuild" => NodeKind::Kbuild,
            "process" => NodeKind::Process,
            _ => NodeKind::Job,
        }),
        ..Default::default()
    }
}

/// Runs the scheduler until the coordinator stops: follows the event log from its cursor and,
/// for each event, creates the planned jobs and moves the cursor in one transaction. A
/// transaction that fails is tried again after a pause (nothing of it was kept), so no event
/// is skipped.
pub(crate) async fn run(shared: SharedRef, cfg: Arc<PipelineConfig>) {
    let store = shared.store.clone();
    let mut events = follow_cursor(
        store.clone(),
        EventCursor::SCHEDULER,
        None,
        shared.shutdown.clone(),
    );
    tracing::info!(entries = cfg.scheduler.len(), "scheduler started");
    while let Some(ev) = events.recv().await {
        let planned = plan(&cfg, &ev);
        let evseq = ev.seq;
        loop {
            let planned = planned.clone();
            // Through the job queue: the jobs created are offered to the agents at once.
            let res = shared
                .queue
                .write(move |w| {
                    let mut created = Vec::new();
                    for p in planned {
                        let run = PlannedRun {
                            event: evseq,
                            job: &p.job,
                            platform: &p.platform,
                            run: p.run,
                        };
                        match w.schedule_run(run, p.new)? {
                            Scheduled::Created(c) => created.push(c.1),
                            Scheduled::Before => {}
                            // A parent that takes no children any more, or a spec the store
                            // refuses: nothing to create; say so and go on.
                            Scheduled::Refused(e) => {
                                tracing::warn!(event = evseq, job = %p.job, platform = %p.platform, error = %e, "scheduler could not create a job");
                            }
                        }
                    }
                    w.move_cursor(EventCursor::SCHEDULER, evseq)?;
                    Ok(created)
                })
                .await;
            match res {
                Ok(created) => {
                    for row in &created {
                        tracing::info!(event = evseq, job = %row.id, name = %row.spec.name, "scheduler created a job");
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!(event = evseq, error = %e, "scheduler: cannot record jobs; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = shared.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeId, NodeState};
    use labwire_common::NodeResult;

    fn node(kind: NodeKind, name: &str, state: NodeState, result: Option<NodeResult>) -> Node {
        let mut n = Node {
            id: NodeId(7),
            kind,
            name: name.into(),
            path: vec![name.into()],
            group: None,
            parent: None,
            state,
            result,
            artifacts: Default::default(),
            data: Default::default(),
            created: chrono::Utc::now(),
            updated: chrono::Utc::now(),
            timeout: None,
            holdoff: None,
            owner: String::new(),
            submitter: String::new(),
            treeid: String::new(),
            retry_counter: 0,
        };
        n.data.insert(
            "kernel_revision".into(),
            json!({"tree": "mainline", "branch": "master", "commit": "abc",
                   "version": {"version": 6, "patchlevel": 12}}),
        );
        n.artifacts
            .insert("kernel".into(), "http://x/bzImage".into());
        n
    }

    fn ev(op: &str, prev: Option<(NodeState, Option<NodeResult>)>, n: Node) -> StoredEvent {
        StoredEvent {
            seq: 42,
            time: chrono::Utc::now(),
            op: op.into(),
            previous_state: prev.map(|p| p.0),
            previous_result: prev.and_then(|p| p.1),
            node: n,
            health: None,
        }
    }

    const CFG: &str = r#"
_anchors:
  checkout: &checkout-event
    channel: node
    kind: checkout
    state: available
jobs:
  baseline: &base
    template: baseline.jinja2
    params: {boot: "true"}
    rules:
      tree: ['!android']
  kunit:
    <<: *base
    commands: ['echo ok']
    runs: {number: 3, variant: device_type}
  kbuild-done-test:
    kind: job
platforms:
  qemu-x86: {base_name: qemu-x86_64, arch: x86_64}
  rpi4: {base_name: bcm2711-rpi-4-b, arch: arm64, rules: {min_version: {version: 6, patchlevel: 13}}}
scheduler:
  - job: baseline
    event: *checkout-event
    runtime: {type: shell}
    platforms: [qemu-x86, rpi4]
  - job: kunit
    event: *checkout-event
  - job: kbuild-done-test
    event: {channel: node, name: kbuild-x, result: pass}
"#;

    #[test]
    fn edge_triggered_matching() {
        use NodeState::*;
        let cfg = PipelineConfig::parse(CFG).unwrap().config;
        let e = &cfg.scheduler[0];
        let co = |s| node(NodeKind::Checkout, "checkout", s, None);
        // (event, fires?)
        let cases = [
            (ev("create", None, co(Running)), false),
            (ev("create", None, co(Available)), true),
            (ev("update", Some((Running, None)), co(Available)), true),
            // Still available (data changed): no new edge.
            (ev("update", Some((Available, None)), co(Available)), false),
            (ev("update", Some((Available, None)), co(Done)), false),
        ];
        for (i, (event, want)) in cases.iter().enumerate() {
            assert_eq!(fires(e, event), *want, "case {i}");
        }
        let k = &cfg.scheduler[2];
        let kb = |s, r| node(NodeKind::Kbuild, "kbuild-x", s, r);
        let cases = [
            (
                ev(
                    "update",
                    Some((Running, None)),
                    kb(Available, Some(NodeResult::Pass)),
                ),
                true,
            ),
            (
                ev(
                    "update",
                    Some((Available, Some(NodeResult::Pass))),
                    kb(Done, Some(NodeResult::Pass)),
                ),
                false,
            ),
            (
                ev(
                    "update",
                    Some((Running, None)),
                    kb(Done, Some(NodeResult::Fail)),
                ),
                false,
            ),
            (
                ev(
                    "update",
                    Some((Running, None)),
                    node(NodeKind::Kbuild, "kbuild-y", Done, Some(NodeResult::Pass)),
                ),
                false,
            ),
        ];
        for (i, (event, want)) in cases.iter().enumerate() {
            assert_eq!(fires(k, event), *want, "kbuild case {i}");
        }
    }

    #[test]
    fn plans_jobs_per_platform_and_run_with_rules() {
        let cfg = PipelineConfig::parse(CFG).unwrap().config;
        let e = ev(
            "update",
            Some((NodeState::Running, None)),
            node(NodeKind::Checkout, "checkout", NodeState::Available, None),
        );
        let p = plan(&cfg, &e);
        let names: Vec<String> = p
            .iter()
            .map(|p| format!("{}/{}/{}", p.job, p.platform, p.run))
            .collect();
        // rpi4 needs 6.13+: the 6.12 kernel does not get it.
        assert_eq!(
            names,
            vec!["baseline/qemu-x86/0", "kunit//0", "kunit//1", "kunit//2"]
        );
        let b = &p[0].new;
        let c = b.spec.criteria.as_ref().unwrap();
        assert_eq!(c.device_type, "qemu-x86_64");
        assert_eq!(c.driver, "shell");
        assert_eq!(b.spec.params["template"], "baseline.jinja2");
        assert_eq!(b.spec.params["tree"], "mainline");
        assert_eq!(b.spec.params["boot"], "true");
        assert_eq!(b.spec.artifacts["kernel"].url, "http://x/bzImage");
        assert_eq!(b.parent, Some(NodeId(7)));
        assert_eq!(b.attrs.scalars["platform"], "qemu-x86");
        let k = &p[1].new;
        assert_eq!(k.group.as_ref().unwrap().id, "42/kunit/");
        assert_eq!(k.spec.commands, vec!["echo ok".to_string()]);
        // An android checkout gets nothing from `baseline` (tree rule) nor kunit (merged rule).
        let mut n = node(NodeKind::Checkout, "checkout", NodeState::Available, None);
        n.data.insert(
            "kernel_revision".into(),
            json!({"tree": "android", "branch": "x"}),
        );
        let e = ev("update", Some((NodeState::Running, None)), n);
        assert!(plan(&cfg, &e).is_empty());
    }
}
