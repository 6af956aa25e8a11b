//! The web dashboard under `/ui/`: server-rendered HTML pages (labs, checkouts, a node with its
//! tree and log, the queue), a small script that follows the event stream and updates the
//! open page, and a style sheet, all served by the coordinator.
//!
//! Pages are minijinja templates (`templates/`, embedded at build time) with auto-escaping:
//! every value a page shows from nodes, labs or jobs is escaped by the template engine, none
//! by hand. Each page module reads what it needs from the store and hands the template plain
//! serialisable values ([`view`]).
//!
//! Browsers authenticate with a `read` token that the sign-in form keeps in an HttpOnly,
//! Secure, SameSite=Strict cookie (an `EventSource` cannot send an `Authorization` header, and
//! a token in a URL would end up in logs and history); a bearer header works too. With
//! `http.ui.anonymous_read` the pages need no token at all. The forms refuse cross-site
//! posts ([`login`]).

mod checkouts;
mod labs;
mod links;
mod log;
mod login;
mod node;
mod queue;
mod view;

pub(crate) use links::local_path;

use super::ApiError;
use super::events::{EventParams, stream_events};
use crate::error::Error;
use crate::shared::SharedRef;
use crate::store::labs::Scope;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::Environment;
use serde::Serialize;
use std::sync::OnceLock;

/// The cookie that holds a browser's read token.
const COOKIE: &str = "labwire_ui";

/// The dashboard's routes.
pub fn router(shared: SharedRef) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/checkouts") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/checkouts") }))
        .route("/ui/login", get(login::form).post(login::login))
        .route("/ui/logout", post(login::logout))
        .route("/ui/checkouts", get(checkouts::page))
        .route("/ui/labs", get(labs::page))
        .route("/ui/queue", get(queue::page))
        .route("/ui/node/{id}", get(node::page))
        .route("/ui/log/{job}", get(log::raw))
        .route("/ui/stream", get(stream))
        .route("/ui/assets/app.js", get(script))
        .route("/ui/assets/app.css", get(style))
        .with_state(shared)
}

/// The templates, embedded at build time.
const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("templates/layout.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("error.html", include_str!("templates/error.html")),
    ("login.html", include_str!("templates/login.html")),
    ("checkouts.html", include_str!("templates/checkouts.html")),
    ("node.html", include_str!("templates/node.html")),
    ("labs.html", include_str!("templates/labs.html")),
    ("queue.html", include_str!("templates/queue.html")),
];

/// The template environment: auto-escaping for `.html` (minijinja's default), undefined
/// values an error rather than empty text (a typo in a template fails its test).
fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, source) in TEMPLATES {
            // The templates are part of the program; the `every_template_parses` test
            // checks each one.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "a dashboard template does not parse");
            }
        }
        env
    })
}

/// Template `name` rendered with `ctx`.
fn html(name: &str, ctx: impl Serialize) -> Result<String, minijinja::Error> {
    templates().get_template(name)?.render(ctx)
}

/// Renders template `name` with `ctx` into a dashboard answer with `status`.
fn render(status: StatusCode, name: &str, ctx: impl Serialize) -> Response {
    match html(name, ctx) {
        Ok(html) => secured((status, Html(html)).into_response()),
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            tracing::error!(template = name, error = %msg, "cannot render a dashboard page");
            secured(
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "this page cannot be shown; the coordinator's log says why\n",
                )
                    .into_response(),
            )
        }
    }
}

/// A page in the layout (navigation, live updates) for `viewer`, rendered at event `seq`.
fn show(
    name: &str,
    title: &str,
    viewer: &Option<String>,
    seq: i64,
    ctx: impl Serialize,
) -> Response {
    let ctx = minijinja::context! {
        title => title,
        viewer => viewer,
        seq => seq,
        ..minijinja::Value::from_serialize(ctx)
    };
    render(StatusCode::OK, name, ctx)
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

/// A page, or the sign-in page (or an error page) when it cannot be shown.
type Page = Result<Response, Response>;

/// The viewer of a page; a browser without a valid token goes to the sign-in form.
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
    let message = e.0.to_string();
    let status = e.into_response().status();
    error_page(status, &message)
}

/// A small HTML page saying `message` with `status`.
fn error_page(status: StatusCode, message: &str) -> Response {
    render(
        status,
        "error.html",
        minijinja::context! { status => status.to_string(), message => message },
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

/// The last event's sequence number: the live script follows the stream from there.
async fn last_seq(shared: &SharedRef) -> i64 {
    shared
        .store
        .read(crate::store::events::last_seq)
        .await
        .unwrap_or(0)
}

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
        include_str!("app.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("app.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        let env = templates();
        for (name, _) in TEMPLATES {
            env.get_template(name)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn values_are_escaped() {
        let r = error_page(StatusCode::NOT_FOUND, "no node `<script>x</script>`");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let page = html(
            "error.html",
            minijinja::context! { status => "404", message => "<img src=x onerror=alert(1)> \"'&" },
        )
        .expect("render");
        assert!(
            page.contains("&lt;img src=x onerror=alert(1)&gt; &quot;&#x27;&amp;"),
            "{page}"
        );
        assert!(!page.contains("<img"), "{page}");
        // The layout too: the viewer's name.
        let page = html(
            "queue.html",
            minijinja::context! {
                title => "<b>t</b>", viewer => "<i>me</i>", seq => 1, pending => 0,
                jobs => Vec::<()>::new(),
            },
        )
        .expect("render");
        assert!(
            page.contains("signed in as &lt;i&gt;me&lt;&#x2f;i&gt;"),
            "{page}"
        );
        assert!(
            page.contains("<title>&lt;b&gt;t&lt;&#x2f;b&gt; · labwire</title>"),
            "{page}"
        );
        assert!(page.contains("the queue is empty"), "{page}");
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
