//! Event routes: the stored CloudEvents after a sequence number, and the live stream as
//! server-sent events that a client resumes with `Last-Event-ID`.

use super::ApiError;
use super::nodes::parse;
use super::routes::authorize;
use crate::model::NodeKind;
use crate::shared::SharedRef;
use crate::store::labs::Scope;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Parameters of the event routes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventParams {
    /// Events after this sequence number (the last one the reader has).
    #[serde(default)]
    from: Option<String>,
    /// Only events of nodes of this kind.
    #[serde(default)]
    kind: Option<String>,
    /// At most this many (list only; default 100, at most 1000).
    #[serde(default)]
    limit: Option<String>,
}

fn event_params(
    p: &EventParams,
    last_event_id: Option<&str>,
) -> Result<(i64, Option<NodeKind>), ApiError> {
    let from = match (last_event_id, p.from.as_deref()) {
        (Some(v), _) => ("Last-Event-ID", v),
        (None, Some(v)) => ("from", v),
        (None, None) => ("from", "0"),
    };
    let after = match from.1.parse::<i64>() {
        Ok(n) if n >= 0 => n,
        _ => {
            return Err(ApiError::invalid(format!(
                "{}: `{}` is not a sequence number",
                from.0, from.1
            )));
        }
    };
    let kind = p
        .kind
        .as_deref()
        .map(|k| parse::<NodeKind>("kind", k))
        .transpose()?;
    Ok((after, kind))
}

/// `GET /events?from=SEQ&kind=K&limit=N`: stored events after `SEQ` as a JSON array of
/// CloudEvents; read again from the last `id` to go on.
pub(super) async fn events(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Scope::Read).await?;
    let Query(p) = params.map_err(|e| ApiError::invalid(e.body_text()))?;
    let (after, kind) = event_params(&p, None)?;
    let limit = match p.limit.as_deref() {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "limit: `{v}` must be a number from 1 to 1000"
                )));
            }
        },
    };
    let evs = shared
        .store
        .read(move |c| crate::store::events::events_after(c, after, limit, kind, kind.is_none()))
        .await?;
    let source = shared.config.public_url.clone();
    let out: Vec<_> = evs.iter().map(|e| e.to_cloudevent(&source)).collect();
    Ok(axum::Json(out).into_response())
}

/// `GET /events/stream?from=SEQ&kind=K`: server-sent events, each with `id` = sequence
/// number, `event` = CloudEvents type and `data` = the CloudEvent; stored events first, then
/// live ones. A reconnecting client's `Last-Event-ID` header takes precedence over `from`,
/// so it resumes with no gap and no duplicate.
pub(super) async fn event_stream(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Scope::Read).await?;
    stream_events(shared, headers, params).await
}

/// The event stream of `/events/stream` once the caller is authorized (the dashboard serves
/// the same stream under its own authentication).
pub(super) async fn stream_events(
    shared: SharedRef,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::invalid(e.body_text()))?;
    let last = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid("Last-Event-ID is not text"))?,
        ),
    };
    let (after, kind) = event_params(&p, last)?;
    // Refuse a pruned cursor now, with a status, rather than inside the stream.
    shared
        .store
        .read(move |c| crate::store::events::events_after(c, after, 1, kind, kind.is_none()))
        .await?;
    let source = shared.config.public_url.clone();
    let rx = crate::store::events::follow(
        shared.store.clone(),
        after,
        kind,
        kind.is_none(),
        false,
        shared.shutdown.clone(),
    );
    let stream = ReceiverStream::new(rx).map(move |e| {
        Ok::<_, Infallible>(match e {
            Ok(e) => Event::default()
                .id(e.seq.to_string())
                .event(e.event_type())
                .data(e.to_cloudevent(&source).to_string()),
            Err(e) => Event::default().event("error").data(e.to_string()),
        })
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}
