//! AgentService: what lab agents call. Every call is authenticated by the client certificate;
//! every job call is checked against the lease held by the calling lab.

use super::node_id;
use crate::model::{AttemptNo, LabName, NodeId, SessionId};
use crate::shared::{Session, SharedRef};
use crate::store::ReportOutcome;
use crate::store::jobs::ResultReport;
use labwire_common::NodeResult;
use labwire_proto::convert;
use labwire_proto::v1::{self, agent_service_server::AgentService};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// The agent service.
pub(crate) struct AgentApi {
    shared: SharedRef,
}

impl AgentApi {
    /// The service over shared state.
    pub(crate) fn new(shared: SharedRef) -> Self {
        AgentApi { shared }
    }

    fn lease_until(&self) -> chrono::DateTime<chrono::Utc> {
        lease_until(&self.shared)
    }

    async fn session_of(&self, lab: &LabName, session: &SessionId) -> Result<Session, Status> {
        session_of(&self.shared, lab, session)
    }
}

/// When a lease granted or renewed now runs out.
pub(super) fn lease_until(shared: &crate::shared::Shared) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
        + chrono::Duration::from_std(shared.config.leases.duration)
            .unwrap_or(chrono::Duration::seconds(60))
}

/// The session `session`, checked to be one of `lab`'s.
pub(super) fn session_of(
    shared: &crate::shared::Shared,
    lab: &LabName,
    session: &SessionId,
) -> Result<Session, Status> {
    let s = shared.session(session)?;
    if &s.lab != lab {
        return Err(Status::permission_denied(format!(
            "session `{session}` belongs to another lab"
        )));
    }
    Ok(s)
}

fn job_ref(r: Option<&v1::JobRef>) -> Result<(NodeId, AttemptNo), Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("job is required"))?;
    Ok((node_id("job.job", r.job)?, AttemptNo(r.attempt)))
}

/// The jobs an agent says it holds, as (job, attempt).
pub(super) fn held(refs: &[v1::JobRef]) -> Vec<(NodeId, AttemptNo)> {
    refs.iter()
        .filter(|j| j.job > 0)
        .map(|j| (NodeId(j.job), AttemptNo(j.attempt)))
        .collect()
}

/// Jobs as the agent names them.
pub(super) fn job_refs(jobs: Vec<(NodeId, AttemptNo)>) -> Vec<v1::JobRef> {
    jobs.into_iter()
        .map(|(j, a)| v1::JobRef {
            job: j.0,
            attempt: a.0,
        })
        .collect()
}

pub(super) fn devices_json(devices: &[labwire_common::DeviceInfo]) -> serde_json::Value {
    serde_json::to_value(devices).unwrap_or_default()
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        req: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let lab = self.shared.auth.lab(&req).await?;
        let r = req.into_inner();
        let devices: Vec<_> = r.devices.iter().map(convert::device_from_proto).collect();
        let session = SessionId::random();
        let held = held(&r.held_jobs);
        let until = self.lease_until();
        let max_retries = self.shared.config.leases.max_retries as i32;
        let (lab2, slots) = (lab.clone(), r.free_slots);
        // What the agent holds is renewed in this transaction; renewals held in memory from
        // its previous session are superseded.
        self.shared.dispatcher.liveness.forget_renewals(&lab);
        // One transaction; the sweep in it never fails on one bad row (it is repaired), and
        // the queue changes reach the dispatcher once it commits. The devices come back with
        // the health that counts (an admin's maintenance over the agent's word).
        let silent_after = self.shared.config.leases.silent_after();
        let (lost, devices) = self
            .shared
            .queue
            .write(move |w| {
                let devices = w.report_health(&lab2, &devices)?;
                w.touch_lab(
                    &lab2,
                    Some(&devices_json(&devices)),
                    Some(slots),
                    silent_after,
                )?;
                let lost = w.renew_leases(&lab2, &held, until)?;
                // Leases of this lab that the agent no longer holds (it restarted and lost
                // them) expire now: the job goes back to the queue as a retry.
                let keep: Vec<NodeId> = held.iter().map(|h| h.0).collect();
                w.expire_lab_leases_except(&lab2, &keep)?;
                w.sweep_expired_leases(max_retries)?;
                Ok((lost, devices))
            })
            .await?;
        self.shared
            .dispatcher
            .update_lab(&lab, Some(devices.clone()), r.free_slots, false)
            .await;
        tracing::info!(lab = %lab, session = %session, devices = devices.len(), "agent registered");
        self.shared
            .sessions
            .write()
            .map_err(|_| Status::internal("session table lock poisoned"))?
            .insert(
                session.clone(),
                Session {
                    lab: lab.clone(),
                    devices,
                    free_slots: r.free_slots,
                    last_seen: Instant::now(),
                },
            );
        let cfg = &self.shared.config.leases;
        let reserved = self.shared.dispatcher.reserved.of(&lab);
        Ok(Response::new(v1::RegisterResponse {
            reserved,
            lab: lab.into(),
            session: session.to_string(),
            heartbeat_interval_ms: cfg.heartbeat.as_millis() as u32,
            lease_ms: cfg.duration.as_millis() as u32,
            lost_jobs: job_refs(lost),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let lab = self.shared.auth.lab(&req).await?;
        let r = req.into_inner();
        Ok(Response::new(
            super::session::heartbeat(&self.shared, &lab, r).await?,
        ))
    }

    type SessionStream = super::session::SessionStream;

    async fn session(
        &self,
        req: Request<tonic::Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let lab = self.shared.auth.lab(&req).await?;
        let stream = super::session::open(self.shared.clone(), lab, req.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn acquire_job(
        &self,
        req: Request<v1::AcquireJobRequest>,
    ) -> Result<Response<v1::AcquireJobResponse>, Status> {
        let lab = self.shared.auth.lab(&req).await?;
        let r = req.into_inner();
        let session_id = SessionId::new(r.session);
        let session = self.session_of(&lab, &session_id).await?;
        let mut free = Vec::new();
        for name in &r.free_devices {
            match session.devices.iter().find(|d| &d.name == name) {
                Some(d) => free.push(d.clone()),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "free_devices: `{name}` is not one of the devices this session advertised"
                    )));
                }
            }
        }
        let wait = Duration::from_millis(u64::from(r.wait_ms.min(60_000)));
        let acquire = self
            .shared
            .dispatcher
            .acquire(&lab, &session_id, free, wait);
        let got = tokio::select! {
            got = acquire => got?,
            _ = self.shared.shutdown.cancelled() => None,
        };
        let Some(a) = got else {
            return Ok(Response::new(v1::AcquireJobResponse { assignment: None }));
        };
        tracing::info!(job = %a.claim.job.id, attempt = %a.claim.job.attempt, lab = %lab, device = %a.device, "job leased");
        Ok(Response::new(v1::AcquireJobResponse {
            assignment: Some(v1::Assignment {
                job: Some(v1::JobRef {
                    job: a.claim.job.id.0,
                    attempt: a.claim.job.attempt.0,
                }),
                spec: Some(a.claim.job.spec.clone()),
                device: a.device,
                lease_until: a.claim.job.lease_expires.map(convert::timestamp),
                node: Some(a.claim.node.to_proto()),
            }),
        }))
    }

    async fn reject_job(
        &self,
        req: Request<v1::RejectJobRequest>,
    ) -> Result<Response<v1::RejectJobResponse>, Status> {
        let lab = self.shared.auth.lab(&req).await?;
        let r = req.into_inner();
        let (job, attempt) = job_ref(r.job.as_ref())?;
        self.shared
            .queue
            .reject(lab, job, attempt, r.reason)
            .await?;
        Ok(Response::new(v1::RejectJobResponse {}))
    }

    async fn start_job(
        &self,
        req: Request<v1::StartJobRequest>,
    ) -> Result<Response<v1::StartJobResponse>, Status> {
        let lab = self.shared.auth.lab(&req).await?;
        let r = req.into_inner();
        let (job, attempt) = job_ref(r.job.as_ref())?;
        if r.device.is_empty() {
            return Err(Status::invalid_argument("device is required"));
        }
        self.shared.queue.start(lab, job, attempt, r.device).await?;
        Ok(Response::new(v1::StartJobResponse {}))
    }

    async fn append_log(
        &self,
        req: Request<v1::AppendLogRequest>,
    ) -> Result<Response<v1::AppendLogResponse>, Status> {
        let lab = self.shared.auth.lab(&req).await?;
        let r = req.into_inner();
        let (job, attempt) = job_ref(r.job.as_ref())?;
        let (offset, data) = (r.offset, r.data);
        let length = self
            .shared
            .store
            .write(move |w| w.append_log(&lab, job, attempt, offset, &data))
            .await?;
        Ok(Response::new(v1::AppendLogResponse { length }))
    }

    async fn report_result(
        &self,
        req: Request<v1::ReportResultRequest>,
    ) -> Result<Response<v1::ReportResultResponse>, Status> {
        let lab = self.shared.auth.lab(&req).await?;
        let r = req.into_inner();
        let (job, attempt) = job_ref(r.job.as_ref())?;
        let result = convert::result_from_proto(r.result).ok_or_else(|| {
            Status::invalid_argument("result is required (pass, fail, skip or incomplete)")
        })?;
        // Never refused for its content: normalised off the store's writer (see results.rs).
        let tests: Vec<_> = r.tests.iter().map(convert::test_from_proto).collect();
        let limits = self.shared.config.results.clone();
        let intake =
            tokio::task::spawn_blocking(move || crate::results::normalise_report(tests, &limits))
                .await
                .map_err(|e| Status::internal(format!("normalising the result failed: {e}")))?;
        let mut extra = r
            .data
            .as_ref()
            .map(convert::struct_to_map)
            .unwrap_or_default();
        // Keys that the coordinator owns cannot be set by a report.
        for k in ["error_code", "error_msg", "attempt", "lab", "criteria"]
            .into_iter()
            .chain(crate::results::OWNED_KEYS)
        {
            extra.remove(k);
        }
        extra.extend(intake.data);
        let tests = intake.tests;
        extra.insert("log_length".into(), r.log_length.into());
        let retry = self.shared.config.retries.policy();
        let report = ResultReport {
            lab: lab.clone(),
            job,
            attempt,
            result,
            error_code: r.error_code,
            error_msg: r.error_msg,
            tests,
            extra,
        };
        let outcome = self.shared.queue.report(report, retry).await?;
        match outcome {
            ReportOutcome::Retried(row) => {
                tracing::warn!(job = %job, %attempt, lab = %lab, retry = %row.attempt, "attempt failed for an infrastructure reason; the job goes back to the queue");
            }
            ReportOutcome::Applied(node) => {
                tracing::info!(job = %job, %attempt, lab = %lab, result = %node.result.unwrap_or(NodeResult::Incomplete), "job finished");
                // A failed job may have left its board held (`hold_on_failure`): the lab
                // learns its reserved devices at once.
                if node.result == Some(NodeResult::Fail)
                    && let Err(e) = crate::borrow::refresh(&self.shared).await
                {
                    tracing::warn!(error = %e, "cannot read the reservations");
                }
            }
            ReportOutcome::Duplicate => {
                tracing::debug!(job = %job, %attempt, "duplicate result report acknowledged");
            }
        }
        Ok(Response::new(v1::ReportResultResponse {}))
    }
}
