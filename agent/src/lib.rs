//! The labwire agent: the daemon that runs in a lab, pulls jobs from the coordinator, runs
//! them on the lab's devices and returns the results.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod device_types;
pub mod devices;
pub mod driver;
pub mod joblog;
pub mod outbox;
