//! The state every part of a running coordinator shares (the gRPC services, the HTTP side,
//! the pipeline services): the store, dispatch, authentication, the live agent sessions and
//! the configuration.

use crate::auth::Auth;
use crate::config::CoordinatorConfig;
use crate::dispatch::{Dispatcher, JobQueue};
use crate::model::{LabName, SessionId};
use crate::store::Store;
use labwire_common::DeviceInfo;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// An agent session: one per connected agent process.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The lab.
    pub(crate) lab: LabName,
    /// Its advertised devices.
    pub(crate) devices: Vec<DeviceInfo>,
    /// Free slots it advertised.
    pub(crate) free_slots: u32,
    /// When it last called.
    pub(crate) last_seen: Instant,
}

/// State shared by every service.
pub(crate) struct Shared {
    /// The store.
    pub(crate) store: Store,
    /// Dispatch (what reads it and hands out leases; changes of the queue go through
    /// `queue`).
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// The job queue: every change of the queue, written to the store then told to the
    /// dispatcher.
    pub(crate) queue: JobQueue,
    /// Caller authentication.
    pub(crate) auth: Auth,
    /// Live agent sessions by id.
    pub(crate) sessions: RwLock<HashMap<SessionId, Session>>,
    /// The configuration.
    pub(crate) config: CoordinatorConfig,
    /// Cancelled when the coordinator shuts down; long calls end early.
    pub(crate) shutdown: CancellationToken,
    /// The console relays of borrowed boards.
    pub(crate) consoles: crate::console::Consoles,
}

impl Shared {
    /// The session, if it is known; agents register again when it is not.
    pub(crate) fn session(&self, id: &SessionId) -> Result<Session, Status> {
        let mut map = self
            .sessions
            .write()
            .map_err(|_| Status::internal("session table lock poisoned"))?;
        let s = map.get_mut(id).ok_or_else(|| {
            Status::failed_precondition(format!(
                "unknown agent session `{id}` (the coordinator restarted?): register again"
            ))
        })?;
        s.last_seen = Instant::now();
        Ok(s.clone())
    }

    /// Ends every agent session of `lab` (it was revoked): its agents must register again,
    /// which its revoked certificate no longer allows.
    pub(crate) fn end_sessions(&self, lab: &LabName) {
        if let Ok(mut map) = self.sessions.write() {
            map.retain(|_, s| &s.lab != lab);
        }
    }

    /// Labs with a session heard from within two heartbeat intervals.
    pub(crate) fn connected_labs(&self) -> HashMap<LabName, Session> {
        let horizon = self.config.leases.heartbeat * 2 + std::time::Duration::from_secs(5);
        let map = match self.sessions.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.values()
            .filter(|s| s.last_seen.elapsed() < horizon)
            .map(|s| (s.lab.clone(), s.clone()))
            .collect()
    }
}

/// Shared state handle used by the services.
pub(crate) type SharedRef = Arc<Shared>;

/// A lab as the admin views (`ListLabs`, the dashboard) show it: its stored row, the devices
/// it last advertised, whether its agent is connected now and how many jobs it holds.
#[derive(Debug, Clone)]
pub(crate) struct LabOverview {
    /// The stored lab.
    pub(crate) row: crate::store::labs::LabRow,
    /// Its devices as last advertised.
    pub(crate) devices: Vec<labwire_common::DeviceInfo>,
    /// Whether its agent has a live session.
    pub(crate) connected: bool,
    /// Jobs leased to it.
    pub(crate) jobs_in_flight: u32,
    /// The live reservations of its devices.
    pub(crate) reservations: Vec<crate::store::reservations::Reservation>,
}

/// Every lab with its devices, connection and jobs in flight.
pub(crate) async fn lab_overview(shared: &Shared) -> Result<Vec<LabOverview>, crate::error::Error> {
    let now = shared.store.clock().now();
    let (labs, leases, reservations) = shared
        .store
        .read(move |c| {
            Ok((
                crate::store::labs::list_labs(c)?,
                crate::store::jobs::leases_by_lab(c)?,
                crate::store::reservations::live(c, None, now)?,
            ))
        })
        .await?;
    let connected = shared.connected_labs();
    Ok(labs
        .into_iter()
        .map(|row| LabOverview {
            devices: serde_json::from_value(row.devices.clone()).unwrap_or_default(),
            connected: connected.contains_key(row.name.as_str()),
            jobs_in_flight: leases.get(&row.name).copied().unwrap_or(0),
            reservations: reservations
                .iter()
                .filter(|r| r.lab == row.name)
                .cloned()
                .collect(),
            row,
        })
        .collect())
}
