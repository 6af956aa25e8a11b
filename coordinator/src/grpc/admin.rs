//! AdminService: labs, jobs, revocation and cancellation. Needs the `admin` scope.

use super::node_id;
use crate::model::LabName;
use crate::shared::{LabOverview, SharedRef, lab_overview};
use crate::store::JobStatus;
use crate::store::labs::Scope;
use labwire_proto::convert;
use labwire_proto::v1::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

/// The admin service.
pub(crate) struct AdminApi {
    shared: SharedRef,
}

impl AdminApi {
    /// The service over shared state.
    pub(crate) fn new(shared: SharedRef) -> Self {
        AdminApi { shared }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_labs(
        &self,
        req: Request<v1::ListLabsRequest>,
    ) -> Result<Response<v1::ListLabsResponse>, Status> {
        self.shared.auth.token(&req, Scope::Admin).await?;
        let labs = lab_overview(&self.shared).await?;
        let labs = labs
            .into_iter()
            .map(
                |LabOverview {
                     row: l,
                     devices,
                     connected,
                     jobs_in_flight,
                     reservations,
                 }| {
                    v1::Lab {
                        fingerprints: l
                            .certs
                            .iter()
                            .map(|(fp, revoked)| {
                                if *revoked {
                                    format!("{fp} (revoked)")
                                } else {
                                    fp.clone()
                                }
                            })
                            .collect(),
                        last_seen: l.last_seen.map(convert::timestamp),
                        devices: devices
                            .iter()
                            .map(|d| convert::device_to_proto(d, false))
                            .collect(),
                        free_slots: l.free_slots,
                        revoked: l.revoked_at.is_some(),
                        connected,
                        reservations: reservations
                            .iter()
                            .map(|r| super::borrow::to_proto(r, false))
                            .collect(),
                        jobs_in_flight,
                        name: l.name,
                    }
                },
            )
            .collect();
        Ok(Response::new(v1::ListLabsResponse { labs }))
    }

    async fn list_jobs(
        &self,
        req: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        self.shared.auth.token(&req, Scope::Admin).await?;
        let r = req.into_inner();
        let status = match v1::JobStatus::try_from(r.status) {
            Ok(v1::JobStatus::Unspecified) => None,
            Ok(v1::JobStatus::Queued) => Some(JobStatus::Queued),
            Ok(v1::JobStatus::Leased) => Some(JobStatus::Leased),
            Ok(v1::JobStatus::Finished) => Some(JobStatus::Finished),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "status: {} is not a known value",
                    r.status
                )));
            }
        };
        let limit = if r.limit == 0 {
            100
        } else {
            r.limit.min(1000) as usize
        };
        let jobs = self
            .shared
            .store
            .read(move |c| {
                let rows = crate::store::jobs::list_jobs(c, status, limit)?;
                rows.into_iter()
                    .map(|j| Ok((crate::store::nodes::get_node(c, j.id)?, j)))
                    .collect::<crate::error::Result<Vec<_>>>()
            })
            .await?;
        Ok(Response::new(v1::ListJobsResponse {
            jobs: jobs
                .into_iter()
                .map(|(node, j)| v1::Job {
                    node: Some(node.to_proto()),
                    status: j.status.to_proto() as i32,
                    lease_owner: j.lease_owner.unwrap_or_default(),
                    lease_until: j.lease_expires.map(convert::timestamp),
                    attempt: j.attempt.0,
                    priority: j.priority,
                    device: j.device.unwrap_or_default(),
                    spec: Some(j.spec),
                })
                .collect(),
        }))
    }

    async fn revoke_lab(
        &self,
        req: Request<v1::RevokeLabRequest>,
    ) -> Result<Response<v1::RevokeLabResponse>, Status> {
        self.shared.auth.token(&req, Scope::Admin).await?;
        let lab = LabName::new(req.into_inner().lab);
        let (certs, requeued) = self.shared.queue.revoke(lab.clone()).await?;
        self.shared.end_sessions(&lab);
        let closed = self.shared.auth.lab_revoked(&lab);
        tracing::warn!(lab = %lab, certificates = certs, jobs = requeued.len(), connections_closed = closed, "lab revoked");
        Ok(Response::new(v1::RevokeLabResponse {
            certificates: certs as u32,
            jobs_requeued: requeued.len() as u32,
        }))
    }

    async fn cancel_job(
        &self,
        req: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::CancelJobResponse>, Status> {
        self.shared.auth.token(&req, Scope::Admin).await?;
        let r = req.into_inner();
        let id = node_id("job", r.job)?;
        let node = self.shared.queue.cancel(id, r.reason).await?;
        Ok(Response::new(v1::CancelJobResponse {
            node: Some(node.to_proto()),
        }))
    }

    async fn set_device_health(
        &self,
        req: Request<v1::SetDeviceHealthRequest>,
    ) -> Result<Response<v1::SetDeviceHealthResponse>, Status> {
        let who = self.shared.auth.token(&req, Scope::Admin).await?;
        let r = req.into_inner();
        crate::grpc::health::set_device_health(&self.shared, &who.name, r).await
    }

    async fn lab_report(
        &self,
        req: Request<v1::LabReportRequest>,
    ) -> Result<Response<v1::LabReportResponse>, Status> {
        self.shared.auth.token(&req, Scope::Admin).await?;
        crate::grpc::health::lab_report(&self.shared, req.into_inner()).await
    }

    async fn explain_job(
        &self,
        req: Request<v1::ExplainJobRequest>,
    ) -> Result<Response<v1::ExplainJobResponse>, Status> {
        self.shared.auth.token(&req, Scope::Admin).await?;
        let id = node_id("job", req.into_inner().job)?;
        let (row, labs) = self
            .shared
            .store
            .read(move |c| {
                let row = crate::store::jobs::find_job(c, id)?
                    .ok_or_else(|| crate::error::Error::NotFound(format!("job {id} not found")))?;
                let labs: Vec<String> = crate::store::labs::list_labs(c)?
                    .into_iter()
                    .filter(|l| l.revoked_at.is_none())
                    .map(|l| l.name)
                    .collect();
                Ok((row, labs))
            })
            .await?;
        let verdicts = self.shared.dispatcher.explain(&row, &labs).await;
        Ok(Response::new(v1::ExplainJobResponse {
            status: row.status.to_proto() as i32,
            lab: row.lease_owner.clone().unwrap_or_default(),
            device: row.device.clone().unwrap_or_default(),
            criteria: serde_json::to_string(&row.criteria).unwrap_or_default(),
            attributes: serde_json::to_string(&row.attrs).unwrap_or_default(),
            labs: verdicts
                .into_iter()
                .map(|v| v1::LabVerdict {
                    lab: v.lab,
                    eligible: v.eligible,
                    reasons: v.reasons,
                    score: v.score,
                })
                .collect(),
        }))
    }
}
