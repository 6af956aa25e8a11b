//! The gRPC services: what agents call (AgentService, by client certificate) and what
//! clients call (NodeService, EventService, AdminService, BorrowService, by bearer
//! token).

mod admin;
mod agent;
pub(crate) mod borrow;
mod console;
mod events;
pub(crate) mod health;
mod nodes;
mod session;

pub(crate) use admin::AdminApi;
pub(crate) use agent::AgentApi;
pub(crate) use borrow::BorrowApi;
pub(crate) use events::EventApi;
pub(crate) use nodes::NodeApi;

use crate::model::NodeId;
use tonic::Status;

/// A node id from a request field; refuses 0 and negatives with the field's name.
pub(crate) fn node_id(field: &str, v: i64) -> Result<NodeId, Status> {
    if v <= 0 {
        return Err(Status::invalid_argument(format!(
            "{field} must be a node id (a positive number), got {v}"
        )));
    }
    Ok(NodeId(v))
}
