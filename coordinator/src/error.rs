//! The coordinator's domain errors and how each maps to a gRPC status.

use crate::model::{NodeId, NodeState};
use tonic::Status;

/// Everything that can go wrong in the store and the services above it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such node.
    #[error("node {0} not found")]
    NodeNotFound(NodeId),
    /// A state transition that the node state machine refuses.
    #[error("node {node}: state transition {from} -> {to} is not allowed")]
    BadTransition {
        /// The node.
        node: NodeId,
        /// Its current state.
        from: NodeState,
        /// The wanted state.
        to: NodeState,
    },
    /// The parent does not take new children.
    #[error("node {parent} is {state} and takes no new children")]
    ParentClosed {
        /// The parent.
        parent: NodeId,
        /// Its state.
        state: NodeState,
    },
    /// A request is malformed; the message names the field.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The caller's lease on a job is gone (expired, reassigned, cancelled, finished).
    #[error("{0}")]
    LeaseLost(String),
    /// A change that a rule of the coordinator refuses; the message names the rule.
    #[error("{0}")]
    Refused(String),
    /// The caller is not allowed to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller did not prove who it is.
    #[error("{0}")]
    Unauthenticated(String),
    /// Something asked for is gone for good (pruned events).
    #[error("{0}")]
    OutOfRange(String),
    /// A named thing (lab, token) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// SQLite failed.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("database error: {}", pg_message(.0))]
    Pg(#[from] postgres::Error),
    /// Stored data could not be decoded (a bug or a damaged database).
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// The blocking task running a database call died.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shorthand for results with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A PostgreSQL error with the server's own message (the client's `Display` says only
/// "db error" for those).
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                m.push_str(&format!("; {d}"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!("; hint: {h}"));
            }
            m
        }
        None => {
            // The client's own errors keep the cause (connection refused, TLS) as source.
            let mut m = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                let text = c.to_string();
                if !m.ends_with(&text) {
                    m.push_str(&format!(": {text}"));
                }
                src = c.source();
            }
            m
        }
    }
}

/// Whether a PostgreSQL error is a conflict between concurrent transactions (a deadlock or
/// a serialization failure) that succeeds when tried again.
pub fn retryable(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// Whether a PostgreSQL error means the connection is gone (closed, or ended by the server:
/// SQLSTATE classes 08, connection exception, and 57, operator intervention such as a
/// shutdown or `pg_terminate_backend`). The pool replaces such a connection; the call may be
/// tried again.
pub fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57"))
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::NodeNotFound(_) | Error::NotFound(_) => Status::not_found(msg),
            Error::BadTransition { .. }
            | Error::ParentClosed { .. }
            | Error::LeaseLost(_)
            | Error::Refused(_) => Status::failed_precondition(msg),
            Error::Invalid(_) => Status::invalid_argument(msg),
            Error::PermissionDenied(_) => Status::permission_denied(msg),
            Error::Unauthenticated(_) => Status::unauthenticated(msg),
            Error::OutOfRange(_) => Status::out_of_range(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            // Two replicas' transactions got in each other's way, or the database is not
            // reachable: the caller may try again.
            Error::Pg(e) if retryable(&e) => Status::aborted(msg),
            Error::Pg(e) if connection_lost(&e) => Status::unavailable(msg),
            Error::Db(_) | Error::Pg(_) | Error::Corrupt(_) | Error::Internal(_) => {
                tracing::error!(error = %msg, "internal error");
                Status::internal(msg)
            }
        }
    }
}
