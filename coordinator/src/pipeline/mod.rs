//! The pipeline services that run inside the coordinator next to dispatch: the trigger
//! (new commits become `checkout` nodes), the timeout service (timeouts, holdoffs, closing)
//! and the e-mailed checkout reports.

pub mod mail;
pub mod timeout;
pub mod trigger;
