//! The web dashboard under `/ui/`: server-rendered HTML pages (labs, checkouts, a node with its
//! tree and log, the queue), a small script that follows the event stream and updates the
//! open page, and a style sheet, all served by the coordinator. Every value taken from nodes,
//! labs or jobs goes through [`esc`].
//!
//! Browsers authenticate with a `read` token that the sign-in form keeps in an HttpOnly,
//! Secure, SameSite=Strict cookie (an `EventSource` cannot send an `Authorization` header, and
//! a token in a URL would end up in logs and history); a bearer header works too. With
//! `http.ui.anonymous_read` the pages need no token at all.

use super::ApiError;
use super::events::{EventParams, stream_events};
use crate::api::{LabOverview, SharedRef, lab_overview};
use crate::error::Error;
use crate::model::{Node, NodeId, NodeKind};
use crate::store::NodeFilter;
use crate::store::labs::Scope;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// The cookie that holds a browser's read token.
const COOKIE: &str = "labwire_ui";
/// Most nodes a node page shows in its tree.
const TREE_LIMIT: usize = 2000;
/// Most log bytes a job page shows inline (the whole log is at `/ui/log/{job}`).
const LOG_LIMIT: usize = 2 << 20;

/// The dashboard's routes.
pub(crate) fn router(shared: SharedRef) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/checkouts") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/checkouts") }))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route("/ui/checkouts", get(checkouts))
        .route("/ui/labs", get(labs))
        .route("/ui/queue", get(queue))
        .route("/ui/node/{id}", get(node))
        .route("/ui/log/{job}", get(raw_log))
        .route("/ui/stream", get(stream))
        .route("/ui/assets/app.js", get(script))
        .route("/ui/assets/app.css", get(style))
        .with_state(shared)
}

/// HTML-escapes text for element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The read token in the request's cookie, if any.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Whom a page is shown to: anonymous (when configured), or the name of a read token.
async fn viewer(shared: &SharedRef, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Ok(Some(
            super::routes::authorize(shared, headers, Scope::Read)
                .await?
                .name,
        ));
    }
    if let Some(t) = cookie_token(headers) {
        let info = shared
            .auth
            .bearer(Some(&format!("Bearer {t}")), Scope::Read)
            .await?;
        return Ok(Some(info.name));
    }
    if shared.config.http.ui.anonymous_read {
        return Ok(None);
    }
    Err(ApiError(Error::Unauthenticated(
        "sign in with a read token at /ui/login".into(),
    )))
}

/// A page, or the sign-in page when the browser has no valid token.
type Page = Result<Response, Response>;

async fn page_auth(shared: &SharedRef, headers: &HeaderMap) -> Result<Option<String>, Response> {
    match viewer(shared, headers).await {
        Ok(v) => Ok(v),
        Err(ApiError(Error::Unauthenticated(_))) | Err(ApiError(Error::PermissionDenied(_)))
            if !headers.contains_key(header::AUTHORIZATION) =>
        {
            Err(Redirect::to("/ui/login").into_response())
        }
        Err(e) => Err(e.into_response()),
    }
}

/// An error as a small HTML page with the status the JSON API would give.
fn fail(e: impl Into<ApiError>) -> Response {
    let e = e.into();
    let msg = e.0.to_string();
    let status = e.into_response().status();
    secured(
        (
            status,
            Html(format!(
                "<!doctype html><html lang=en><head><meta charset=utf-8><title>{s} · labwire</title>\
                 <link rel=stylesheet href=/ui/assets/app.css></head><body><header>\
                 <a class=brand href=/ui/checkouts>labwire</a></header><main><h1>{s}</h1>\
                 <p class=error>{m}</p></main></body></html>",
                s = esc(&status.to_string()),
                m = esc(&msg)
            )),
        )
            .into_response(),
    )
}

/// Adds the headers every dashboard answer carries: scripts, styles and everything else only
/// from the coordinator itself, no framing, no content sniffing, no caching of data.
fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// Wraps a page body in the layout: navigation, the style sheet, the live-update script and
/// the event sequence number the page was rendered at.
fn layout(title: &str, viewer: &Option<String>, seq: i64, body: &str) -> Response {
    let who = match viewer {
        Some(n) => format!(
            "<form method=post action=/ui/logout class=who>signed in as {} \
             <button>sign out</button></form>",
            esc(n)
        ),
        None => "<span class=who>anonymous read</span>".into(),
    };
    let page = Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>{t} · labwire</title><link rel=stylesheet href=/ui/assets/app.css>\
         <script src=/ui/assets/app.js defer></script></head>\
         <body data-seq=\"{seq}\"><header><a class=brand href=/ui/checkouts>labwire</a>\
         <nav><a href=/ui/checkouts>Checkouts</a><a href=/ui/labs>Labs</a>\
         <a href=/ui/queue>Queue</a></nav><span id=live class=live title=\"live updates\">\
         ○ offline</span>{who}</header><main>{body}</main></body></html>",
        t = esc(title),
    ))
    .into_response();
    secured(page)
}

async fn last_seq(shared: &SharedRef) -> i64 {
    shared
        .store
        .read(crate::store::events::last_seq)
        .await
        .unwrap_or(0)
}

fn time(t: &DateTime<Utc>) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        t.to_rfc3339(),
        t.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

fn ago(t: &DateTime<Utc>) -> String {
    let s = (Utc::now() - *t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn secs(ms: f64) -> String {
    let s = ms / 1000.0;
    if s < 120.0 {
        format!("{s:.1}s")
    } else {
        format!("{:.1}m", s / 60.0)
    }
}

/// A state and a result as badges, in elements the live script finds by node id.
fn badges(n: &Node) -> String {
    let st = n.state.as_str();
    let res = n.result.map(|r| r.as_str()).unwrap_or("");
    format!(
        "<span class=\"badge state s-{st}\" data-field=state>{st}</span> \
         <span class=\"badge result r-{res}\" data-field=result>{res}</span>"
    )
}

fn data_str<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    n.data.get(key).and_then(|v| v.as_str())
}

fn revision(n: &Node) -> BTreeMap<String, String> {
    n.data
        .get("kernel_revision")
        .and_then(|v| v.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---- sign-in ----

async fn login_form() -> Response {
    secured(Html(login_page("")).into_response())
}

fn login_page(msg: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Sign in · labwire</title>\
         <link rel=stylesheet href=/ui/assets/app.css></head><body><header>\
         <span class=brand>labwire</span></header><main class=login><h1>Sign in</h1>{m}\
         <form method=post action=/ui/login><label>Read token \
         <input type=password name=token autocomplete=off required autofocus></label>\
         <button>Sign in</button></form><p class=hint>A token with the <code>read</code> scope \
         (<code>labwire-coordinator token create NAME --scope read</code>). It is kept in an \
         HttpOnly cookie for this site only.</p></main></body></html>",
        m = if msg.is_empty() {
            String::new()
        } else {
            format!("<p class=error>{}</p>", esc(msg))
        }
    )
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(shared): State<SharedRef>, Form(f): Form<LoginForm>) -> Response {
    let token = f.token.trim().to_string();
    let valid = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',');
    if !valid {
        return secured(
            (
                StatusCode::UNAUTHORIZED,
                Html(login_page("that is not a token")),
            )
                .into_response(),
        );
    }
    match shared
        .auth
        .bearer(Some(&format!("Bearer {token}")), Scope::Read)
        .await
    {
        Ok(_) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/ui/checkouts".to_string()),
                (
                    header::SET_COOKIE,
                    format!("{COOKIE}={token}; Path=/ui; HttpOnly; Secure; SameSite=Strict"),
                ),
            ],
        )
            .into_response(),
        Err(e) => {
            secured((StatusCode::UNAUTHORIZED, Html(login_page(&e.to_string()))).into_response())
        }
    }
}

async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/ui/login".to_string()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age=0"),
            ),
        ],
    )
        .into_response()
}

// ---- checkouts ----

#[derive(serde::Deserialize, Default)]
struct CheckoutFilter {
    #[serde(default)]
    tree: String,
    #[serde(default)]
    branch: String,
}

async fn checkouts(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Query(f): Query<CheckoutFilter>,
) -> Page {
    let who = page_auth(&shared, &headers).await?;
    let seq = last_seq(&shared).await;
    let (nodes, counts) = shared
        .store
        .read(move |c| {
            let mut all = Vec::new();
            let mut filter = NodeFilter {
                kind: Some(NodeKind::Checkout),
                limit: 1000,
                ..Default::default()
            };
            loop {
                let page = crate::store::nodes::query_nodes(c, &filter)?;
                let full = page.len() == filter.limit;
                filter.cursor = page.last().map(|n| n.id);
                all.extend(page);
                if !full {
                    break;
                }
            }
            let trees: Vec<String> = {
                let mut t: Vec<String> = all
                    .iter()
                    .filter_map(|n| revision(n).remove("tree"))
                    .collect();
                t.sort();
                t.dedup();
                t
            };
            let branches: Vec<String> = {
                let mut t: Vec<String> = all
                    .iter()
                    .filter_map(|n| revision(n).remove("branch"))
                    .collect();
                t.sort();
                t.dedup();
                t
            };
            let picked: Vec<Node> = all
                .into_iter()
                .rev()
                .filter(|n| {
                    let r = revision(n);
                    (f.tree.is_empty() || r.get("tree") == Some(&f.tree))
                        && (f.branch.is_empty() || r.get("branch") == Some(&f.branch))
                })
                .take(100)
                .collect();
            let mut counts = HashMap::new();
            for n in &picked {
                counts.insert(n.id, crate::store::nodes::job_counts(c, &n.treeid)?);
            }
            Ok(((picked, trees, branches, f), counts))
        })
        .await
        .map_err(fail)?;
    let (picked, trees, branches, f) = nodes;
    let mut b = String::from("<h1>Checkouts</h1><form class=filter method=get>");
    for (name, values, cur) in [("tree", &trees, &f.tree), ("branch", &branches, &f.branch)] {
        let _ = write!(
            b,
            "<label>{name} <select name={name}><option value=\"\">all</option>"
        );
        for v in values {
            let sel = if v == cur { " selected" } else { "" };
            let _ = write!(b, "<option{sel}>{}</option>", esc(v));
        }
        b.push_str("</select></label> ");
    }
    b.push_str(
        "<button>Filter</button></form><table class=list id=checkouts><thead><tr><th>id</th>\
         <th>tree</th><th>branch</th><th>commit</th><th>state</th><th>jobs</th>\
         <th>created</th></tr></thead><tbody>",
    );
    if picked.is_empty() {
        b.push_str("<tr class=empty><td colspan=7>no checkouts</td></tr>");
    }
    for n in &picked {
        let r = revision(n);
        let get = |k: &str| r.get(k).map(|s| esc(s)).unwrap_or_default();
        let commit = r
            .get("commit")
            .map(|c| c.chars().take(12).collect::<String>());
        let cnt = counts.get(&n.id).cloned().unwrap_or_default();
        let c = |k: &str| cnt.get(k).copied().unwrap_or(0);
        let running: i64 = cnt
            .iter()
            .filter(|(k, _)| !["pass", "fail", "incomplete", "skip"].contains(&k.as_str()))
            .map(|(_, v)| v)
            .sum();
        let _ = write!(
            b,
            "<tr data-node-id=\"{id}\"><td><a href=\"/ui/node/{id}\">{id}</a></td><td>{tree}</td>\
             <td>{branch}</td><td><code title=\"{desc}\">{commit}</code> {desc}</td><td>{badges}</td>\
             <td class=counts><span class=\"n r-pass\">{p} pass</span> \
             <span class=\"n r-fail\">{fl} fail</span> <span class=\"n r-incomplete\">{i} incomplete</span>\
             {run}</td><td>{created}</td></tr>",
            id = n.id.0,
            tree = get("tree"),
            branch = get("branch"),
            commit = esc(&commit.unwrap_or_default()),
            desc = get("describe"),
            badges = badges(n),
            p = c("pass"),
            fl = c("fail"),
            i = c("incomplete"),
            run = if running > 0 {
                format!(" <span class=n>{running} unfinished</span>")
            } else {
                String::new()
            },
            created = time(&n.created),
        );
    }
    b.push_str("</tbody></table>");
    Ok(layout("Checkouts", &who, seq, &b))
}

// ---- a node ----

async fn node(State(shared): State<SharedRef>, headers: HeaderMap, Path(id): Path<String>) -> Page {
    let who = page_auth(&shared, &headers).await?;
    let id = match id.parse::<i64>() {
        Ok(n) if n > 0 => NodeId(n),
        _ => return Err(fail(ApiError::invalid(format!("`{id}` is not a node id")))),
    };
    let seq = last_seq(&shared).await;
    let (node, ancestors, tree, log) = shared
        .store
        .read(move |c| {
            let node = crate::store::nodes::get_node(c, id)?;
            let mut ancestors = Vec::new();
            let mut up = node.parent;
            while let Some(p) = up {
                let n = crate::store::nodes::get_node(c, p)?;
                up = n.parent;
                ancestors.push(n);
                if ancestors.len() > 64 {
                    break;
                }
            }
            ancestors.reverse();
            // Breadth-first, so a cut tree still shows its upper levels.
            let mut tree: BTreeMap<NodeId, Vec<Node>> = BTreeMap::new();
            let mut todo = std::collections::VecDeque::from([id]);
            let mut count = 0;
            while let Some(p) = todo.pop_front() {
                if count >= TREE_LIMIT {
                    break;
                }
                let kids = crate::store::nodes::children(c, p)?;
                count += kids.len();
                todo.extend(kids.iter().map(|k| k.id));
                tree.insert(p, kids);
            }
            // The job whose log to show: the node itself or its nearest job ancestor.
            let job = std::iter::once(&node)
                .chain(ancestors.iter().rev())
                .find(|n| n.kind == NodeKind::Job)
                .map(|n| n.id);
            let log = match job {
                Some(j) if j == id => match crate::store::jobs::log_attempt(c, j)? {
                    Some(a) => Some(read_log(c, j, a, LOG_LIMIT)?),
                    None => None,
                },
                _ => None,
            };
            Ok((node, ancestors, tree, log))
        })
        .await
        .map_err(fail)?;

    let mut b = String::from("<nav class=crumbs>");
    for a in &ancestors {
        let _ = write!(
            b,
            "<a href=\"/ui/node/{}\">{} {}</a> › ",
            a.id.0,
            esc(a.kind.as_str()),
            esc(&a.name)
        );
    }
    let _ = write!(
        b,
        "</nav><h1 data-node-id=\"{id}\">{kind} <span class=name>{name}</span> {badges}</h1>",
        id = node.id.0,
        kind = esc(node.kind.as_str()),
        name = esc(&node.name),
        badges = badges(&node),
    );

    // Facts: identity, timings, revision, error, artifacts.
    b.push_str("<section class=facts><dl>");
    let mut fact = |k: &str, v: String| {
        let _ = write!(b, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    };
    fact("id", node.id.0.to_string());
    fact("path", esc(&node.path.join(" / ")));
    fact("created", time(&node.created));
    fact("updated", time(&node.updated));
    if node.state == crate::model::NodeState::Done {
        let d = (node.updated - node.created).num_milliseconds() as f64;
        fact("duration", secs(d));
    }
    for (k, label) in [
        ("error_code", "error code"),
        ("error_msg", "error"),
        ("lab", "lab"),
        ("device", "device"),
        ("device_type", "device type"),
        ("runtime", "runtime"),
        ("platform", "platform"),
    ] {
        if let Some(v) = data_str(&node, k) {
            fact(label, esc(v));
        }
    }
    for (k, v) in revision(&node) {
        fact(&k, esc(&v));
    }
    if node.retry_counter > 0 {
        fact("retries", node.retry_counter.to_string());
    }
    if !node.artifacts.is_empty() {
        let mut a = String::new();
        for (name, url) in &node.artifacts {
            let href = if name == "log" || url.starts_with("/logs/") {
                match node.kind {
                    NodeKind::Job => format!("/ui/log/{}", node.id.0),
                    _ => esc(url),
                }
            } else if url.starts_with("https://") || url.starts_with("http://") {
                esc(url)
            } else {
                String::new()
            };
            if href.is_empty() {
                let _ = write!(a, "{} <code>{}</code><br>", esc(name), esc(url));
            } else {
                let _ = write!(a, "<a href=\"{href}\">{}</a><br>", esc(name));
            }
        }
        fact("artifacts", a);
    }
    b.push_str("</dl></section>");
    if let Some(x) = data_str(&node, "log_excerpt") {
        let _ = write!(
            b,
            "<section><h2>Log excerpt</h2><pre class=log>{}</pre></section>",
            highlight_lines(x, &[]).0
        );
    }
    if node.kind == NodeKind::Test {
        if let Some(job) = ancestors.iter().rev().find(|a| a.kind == NodeKind::Job) {
            let _ = write!(
                b,
                "<p><a class=joblog href=\"/ui/node/{j}#test-{t}\">this test in the log of job {j}</a></p>",
                j = job.id.0,
                t = node.id.0
            );
        }
    }

    // The tree.
    let failing: Vec<&Node> = tree
        .values()
        .flatten()
        .filter(|n| n.result == Some(labwire_common::NodeResult::Fail))
        .filter(|n| tree.get(&n.id).is_none_or(|k| k.is_empty()))
        .collect();
    let total: usize = tree.values().map(Vec::len).sum();
    let _ = write!(
        b,
        "<section><h2>Tree <small>{total} nodes, {} failing tests</small></h2>",
        failing.len()
    );
    let _ = write!(b, "<ul class=tree data-children-of=\"{}\">", node.id.0);
    render_tree(&mut b, &tree, node.id, &node, 0);
    b.push_str("</ul>");
    if total >= TREE_LIMIT {
        let _ = write!(
            b,
            "<p class=hint>only the first {TREE_LIMIT} nodes are shown</p>"
        );
    }
    b.push_str("</section>");

    if node.kind == NodeKind::Job {
        b.push_str("<section><h2>Log</h2>");
        match &log {
            None => b.push_str("<p class=hint>no log yet</p>"),
            Some((text, cut)) => {
                let names: Vec<(NodeId, &str)> =
                    failing.iter().map(|n| (n.id, n.name.as_str())).collect();
                let (html, nfail) = highlight_lines(text, &names);
                let _ = write!(
                    b,
                    "<p class=hint>{nfail} failing lines highlighted · <a href=\"/ui/log/{}\">raw log</a>{}</p>\
                     <pre class=log id=log>{html}</pre>",
                    node.id.0,
                    if *cut { " · cut at 2 MiB" } else { "" }
                );
            }
        }
        b.push_str("</section>");
    }
    let title = format!("{} {}", node.kind.as_str(), node.name);
    Ok(layout(&title, &who, seq, &b))
}

fn render_tree(
    b: &mut String,
    tree: &BTreeMap<NodeId, Vec<Node>>,
    at: NodeId,
    root: &Node,
    depth: usize,
) {
    let Some(kids) = tree.get(&at) else { return };
    for k in kids {
        // A failing leaf test links to its line in the job's log.
        let log_link = if k.kind == NodeKind::Test
            && k.result == Some(labwire_common::NodeResult::Fail)
            && tree.get(&k.id).is_none_or(|c| c.is_empty())
        {
            let job = job_of(tree, root, k.id);
            job.map(|j| {
                format!(
                    " <a class=faillink href=\"/ui/node/{j}#test-{}\">log</a>",
                    k.id.0
                )
            })
            .unwrap_or_default()
        } else {
            String::new()
        };
        let dur = if k.kind != NodeKind::Test && k.state == crate::model::NodeState::Done {
            format!(
                " <span class=dur>{}</span>",
                secs((k.updated - k.created).num_milliseconds() as f64)
            )
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<li data-node-id=\"{id}\"><span class=kind>{kind}</span> \
             <a href=\"/ui/node/{id}\">{name}</a> {badges}{dur}{log_link}",
            id = k.id.0,
            kind = esc(k.kind.as_str()),
            name = esc(&k.name),
            badges = badges(k),
        );
        let _ = write!(b, "<ul data-children-of=\"{}\">", k.id.0);
        if depth < 32 {
            render_tree(b, tree, k.id, root, depth + 1);
        }
        b.push_str("</ul></li>");
    }
}

/// The job above `id` in a rendered tree (or the root when it is a job).
fn job_of(tree: &BTreeMap<NodeId, Vec<Node>>, root: &Node, id: NodeId) -> Option<NodeId> {
    let parent_of: HashMap<NodeId, &Node> = tree
        .iter()
        .flat_map(|(p, kids)| kids.iter().map(move |k| (k.id, *p)))
        .filter_map(|(k, p)| {
            tree.values()
                .flatten()
                .find(|n| n.id == p)
                .or((root.id == p).then_some(root))
                .map(|n| (k, n))
        })
        .collect();
    let mut at = id;
    while let Some(p) = parent_of.get(&at) {
        if p.kind == NodeKind::Job {
            return Some(p.id);
        }
        at = p.id;
    }
    None
}

/// Reads up to `limit` bytes of a job's log; true when it was cut.
fn read_log(
    c: &crate::store::Connection,
    job: NodeId,
    attempt: i32,
    limit: usize,
) -> crate::error::Result<(String, bool)> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let batch = crate::store::jobs::read_log(c, job, attempt, from, 1 << 20)?;
        let Some(last) = batch.last().map(|(o, _)| *o) else {
            break;
        };
        for (_, d) in batch {
            out.extend_from_slice(&d);
        }
        if out.len() >= limit {
            out.truncate(limit);
            return Ok((String::from_utf8_lossy(&out).into_owned(), true));
        }
        from = last + 1;
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), false))
}

/// A log as HTML lines: failing lines (`not ok`, kernel oopses and panics, `FAIL`) are
/// highlighted, and the line that reports a failing test named in `failing` gets the anchor
/// `test-ID` (a failing test without such a line gets an anchor at the end). Returns the HTML and the number of highlighted lines.
fn highlight_lines(text: &str, failing: &[(NodeId, &str)]) -> (String, usize) {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut anchored: Vec<bool> = vec![false; failing.len()];
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        // KTAP/TAP prefixes (`# `, indentation) are allowed before `not ok`.
        let body = t.trim_start_matches(['#', ' ', '\t']);
        let bad = (body.starts_with("not ok") && !body.contains("# SKIP"))
            || t.contains("Kernel panic")
            || t.contains("Oops")
            || t.contains("BUG:")
            || t.contains(" FAIL")
            || t.starts_with("FAIL");
        let mut id = format!("L{}", i + 1);
        if bad {
            n += 1;
            if let Some(rest) = body.strip_prefix("not ok") {
                // `not ok N name # directive`
                let rest = rest.trim_start();
                let name = rest
                    .split_once(' ')
                    .map(|(_, nm)| nm)
                    .unwrap_or("")
                    .split(" # ")
                    .next()
                    .unwrap_or("")
                    .trim();
                if let Some(k) = failing
                    .iter()
                    .enumerate()
                    .position(|(k, (_, fname))| !anchored[k] && *fname == name)
                {
                    anchored[k] = true;
                    id = format!("test-{}", failing[k].0.0);
                }
            }
        }
        let _ = write!(
            out,
            "<span id=\"{id}\" class=\"line{}\">{}</span>",
            if bad { " fail" } else { "" },
            esc(line)
        );
    }
    // A failing test with no line of its own (an exit status, a timeout) points at the end.
    for (k, (id, _)) in failing.iter().enumerate() {
        if !anchored[k] {
            let _ = write!(out, "<span id=\"test-{}\" class=\"line end\"></span>", id.0);
        }
    }
    (out, n)
}

async fn raw_log(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Path(job): Path<String>,
) -> Page {
    page_auth(&shared, &headers).await?;
    let job = match job.parse::<i64>() {
        Ok(n) if n > 0 => NodeId(n),
        _ => return Err(fail(ApiError::invalid(format!("`{job}` is not a job id")))),
    };
    let text = shared
        .store
        .read(move |c| match crate::store::jobs::log_attempt(c, job)? {
            Some(a) => read_log(c, job, a, usize::MAX).map(|(t, _)| t),
            None => Err(Error::NotFound(format!("job {job} has no log yet"))),
        })
        .await
        .map_err(fail)?;
    Ok(secured(
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
    ))
}

// ---- labs ----

async fn labs(State(shared): State<SharedRef>, headers: HeaderMap) -> Page {
    let who = page_auth(&shared, &headers).await?;
    let seq = last_seq(&shared).await;
    let labs = lab_overview(&shared).await.map_err(fail)?;
    let (leased, stats) = shared
        .store
        .read(|c| {
            Ok((
                crate::store::jobs::list_jobs(c, Some(crate::store::JobStatus::Leased), 10_000)?,
                crate::store::jobs::job_stats(c)?,
            ))
        })
        .await
        .map_err(fail)?;
    // (lab, device) → job it runs.
    let busy: HashMap<(String, String), NodeId> = leased
        .iter()
        .filter_map(|j| Some(((j.lease_owner.clone()?, j.device.clone()?), j.id)))
        .collect();
    let mut b = String::from("<h1>Labs</h1>");
    if labs.is_empty() {
        b.push_str("<p class=hint>no lab has registered yet</p>");
    }
    for LabOverview {
        row,
        devices,
        connected,
        jobs_in_flight,
    } in &labs
    {
        // Queue wait estimate: the lab's moving averages, weighted by runs.
        let (runs, wait) = stats
            .iter()
            .filter(|((_, lab), _)| *lab == row.name)
            .fold((0i64, 0f64), |(r, w), (_, s)| {
                (r + s.runs, w + s.wait_ms * s.runs as f64)
            });
        let estimate = if runs > 0 {
            format!("{} (over {runs} runs)", secs(wait / runs as f64))
        } else {
            "no runs yet".into()
        };
        let _ = write!(
            b,
            "<section class=lab data-lab=\"{name}\"><h2>{name} {conn}{revoked}</h2>\
             <p class=facts>last seen {seen} · {jobs_in_flight} in flight · \
             queue wait ≈ {estimate} · {free} free slots</p>",
            name = esc(&row.name),
            conn = if *connected {
                "<span class=\"badge ok\">connected</span>"
            } else {
                "<span class=\"badge bad\">disconnected</span>"
            },
            revoked = if row.revoked_at.is_some() {
                " <span class=\"badge bad\">revoked</span>"
            } else {
                ""
            },
            seen = row
                .last_seen
                .map(|t| format!("{} ({})", time(&t), ago(&t)))
                .unwrap_or_else(|| "never".into()),
            free = row.free_slots,
        );
        let mut by_type: BTreeMap<&str, Vec<&labwire_common::DeviceInfo>> = BTreeMap::new();
        for d in devices {
            by_type.entry(&d.device_type).or_default().push(d);
        }
        b.push_str(
            "<table class=list><thead><tr><th>device type</th><th>device</th><th>driver</th>\
             <th>health</th><th>activity</th></tr></thead><tbody>",
        );
        if by_type.is_empty() {
            b.push_str("<tr class=empty><td colspan=5>no devices advertised</td></tr>");
        }
        for (dt, ds) in &by_type {
            for (i, d) in ds.iter().enumerate() {
                let activity = match busy.get(&(row.name.clone(), d.name.clone())) {
                    Some(j) => format!(
                        "<span class=\"badge busy\">busy</span> <a href=\"/ui/node/{0}\">job {0}</a>",
                        j.0
                    ),
                    None => "<span class=\"badge idle\">idle</span>".into(),
                };
                let health = format!("{:?}", d.health).to_lowercase();
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td><span class=\"badge h-{h}\">{h}</span></td><td>{activity}</td></tr>",
                    if i == 0 {
                        format!("<b>{}</b> ({})", esc(dt), ds.len())
                    } else {
                        String::new()
                    },
                    esc(&d.name),
                    esc(&d.driver),
                    h = esc(&health),
                );
            }
        }
        b.push_str("</tbody></table></section>");
    }
    Ok(layout("Labs", &who, seq, &b))
}

// ---- queue ----

async fn queue(State(shared): State<SharedRef>, headers: HeaderMap) -> Page {
    let who = page_auth(&shared, &headers).await?;
    let seq = last_seq(&shared).await;
    let (queued, stats, labs) = shared
        .store
        .read(|c| {
            let labs: Vec<String> = crate::store::labs::list_labs(c)?
                .into_iter()
                .filter(|l| l.revoked_at.is_none())
                .map(|l| l.name)
                .collect();
            Ok((
                crate::store::jobs::queued_jobs(c)?,
                crate::store::jobs::job_stats(c)?,
                labs,
            ))
        })
        .await
        .map_err(fail)?;
    let mut b = format!(
        "<h1>Queue <small>{} pending</small></h1><table class=list id=queue><thead><tr>\
         <th>job</th><th>wants</th><th>queued</th><th>expected wait</th><th>why it waits</th>\
         </tr></thead><tbody>",
        queued.len()
    );
    if queued.is_empty() {
        b.push_str("<tr class=empty><td colspan=5>the queue is empty</td></tr>");
    }
    for job in queued.iter().take(200) {
        let verdicts = shared.dispatcher.explain(job, &labs).await;
        let sig = crate::store::jobs::signature(job);
        let est = stats
            .iter()
            .filter(|((s, _), _)| *s == sig)
            .map(|(_, s)| s.wait_ms)
            .fold(None, |m: Option<f64>, w| Some(m.map_or(w, |m| m.min(w))));
        let mut why = String::new();
        if labs.is_empty() {
            why.push_str("no lab has registered");
        } else if verdicts.iter().any(|v| v.eligible) {
            why.push_str("placeable now: waiting for an agent to take it");
        } else {
            why.push_str("<ul class=reasons>");
            for v in &verdicts {
                let _ = write!(
                    why,
                    "<li><b>{}</b>: {}</li>",
                    esc(&v.lab),
                    esc(&v.reasons.join("; "))
                );
            }
            why.push_str("</ul>");
        }
        let wants = [
            job.criteria
                .device_type
                .as_deref()
                .map(|d| format!("device type {d}")),
            job.criteria.arch.as_deref().map(|a| format!("arch {a}")),
            job.criteria
                .driver
                .as_deref()
                .map(|d| format!("driver {d}")),
        ]
        .into_iter()
        .flatten()
        .chain(job.criteria.tags.iter().map(|t| format!("tag {t}")))
        .chain(job.criteria.features.iter().map(|f| format!("feature {f}")))
        .chain(
            job.criteria
                .properties
                .iter()
                .map(|(k, v)| format!("{k}={v}")),
        )
        .collect::<Vec<_>>()
        .join(", ");
        let _ = write!(
            b,
            "<tr data-node-id=\"{id}\"><td><a href=\"/ui/node/{id}\">{id} {name}</a></td>\
             <td>{wants}</td><td>{queued} ({ago})</td><td>{est}</td><td>{why}</td></tr>",
            id = job.id.0,
            name = esc(&job.spec.name),
            wants = esc(if wants.is_empty() {
                "any device"
            } else {
                &wants
            }),
            queued = time(&job.queued_at),
            ago = ago(&job.queued_at),
            est = est.map(secs).unwrap_or_else(|| "unknown".into()),
        );
    }
    b.push_str("</tbody></table>");
    Ok(layout("Queue", &who, seq, &b))
}

// ---- live updates and assets ----

/// `GET /ui/stream`: the event stream of `/events/stream`, with the dashboard's
/// authentication (cookie, or anonymous when configured).
async fn stream(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    viewer(&shared, &headers).await?;
    stream_events(shared, headers, params).await
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("ui/app.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("ui/app.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn highlights_failing_lines_and_anchors_tests() {
        let log = "KTAP version 1\n1..2\nok 1 a\nnot ok 2 b <i>\n    # not ok 3 c # SKIP\n";
        let (html, n) = highlight_lines(log, &[(NodeId(7), "b <i>")]);
        assert_eq!(n, 1);
        assert!(
            html.contains("<span id=\"test-7\" class=\"line fail\">not ok 2 b &lt;i&gt;</span>")
        );
        assert!(html.contains("<span id=\"L3\" class=\"line\">ok 1 a</span>"));
        assert!(!html.contains("<i>"));
    }

    #[test]
    fn reads_the_cookie_token() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=b; labwire_ui=tok123; c=d".parse().expect("header"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("tok123"));
    }
}
