//! Node routes: `GET /nodes` with KernelCI-style filters and cursor paging, `GET /node/{id}`,
//! `POST /node`, `PUT /node/{id}` and artifact redirects.

use super::ApiError;
use super::routes::authorize;
use crate::error::Error;
use crate::model::{NodeId, NodeKind, NodeState};
use crate::shared::SharedRef;
use crate::store::NodeFilter;
use crate::store::labs::Scope;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDateTime, Utc};
use labwire_common::NodeResult;

/// The query parameters `GET /nodes` understands.
pub(crate) const NODE_FILTERS: &[&str] = &[
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

pub(super) fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    v.parse::<T>()
        .map_err(|e| ApiError::invalid(format!("{key}: {e}")))
}

pub(super) fn node_id(key: &str, v: &str) -> Result<NodeId, ApiError> {
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
pub(crate) fn node_filter(params: &[(String, String)]) -> Result<NodeFilter, ApiError> {
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
pub(super) async fn nodes(
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
pub(super) async fn node(
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
pub(crate) struct NodeBody {
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
pub(crate) struct NodeChange {
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
pub(super) async fn create_node(
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
/// node state machine, as gRPC `UpdateNode` does. A job's state and result change only
/// through the job queue: refused with 409 (see `store::jobs::owned`).
pub(super) async fn update_node(
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
    let node = shared
        .store
        .write(move |w| w.update_node_for_client(id, u))
        .await?;
    Ok(axum::Json(node).into_response())
}

/// `GET /node/{id}/artifacts/{name}`: a redirect to the artifact when it is on this
/// coordinator (logs under `/logs/`); 404 naming the URL of one stored elsewhere.
pub(super) async fn artifact(
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
    // Only paths on this coordinator are redirected: an off-site URL (`https://...`,
    // `//host/x`) is named, not vouched for (see http::ui::links).
    if super::ui::local_path(url) {
        Ok(Redirect::temporary(url).into_response())
    } else {
        Err(ApiError(Error::NotFound(format!(
            "artifact `{name}` of node {id} is `{url}`, which is not on this coordinator: \
             fetch it from there"
        ))))
    }
}
