//! The HTTP routes and their handlers. They read through the same store functions as the
//! gRPC services (`query_nodes`, `get_node`, `events_after`/`follow`, `read_log`).

use super::ApiError;
use crate::api::SharedRef;
use crate::error::Error;
use crate::model::{NodeId, NodeKind, NodeState};
use crate::store::NodeFilter;
use crate::store::labs::{Scope, TokenInfo};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::{DateTime, NaiveDateTime, Utc};
use labwire_common::NodeResult;
use std::convert::Infallible;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// The HTTP routes over the coordinator's shared state.
pub fn router(shared: SharedRef) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(super::metrics::metrics))
        .route("/nodes", get(nodes))
        .route("/node", axum::routing::post(create_node))
        .route("/node/{id}", get(node).put(update_node))
        .route("/node/{id}/artifacts/{name}", get(artifact))
        .route("/events", get(events))
        .route("/events/stream", get(event_stream))
        .route("/logs/{job}", get(log_latest))
        .route("/logs/{job}/{attempt}", get(log_attempt))
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
    match shared
        .store
        .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await
    {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        )
            .into_response(),
    }
}

/// The query parameters `GET /nodes` understands.
pub const NODE_FILTERS: &[&str] = &[
    "kind",
    "state",
    "result",
    "name",
    "parent",
    "group",
    "treeid",
    "path",
    "created__gt",
    "created__gte",
    "created__lt",
    "created__lte",
    "updated__gt",
    "updated__gte",
    "updated__lt",
    "updated__lte",
    "id__gt",
    "cursor",
    "limit",
];

fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    v.parse::<T>()
        .map_err(|e| ApiError::invalid(format!("{key}: {e}")))
}

fn node_id(key: &str, v: &str) -> Result<NodeId, ApiError> {
    match v.parse::<i64>() {
        Ok(n) if n > 0 => Ok(NodeId(n)),
        _ => Err(ApiError::invalid(format!(
            "{key}: `{v}` is not a node id (a positive number)"
        ))),
    }
}

/// A time in a filter: RFC 3339, or ISO 8601 without a zone (taken as UTC, as KernelCI does).
fn time(key: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, f) {
            return Ok(t.and_utc());
        }
    }
    Err(ApiError::invalid(format!(
        "{key}: `{v}` is not a time (expected RFC 3339, e.g. 2026-01-31T12:00:00Z)"
    )))
}

/// Turns `GET /nodes` parameters into a store filter; an unknown parameter or a bad value is
/// refused with its name.
pub fn node_filter(params: &[(String, String)]) -> Result<NodeFilter, ApiError> {
    let micro = chrono::Duration::microseconds(1);
    let mut f = NodeFilter {
        limit: 100,
        ..Default::default()
    };
    for (k, v) in params {
        let v = v.as_str();
        match k.as_str() {
            "kind" => f.kind = Some(parse::<NodeKind>(k, v)?),
            "state" => f.state = Some(parse::<NodeState>(k, v)?),
            "result" => f.result = Some(parse::<NodeResult>(k, v)?),
            "name" => f.name = Some(v.to_string()),
            "parent" => f.parent = Some(node_id(k, v)?),
            "group" => f.group = Some(v.to_string()),
            "treeid" => f.treeid = Some(v.to_string()),
            "path" => f.path_prefix = v.split('/').map(str::to_string).collect(),
            // The store keeps "at or after" and "before" bounds, in microseconds.
            "created__gt" => f.created_after = Some(time(k, v)? + micro),
            "created__gte" => f.created_after = Some(time(k, v)?),
            "created__lt" => f.created_before = Some(time(k, v)?),
            "created__lte" => f.created_before = Some(time(k, v)? + micro),
            "updated__gt" => f.updated_after = Some(time(k, v)? + micro),
            "updated__gte" => f.updated_after = Some(time(k, v)?),
            "updated__lt" => f.updated_before = Some(time(k, v)?),
            "updated__lte" => f.updated_before = Some(time(k, v)? + micro),
            "id__gt" | "cursor" => {
                f.cursor = match v.parse::<i64>() {
                    Ok(0) => None,
                    Ok(n) if n > 0 => Some(NodeId(n)),
                    _ => return Err(ApiError::invalid(format!("{k}: `{v}` is not a node id"))),
                }
            }
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => f.limit = n,
                _ => {
                    return Err(ApiError::invalid(format!(
                        "limit: `{v}` must be a number from 1 to 1000"
                    )));
                }
            },
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown filter `{other}` (known: {})",
                    NODE_FILTERS.join(", ")
                )));
            }
        }
    }
    Ok(f)
}

/// `GET /nodes?kind=job&state=done&...&limit=N&cursor=ID`: one page of nodes in id order,
/// `{"items": [...], "count": n, "limit": N, "next_cursor": ID or null}`.
async fn nodes(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Scope::Read).await?;
    let f = node_filter(&params)?;
    let limit = f.limit;
    let nodes = shared
        .store
        .read(move |c| crate::store::nodes::query_nodes(c, &f))
        .await?;
    let next = (nodes.len() == limit)
        .then(|| nodes.last().map(|n| n.id.0))
        .flatten();
    Ok(axum::Json(serde_json::json!({
        "items": nodes,
        "count": nodes.len(),
        "limit": limit,
        "next_cursor": next,
    }))
    .into_response())
}

/// `GET /node/{id}`: one node with KernelCI's field names.
async fn node(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Scope::Read).await?;
    let id = node_id("id", &id)?;
    let node = shared
        .store
        .read(move |c| crate::store::nodes::get_node(c, id))
        .await?;
    Ok(axum::Json(node).into_response())
}

/// The body of `POST /node` (KernelCI field names; `kind` and `name` are required).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeBody {
    kind: NodeKind,
    name: String,
    #[serde(default)]
    parent: Option<NodeId>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    state: Option<NodeState>,
    #[serde(default)]
    result: Option<NodeResult>,
    #[serde(default)]
    artifacts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    data: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    timeout: Option<DateTime<Utc>>,
    #[serde(default)]
    holdoff: Option<DateTime<Utc>>,
    #[serde(default)]
    submitter: String,
}

/// The body of `PUT /node/{id}`: the fields to change.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeChange {
    #[serde(default)]
    state: Option<NodeState>,
    #[serde(default)]
    result: Option<NodeResult>,
    #[serde(default)]
    artifacts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    data: serde_json::Map<String, serde_json::Value>,
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("request body: {e}")))
}

/// `POST /node` (scope `submit`): creates a node, as gRPC `CreateNode` does. Job nodes are
/// submitted over gRPC (`SubmitJob`), which also queues them.
async fn create_node(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let token = authorize(&shared, &headers, Scope::Submit).await?;
    let b: NodeBody = json_body(&body)?;
    if b.kind == NodeKind::Job {
        return Err(ApiError::invalid(
            "kind: job nodes are created with SubmitJob (gRPC), which also queues them",
        ));
    }
    let mut n = crate::store::NewNode::new(b.kind, b.name);
    n.parent = b.parent;
    n.group = b.group;
    n.state = b.state.unwrap_or(NodeState::Running);
    n.result = b.result;
    n.artifacts = b.artifacts;
    n.data = b.data;
    n.timeout = b.timeout;
    n.holdoff = b.holdoff;
    n.owner = token.name;
    n.submitter = b.submitter;
    let node = shared.store.write(move |w| w.create_node(n)).await?;
    Ok((StatusCode::CREATED, axum::Json(node)).into_response())
}

/// `PUT /node/{id}` (scope `submit`): changes state, result, data or artifacts through the
/// node state machine, as gRPC `UpdateNode` does.
async fn update_node(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Scope::Submit).await?;
    let id = node_id("id", &id)?;
    let c: NodeChange = json_body(&body)?;
    let u = crate::store::NodeUpdate {
        state: c.state,
        result: c.result,
        data: c.data,
        artifacts: c.artifacts,
        retry_counter: None,
        holdoff: None,
    };
    let node = shared.store.write(move |w| w.update_node(id, u)).await?;
    Ok(axum::Json(node).into_response())
}

/// `GET /node/{id}/artifacts/{name}`: a redirect to the artifact. Artifacts stay where the
/// lab put them; logs the coordinator keeps are served under `/logs/`.
async fn artifact(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Scope::Read).await?;
    let id = node_id("id", &id)?;
    let node = shared
        .store
        .read(move |c| crate::store::nodes::get_node(c, id))
        .await?;
    let url = node.artifacts.get(&name).ok_or_else(|| {
        ApiError(Error::NotFound(format!(
            "node {id} has no artifact `{name}` (it has: {})",
            node.artifacts
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )))
    })?;
    if url.starts_with('/') || url.starts_with("https://") || url.starts_with("http://") {
        Ok(Redirect::temporary(url).into_response())
    } else {
        Err(ApiError(Error::NotFound(format!(
            "artifact `{name}` of node {id} is `{url}`, which this coordinator cannot serve"
        ))))
    }
}

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
async fn events(
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
        .read(move |c| crate::store::events::events_after(c, after, limit, kind))
        .await?;
    let source = shared.config.public_url.clone();
    let out: Vec<_> = evs.iter().map(|e| e.to_cloudevent(&source)).collect();
    Ok(axum::Json(out).into_response())
}

/// `GET /events/stream?from=SEQ&kind=K`: server-sent events, each with `id` = sequence
/// number, `event` = CloudEvents type and `data` = the CloudEvent; stored events first, then
/// live ones. A reconnecting client's `Last-Event-ID` header takes precedence over `from`,
/// so it resumes with no gap and no duplicate.
async fn event_stream(
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
        .read(move |c| crate::store::events::events_after(c, after, 1, kind))
        .await?;
    let source = shared.config.public_url.clone();
    let rx = crate::store::events::follow(
        shared.store.clone(),
        after,
        kind,
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

async fn log_latest(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Path(job): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Scope::Read).await?;
    let job = node_id("job", &job)?;
    let attempt = shared
        .store
        .read(move |c| crate::store::jobs::log_attempt(c, job))
        .await?
        .ok_or_else(|| ApiError(Error::NotFound(format!("job {job} has no log yet"))))?;
    send_log(shared, job, attempt).await
}

async fn log_attempt(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Path((job, attempt)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Scope::Read).await?;
    let job = node_id("job", &job)?;
    let attempt: i32 = match attempt.parse() {
        Ok(a) if a >= 0 => a,
        _ => {
            return Err(ApiError::invalid(format!(
                "attempt: `{attempt}` is not an attempt number"
            )));
        }
    };
    send_log(shared, job, attempt).await
}

/// `GET /logs/{job}[/{attempt}]`: a job's log, byte for byte, streamed from the store.
async fn send_log(shared: SharedRef, job: NodeId, attempt: i32) -> Result<Response, ApiError> {
    let store = shared.store.clone();
    let first = store
        .read(move |c| crate::store::jobs::read_log(c, job, attempt, 0, 1 << 20))
        .await?;
    if first.is_empty() {
        return Err(ApiError(Error::NotFound(format!(
            "job {job} has no log for attempt {attempt}"
        ))));
    }
    let stream = async_stream::try_stream! {
        let mut batch = first;
        while let Some(last) = batch.last().map(|(off, _)| *off) {
            for (_, data) in batch {
                yield bytes::Bytes::from(data);
            }
            let from = last + 1;
            batch = store
                .read(move |c| crate::store::jobs::read_log(c, job, attempt, from, 1 << 20))
                .await
                .map_err(std::io::Error::other)?;
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream::<_>(Box::pin(stream)
            as std::pin::Pin<
                Box<dyn futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>,
            >),
    )
        .into_response())
}
