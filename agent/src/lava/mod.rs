//! LAVA: the agent submits to the lab's own LAVA server and follows its jobs there, so the
//! lab exposes nothing to the outside. [`client`] speaks LAVA's REST API v0.2, [`inventory`]
//! turns the server's devices into one pooled labwire device per device type,
//! [`templates`] renders job definitions, [`results`] maps LAVA's results to labwire's; the
//! driver itself is [`crate::driver::lava`].

pub mod client;
pub mod config;
pub(crate) mod definition;
pub mod inventory;
pub(crate) mod log;
pub(crate) mod notify;
pub(crate) mod results;
pub(crate) mod steps;
pub mod templates;

pub use config::LavaConfig;
