//! KernelCI's API read routes, so that KernelCI's own clients (kci-dev's `maestro results`)
//! read a labwire coordinator as they read KernelCI (kernelci-api's `api/main.py` and
//! kernelci-core's node model, read at kernelci-api 95acafc and kernelci-core 69a285e):
//!
//! - `GET /latest/node/{id}`: one node;
//! - `GET /latest/nodes/fast`: a list of nodes; `GET /latest/nodes`: the same as a page,
//!   `{items, total, limit, offset}`;
//! - `GET /latest/events`: node events, oldest first, `recursive=true` adds each node.
//!
//! Filters are KernelCI's: `field=value` and `field__op=value` with `op` one of `ne`, `lt`,
//! `lte`, `gt`, `gte`, `re`, `in`, `nin` (comma-separated lists), `null` for none, dotted
//! paths into `data` (`data.kernel_revision.tree=mainline`), plus `limit` and `offset`.
//! Nodes come in id order.
//!
//! A node looks as KernelCI's does: its fields under KernelCI's names, times as ISO 8601
//! without a zone (UTC), `id` and `parent` as strings: labwire's node numbers, in decimal
//! (`"42"`), which is what `latest/node/{id}` takes back. KernelCI's fields labwire has no
//! use for come with their empty values (`debug`, `jobfilter`, `platform_filter`,
//! `user_groups`, `processed_by_kcidb_bridge`).
//!
//! The routes want a `read` token (as `Bearer TOKEN`, or bare as KernelCI's clients send
//! it) unless `kernelci.read_api.anonymous` is set: kci-dev sends none when it reads.

use super::ApiError;
use super::routes::authorize;
use crate::model::{Node, NodeId};
use crate::shared::SharedRef;
use crate::store::NodeFilter;
use crate::store::labs::Scope;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Value, json};

/// Nodes or events looked at for one request, at most; a filter that needs more is refused
/// with a hint to narrow it.
const MAX_SCAN: usize = 200_000;
/// At most this many nodes or events in one answer.
const MAX_LIMIT: usize = 1000;

/// The routes, when `kernelci.read_api.enabled`.
pub(crate) fn router(shared: SharedRef) -> Router {
    if !shared.config.kernelci.read_api.enabled {
        return Router::new();
    }
    Router::new()
        .route("/latest/node/{id}", get(node))
        .route("/latest/nodes/fast", get(nodes_fast))
        .route("/latest/nodes", get(nodes_page))
        .route("/latest/events", get(events))
        .with_state(shared)
}

async fn allowed(shared: &SharedRef, headers: &HeaderMap) -> Result<(), ApiError> {
    if shared.config.kernelci.read_api.anonymous {
        return Ok(());
    }
    // KernelCI's clients send the token bare (`Authorization: TOKEN`).
    let mut h = headers.clone();
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && !v.starts_with("Bearer ")
        && let Ok(b) = HeaderValue::from_str(&format!("Bearer {}", v.trim()))
    {
        h.insert(header::AUTHORIZATION, b);
    }
    authorize(shared, &h, Scope::Read).await.map(|_| ())
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// A node as KernelCI's API shows one.
pub(crate) fn kernelci_node(n: &Node) -> Value {
    json!({
        "id": n.id.0.to_string(),
        "kind": n.kind.as_str(),
        "name": n.name,
        "path": n.path,
        "group": n.group,
        "parent": n.parent.map(|p| p.0.to_string()),
        "state": n.state.as_str(),
        "result": n.result.map(|r| r.as_str()),
        "artifacts": n.artifacts,
        "data": n.data,
        "debug": {},
        "jobfilter": null,
        "platform_filter": [],
        "created": time(n.created),
        "updated": time(n.updated),
        "timeout": n.timeout.map(time),
        "holdoff": n.holdoff.map(time),
        "owner": n.owner,
        "submitter": n.submitter,
        "treeid": n.treeid,
        "user_groups": [],
        "processed_by_kcidb_bridge": false,
        "retry_counter": n.retry_counter,
    })
}

/// One KernelCI filter: a field path, an operator and its value.
#[derive(Debug, Clone)]
struct Cond {
    path: Vec<String>,
    op: String,
    value: Option<String>,
    re: Option<regex::Regex>,
}

const TIME_FIELDS: &[&str] = &["created", "updated", "timeout", "holdoff", "timestamp"];

fn parse_time(v: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, f) {
            return Some(t.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

impl Cond {
    fn parse(key: &str, value: &str) -> Result<Cond, ApiError> {
        let (field, op) = match key.rsplit_once("__") {
            Some((f, op)) => (f, op),
            None => (key, "eq"),
        };
        if !matches!(
            op,
            "eq" | "ne" | "lt" | "lte" | "gt" | "gte" | "re" | "in" | "nin"
        ) {
            return Err(ApiError::invalid(format!(
                "{key}: `{op}` is not one of KernelCI's operators (ne, lt, lte, gt, gte, re, in, nin)"
            )));
        }
        if field.is_empty() || field.split('.').any(str::is_empty) {
            return Err(ApiError::invalid(format!("`{key}` is not a field")));
        }
        let re = if op == "re" {
            Some(
                regex::RegexBuilder::new(value)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| ApiError::invalid(format!("{key}: {e}")))?,
            )
        } else {
            None
        };
        let is_time = TIME_FIELDS.contains(&field);
        if is_time
            && value != "null"
            && !matches!(op, "re" | "in" | "nin")
            && parse_time(value).is_none()
        {
            return Err(ApiError::invalid(format!(
                "{key}: `{value}` is not an ISO 8601 time"
            )));
        }
        Ok(Cond {
            path: field.split('.').map(str::to_string).collect(),
            op: op.to_string(),
            value: (value != "null").then(|| value.to_string()),
            re,
        })
    }

    fn holds(&self, doc: &Value) -> bool {
        let mut cur = Some(doc);
        for p in &self.path {
            cur = cur.and_then(|c| c.get(p));
        }
        let have = cur.filter(|v| !v.is_null());
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let eq = |v: &Value, want: &str| match v {
            // A list field matches when one element does (as MongoDB does).
            Value::Array(a) => a.iter().any(|x| text(x) == want),
            other => text(other) == want,
        };
        let is_time = self.path.len() == 1 && TIME_FIELDS.contains(&self.path[0].as_str());
        let order = |v: &Value, want: &str| -> Option<std::cmp::Ordering> {
            if is_time {
                return Some(parse_time(&text(v))?.cmp(&parse_time(want)?));
            }
            match (v.as_f64(), want.parse::<f64>()) {
                (Some(a), Ok(b)) => a.partial_cmp(&b),
                _ => Some(text(v).as_str().cmp(want)),
            }
        };
        match (self.op.as_str(), have, self.value.as_deref()) {
            ("eq", None, None) => true,
            ("ne", None, None) => false,
            ("eq", Some(_), None) => false,
            ("ne", Some(_), None) => true,
            (_, None, _) => self.op == "ne" || self.op == "nin",
            ("eq", Some(v), Some(w)) => eq(v, w),
            ("ne", Some(v), Some(w)) => !eq(v, w),
            ("in", Some(v), Some(w)) => w.split(',').any(|x| eq(v, x)),
            ("nin", Some(v), Some(w)) => !w.split(',').any(|x| eq(v, x)),
            ("re", Some(v), Some(_)) => self.re.as_ref().is_some_and(|r| r.is_match(&text(v))),
            (op, Some(v), Some(w)) => match order(v, w) {
                Some(o) => match op {
                    "lt" => o.is_lt(),
                    "lte" => o.is_le(),
                    "gt" => o.is_gt(),
                    "gte" => o.is_ge(),
                    _ => false,
                },
                None => false,
            },
            _ => false,
        }
    }
}

/// Parsed filters: conditions, limit, offset, and what the store can narrow down first.
struct Filters {
    conds: Vec<Cond>,
    limit: usize,
    offset: usize,
    store: NodeFilter,
}

fn filters(params: &[(String, String)], default_limit: usize) -> Result<Filters, ApiError> {
    let mut f = Filters {
        conds: Vec::new(),
        limit: default_limit,
        offset: 0,
        store: NodeFilter {
            limit: MAX_LIMIT,
            ..Default::default()
        },
    };
    for (k, v) in params {
        match k.as_str() {
            "limit" => {
                f.limit = match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "limit: `{v}` must be a number from 1 to {MAX_LIMIT}"
                        )));
                    }
                }
            }
            "offset" => {
                f.offset = v
                    .parse::<usize>()
                    .map_err(|_| ApiError::invalid(format!("offset: `{v}` is not a number")))?
            }
            _ => {
                let c = Cond::parse(k, v)?;
                // Equalities the store can apply itself, so that fewer nodes are read.
                if c.op == "eq"
                    && c.path.len() == 1
                    && let Some(w) = &c.value
                {
                    match c.path[0].as_str() {
                        "kind" => f.store.kind = w.parse().ok(),
                        "state" => f.store.state = w.parse().ok(),
                        "result" => f.store.result = w.parse().ok(),
                        "name" => f.store.name = Some(w.clone()),
                        "group" => f.store.group = Some(w.clone()),
                        "treeid" => f.store.treeid = Some(w.clone()),
                        "parent" => f.store.parent = w.parse::<i64>().ok().map(NodeId),
                        _ => {}
                    }
                }
                f.conds.push(c);
            }
        }
    }
    Ok(f)
}

/// The nodes matching `f`: those from `offset` up to `limit` of them, and (when `count`)
/// how many match in all.
async fn matching(
    shared: &SharedRef,
    f: Filters,
    count: bool,
) -> Result<(Vec<Value>, usize), ApiError> {
    let mut out = Vec::new();
    let (mut total, mut scanned) = (0usize, 0usize);
    let mut store = f.store.clone();
    loop {
        let s2 = store.clone();
        let batch = shared
            .store
            .read(move |c| crate::store::nodes::query_nodes(c, &s2))
            .await?;
        let Some(last) = batch.last().map(|n| n.id) else {
            break;
        };
        scanned += batch.len();
        let full = batch.len() >= store.limit;
        for n in &batch {
            let doc = kernelci_node(n);
            if f.conds.iter().all(|c| c.holds(&doc)) {
                if total >= f.offset && out.len() < f.limit {
                    out.push(doc);
                }
                total += 1;
            }
        }
        if !full || (!count && out.len() >= f.limit) {
            break;
        }
        if scanned >= MAX_SCAN {
            return Err(ApiError::invalid(format!(
                "the filter needs more than {MAX_SCAN} nodes read: narrow it with kind=, name=, parent=, treeid= or group="
            )));
        }
        store.cursor = Some(last);
    }
    Ok((out, total))
}

/// `GET /latest/node/{id}`.
async fn node(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    allowed(&shared, &headers).await?;
    let id = super::nodes::node_id("id", &id)?;
    let n = shared
        .store
        .read(move |c| crate::store::nodes::get_node(c, id))
        .await?;
    Ok(axum::Json(kernelci_node(&n)).into_response())
}

/// `GET /latest/nodes/fast`.
async fn nodes_fast(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    allowed(&shared, &headers).await?;
    let f = filters(&params, MAX_LIMIT)?;
    let (items, _) = matching(&shared, f, false).await?;
    Ok(axum::Json(items).into_response())
}

/// `GET /latest/nodes`.
async fn nodes_page(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    allowed(&shared, &headers).await?;
    let f = filters(&params, 50)?;
    let (limit, offset) = (f.limit, f.offset);
    let (items, total) = matching(&shared, f, true).await?;
    Ok(
        axum::Json(json!({"items": items, "total": total, "limit": limit, "offset": offset}))
            .into_response(),
    )
}

/// `GET /latest/events`: `kind`, `state`, `result`, `op` (`created`, `updated`), `name`,
/// `group`, `owner`, `node_id`, `from` (a time, exclusive), `limit` (default and at most
/// 1000), `recursive`.
async fn events(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    allowed(&shared, &headers).await?;
    let (mut conds, mut limit, mut from, mut recursive) = (Vec::new(), MAX_LIMIT, None, false);
    for (k, v) in &params {
        match k.as_str() {
            "limit" => {
                limit = match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "limit: `{v}` must be a number from 1 to {MAX_LIMIT}"
                        )));
                    }
                }
            }
            "from" => {
                from = Some(parse_time(v).ok_or_else(|| {
                    ApiError::invalid(format!("from: `{v}` is not an ISO 8601 time"))
                })?)
            }
            "recursive" => recursive = v == "true",
            "kind" | "state" | "result" | "op" | "name" | "group" | "owner" => {
                conds.push(Cond::parse(&format!("data.{k}"), v)?)
            }
            "node_id" => conds.push(Cond::parse("data.id", v)?),
            "channel" => conds.push(Cond::parse("channel", v)?),
            other => {
                return Err(ApiError::invalid(format!(
                    "`{other}` is not a filter of events (kind, state, result, op, name, group, owner, node_id, channel, from, limit, recursive)"
                )));
            }
        }
    }
    let mut after = match from {
        Some(t) => {
            shared
                .store
                .read(move |c| crate::store::kernelci::last_seq_at(c, t))
                .await?
        }
        None => 0,
    };
    let (mut out, mut scanned) = (Vec::new(), 0usize);
    while out.len() < limit && scanned < MAX_SCAN {
        let batch = shared
            .store
            .read(move |c| crate::store::events::events_after(c, after, MAX_LIMIT, None, false))
            .await?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            break;
        };
        scanned += batch.len();
        for e in &batch {
            let node = kernelci_node(&e.node);
            let mut data = json!({
                "op": if e.op == "create" { "created" } else { "updated" },
                "id": node["id"], "kind": node["kind"], "name": node["name"],
                "path": node["path"], "group": node["group"], "state": node["state"],
                "result": node["result"], "owner": node["owner"], "data": node["data"],
                "is_hierarchy": false,
            });
            if e.op != "create" {
                data["previous_state"] = e.previous_state.map(|s| s.as_str()).into();
                data["previous_result"] = e.previous_result.map(|r| r.as_str()).into();
            }
            let mut ev = json!({
                "id": e.seq.to_string(), "sequence_id": e.seq, "timestamp": time(e.time),
                "channel": "node", "owner": node["owner"], "data": data,
            });
            if conds.iter().all(|c| c.holds(&ev)) && out.len() < limit {
                if recursive {
                    ev["node"] = node;
                }
                out.push(ev);
            }
        }
        if batch.len() < MAX_LIMIT {
            break;
        }
        after = last;
    }
    Ok(axum::Json(out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(k: &str, v: &str, doc: &Value) -> bool {
        Cond::parse(k, v).unwrap().holds(doc)
    }

    #[test]
    fn kernelci_filters() {
        let doc = json!({"id": "7", "kind": "job", "result": null, "retry_counter": 2,
            "created": "2026-03-01T10:00:00.000000", "path": ["checkout", "baseline"],
            "data": {"kernel_revision": {"tree": "mainline"}, "platform": "qemu-x86_64"}});
        assert!(holds("kind", "job", &doc));
        assert!(!holds("kind__ne", "job", &doc));
        assert!(holds("data.kernel_revision.tree", "mainline", &doc));
        assert!(holds("data.platform__in", "rpi4,qemu-x86_64", &doc));
        assert!(holds("data.platform__nin", "rpi4", &doc));
        assert!(holds("data.platform__re", "^qemu-", &doc));
        assert!(holds("result", "null", &doc));
        assert!(!holds("result__ne", "null", &doc));
        assert!(holds("retry_counter__gte", "2", &doc));
        assert!(!holds("retry_counter__gt", "2", &doc));
        assert!(holds("created__gte", "2026-03-01", &doc));
        assert!(holds("created__lt", "2026-03-01T10:00:01", &doc));
        assert!(holds("path", "baseline", &doc));
        assert!(!holds("data.missing", "x", &doc));
        assert!(Cond::parse("created__gte", "yesterday").is_err());
        assert!(Cond::parse("kind__like", "x").is_err());
        assert!(Cond::parse("name__re", "(").is_err());
    }
}
