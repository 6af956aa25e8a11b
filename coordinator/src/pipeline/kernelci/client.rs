//! The HTTP calls to KernelCI: its API's event history and nodes (KernelCI API routes
//! `GET events` and `GET node/{id}` under the configured version prefix), a job definition
//! from KernelCI's storage, and the results callback to its pipeline. Redirects are not
//! followed where a token is sent. Errors say whether a later try may work.

use super::config::PullLabConfig;
use serde_json::Value;
use std::time::Duration;

/// What a call to KernelCI met.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KciError {
    /// KernelCI is unreachable, slow, or answered 5xx, 408 or 429: try again later.
    #[error("{0}")]
    Transient(String),
    /// KernelCI answered that the request itself is wrong (another 4xx): trying again will
    /// not help.
    #[error("{0}")]
    Refused(String),
    /// KernelCI did not accept the credentials (401, 403): an admin can fix the token, so
    /// a callback is tried again.
    #[error("{0}")]
    Unauthorized(String),
}

/// A client of one KernelCI installation.
#[derive(Clone)]
pub(crate) struct KciClient {
    http: reqwest::Client,
    api: url::Url,
    token: Option<String>,
}

/// Whether a KernelCI node id can go into a URL path: letters, digits, `-`, `_`.
pub(crate) fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn classify(what: &str, status: reqwest::StatusCode, body: &str) -> KciError {
    let body: String = body.chars().take(300).collect();
    let msg = format!("{what}: HTTP {status}: {body}");
    if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        KciError::Transient(msg)
    } else if status.as_u16() == 401 || status.as_u16() == 403 {
        KciError::Unauthorized(msg)
    } else {
        KciError::Refused(msg)
    }
}

fn transport(what: &str, e: reqwest::Error) -> KciError {
    KciError::Transient(format!("{what}: {e}"))
}

impl KciClient {
    /// A client for the configured API.
    pub(crate) fn new(cfg: &PullLabConfig) -> anyhow::Result<KciClient> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut api = url::Url::parse(&cfg.api)?;
        if !api.path().ends_with('/') {
            let p = format!("{}/", api.path());
            api.set_path(&p);
        }
        let token = match &cfg.token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        anyhow::anyhow!("kernelci.pull_lab.token_file {}: {e}", p.display())
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
            .timeout(cfg.request_timeout)
            .user_agent(concat!("labwire-coordinator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(KciClient { http, api, token })
    }

    async fn get_json(
        &self,
        what: &str,
        url: url::Url,
        auth: bool,
        max: usize,
    ) -> Result<Value, KciError> {
        let mut req = self.http.get(url);
        if auth && let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| transport(what, e))?;
        let status = resp.status();
        if resp.content_length().is_some_and(|l| l > max as u64) {
            return Err(KciError::Refused(format!("{what}: more than {max} bytes")));
        }
        let bytes = resp.bytes().await.map_err(|e| transport(what, e))?;
        if !status.is_success() {
            return Err(classify(what, status, &String::from_utf8_lossy(&bytes)));
        }
        if bytes.len() > max {
            return Err(KciError::Refused(format!("{what}: more than {max} bytes")));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| KciError::Refused(format!("{what}: not JSON: {e}")))
    }

    /// Job events after `from` (KernelCI's `timestamp`, exclusive), oldest first, each with
    /// its node (`recursive=true`), at most `limit` (KernelCI allows 1000 with nodes).
    pub(crate) async fn job_events(
        &self,
        from: &str,
        limit: usize,
    ) -> Result<Vec<Value>, KciError> {
        let mut url = self
            .api
            .join("events")
            .map_err(|e| KciError::Refused(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("kind", "job")
            .append_pair("from", from)
            .append_pair("limit", &limit.to_string())
            .append_pair("recursive", "true");
        match self
            .get_json("reading KernelCI's events", url, true, 64 << 20)
            .await?
        {
            Value::Array(a) => Ok(a),
            _ => Err(KciError::Refused("KernelCI's events: not a list".into())),
        }
    }

    /// A KernelCI node, or `None` when KernelCI has none of that id.
    pub(crate) async fn node(&self, id: &str) -> Result<Option<Value>, KciError> {
        if !valid_node_id(id) {
            return Err(KciError::Refused(format!(
                "`{id}` is not a KernelCI node id"
            )));
        }
        let url = self
            .api
            .join(&format!("node/{id}"))
            .map_err(|e| KciError::Refused(e.to_string()))?;
        match self
            .get_json("reading a KernelCI node", url, true, 16 << 20)
            .await
        {
            Ok(Value::Null) => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(KciError::Refused(m)) if m.contains("HTTP 404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A job definition from KernelCI's storage (no token is sent there).
    pub(crate) async fn job_definition(&self, url: &str) -> Result<Vec<u8>, KciError> {
        let what = "fetching the job definition";
        let u =
            url::Url::parse(url).map_err(|e| KciError::Refused(format!("{what} `{url}`: {e}")))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(KciError::Refused(format!(
                "{what}: `{url}` is not an http or https URL"
            )));
        }
        let resp = self
            .http
            .get(u)
            .send()
            .await
            .map_err(|e| transport(what, e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| transport(what, e))?;
        if !status.is_success() {
            return Err(classify(what, status, &String::from_utf8_lossy(&bytes)));
        }
        if bytes.len() > super::definition::MAX_DEFINITION_BYTES {
            return Err(KciError::Refused(format!(
                "{what}: more than {} bytes",
                super::definition::MAX_DEFINITION_BYTES
            )));
        }
        Ok(bytes.to_vec())
    }

    /// Posts a results callback with the runtime's callback token (KernelCI's pipeline
    /// compares the whole `Authorization` header with the token's value).
    pub(crate) async fn callback(
        &self,
        url: &str,
        token: &str,
        body: &Value,
    ) -> Result<(), KciError> {
        let what = "posting the results callback";
        let resp = self
            .http
            .post(url)
            .header(reqwest::header::AUTHORIZATION, token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).map_err(|e| KciError::Refused(e.to_string()))?)
            .send()
            .await
            .map_err(|e| transport(what, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(classify(what, status, &text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_what_a_retry_can_change() {
        let c = |code: u16| classify("posting", reqwest::StatusCode::from_u16(code).unwrap(), "x");
        for code in [500, 502, 503, 408, 429] {
            assert!(matches!(c(code), KciError::Transient(_)), "{code}");
        }
        for code in [401, 403] {
            assert!(matches!(c(code), KciError::Unauthorized(_)), "{code}");
        }
        for code in [400, 404, 413, 422] {
            assert!(matches!(c(code), KciError::Refused(_)), "{code}");
        }
    }
}
