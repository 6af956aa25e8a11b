//! Labgrid: the agent runs jobs on the places of a lab's Labgrid coordinator. `client` wraps
//! `labgrid-client` (read places, acquire, power, find the serial port, release); `source`
//! follows a coordinator's places and publishes the free ones as devices. The job itself is
//! run by [`crate::driver::labgrid`].

pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod owed;
pub(crate) mod source;
pub(crate) mod view;

pub(crate) use client::{LabgridClient, LabgridError};
pub(crate) use source::LabgridSource;
