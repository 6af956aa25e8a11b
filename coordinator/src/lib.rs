//! The labwire coordinator: the store of CI nodes, events and jobs, the gRPC API, dispatch
//! to lab agents under leases, and the certificate authority that identifies labs.

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod files;
pub mod grpc;
pub mod http;
pub mod model;
pub mod pipeline;
pub mod pipeline_config;
pub mod pki;
pub mod placement;
pub mod report;
pub mod rules;
pub mod server;
pub mod setup;
pub mod shared;
pub mod store;

/// The old name of [`shared`], kept so that `http/ui.rs` (rewritten on another branch) still
/// finds what it imports; remove once it imports `crate::shared`.
pub(crate) mod api {
    pub(crate) use crate::shared::{LabOverview, SharedRef, lab_overview};
}
