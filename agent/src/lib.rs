//! The labwire agent: the daemon that runs in a lab, pulls jobs from the coordinator, runs
//! them on the lab's devices and returns the results.
//!
//! The public modules are what the binaries, the benchmarks and the tests use: the command
//! line ([`cli`]), the config ([`config`]), the daemon ([`daemon::run`]), and the parts a
//! driver test assembles by hand (devices, drivers, the job log, the outbox, the LAVA client,
//! the console). Everything else is the crate's own.

// Every public item is documented; an item not reachable from outside is `pub(crate)`.
#![warn(unreachable_pub)]

pub mod cli;
pub(crate) mod client;
pub mod config;
pub mod daemon;
pub mod device_types;
pub mod devices;
pub mod driver;
pub(crate) mod fetch;
pub mod health;
pub mod joblog;
pub(crate) mod labgrid;
pub mod lava;
pub mod outbox;
pub(crate) mod placeholders;
pub(crate) mod secrets;
pub mod serial;
pub mod sources;
pub(crate) mod state;
pub mod tftp;

/// Installs the workspace's one rustls crypto provider (ring) if none is installed yet.
/// The binaries do this at start-up; library entry points that open TLS connections call it
/// too, so that using the library never panics for want of a provider.
pub fn ensure_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
