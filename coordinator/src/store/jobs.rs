//! The job queue: a job node plus its queue entry. Leases (claim, renew, expire, give back),
//! log appends and result reports, each checked against the lease so that only the agent
//! holding the current attempt of a job can act on it.

use super::db::{Backend, Connection, Row, params};
use super::nodes::{NewNode, NodeUpdate, get_node};
use super::{Write, corrupt, from_micros, micros};
use crate::error::{Error, Result};
use crate::model::{Node, NodeId, NodeKind, NodeState};
use crate::pipeline_config::{Variant, VariantMode};
use crate::rules::Attrs;
use chrono::{DateTime, Utc};
use labwire_common::{Criteria, ErrorCode, NodeResult, TestNode};
use labwire_proto::{convert, v1};
use prost::Message;
use serde_json::{Map, Value, json};

/// Where a job is in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
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
    pub fn to_proto(self) -> v1::JobStatus {
        match self {
            Self::Queued => v1::JobStatus::Queued,
            Self::Leased => v1::JobStatus::Leased,
            Self::Finished => v1::JobStatus::Finished,
        }
    }
}

/// A job to queue.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    /// What to run.
    pub spec: v1::JobSpec,
    /// Parent node.
    pub parent: Option<NodeId>,
    /// Who asked for it.
    pub submitter: String,
    /// The token name that created it.
    pub owner: String,
    /// The node kind: `job` unless the scheduler creates a `kbuild` or `process` job.
    pub kind: Option<NodeKind>,
    /// Placement attributes (tree, branch, job, platform, ...); `job`, `kind` and
    /// `device_type` are filled in from the spec, tree and branch from the parent's
    /// `kernel_revision`, when missing.
    pub attrs: Attrs,
    /// The run group, for runs that must differ.
    pub group: Option<RunGroup>,
    /// Extra node data.
    pub data: Map<String, Value>,
}

/// The runs of one job that must each use another device type (or device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunGroup {
    /// Identifies the group (the scheduler uses `EVENT/JOB/PLATFORM`).
    pub id: String,
    /// What must differ.
    pub variant: Variant,
    /// What happens when nothing different is left.
    pub mode: VariantMode,
}

/// When a job that ended `incomplete` goes back to the queue.
#[derive(Debug, Clone, Default)]
pub struct RetryPolicy {
    /// At most this many retries (the node's `retry_counter`).
    pub max: i32,
    /// The error codes that mean the infrastructure failed, not the kernel.
    pub error_codes: Vec<String>,
}

/// A queue entry.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// The job node's id.
    pub id: NodeId,
    /// The job's spec.
    pub spec: v1::JobSpec,
    /// Its criteria, decoded.
    pub criteria: Criteria,
    /// Priority (higher first).
    pub priority: i32,
    /// Queue state.
    pub status: JobStatus,
    /// The lab holding the lease.
    pub lease_owner: Option<String>,
    /// The agent session holding the lease.
    pub lease_session: Option<String>,
    /// When the lease runs out.
    pub lease_expires: Option<DateTime<Utc>>,
    /// The lease generation: grows by one with every lease of the job.
    pub attempt: i32,
    /// The device the job runs on.
    pub device: Option<String>,
    /// When it was (last) queued.
    pub queued_at: DateTime<Utc>,
    /// Placement attributes.
    pub attrs: Attrs,
    /// The run group, if any.
    pub group: Option<RunGroup>,
    /// The device type of the device it was leased to.
    pub device_type: Option<String>,
}

/// A lease just granted.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The queue entry, now leased.
    pub job: JobRow,
    /// The job node.
    pub node: Node,
}

/// What [`Write::sweep_expired_leases`] did.
#[derive(Debug, Default)]
pub struct LeaseSweep {
    /// Jobs back in the queue.
    pub requeued: Vec<JobRow>,
    /// Jobs that ran out of retries and ended incomplete.
    pub failed: Vec<NodeId>,
}

/// The outcome of a result report.
#[derive(Debug)]
pub enum ReportOutcome {
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
            lease_session: r.get(6)?,
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
pub fn find_job(conn: &Connection, id: NodeId) -> Result<Option<JobRow>> {
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
pub const KBUILD_HOLDOFF: chrono::Duration = chrono::Duration::minutes(10);

/// The attribute list that holds `lab/device` of the attempts that failed for an
/// infrastructure reason; the dispatcher prefers other devices for the next attempt.
pub const RETRY_DEVICES: &str = "retry_devices";

/// A job's statistics signature: its name and device type (`name@device_type`, or the name
/// alone when it does not ask for one).
pub fn signature(row: &JobRow) -> String {
    match row
        .device_type
        .as_deref()
        .or(row.criteria.device_type.as_deref())
    {
        Some(dt) => format!("{}@{dt}", row.spec.name),
        None => row.spec.name.clone(),
    }
}

/// Statistics of one signature in one lab.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStats {
    /// Finished attempts counted.
    pub runs: i64,
    /// Moving average of the queue wait, ms.
    pub wait_ms: f64,
    /// Moving average of the run time, ms.
    pub run_ms: f64,
}

/// Every statistics row: (signature, lab) → stats.
pub fn job_stats(
    conn: &Connection,
) -> Result<std::collections::HashMap<(String, String), JobStats>> {
    let rows = conn.query_map(
        "SELECT signature, lab, runs, wait_ms_avg, run_ms_avg FROM job_stats",
        params![],
        |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                JobStats {
                    runs: r.get(2)?,
                    wait_ms: r.get(3)?,
                    run_ms: r.get(4)?,
                },
            ))
        },
    )?;
    Ok(rows.into_iter().collect())
}

/// The jobs of a run group that hold or held a device: (job, device type, device).
pub fn group_usage(conn: &Connection, group: &str) -> Result<Vec<(NodeId, String, String)>> {
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
pub fn list_jobs(
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
pub fn queued_jobs(conn: &Connection) -> Result<Vec<JobRow>> {
    conn.query_map(
        &format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY priority DESC, node_id"
        ),
        params![],
        job_from_row,
    )
}

/// Number of jobs leased to each lab.
pub fn leases_by_lab(conn: &Connection) -> Result<std::collections::HashMap<String, u32>> {
    let rows = conn.query_map(
        "SELECT lease_owner, COUNT(*) FROM jobs WHERE status = 'leased' GROUP BY lease_owner",
        params![],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)),
    )?;
    Ok(rows.into_iter().collect())
}

/// The attempt whose log a reader wants: the reported one, else the newest with a log.
pub fn log_attempt(conn: &Connection, job: NodeId) -> Result<Option<i32>> {
    let reported: Option<i32> = conn.query_opt(
        "SELECT attempt FROM job_reports WHERE job = ?1 ORDER BY attempt DESC LIMIT 1",
        params![job.0],
        |r| r.get(0),
    )?;
    if reported.is_some() {
        return Ok(reported);
    }
    conn.query_opt(
        "SELECT attempt FROM logs WHERE job = ?1 ORDER BY attempt DESC LIMIT 1",
        params![job.0],
        |r| r.get(0),
    )
}

/// Reads up to `max` bytes of chunks of a job attempt's log starting at chunk offset `from`.
/// Returns (offset, data) pairs in order.
pub fn read_log(
    conn: &Connection,
    job: NodeId,
    attempt: i32,
    from: u64,
    max: usize,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let (mut out, mut size) = (Vec::new(), 0usize);
    conn.query_each(
        "SELECT \"offset\", data FROM log_chunks WHERE job = ?1 AND attempt = ?2 \
         AND \"offset\" >= ?3 ORDER BY \"offset\"",
        params![job.0, attempt, from as i64],
        |r| {
            let off: i64 = r.get(0)?;
            let data: Vec<u8> = r.get(1)?;
            size += data.len();
            out.push((off as u64, data));
            Ok(size < max)
        },
    )?;
    Ok(out)
}

/// The spec's visible parts as node data, for people reading the node.
fn spec_data(spec: &v1::JobSpec, criteria: &Criteria) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "criteria".into(),
        serde_json::to_value(criteria).unwrap_or_default(),
    );
    if !spec.params.is_empty() {
        m.insert("params".into(), json!(spec.params));
    }
    if !spec.commands.is_empty() {
        m.insert("commands".into(), json!(spec.commands));
    }
    if !spec.artifacts.is_empty() {
        let a: Map<String, Value> = spec
            .artifacts
            .iter()
            .map(|(k, v)| (k.clone(), json!({"url": v.url, "sha256": v.sha256})))
            .collect();
        m.insert("inputs".into(), Value::Object(a));
    }
    if let Some(d) = &criteria.driver {
        m.insert("runtime".into(), d.clone().into());
    }
    m.insert("priority".into(), spec.priority.into());
    if spec.timeout_seconds > 0 {
        m.insert("timeout_seconds".into(), spec.timeout_seconds.into());
    }
    m
}

/// Whether `k` may name a job parameter: letters, digits and underscores, not empty (it
/// becomes part of an environment variable name on the agent).
pub fn valid_param_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a job spec before it is queued; errors name the field.
pub fn validate_spec(spec: &v1::JobSpec) -> Result<()> {
    if spec.name.trim().is_empty() {
        return Err(Error::Invalid("spec.name must not be empty".into()));
    }
    for (k, a) in &spec.artifacts {
        let scheme_ok = ["http://", "https://", "file://"]
            .iter()
            .any(|s| a.url.starts_with(s));
        if !scheme_ok {
            return Err(Error::Invalid(format!(
                "spec.artifacts.{k}.url `{}` must be an http, https or file URL",
                a.url
            )));
        }
        if !a.sha256.is_empty()
            && (a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(Error::Invalid(format!(
                "spec.artifacts.{k}.sha256 must be 64 hexadecimal digits"
            )));
        }
    }
    if !matches!(
        spec.parser.as_str(),
        "" | "auto" | "ktap" | "lava" | "kmsg" | "pattern" | "none"
    ) {
        return Err(Error::Invalid(format!(
            "spec.parser `{}` is not one of auto, ktap, lava, kmsg, pattern, none",
            spec.parser
        )));
    }
    for k in spec.params.keys() {
        if !valid_param_key(k) {
            return Err(Error::Invalid(format!(
                "spec.params key `{k}` must be letters, digits and underscores"
            )));
        }
    }
    Ok(())
}

fn insert_tests(w: &mut Write<'_>, parent: &Node, tests: &[TestNode]) -> Result<()> {
    for t in tests {
        let mut n = NewNode::new(NodeKind::Test, t.name.clone());
        n.parent = Some(parent.id);
        n.state = NodeState::Done;
        n.result = Some(t.result);
        n.group = parent.group.clone();
        n.owner = parent.owner.clone();
        n.submitter = parent.submitter.clone();
        if let Some(x) = &t.log_excerpt {
            n.data.insert("log_excerpt".into(), x.clone().into());
        }
        if let Some(m) = t.measurement {
            n.data.insert("measurement".into(), m.into());
        }
        if let Some(u) = &t.units {
            n.data.insert("units".into(), u.clone().into());
        }
        if let Some(e) = &t.error {
            n.data.insert("error_msg".into(), e.clone().into());
        }
        // A suite node stays open for its children, then closes.
        if !t.tests.is_empty() {
            n.state = NodeState::Running;
        }
        let node = w.create_node(n)?;
        if !t.tests.is_empty() {
            insert_tests(w, &node, &t.tests)?;
            w.update_node(
                node.id,
                NodeUpdate {
                    state: Some(NodeState::Done),
                    ..Default::default()
                },
            )?;
        }
    }
    Ok(())
}

impl Write<'_> {
    /// Queues a job: creates its node (running) and its queue entry.
    pub fn submit_job(&mut self, j: NewJob) -> Result<(Node, JobRow)> {
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
        Ok((node, job))
    }

    /// Leases a queued job to a lab's agent session, starting a new attempt.
    pub fn claim_job(
        &mut self,
        id: NodeId,
        lab: &str,
        session: &str,
        device: &str,
        device_type: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Claim> {
        let revoked: Option<Option<i64>> = self.tx.query_opt(
            "SELECT revoked_at FROM labs WHERE name = ?1",
            params![lab],
            |r| r.get(0),
        )?;
        if matches!(revoked, Some(Some(_))) {
            return Err(Error::PermissionDenied(format!("lab `{lab}` is revoked")));
        }
        // Only a queued job is leased. On PostgreSQL the row is locked first with SKIP
        // LOCKED: when another replica is leasing it right now, that claim wins and this one
        // fails at once (and the dispatcher tries its next job) instead of waiting. The
        // leased row comes back with RETURNING.
        let which = match self.tx.backend() {
            Backend::Sqlite => "?1 AND status = 'queued'",
            Backend::Postgres => {
                "(SELECT node_id FROM jobs WHERE node_id = ?1 AND status = 'queued' \
                 FOR UPDATE SKIP LOCKED)"
            }
        };
        let job = self
            .tx
            .query_opt(
                &format!(
                    "UPDATE jobs SET status = 'leased', lease_owner = ?2, lease_session = ?3, \
                     lease_expires = ?4, attempt = attempt + 1, device = ?5, leased_at = ?6, \
                     device_type = ?7 WHERE node_id = {which} RETURNING {JOB_COLUMNS}"
                ),
                params![
                    id.0,
                    lab,
                    session,
                    micros(lease_until),
                    device,
                    micros(self.now),
                    device_type
                ],
                job_from_row,
            )?
            .ok_or_else(|| {
                Error::LeaseLost(format!(
                    "job {id} is no longer queued (or another coordinator is leasing it)"
                ))
            })?;
        let mut data = Map::new();
        data.insert("lab".into(), lab.into());
        data.insert("device".into(), device.into());
        let node = self.update_node(
            id,
            NodeUpdate {
                data,
                ..Default::default()
            },
        )?;
        Ok(Claim { job, node })
    }

    /// The queue entry of `job`, checked to be the current attempt leased to `lab`.
    fn leased_to(&self, lab: &str, job: NodeId, attempt: i32) -> Result<JobRow> {
        let row = get_job(self.tx, job)?;
        if row.status != JobStatus::Leased
            || row.lease_owner.as_deref() != Some(lab)
            || row.attempt != attempt
        {
            return Err(Error::LeaseLost(format!(
                "job {job} attempt {attempt} is not leased to lab `{lab}` (now {}{})",
                row.status.as_str(),
                match (&row.lease_owner, row.status) {
                    (Some(o), JobStatus::Leased) =>
                        format!(", attempt {} leased to `{o}`", row.attempt),
                    _ => String::new(),
                }
            )));
        }
        Ok(row)
    }

    /// Gives a leased attempt back to the queue without counting a retry (the agent refused
    /// it, or never received it).
    pub fn release_job(
        &mut self,
        lab: &str,
        job: NodeId,
        attempt: i32,
        reason: &str,
    ) -> Result<JobRow> {
        self.leased_to(lab, job, attempt)?;
        self.tx.execute(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_session = NULL, \
             lease_expires = NULL, device = NULL, device_type = NULL, queued_at = ?2 WHERE node_id = ?1",
            params![job.0, micros(self.now)],
        )?;
        let mut data = Map::new();
        data.insert("lab".into(), Value::Null);
        data.insert("device".into(), Value::Null);
        data.insert("last_rejection".into(), format!("{lab}: {reason}").into());
        self.update_node(
            job,
            NodeUpdate {
                data,
                ..Default::default()
            },
        )?;
        get_job(self.tx, job)
    }

    /// Extends the leases of the listed attempts held by `lab`. Returns the attempts that are
    /// not (or no longer) leased to it: the agent must stop them.
    pub fn renew_leases(
        &mut self,
        lab: &str,
        running: &[(NodeId, i32)],
        until: DateTime<Utc>,
    ) -> Result<Vec<(NodeId, i32)>> {
        let mut lost = Vec::new();
        for &(job, attempt) in running {
            let n = self.tx.execute(
                "UPDATE jobs SET lease_expires = ?4 WHERE node_id = ?1 AND attempt = ?2 \
                     AND lease_owner = ?3 AND status = 'leased'",
                params![job.0, attempt, lab, micros(until)],
            )?;
            if n == 0 {
                lost.push((job, attempt));
            }
        }
        Ok(lost)
    }

    /// Puts every lease that ran out before now back in the queue (retry_counter + 1), or,
    /// past `max_retries`, ends the job `done`/`incomplete` with `error_code=lease_expired`.
    pub fn sweep_expired_leases(&mut self, max_retries: i32) -> Result<LeaseSweep> {
        let expired: Vec<i64> = self.tx.query_map(
            "SELECT node_id FROM jobs WHERE status = 'leased' AND lease_expires < ?1",
            params![micros(self.now)],
            |r| r.get(0),
        )?;
        let mut sweep = LeaseSweep::default();
        for id in expired.into_iter().map(NodeId) {
            let row = get_job(self.tx, id)?;
            let node = get_node(self.tx, id)?;
            let lab = row.lease_owner.clone().unwrap_or_default();
            if node.retry_counter < max_retries {
                self.tx.execute(
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_session = NULL, \
                     lease_expires = NULL, device = NULL, device_type = NULL, queued_at = ?2 WHERE node_id = ?1",
                    params![id.0, micros(self.now)],
                )?;
                let mut data = Map::new();
                data.insert("lab".into(), Value::Null);
                data.insert("device".into(), Value::Null);
                data.insert(
                    "last_error".into(),
                    format!("lease of attempt {} held by `{lab}` expired", row.attempt).into(),
                );
                self.update_node(
                    id,
                    NodeUpdate {
                        data,
                        retry_counter: Some(node.retry_counter + 1),
                        ..Default::default()
                    },
                )?;
                sweep.requeued.push(get_job(self.tx, id)?);
            } else {
                self.finish_job_row(id)?;
                let mut data = Map::new();
                data.insert("error_code".into(), ErrorCode::LeaseExpired.as_str().into());
                data.insert(
                    "error_msg".into(),
                    format!(
                        "the lease held by `{lab}` expired and the job ran out of retries ({max_retries})"
                    )
                    .into(),
                );
                self.update_node(
                    id,
                    NodeUpdate {
                        state: Some(NodeState::Done),
                        result: Some(NodeResult::Incomplete),
                        data,
                        ..Default::default()
                    },
                )?;
                sweep.failed.push(id);
            }
        }
        Ok(sweep)
    }

    fn finish_job_row(&mut self, id: NodeId) -> Result<()> {
        self.tx.execute(
            "UPDATE jobs SET status = 'finished', lease_expires = NULL, finished_at = ?2 \
             WHERE node_id = ?1",
            params![id.0, micros(self.now)],
        )?;
        Ok(())
    }

    /// Ends a queued job that can never run: `done`, `incomplete`, with the error.
    pub fn fail_queued_job(&mut self, job: NodeId, code: &str, msg: &str) -> Result<Node> {
        let n = self.tx.execute(
            "UPDATE jobs SET status = 'finished', finished_at = ?2 WHERE node_id = ?1 \
             AND status = 'queued'",
            params![job.0, micros(self.now)],
        )?;
        if n != 1 {
            return Err(Error::LeaseLost(format!("job {job} is no longer queued")));
        }
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

    /// Records that the job started on a device (of a device type, when known).
    pub fn start_job(
        &mut self,
        lab: &str,
        job: NodeId,
        attempt: i32,
        device: &str,
        device_type: Option<&str>,
    ) -> Result<()> {
        self.leased_to(lab, job, attempt)?;
        self.tx.execute(
            "UPDATE jobs SET device = ?2, started_at = ?3, device_type = COALESCE(?4, device_type) \
             WHERE node_id = ?1",
            params![job.0, device, micros(self.now), device_type],
        )?;
        let mut data = Map::new();
        data.insert("device".into(), device.into());
        self.update_node(
            job,
            NodeUpdate {
                data,
                ..Default::default()
            },
        )?;
        Ok(())
    }

    /// Appends bytes to an attempt's log; bytes already stored are skipped. Returns the
    /// stored length.
    pub fn append_log(
        &mut self,
        lab: &str,
        job: NodeId,
        attempt: i32,
        offset: u64,
        data: &[u8],
    ) -> Result<u64> {
        let reported_by: Option<String> = self.tx.query_opt(
            "SELECT lab FROM job_reports WHERE job = ?1 AND attempt = ?2",
            params![job.0, attempt],
            |r| r.get(0),
        )?;
        match &reported_by {
            Some(l) if l == lab => {}
            Some(_) => {
                return Err(Error::LeaseLost(format!(
                    "job {job} attempt {attempt} was reported by another lab"
                )));
            }
            None => {
                self.leased_to(lab, job, attempt)?;
            }
        }
        let length: u64 = self
            .tx
            .query_opt(
                "SELECT length FROM logs WHERE job = ?1 AND attempt = ?2",
                params![job.0, attempt],
                |r| r.get::<_, i64>(0),
            )?
            .unwrap_or(0) as u64;
        if offset > length {
            return Err(Error::Invalid(format!(
                "log of job {job} attempt {attempt} has {length} bytes; a chunk at offset {offset} would leave a gap"
            )));
        }
        let end = offset + data.len() as u64;
        if end <= length {
            return Ok(length);
        }
        if reported_by.is_some() {
            return Err(Error::LeaseLost(format!(
                "job {job} attempt {attempt} is finished; its log is closed at {length} bytes"
            )));
        }
        let fresh = &data[(length - offset) as usize..];
        self.tx.execute(
            "INSERT INTO log_chunks (job, attempt, \"offset\", data) VALUES (?1, ?2, ?3, ?4)",
            params![job.0, attempt, length as i64, fresh],
        )?;
        self.tx.execute(
            "INSERT INTO logs (job, attempt, length) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(job, attempt) DO UPDATE SET length = excluded.length",
            params![job.0, attempt, end as i64],
        )?;
        Ok(end)
    }

    /// Applies an attempt's final result: the result tree becomes test nodes, the job node
    /// goes `done` (a `kbuild` that passed goes `available`, to take its tests as children).
    /// A second report of the same attempt by the same lab is a no-op. An attempt that
    /// ended `incomplete` with one of `retry.error_codes` goes back to the queue instead, up
    /// to `retry.max` times: its tests are not kept (only the final attempt counts), its
    /// summary is added to the node's `data.attempts`, and the next attempt prefers another
    /// device.
    #[allow(clippy::too_many_arguments)]
    pub fn report_result(
        &mut self,
        lab: &str,
        job: NodeId,
        attempt: i32,
        result: NodeResult,
        error_code: &str,
        error_msg: &str,
        tests: &[TestNode],
        extra: Map<String, Value>,
        retry: &RetryPolicy,
    ) -> Result<ReportOutcome> {
        let reported_by: Option<String> = self.tx.query_opt(
            "SELECT lab FROM job_reports WHERE job = ?1 AND attempt = ?2",
            params![job.0, attempt],
            |r| r.get(0),
        )?;
        if reported_by.as_deref() == Some(lab) {
            return Ok(ReportOutcome::Duplicate);
        }
        let row = self.leased_to(lab, job, attempt)?;
        let node = get_node(self.tx, job)?;
        self.tx.execute(
            "INSERT INTO job_reports (job, attempt, lab, reported) VALUES (?1, ?2, ?3, ?4)",
            params![job.0, attempt, lab, micros(self.now)],
        )?;
        self.record_stats(&row, lab)?;
        let mut history = node
            .data
            .get("attempts")
            .and_then(|a| a.as_array().cloned())
            .unwrap_or_default();
        history.push(json!({
            "attempt": attempt, "lab": lab, "device": row.device, "result": result,
            "error_code": error_code, "error_msg": error_msg,
        }));
        if result == NodeResult::Incomplete
            && node.retry_counter < retry.max
            && retry.error_codes.iter().any(|c| c == error_code)
        {
            let mut attrs = row.attrs.clone();
            if let Some(d) = &row.device {
                attrs
                    .lists
                    .entry(RETRY_DEVICES.into())
                    .or_default()
                    .push(format!("{lab}/{d}"));
            }
            self.tx.execute(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_session = NULL, \
                 lease_expires = NULL, device = NULL, device_type = NULL, queued_at = ?2, \
                 attrs = ?3 WHERE node_id = ?1",
                params![
                    job.0,
                    micros(self.now),
                    serde_json::to_string(&attrs).map_err(|e| Error::Internal(e.to_string()))?
                ],
            )?;
            let mut data = Map::new();
            data.insert("attempts".into(), Value::Array(history));
            data.insert("lab".into(), Value::Null);
            data.insert("device".into(), Value::Null);
            data.insert(
                "last_error".into(),
                format!("attempt {attempt} on `{lab}`: {error_code}: {error_msg}").into(),
            );
            self.update_node(
                job,
                NodeUpdate {
                    data,
                    retry_counter: Some(node.retry_counter + 1),
                    ..Default::default()
                },
            )?;
            return Ok(ReportOutcome::Retried(Box::new(get_job(self.tx, job)?)));
        }
        insert_tests(self, &node, tests)?;
        self.finish_job_row(job)?;
        let mut data = extra;
        if !error_code.is_empty() {
            data.insert("error_code".into(), error_code.into());
        }
        if !error_msg.is_empty() {
            data.insert("error_msg".into(), error_msg.into());
        }
        data.insert("attempt".into(), attempt.into());
        if history.len() > 1 {
            data.insert("attempts".into(), Value::Array(history));
        }
        let mut artifacts = std::collections::BTreeMap::new();
        artifacts.insert("log".into(), format!("/logs/{job}/{attempt}"));
        // A build that passed takes its tests as children for a while (KernelCI's holdoff);
        // the timeout service closes it afterwards.
        let (state, holdoff) = if node.kind == NodeKind::Kbuild && result == NodeResult::Pass {
            (NodeState::Available, Some(self.now + KBUILD_HOLDOFF))
        } else {
            (NodeState::Done, None)
        };
        let node = self.update_node(
            job,
            NodeUpdate {
                state: Some(state),
                result: Some(result),
                data,
                artifacts,
                holdoff,
                ..Default::default()
            },
        )?;
        Ok(ReportOutcome::Applied(Box::new(node)))
    }

    /// Folds a finished attempt's queue wait and run time into the statistics of its
    /// signature in its lab (moving averages, the newest run weighing a fifth).
    fn record_stats(&mut self, row: &JobRow, lab: &str) -> Result<()> {
        let (leased, started): (Option<i64>, Option<i64>) = self.tx.query_row(
            "SELECT leased_at, started_at FROM jobs WHERE node_id = ?1",
            params![row.id.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let Some(leased) = leased else { return Ok(()) };
        let wait_ms = (leased - micros(row.queued_at)).max(0) as f64 / 1000.0;
        let run_ms = (micros(self.now) - started.unwrap_or(leased)).max(0) as f64 / 1000.0;
        self.tx.execute(
            "INSERT INTO job_stats (signature, lab, runs, wait_ms_avg, run_ms_avg, updated) \
                 VALUES (?1, ?2, 1, ?3, ?4, ?5) \
                 ON CONFLICT(signature, lab) DO UPDATE SET runs = job_stats.runs + 1, \
                 wait_ms_avg = job_stats.wait_ms_avg * 0.8 + excluded.wait_ms_avg * 0.2, \
                 run_ms_avg = job_stats.run_ms_avg * 0.8 + excluded.run_ms_avg * 0.2, \
                 updated = excluded.updated",
            params![signature(row), lab, wait_ms, run_ms, micros(self.now)],
        )?;
        Ok(())
    }

    /// Cancels a job that is not finished: it leaves the queue and its node ends `done`,
    /// `incomplete`, `error_code=cancelled`. A leased job's agent learns at its next heartbeat.
    pub fn cancel_job(&mut self, job: NodeId, reason: &str) -> Result<Node> {
        let row = get_job(self.tx, job)?;
        if row.status == JobStatus::Finished {
            return Err(Error::BadTransition {
                node: job,
                from: NodeState::Done,
                to: NodeState::Done,
            });
        }
        self.finish_job_row(job)?;
        let mut data = Map::new();
        data.insert("error_code".into(), ErrorCode::Cancelled.as_str().into());
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

    /// Gives every job leased to `lab` back to the queue (the lab was revoked).
    pub fn requeue_lab_jobs(&mut self, lab: &str) -> Result<Vec<JobRow>> {
        let ids: Vec<i64> = self.tx.query_map(
            "SELECT node_id FROM jobs WHERE status = 'leased' AND lease_owner = ?1",
            params![lab],
            |r| r.get(0),
        )?;
        let mut out = Vec::new();
        for id in ids.into_iter().map(NodeId) {
            let attempt = get_job(self.tx, id)?.attempt;
            out.push(self.release_job(lab, id, attempt, "lab revoked")?);
        }
        Ok(out)
    }

    /// Makes every lease of `lab` except those of `keep` expire now (the lab's agent started
    /// again and no longer holds them); the next sweep puts them back in the queue.
    pub fn expire_lab_leases_except(&mut self, lab: &str, keep: &[NodeId]) -> Result<usize> {
        let held: Vec<i64> = self.tx.query_map(
            "SELECT node_id FROM jobs WHERE status = 'leased' AND lease_owner = ?1",
            params![lab],
            |r| r.get(0),
        )?;
        let mut n = 0;
        for id in held.into_iter().filter(|id| !keep.contains(&NodeId(*id))) {
            n += self.tx.execute(
                "UPDATE jobs SET lease_expires = 0 WHERE node_id = ?1 AND status = 'leased'",
                params![id],
            )?;
        }
        Ok(n)
    }

    /// Gives every lease a grace period of `lease` from now: run at start-up so that agents
    /// have time to reconnect after a coordinator outage before their jobs are taken away.
    pub fn extend_all_leases(&mut self, until: DateTime<Utc>) -> Result<usize> {
        self.tx.execute(
            "UPDATE jobs SET lease_expires = ?1 WHERE status = 'leased' AND lease_expires < ?1",
            params![micros(until)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;

    fn spec(name: &str) -> v1::JobSpec {
        v1::JobSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn lease_cycle_and_stale_reports() {
        let (_d, store) = temp_store();
        let (node, _) = store
            .write_blocking(|w| {
                w.submit_job(NewJob {
                    spec: spec("j"),
                    parent: None,
                    submitter: "me".into(),
                    owner: "admin".into(),
                    ..Default::default()
                })
            })
            .unwrap();
        let id = node.id;
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        let claim = store
            .write_blocking(move |w| w.claim_job(id, "lab-a", "s1", "dev", "dt", past))
            .unwrap();
        assert_eq!(claim.job.attempt, 1);
        // Claiming twice is refused.
        assert!(
            store
                .write_blocking(move |w| w.claim_job(id, "lab-b", "s2", "dev", "dt", past))
                .is_err()
        );
        let sweep = store.write_blocking(|w| w.sweep_expired_leases(3)).unwrap();
        assert_eq!(sweep.requeued.len(), 1);
        let later = chrono::Utc::now() + chrono::Duration::seconds(60);
        let claim = store
            .write_blocking(move |w| w.claim_job(id, "lab-b", "s2", "dev", "dt", later))
            .unwrap();
        assert_eq!(claim.job.attempt, 2);
        assert_eq!(claim.node.retry_counter, 1);
        // The first lab's late report is refused.
        let err = store
            .write_blocking(move |w| {
                w.report_result(
                    "lab-a",
                    id,
                    1,
                    NodeResult::Pass,
                    "",
                    "",
                    &[],
                    Map::new(),
                    &RetryPolicy::default(),
                )
            })
            .unwrap_err();
        assert!(matches!(err, Error::LeaseLost(_)), "{err}");
        // The holder's report applies once; a repeat is a duplicate.
        let tests = vec![TestNode::group(
            "suite",
            vec![TestNode::leaf("t1", NodeResult::Pass)],
        )];
        let t2 = tests.clone();
        let out = store
            .write_blocking(move |w| {
                w.report_result(
                    "lab-b",
                    id,
                    2,
                    NodeResult::Pass,
                    "",
                    "",
                    &t2,
                    Map::new(),
                    &RetryPolicy::default(),
                )
            })
            .unwrap();
        assert!(matches!(out, ReportOutcome::Applied(_)));
        let out = store
            .write_blocking(move |w| {
                w.report_result(
                    "lab-b",
                    id,
                    2,
                    NodeResult::Pass,
                    "",
                    "",
                    &tests,
                    Map::new(),
                    &RetryPolicy::default(),
                )
            })
            .unwrap();
        assert!(matches!(out, ReportOutcome::Duplicate));
        let kids = store
            .read_blocking(move |c| super::super::nodes::children(c, id))
            .unwrap();
        assert_eq!(kids.len(), 1);
        assert_eq!(kids[0].state, NodeState::Done);
    }

    #[test]
    fn log_appends_are_idempotent() {
        let (_d, store) = temp_store();
        let (node, _) = store
            .write_blocking(|w| {
                w.submit_job(NewJob {
                    spec: spec("j"),
                    parent: None,
                    submitter: String::new(),
                    owner: String::new(),
                    ..Default::default()
                })
            })
            .unwrap();
        let id = node.id;
        let later = chrono::Utc::now() + chrono::Duration::seconds(60);
        store
            .write_blocking(move |w| w.claim_job(id, "lab", "s", "d", "dt", later))
            .unwrap();
        let append = |off: u64, data: &'static [u8]| {
            store.write_blocking(move |w| w.append_log("lab", id, 1, off, data))
        };
        assert_eq!(append(0, b"hello ").unwrap(), 6);
        assert_eq!(append(0, b"hello ").unwrap(), 6);
        assert_eq!(append(3, b"lo world").unwrap(), 11);
        assert!(append(20, b"gap").is_err());
        let chunks = store
            .read_blocking(move |c| read_log(c, id, 1, 0, 1 << 20))
            .unwrap();
        let all: Vec<u8> = chunks.into_iter().flat_map(|(_, d)| d).collect();
        assert_eq!(all, b"hello world");
        assert!(
            store
                .write_blocking(move |w| w.append_log("other", id, 1, 11, b"x"))
                .is_err()
        );
    }

    #[test]
    fn retries_run_out() {
        let (_d, store) = temp_store();
        let (node, _) = store
            .write_blocking(|w| {
                w.submit_job(NewJob {
                    spec: spec("j"),
                    parent: None,
                    submitter: String::new(),
                    owner: String::new(),
                    ..Default::default()
                })
            })
            .unwrap();
        let id = node.id;
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        for round in 0..2 {
            store
                .write_blocking(move |w| w.claim_job(id, "lab", "s", "d", "dt", past))
                .unwrap();
            let sweep = store.write_blocking(|w| w.sweep_expired_leases(1)).unwrap();
            if round == 0 {
                assert_eq!(sweep.requeued.len(), 1);
            } else {
                assert_eq!(sweep.failed, vec![id]);
            }
        }
        let node = store.read_blocking(move |c| get_node(c, id)).unwrap();
        assert_eq!(node.state, NodeState::Done);
        assert_eq!(node.result, Some(NodeResult::Incomplete));
        assert_eq!(node.error_code(), Some("lease_expired"));
    }
}

#[cfg(test)]
mod request_validation {
    use super::*;
    use proptest::prelude::*;

    fn any_spec() -> impl Strategy<Value = v1::JobSpec> {
        (
            "\\PC{0,20}",
            proptest::collection::hash_map("[a-zA-Z_0-9 .;$-]{0,8}", "\\PC{0,30}", 0..4),
            proptest::collection::hash_map(
                "[a-z]{1,6}",
                ("\\PC{0,30}", "[0-9a-fA-Fg]{0,66}"),
                0..3,
            ),
            "\\PC{0,10}",
            any::<i32>(),
            any::<u32>(),
        )
            .prop_map(
                |(name, params, arts, parser, priority, timeout)| v1::JobSpec {
                    name,
                    params: params.into_iter().collect(),
                    artifacts: arts
                        .into_iter()
                        .map(|(k, (url, sha256))| (k, v1::Artifact { url, sha256 }))
                        .collect(),
                    parser,
                    priority,
                    timeout_seconds: timeout,
                    ..Default::default()
                },
            )
    }

    proptest! {
        // Each case opens a fresh store; on PostgreSQL that is a new database, so fewer.
        #![proptest_config(ProptestConfig::with_cases(
            if std::env::var("LABWIRE_TEST_STORE").as_deref() == Ok("postgres") { 25 } else { 200 }
        ))]

        /// Whatever a client sends, submission either queues the job with exactly that spec
        /// or refuses it with an `Invalid` error naming a `spec.` field; it never panics and
        /// never half-writes (a refused job leaves no node behind).
        #[test]
        fn submissions_are_validated(spec in any_spec()) {
            let (_d, store) = crate::store::temp_store();
            let s2 = spec.clone();
            let res = store.write_blocking(move |w| w.submit_job(NewJob { spec: s2, parent: None, submitter: String::new(), owner: String::new(), ..Default::default() }));
            let nodes = store.read_blocking(|c| crate::store::nodes::query_nodes(c, &crate::store::NodeFilter { limit: 10, ..Default::default() })).unwrap();
            match res {
                Ok((_, row)) => {
                    prop_assert_eq!(row.spec, spec);
                    prop_assert_eq!(nodes.len(), 1);
                }
                Err(Error::Invalid(msg)) => {
                    prop_assert!(msg.contains("spec."), "{}", msg);
                    prop_assert!(nodes.is_empty());
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }
}
