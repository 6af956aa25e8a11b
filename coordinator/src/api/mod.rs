//! The gRPC services and the state they share.

mod admin;
pub use admin::{LabOverview, lab_overview};
mod agent;
mod events;
mod nodes;

pub use admin::AdminApi;
pub use agent::AgentApi;
pub use events::EventApi;
pub use nodes::NodeApi;

use crate::auth::Auth;
use crate::config::CoordinatorConfig;
use crate::dispatch::Dispatcher;
use crate::model::NodeId;
use crate::store::Store;
use labwire_common::DeviceInfo;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// An agent session: one per connected agent process.
#[derive(Debug, Clone)]
pub struct Session {
    /// The lab.
    pub lab: String,
    /// Its advertised devices.
    pub devices: Vec<DeviceInfo>,
    /// Free slots it advertised.
    pub free_slots: u32,
    /// When it last called.
    pub last_seen: Instant,
}

/// State shared by every service.
pub struct Shared {
    /// The store.
    pub store: Store,
    /// Dispatch.
    pub dispatcher: Dispatcher,
    /// Caller authentication.
    pub auth: Auth,
    /// Live agent sessions by id.
    pub sessions: RwLock<HashMap<String, Session>>,
    /// The configuration.
    pub config: CoordinatorConfig,
    /// Cancelled when the coordinator shuts down; long calls end early.
    pub shutdown: CancellationToken,
}

impl Shared {
    /// The session, if it is known; agents register again when it is not.
    pub fn session(&self, id: &str) -> Result<Session, Status> {
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

    /// Labs with a session heard from within two heartbeat intervals.
    pub fn connected_labs(&self) -> HashMap<String, Session> {
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

/// A node id from a request field; refuses 0 and negatives with the field's name.
pub(crate) fn node_id(field: &str, v: i64) -> Result<NodeId, Status> {
    if v <= 0 {
        return Err(Status::invalid_argument(format!(
            "{field} must be a node id (a positive number), got {v}"
        )));
    }
    Ok(NodeId(v))
}

/// Shared state handle used by the services.
pub type SharedRef = Arc<Shared>;
