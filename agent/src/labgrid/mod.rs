//! Labgrid: the agent runs jobs on the places of a lab's Labgrid coordinator. `link` is the
//! agent's gRPC session with the coordinator (places, resources and their changes as they
//! happen, acquire, release); `client` adds power through `labgrid-client`; `source`
//! publishes the free places as devices and settles what the agent owes (`owed`). The job
//! itself is run by [`crate::driver::labgrid`].

pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod link;
pub(crate) mod owed;
pub(crate) mod source;
pub(crate) mod view;

pub(crate) use client::{LabgridClient, LabgridError};
pub(crate) use source::LabgridSource;
