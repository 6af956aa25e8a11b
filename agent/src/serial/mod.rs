//! The serial console engine: opening a console (tty, TCP or a program), one reader per
//! console that hands every byte to the job's log in order, and an expect/send session on top
//! (used by the serial driver, and by any driver that reaches a board's console).

pub(crate) mod config;
pub mod console;
pub(crate) mod session;
pub(crate) mod telnet;

pub use console::{Console, open};
pub(crate) use session::{ExpectError, Session};
