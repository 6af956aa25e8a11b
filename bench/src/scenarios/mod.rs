//! The benchmark scenarios; each returns its figures.

pub mod bigresult;
pub mod bigstore;
pub mod board;
pub mod cancel;
pub mod console;
pub mod dispatch;
pub mod events;
pub mod footprint;
pub mod idle;
pub mod parse_cmd;
pub mod parsers;
pub mod queries;
pub mod serial;
pub mod throughput;
