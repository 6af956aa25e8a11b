//! Signing in and out of the dashboard, and the rule that keeps other sites from posting its
//! forms.
//!
//! Cross-site posts are refused by the browser's own word on where a request comes from, not
//! by a CSRF token: `Sec-Fetch-Site` (Fetch Metadata) must say `same-origin`; a browser that
//! does not send it must send an `Origin` equal to this site's. A request with neither header
//! does not come from a web page (curl, scripts) and cannot be forged by one. Why not a token:
//! the sign-in form is used before there is a session to tie a token to (a double-submit
//! cookie would be needed just for it), the check is stateless and covers every form at once,
//! and every browser the dashboard supports sends these headers (its script and its
//! Content-Security-Policy need a browser from 2020 or later). The cookie is also
//! `SameSite=Strict`, so a cross-site request never carries it.

use super::{COOKIE, error_page, render, secured};
use crate::shared::SharedRef;
use crate::store::labs::Scope;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// `GET /ui/login`: the sign-in form.
pub(super) async fn form() -> Response {
    login_page(StatusCode::OK, "")
}

fn login_page(status: StatusCode, message: &str) -> Response {
    render(
        status,
        "login.html",
        minijinja::context! { message => message },
    )
}

/// The sign-in form's fields.
#[derive(serde::Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

/// `POST /ui/login`: checks the token and keeps it in the dashboard's cookie.
pub(super) async fn login(
    State(shared): State<SharedRef>,
    uri: Uri,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if let Err(why) = same_origin(&headers, &uri) {
        return login_page(StatusCode::FORBIDDEN, why);
    }
    let token = f.token.trim().to_string();
    let valid = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',');
    if !valid {
        return login_page(StatusCode::UNAUTHORIZED, "that is not a token");
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
        Err(e) => login_page(StatusCode::UNAUTHORIZED, &e.to_string()),
    }
}

/// `POST /ui/logout`: forgets the cookie.
pub(super) async fn logout(uri: Uri, headers: HeaderMap) -> Response {
    if let Err(why) = same_origin(&headers, &uri) {
        return error_page(StatusCode::FORBIDDEN, why);
    }
    secured(
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
            .into_response(),
    )
}

/// Why the request was refused.
const CROSS_SITE: &str = "refused: this form was sent from another site";

/// Whether a form post comes from a page of this site (see the module's text for the rule).
fn same_origin(headers: &HeaderMap, uri: &Uri) -> Result<(), &'static str> {
    let text = |h: header::HeaderName| headers.get(h).map(|v| v.to_str().unwrap_or(""));
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        return if site.eq_ignore_ascii_case("same-origin") {
            Ok(())
        } else {
            Err(CROSS_SITE)
        };
    }
    let Some(origin) = text(header::ORIGIN) else {
        return Ok(());
    };
    // HTTP/1.1 names the host in `Host`; HTTP/2 in the request's authority.
    let host = text(header::HOST)
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    match origin_authority(origin) {
        Some(a) if !host.is_empty() && same_authority(a, host) => Ok(()),
        _ => Err(CROSS_SITE),
    }
}

/// `host[:port]` of an `Origin` value (`https://host:port`), without a default port.
fn origin_authority(origin: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => "https",
        "http" => "http",
        _ => return None,
    };
    (!rest.is_empty() && !rest.contains(['/', '?', '#', '@'])).then_some((scheme, rest))
}

/// Whether `Origin`'s `(scheme, authority)` names the same host and port as `Host`.
fn same_authority((scheme, origin): (&str, &str), host: &str) -> bool {
    let default = if scheme == "https" { ":443" } else { ":80" };
    let strip = |s: &str| {
        let s = s.to_ascii_lowercase();
        s.strip_suffix(default).map(str::to_string).unwrap_or(s)
    };
    strip(origin) == strip(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let path = Uri::from_static("/ui/login");
        let ok = |p: &[(&'static str, &str)]| same_origin(&headers(p), &path).is_ok();
        // Fetch Metadata decides when present.
        assert!(ok(&[("sec-fetch-site", "same-origin")]));
        assert!(!ok(&[("sec-fetch-site", "cross-site"), ("host", "c:8443")]));
        assert!(!ok(&[("sec-fetch-site", "same-site")]));
        assert!(!ok(&[("sec-fetch-site", "none")]));
        // Else the Origin must be this site.
        assert!(ok(&[
            ("origin", "https://c.example:8443"),
            ("host", "c.example:8443")
        ]));
        assert!(ok(&[
            ("origin", "https://C.example"),
            ("host", "c.example:443")
        ]));
        assert!(!ok(&[
            ("origin", "https://evil.example"),
            ("host", "c.example")
        ]));
        assert!(!ok(&[("origin", "null"), ("host", "c.example")]));
        assert!(!ok(&[
            ("origin", "https://c.example@evil"),
            ("host", "c.example")
        ]));
        assert!(!ok(&[("origin", "https://c.example:8443")]));
        // HTTP/2: the authority of the request.
        let h2 = Uri::from_static("https://c.example:8443/ui/login");
        let o = headers(&[("origin", "https://c.example:8443")]);
        assert!(same_origin(&o, &h2).is_ok());
        // No browser: nothing to forge.
        assert!(ok(&[]));
    }
}
