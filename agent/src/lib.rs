//! The labwire agent: the daemon that runs in a lab, pulls jobs from the coordinator, runs
//! them on the lab's devices and returns the results.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod device_types;
pub mod devices;
pub mod driver;
pub mod fetch;
pub mod joblog;
pub mod labgrid;
pub mod lava;
pub mod outbox;
pub mod placeholders;
pub mod secrets;
pub mod serial;
pub mod sources;
pub mod state;

/// Installs the workspace's one rustls crypto provider (ring) if none is installed yet.
/// The binaries do this at start-up; library entry points that open TLS connections call it
/// too, so that using the library never panics for want of a provider.
pub fn ensure_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
