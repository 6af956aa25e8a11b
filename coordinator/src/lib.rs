//! The labwire coordinator: the store of CI nodes, events and jobs, the gRPC API, dispatch
//! to lab agents under leases, and the certificate authority that identifies labs.
//!
//! Items are `pub(crate)` unless the binaries, the benchmark or the end-to-end tests use
//! them; every public item is documented.

pub(crate) mod auth;
pub(crate) mod borrow;
pub mod cli;
pub mod clock;
pub mod config;
pub(crate) mod console;
pub(crate) mod dispatch;
pub mod error;
pub(crate) mod files;
pub(crate) mod grpc;
pub(crate) mod http;
pub mod model;
pub mod net;
pub(crate) mod pipeline;
pub mod pipeline_config;
pub mod pki;
pub mod placement;
pub mod report;
pub mod results;
pub(crate) mod rules;
pub mod server;
pub(crate) mod setup;
pub(crate) mod shared;
pub mod store;
pub mod submit_limits;
