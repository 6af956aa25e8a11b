//! The HTTP routes, the token check they share, and the health check. The handlers live by
//! concept in `nodes`, `events` and `logs`; they read through the same store functions as the
//! gRPC services (`query_nodes`, `get_node`, `events_after`/`follow`, `read_log`).

use super::ApiError;
use super::{events, logs, nodes};
use crate::error::Error;
use crate::shared::SharedRef;
use crate::store::labs::{Scope, TokenInfo};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The HTTP routes over the coordinator's shared state.
pub(crate) fn router(shared: SharedRef) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(super::metrics::metrics))
        .route("/nodes", get(nodes::nodes))
        .route("/node", axum::routing::post(nodes::create_node))
        .route("/node/{id}", get(nodes::node).put(nodes::update_node))
        .route("/node/{id}/artifacts/{name}", get(nodes::artifact))
        .route("/events", get(events::events))
        .route("/events/stream", get(events::event_stream))
        .route("/logs/{job}", get(logs::log_latest))
        .route("/logs/{job}/{attempt}", get(logs::log_attempt))
        .with_state(shared)
}

/// Checks the request's bearer token for `scope`.
pub(super) async fn authorize(
    shared: &SharedRef,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<TokenInfo, ApiError> {
    let header = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError(Error::Unauthenticated(
                "the authorization header is not text".into(),
            ))
        })?),
    };
    Ok(shared.auth.bearer(header, scope).await?)
}

/// `GET /healthz`: 200 `ok` when the store answers, 503 otherwise. No token needed.
async fn healthz(State(shared): State<SharedRef>) -> Response {
    match shared.store.read(|c| c.ping()).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        )
            .into_response(),
    }
}
