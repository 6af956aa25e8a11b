//! BorrowService: reserve a board, extend or release the reservation, list them. Needs the
//! `console` scope (admin includes it). A reservation belongs to the token's name; only its
//! owner or an admin extends or releases it.

use crate::shared::SharedRef;
use crate::store::JobStatus;
use crate::store::labs::Scope;
use crate::store::reservations::{Caller, Reservation};
use labwire_proto::convert;
use labwire_proto::v1::{self, borrow_service_server::BorrowService};
use tonic::{Request, Response, Status};

/// The longest lease one call grants.
pub(crate) const MAX_LEASE_SECONDS: u32 = 7 * 24 * 3600;

/// The longest reason kept.
const MAX_REASON: usize = 500;

/// The borrow service.
pub(crate) struct BorrowApi {
    shared: SharedRef,
}

impl BorrowApi {
    /// The service over shared state.
    pub(crate) fn new(shared: SharedRef) -> Self {
        BorrowApi { shared }
    }
}

/// Checks a lab or device name from a request: not empty, printable, at most 128 bytes.
fn name(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field}: expected a name of 1 to 128 printable characters"
        )));
    }
    Ok(())
}

/// A stored reservation as sent; `job_running` says whether a job still holds its device.
pub(crate) fn to_proto(r: &Reservation, job_running: bool) -> v1::Reservation {
    v1::Reservation {
        lab: r.lab.clone(),
        device: r.device.clone(),
        owner: r.owner.clone(),
        reason: r.reason.clone(),
        created: Some(convert::timestamp(r.created)),
        expires: Some(convert::timestamp(r.expires)),
        job_running,
    }
}

impl BorrowApi {
    /// The jobs leased to `device` of `lab` now.
    async fn running_on(&self, lab: &str, device: &str) -> Result<Vec<i64>, Status> {
        let (lab, device) = (lab.to_string(), device.to_string());
        Ok(self
            .shared
            .store
            .read(move |c| {
                Ok(
                    crate::store::jobs::list_jobs(c, Some(JobStatus::Leased), 10_000)?
                        .into_iter()
                        .filter(|j| {
                            j.lease_owner.as_deref() == Some(lab.as_str())
                                && j.device.as_deref() == Some(device.as_str())
                        })
                        .map(|j| j.id.0)
                        .collect(),
                )
            })
            .await?)
    }

    /// Whether a lab advertises `device` (a connected one, or its last advertisement).
    async fn advertised(&self, lab: &str, device: &str) -> Result<bool, Status> {
        let labs = crate::shared::lab_overview(&self.shared).await?;
        Ok(labs
            .iter()
            .any(|l| l.row.name == lab && l.devices.iter().any(|d| d.name == device)))
    }

    /// The devices that meet `criteria` (in `lab`, if not empty), not reserved and in good
    /// health: idle ones in connected labs first.
    async fn candidates(
        &self,
        lab: &str,
        criteria: &labwire_common::Criteria,
    ) -> Result<Vec<(String, String)>, Status> {
        let labs = crate::shared::lab_overview(&self.shared).await?;
        let leased = self
            .shared
            .store
            .read(|c| crate::store::jobs::list_jobs(c, Some(JobStatus::Leased), 10_000))
            .await?;
        let busy = |l: &str, d: &str| {
            leased
                .iter()
                .any(|j| j.lease_owner.as_deref() == Some(l) && j.device.as_deref() == Some(d))
        };
        let mut out: Vec<(bool, bool, String, String)> = Vec::new();
        for l in labs
            .iter()
            .filter(|l| l.row.revoked_at.is_none() && (lab.is_empty() || l.row.name == lab))
        {
            for d in l.devices.iter().filter(|d| criteria.matches(d)) {
                if !self
                    .shared
                    .dispatcher
                    .reserved
                    .contains(&l.row.name, &d.name)
                {
                    out.push((
                        !l.connected,
                        busy(&l.row.name, &d.name),
                        l.row.name.clone(),
                        d.name.clone(),
                    ));
                }
            }
        }
        out.sort();
        Ok(out.into_iter().map(|(_, _, l, d)| (l, d)).collect())
    }
}

#[tonic::async_trait]
impl BorrowService for BorrowApi {
    async fn reserve(
        &self,
        req: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        let who = self.shared.auth.token(&req, Scope::Console).await?;
        let mut r = req.into_inner();
        if let Some(c) = r.criteria.take() {
            if !r.device.is_empty() || r.extend {
                return Err(Status::invalid_argument(
                    "criteria: give either a device or criteria, and extend a device by name",
                ));
            }
            if !r.lab.is_empty() {
                name("lab", &r.lab)?;
            }
            let crit = convert::criteria_from_proto(&c);
            let found = self.candidates(&r.lab, &crit).await?;
            let Some((lab, device)) = found.into_iter().next() else {
                return Err(Status::not_found(
                    "no device in good health and not reserved meets the criteria",
                ));
            };
            r.lab = lab;
            r.device = device;
        }
        name("lab", &r.lab)?;
        name("device", &r.device)?;
        if !(1..=MAX_LEASE_SECONDS).contains(&r.seconds) {
            return Err(Status::invalid_argument(format!(
                "seconds: expected 1 to {MAX_LEASE_SECONDS} (7 days)"
            )));
        }
        if r.reason.len() > MAX_REASON || r.reason.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "reason: expected one line of at most {MAX_REASON} bytes"
            )));
        }
        let until =
            self.shared.store.clock().now() + chrono::Duration::seconds(i64::from(r.seconds));
        let caller_name = who.name.clone();
        let admin = who.allows(Scope::Admin);
        let (lab, device, reason) = (r.lab.clone(), r.device.clone(), r.reason.trim().to_string());
        let res = if r.extend {
            self.shared
                .store
                .write(move |w| {
                    w.extend_reservation(
                        &lab,
                        &device,
                        Caller {
                            name: &caller_name,
                            admin,
                        },
                        until,
                    )
                })
                .await?
        } else {
            if !self.advertised(&r.lab, &r.device).await? {
                return Err(Status::not_found(format!(
                    "no lab `{}` with a device `{}`",
                    r.lab, r.device
                )));
            }
            self.shared
                .store
                .write(move |w| w.reserve(&lab, &device, &caller_name, &reason, until))
                .await?
        };
        crate::borrow::refresh(&self.shared).await?;
        let mut cancelled = Vec::new();
        let running = self.running_on(&r.lab, &r.device).await?;
        if r.now && !r.extend {
            for id in &running {
                let why = format!("device `{}` reserved now by `{}`", r.device, who.name);
                match self
                    .shared
                    .queue
                    .cancel(crate::model::NodeId(*id), why)
                    .await
                {
                    Ok(_) => cancelled.push(*id),
                    // It may have ended meanwhile.
                    Err(e) => tracing::info!(job = id, error = %e, "job not cancelled"),
                }
            }
        }
        let job_running = running.len() > cancelled.len();
        Ok(Response::new(v1::ReserveResponse {
            reservation: Some(to_proto(&res, job_running)),
            cancelled_jobs: cancelled,
        }))
    }

    async fn release(
        &self,
        req: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let who = self.shared.auth.token(&req, Scope::Console).await?;
        let r = req.into_inner();
        name("lab", &r.lab)?;
        name("device", &r.device)?;
        let admin = who.allows(Scope::Admin);
        let res = self
            .shared
            .store
            .write(move |w| {
                w.release_reservation(
                    &r.lab,
                    &r.device,
                    Caller {
                        name: &who.name,
                        admin,
                    },
                )
            })
            .await?;
        crate::borrow::refresh(&self.shared).await?;
        Ok(Response::new(v1::ReleaseResponse {
            reservation: Some(to_proto(&res, false)),
        }))
    }

    type ConsoleStream = super::console::ConsoleStream;

    async fn console(
        &self,
        req: Request<tonic::Streaming<v1::ConsoleRequest>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let who = self.shared.auth.token(&req, Scope::Console).await?;
        let s = super::console::console(self.shared.clone(), who, req.into_inner()).await?;
        Ok(Response::new(s))
    }

    async fn power(
        &self,
        req: Request<v1::PowerRequest>,
    ) -> Result<Response<v1::PowerResponse>, Status> {
        let who = self.shared.auth.token(&req, Scope::Console).await?;
        super::console::power(&self.shared, &who, req.into_inner()).await?;
        Ok(Response::new(v1::PowerResponse {}))
    }

    async fn list_reservations(
        &self,
        req: Request<v1::ListReservationsRequest>,
    ) -> Result<Response<v1::ListReservationsResponse>, Status> {
        self.shared.auth.token(&req, Scope::Console).await?;
        let r = req.into_inner();
        if !r.lab.is_empty() {
            name("lab", &r.lab)?;
        }
        let now = self.shared.store.clock().now();
        let (live, leased) = self
            .shared
            .store
            .read(move |c| {
                let lab = (!r.lab.is_empty()).then_some(r.lab.as_str());
                Ok((
                    crate::store::reservations::live(c, lab, now)?,
                    crate::store::jobs::list_jobs(c, Some(JobStatus::Leased), 10_000)?,
                ))
            })
            .await?;
        let reservations = live
            .iter()
            .map(|res| {
                let busy = leased.iter().any(|j| {
                    j.lease_owner.as_deref() == Some(res.lab.as_str())
                        && j.device.as_deref() == Some(res.device.as_str())
                });
                to_proto(res, busy)
            })
            .collect();
        Ok(Response::new(v1::ListReservationsResponse { reservations }))
    }
}
