//! Types shared by every labwire crate: test results, the result tree that agents send back,
//! the one rule for test names and the shape of a result tree that the parsers and the
//! coordinator both apply, the criteria a job carries and the device description they are
//! matched against, the error codes of incomplete jobs, and the standard output of the
//! command-line tools (a closed pipe ends a command quietly).

pub mod criteria;
pub mod error_code;
pub mod names;
pub mod normalise;
pub mod result;
pub mod stdout;

pub use criteria::{Criteria, DeviceInfo, Health, Mismatch};
pub use error_code::ErrorCode;
pub use result::{NodeResult, TestNode};

/// The shortest hold of a failed job's board (`hold_on_failure`), in seconds.
pub const MIN_HOLD_ON_FAILURE_SECONDS: u32 = 60;
/// The longest hold of a failed job's board (`hold_on_failure`), in seconds: a day.
pub const MAX_HOLD_ON_FAILURE_SECONDS: u32 = 24 * 3600;
