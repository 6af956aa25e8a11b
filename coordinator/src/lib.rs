//! The labwire coordinator: the store of CI nodes, events and jobs, the gRPC API, dispatch
//! to lab agents under leases, and the certificate authority that identifies labs.

pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod http;
pub mod model;
pub mod pipeline_config;
pub mod pki;
pub mod placement;
pub mod report;
pub mod results;
pub mod rules;
pub mod scheduler;
pub mod server;
pub mod services;
pub mod store;
pub mod submit_limits;
