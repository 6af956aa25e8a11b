//! Types shared by every labwire crate: test results, the result tree that agents send back,
//! the criteria a job carries and the device description they are matched against.

pub mod criteria;
pub mod result;

pub use criteria::{Criteria, DeviceInfo, Health, Mismatch};
pub use result::{NodeResult, TestNode};
