//! The job queue: a job node plus its queue entry. Submission, the queue's reads, and the
//! ways a job leaves the queue (cancelled, failed while queued). Leases, logs, results,
//! statistics and the checks of a spec each have a module of their own.

mod lease;
mod logs;
mod owned;
mod repair;
mod report;
mod spec;
mod stats;

pub(crate) use lease::LeaseTerms;
pub(crate) use logs::{log_attempt, read_log};
pub(crate) use report::ResultReport;
pub(crate) use spec::{valid_param_key, validate_spec};
pub(crate) use stats::{JobStats, job_stats, signature};

use super::db::{Connection, Row, params};
use super::nodes::{NewNode, NodeUpdate, get_node};
use super::{QueueChange, Write, corrupt, from_micros, micros};
use crate::error::{Error, Result};
use crate::model::{AttemptNo, Node, NodeId, NodeKind, NodeState};
use crate::pipeline_config::{Variant, VariantMode};
use crate::rules::Attrs;
use chrono::{DateTime, Utc};
use labwire_common::{Criteria, NodeResult};
use labwire_proto::{convert, v1};
use prost::Message;
use serde_json::{Map, Value, json};
use spec::spec_data;

/// Where a job is in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobStatus {
    /// Waiting for an agent.
    Queued,
    /// Leased to an agent.
    Leased,
    /// Finished; the node is done.
    Finished,
}

impl JobStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Leased => "leased",
            Self::Finished => "finished",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "queued" => Ok(Self::Queued),
            "leased" => Ok(Self::Leased),
            "finished" => Ok(Self::Finished),
            other => Err(corrupt("job status", other)),
        }
    }

    /// The protobuf enum.
    pub(crate) fn to_proto(self) -> v1::JobStatus {
        match self {
            Self::Queued => v1::JobStatus::Queued,
            Self::Leased => v1::JobStatus::Leased,
            Self::Finished => v1::JobStatus::Finished,
        }
    }
}

/// A job to queue.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewJob {
    /// What to run.
    pub(crate) spec: v1::JobSpec,
    /// Parent node.
    pub(crate) parent: Option<NodeId>,
    /// Who asked for it.
    pub(crate) submitter: String,
    /// The token name that created it.
    pub(crate) owner: String,
    /// The node kind: `job` unless the scheduler creates a `kbuild` or `process` job.
    pub(crate) kind: Option<NodeKind>,
    /// Placement attributes (tree, branch, job, platform, ...); `job`, `kind` and
    /// `device_type` are filled in from the spec, tree and branch from the parent's
    /// `kernel_revision`, when missing.
    pub(crate) attrs: Attrs,
    /// The run group, for runs that must differ.
    pub(crate) group: Option<RunGroup>,
    /// Extra node data.
    pub(crate) data: Map<String, Value>,
}

/// The runs of one job that must each use another device type (or device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunGroup {
    /// Identifies the group (the scheduler uses `EVENT/JOB/PLATFORM`).
    pub(crate) id: String,
    /// What must differ.
    pub(crate) variant: Variant,
    /// What happens when nothing different is left.
    pub(crate) mode: VariantMode,
}

/// When a job that ended `incomplete` goes back to the queue.
#[derive(Debug, Clone, Default)]
pub(crate) struct RetryPolicy {
    /// At most this many retries (the node's `retry_counter`).
    pub(crate) max: i32,
    /// The error codes that mean the infrastructure failed, not the kernel.
    pub(crate) error_codes: Vec<String>,
}

/// A queue entry.
#[derive(Debug, Clone)]
pub(crate) struct JobRow {
    /// The job node's id.
    pub(crate) id: NodeId,
    /// The job's spec.
    pub(crate) spec: v1::JobSpec,
    /// Its criteria, decoded.
    pub(crate) criteria: Criteria,
    /// Priority (higher first).
    pub(crate) priority: i32,
    /// Queue state.
    pub(crate) status: JobStatus,
    /// The lab holding the lease.
    pub(crate) lease_owner: Option<String>,
    /// When the lease runs out.
    pub(crate) lease_expires: Option<DateTime<Utc>>,
    /// The lease generation: grows by one with every lease of the job.
    pub(crate) attempt: AttemptNo,
    /// The device the job runs on.
    pub(crate) device: Option<String>,
    /// When it was (last) queued.
    pub(crate) queued_at: DateTime<Utc>,
    /// Placement attributes.
    pub(crate) attrs: Attrs,
    /// The run group, if any.
    pub(crate) group: Option<RunGroup>,
    /// The device type of the device it was leased to.
    pub(crate) device_type: Option<String>,
}

/// A lease just granted.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    /// The queue entry, now leased.
    pub(crate) job: JobRow,
    /// The job node.
    pub(crate) node: Node,
}

/// What [`Write::sweep_expired_leases`] did.
#[derive(Debug, Default)]
pub(crate) struct LeaseSweep {
    /// Jobs back in the queue.
    pub(crate) requeued: Vec<JobRow>,
    /// Jobs that ran out of retries and ended incomplete.
    pub(crate) failed: Vec<NodeId>,
    /// Rows that could not be processed and were repaired instead (see [`Write::guarded`]).
    pub(crate) repaired: Vec<NodeId>,
}

/// The outcome of a result report.
#[derive(Debug)]
pub(crate) enum ReportOutcome {
    /// Applied now; the job node after the change.
    Applied(Box<Node>),
    /// The attempt failed for an infrastructure reason; the job is back in the queue.
    Retried(Box<JobRow>),
    /// The same attempt was reported before; nothing changed.
    Duplicate,
}

const JOB_COLUMNS: &str = "node_id, spec, criteria, priority, status, lease_owner, lease_session, \
                           lease_expires, attempt, device, queued_at, attrs, run_group, variant, \
                           variant_mode, device_type";

fn job_from_row(r: &Row<'_>) -> Result<JobRow> {
    let spec: Vec<u8> = r.get(1)?;
    let criteria: String = r.get(2)?;
    let status: String = r.get(4)?;
    let attrs: String = r.get(11)?;
    let group: Option<String> = r.get(12)?;
    let variant: Option<String> = r.get(13)?;
    let mode: Option<String> = r.get(14)?;
    let id = NodeId(r.get(0)?);
    {
        Ok(JobRow {
            id,
            spec: v1::JobSpec::decode(spec.as_slice()).map_err(|e| corrupt("job spec", e))?,
            criteria: serde_json::from_str(&criteria).map_err(|e| corrupt("job criteria", e))?,
            priority: r.get(3)?,
            status: JobStatus::parse(&status)?,
            lease_owner: r.get(5)?,
            lease_expires: r.get::<_, Option<i64>>(7)?.map(from_micros),
            attempt: r.get(8)?,
            device: r.get(9)?,
            queued_at: from_micros(r.get(10)?),
            attrs: serde_json::from_str(&attrs).map_err(|e| corrupt("job attrs", e))?,
            group: match (group, variant) {
                (Some(id), Some(v)) => Some(RunGroup {
                    id,
                    variant: serde_json::from_value(Value::String(v.clone()))
                        .map_err(|e| corrupt("job variant", e))?,
                    mode: match mode.as_deref() {
                        Some("permissive") => VariantMode::Permissive,
                        _ => VariantMode::Strict,
                    },
                }),
                _ => None,
            },
            device_type: r.get(15)?,
        })
    }
}

/// Reads one queue entry, or `None`.
pub(crate) fn find_job(conn: &Connection, id: NodeId) -> Result<Option<JobRow>> {
    conn.query_opt(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE node_id = ?1"),
        params![id.0],
        job_from_row,
    )
}

fn get_job(conn: &Connection, id: NodeId) -> Result<JobRow> {
    find_job(conn, id)?.ok_or_else(|| Error::NotFound(format!("job {id} not found")))
}

/// How long a `kbuild` job that passed stays `available` for its tests to be scheduled.
pub(crate) const KBUILD_HOLDOFF: chrono::Duration = chrono::Duration::minutes(10);

/// The attribute list that holds `lab/device` of the attempts that failed for an
/// infrastructure reason; the dispatcher prefers other devices for the next attempt.
pub(crate) const RETRY_DEVICES: &str = "retry_devices";

/// The jobs of a run group that hold or held a device: (job, device type, device).
pub(crate) fn group_usage(conn: &Connection, group: &str) -> Result<Vec<(NodeId, String, String)>> {
    conn.query_map(
        "SELECT node_id, device_type, device FROM jobs WHERE run_group = ?1 \
         AND device_type IS NOT NULL AND device IS NOT NULL",
        params![group],
        |r| {
            Ok((
                NodeId(r.get(0)?),
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        },
    )
}

/// Lists queue entries in a state (all when `None`), newest first.
pub(crate) fn list_jobs(
    conn: &Connection,
    status: Option<JobStatus>,
    limit: usize,
) -> Result<Vec<JobRow>> {
    conn.query_map(
        &format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE (CAST(?1 AS TEXT) IS NULL OR status = ?1) \
             ORDER BY node_id DESC LIMIT ?2"
        ),
        params![status.map(|s| s.as_str()), limit as i64],
        job_from_row,
    )
}

/// Every queued job in dispatch order: priority, then submission order.
pub(crate) fn queued_jobs(conn: &Connection) -> Result<Vec<JobRow>> {
    conn.query_map(
        &format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY priority DESC, node_id"
        ),
        params![],
        job_from_row,
    )
}

/// Number of jobs leased to each lab.
pub(crate) fn leases_by_lab(conn: &Connection) -> Result<std::collections::HashMap<String, u32>> {
    let rows = conn.query_map(
        "SELECT lease_owner, COUNT(*) FROM jobs WHERE status = 'leased' GROUP BY lease_owner",
        params![],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)),
    )?;
    Ok(rows.into_iter().collect())
}

impl Write<'_> {
    /// Queues a job: creates its node (running) and its queue entry.
    pub(crate) fn submit_job(&mut self, j: NewJob) -> Result<(Node, JobRow)> {
        validate_spec(&j.spec)?;
        let criteria = convert::criteria_from_proto(&j.spec.criteria.clone().unwrap_or_default());
        let kind = j.kind.unwrap_or(NodeKind::Job);
        let mut n = NewNode::new(kind, j.spec.name.clone());
        n.parent = j.parent;
        n.group = Some(j.spec.name.clone());
        n.data = spec_data(&j.spec, &criteria);
        n.data.extend(j.data);
        n.owner = j.owner;
        n.submitter = j.submitter;
        let mut attrs = j.attrs;
        if let Some(p) = j.parent {
            let parent = Attrs::from_node_data(&get_node(self.tx, p)?.data);
            for (k, v) in parent.scalars {
                attrs.scalars.entry(k).or_insert(v);
            }
            for (k, v) in parent.lists {
                attrs.lists.entry(k).or_insert(v);
            }
            attrs.version = attrs.version.or(parent.version);
        }
        for (k, v) in [
            ("job", Some(j.spec.name.clone())),
            ("kind", Some(kind.as_str().to_string())),
            ("device_type", criteria.device_type.clone()),
            ("arch", criteria.arch.clone()),
            ("runtime", criteria.driver.clone()),
        ] {
            if let Some(v) = v {
                attrs.scalars.entry(k.to_string()).or_insert(v);
            }
        }
        if let Some(g) = &j.group {
            n.data.insert(
                "run_group".into(),
                json!({"id": g.id, "variant": g.variant, "mode": g.mode}),
            );
        }
        let node = self.create_node(n)?;
        let criteria_json =
            serde_json::to_string(&criteria).map_err(|e| Error::Internal(e.to_string()))?;
        let attrs_json =
            serde_json::to_string(&attrs).map_err(|e| Error::Internal(e.to_string()))?;
        let variant = |g: &RunGroup| match g.variant {
            Variant::DeviceType => "device_type",
            Variant::Device => "device",
        };
        let mode = |g: &RunGroup| match g.mode {
            VariantMode::Strict => "strict",
            VariantMode::Permissive => "permissive",
        };
        // The queue entry comes back with RETURNING: no second read.
        let job = self.tx.query_row(
            &format!("INSERT INTO jobs (node_id, spec, criteria, runtime, priority, status, attempt, queued_at, \
                 attrs, run_group, variant, variant_mode) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'queued', 0, ?6, ?7, ?8, ?9, ?10) RETURNING {JOB_COLUMNS}"), params![
                node.id.0,
                j.spec.encode_to_vec(),
                criteria_json,
                criteria.driver.clone().unwrap_or_default(),
                j.spec.priority,
                micros(self.now),
                attrs_json,
                j.group.as_ref().map(|g| g.id.clone()),
                j.group.as_ref().map(variant),
                j.group.as_ref().map(mode),
            ],
            job_from_row,
        )?;
        self.queue_changed(QueueChange::Queued(Box::new(job.clone())));
        Ok((node, job))
    }

    /// Takes a job out of the queue for good (its node ends in the same transaction).
    fn finish_job_row(&mut self, id: NodeId) -> Result<()> {
        self.tx.execute(
            "UPDATE jobs SET status = 'finished', lease_expires = NULL, finished_at = ?2 \
             WHERE node_id = ?1",
            params![id.0, micros(self.now)],
        )?;
        self.queue_changed(QueueChange::Ended(id));
        Ok(())
    }

    /// Ends a queued job that can never run: `done`, `incomplete`, with the error.
    pub(crate) fn fail_queued_job(&mut self, job: NodeId, code: &str, msg: &str) -> Result<Node> {
        let n = self.tx.execute(
            "UPDATE jobs SET status = 'finished', finished_at = ?2 WHERE node_id = ?1 \
             AND status = 'queued'",
            params![job.0, micros(self.now)],
        )?;
        if n != 1 {
            return Err(Error::LeaseLost(format!("job {job} is no longer queued")));
        }
        self.queue_changed(QueueChange::Ended(job));
        let mut data = Map::new();
        data.insert("error_code".into(), code.into());
        data.insert("error_msg".into(), msg.into());
        self.update_node(
            job,
            NodeUpdate {
                state: Some(NodeState::Done),
                result: Some(NodeResult::Incomplete),
                data,
                ..Default::default()
            },
        )
    }

    /// Cancels a job that is not finished: it leaves the queue and its node ends `done`,
    /// `incomplete`, `error_code=cancelled`. A leased job's agent learns at its next heartbeat.
    /// A job whose node had ended outside the queue (a bad row from before job nodes were
    /// kept to the queue's own changes) only has its entry closed; its node is returned as
    /// it is.
    pub(crate) fn cancel_job(&mut self, job: NodeId, reason: &str) -> Result<Node> {
        let row = get_job(self.tx, job)?;
        if row.status == JobStatus::Finished {
            return Err(Error::BadTransition {
                node: job,
                from: NodeState::Done,
                to: NodeState::Done,
            });
        }
        self.finish_job_row(job)?;
        let node = get_node(self.tx, job)?;
        if node.state == NodeState::Done {
            tracing::warn!(job = %job, "a job's node had ended already; its queue entry is closed");
            return Ok(node);
        }
        let mut data = Map::new();
        data.insert(
            "error_code".into(),
            labwire_common::ErrorCode::Cancelled.as_str().into(),
        );
        data.insert(
            "error_msg".into(),
            if reason.is_empty() {
                "cancelled".to_string()
            } else {
                reason.to_string()
            }
            .into(),
        );
        self.update_node(
            job,
            NodeUpdate {
                state: Some(NodeState::Done),
                result: Some(NodeResult::Incomplete),
                data,
                ..Default::default()
            },
        )
    }
}

#[cfg(test)]
impl Write<'_> {
    /// A lease for tests: session `s` of `lab` on device `dev` of type `dt`, until `until`.
    pub(crate) fn claim_for_test(
        &mut self,
        id: NodeId,
        lab: &str,
        until: DateTime<Utc>,
    ) -> Result<Option<Claim>> {
        self.claim_job(
            id,
            &LeaseTerms {
                lab: &crate::model::LabName::new(lab),
                session: &crate::model::SessionId::new("s"),
                device: "dev",
                device_type: "dt",
                until,
            },
        )
    }

    /// A result report for tests, with no error and default retries.
    pub(crate) fn report_for_test(
        &mut self,
        lab: &str,
        job: NodeId,
        attempt: i32,
        result: NodeResult,
        tests: Vec<labwire_common::TestNode>,
    ) -> Result<ReportOutcome> {
        self.report_result(
            ResultReport {
                lab: crate::model::LabName::new(lab),
                job,
                attempt: AttemptNo(attempt),
                result,
                error_code: String::new(),
                error_msg: String::new(),
                tests,
                extra: Map::new(),
            },
            &RetryPolicy::default(),
        )
    }
}
