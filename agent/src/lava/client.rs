//! A client of LAVA's REST API v0.2: device types and devices, job submission and
//! validation, job state, incremental logs, results, cancellation. Requests are limited in
//! concurrency, retried with back-off on transport errors and 5xx answers, and carry the
//! token (`Authorization: Token ...`) only to the configured server: redirects are not
//! followed and a pagination link to another origin is refused.

use super::config::{LavaConfig, Secret};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use url::Url;

/// Why a request to LAVA failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LavaError {
    /// No answer (connection refused, reset, timed out), after the retries.
    #[error("LAVA at {url}: {msg}")]
    Transport {
        /// What was asked.
        url: String,
        /// What went wrong.
        msg: String,
    },
    /// LAVA answered with an error status.
    #[error("LAVA at {url} answered {status}: {body}")]
    Status {
        /// What was asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// LAVA refused a job definition; `message` is LAVA's own.
    #[error("LAVA refused the job: {message}")]
    Refused {
        /// LAVA's message.
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("LAVA at {url}: unexpected answer: {msg}")]
    Decode {
        /// What was asked.
        url: String,
        /// What is wrong.
        msg: String,
    },
    /// A redirect or a link to another origin: not followed, so the token stays home.
    #[error("LAVA at {url} pointed to {to}; not followed so that the token is not sent elsewhere")]
    Elsewhere {
        /// What was asked.
        url: String,
        /// Where it pointed.
        to: String,
    },
}

impl LavaError {
    /// Whether the job or object asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, LavaError::Status { status: 404, .. })
    }
}

/// A device type as `devicetypes/` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceTypeInfo {
    /// Its name.
    pub name: String,
    /// Its architecture, when the admin set it.
    #[serde(default)]
    pub architecture: Option<String>,
}

/// A device as `devices/` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceEntry {
    /// Its hostname.
    pub hostname: String,
    /// Its device type.
    pub device_type: String,
    /// `Idle`, `Reserved`, `Running`.
    pub state: String,
    /// `Good`, `Unknown`, `Looping`, `Bad`, `Maintenance`, `Retired`.
    pub health: String,
}

/// A job as `jobs/ID/` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct JobStatus {
    /// Its id.
    pub id: i64,
    /// `Submitted`, `Scheduling`, `Scheduled`, `Running`, `Canceling`, `Finished`.
    pub state: String,
    /// `Unknown`, `Complete`, `Incomplete`, `Canceled`.
    pub health: String,
    /// The device it ran on, once scheduled.
    #[serde(default)]
    pub actual_device: Option<String>,
    /// LAVA's comment on a failure.
    #[serde(default)]
    pub failure_comment: Option<String>,
    /// When a worker started it (RFC 3339), once it did.
    #[serde(default)]
    pub start_time: Option<String>,
    /// When it ended (RFC 3339), once it did.
    #[serde(default)]
    pub end_time: Option<String>,
}

/// One line of a job's log.
#[derive(Debug, Clone, Deserialize)]
pub struct LogLine {
    /// When.
    #[serde(default)]
    pub dt: String,
    /// `target` (the device's output), `info`, `debug`, `results`, `feedback`, `error`, ...
    pub lvl: String,
    /// A string, or a map for `results`.
    pub msg: serde_json::Value,
}

/// A test suite of a job.
#[derive(Debug, Clone, Deserialize)]
pub struct Suite {
    /// Its id.
    pub id: i64,
    /// Its name (`lava`, `0_baseline`, ...).
    pub name: String,
}

/// A test case of a job.
#[derive(Debug, Clone, Deserialize)]
pub struct TestCase {
    /// Its name.
    pub name: String,
    /// `pass`, `fail`, `skip`, `unknown`.
    pub result: String,
    /// A measurement, as LAVA prints it.
    #[serde(default)]
    pub measurement: Option<String>,
    /// Its units.
    #[serde(default)]
    pub unit: Option<String>,
    /// YAML text with the case's details (`error_type`, `error_msg`, ...).
    #[serde(default)]
    pub metadata: Option<String>,
    /// The id of its suite.
    pub suite: i64,
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default)]
    next: Option<String>,
    results: Vec<T>,
}

/// A LAVA server.
#[derive(Clone)]
pub struct LavaClient {
    api: Url,
    http: reqwest::Client,
    token: Secret,
    slots: Arc<Semaphore>,
    retries: u32,
}

impl std::fmt::Debug for LavaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LavaClient")
            .field("api", &self.api.as_str())
            .finish()
    }
}

/// How a request may be retried.
#[derive(Clone, Copy, PartialEq)]
enum Retry {
    /// Reads: on any transport error or 5xx.
    Idempotent,
    /// Submission: only when the server cannot have taken it (no connection, 502, 503).
    NotTaken,
}

impl LavaClient {
    /// A client for one configured instance.
    pub fn new(cfg: &LavaConfig) -> anyhow::Result<Self> {
        Self::with_token(cfg, cfg.load_token()?)
    }

    /// The token it sends (to mask it in job logs).
    pub(crate) fn token(&self) -> &Secret {
        &self.token
    }

    /// A client with the given token.
    pub fn with_token(cfg: &LavaConfig, token: Secret) -> anyhow::Result<Self> {
        crate::ensure_crypto();
        let mut base = Url::parse(&cfg.url)?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let api = base.join("api/v0.2/")?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
            .timeout(cfg.request_timeout)
            .user_agent(concat!("labwire-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(LavaClient {
            api,
            http,
            token,
            slots: Arc::new(Semaphore::new(cfg.max_requests.max(1))),
            retries: cfg.retries,
        })
    }

    /// The API's base URL (`.../api/v0.2/`).
    pub fn api(&self) -> &Url {
        &self.api
    }

    fn url(&self, path: &str) -> Url {
        // Paths are built by this module from fixed words and numbers: joining cannot fail.
        self.api.join(path).unwrap_or_else(|_| self.api.clone())
    }

    fn same_origin(&self, u: &Url) -> bool {
        u.scheme() == self.api.scheme()
            && u.host_str() == self.api.host_str()
            && u.port_or_known_default() == self.api.port_or_known_default()
    }

    /// Sends one request with retries; returns the status and body of the final answer.
    async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        body: Option<&serde_json::Value>,
        retry: Retry,
    ) -> Result<(u16, bytes::Bytes), LavaError> {
        if !self.same_origin(&url) {
            return Err(LavaError::Elsewhere {
                url: self.api.to_string(),
                to: url.to_string(),
            });
        }
        let mut attempt = 0u32;
        loop {
            let res = {
                let _slot = self
                    .slots
                    .acquire()
                    .await
                    .map_err(|_| LavaError::Transport {
                        url: url.to_string(),
                        msg: "client closed".into(),
                    })?;
                let mut req = self
                    .http
                    .request(method.clone(), url.clone())
                    .header("Authorization", format!("Token {}", self.token.0))
                    .header("Accept", "application/json");
                if let Some(b) = body {
                    req = req
                        .header("Content-Type", "application/json")
                        .body(b.to_string());
                }
                match req.send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        if status.is_redirection() {
                            let to = resp
                                .headers()
                                .get("location")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("?")
                                .to_string();
                            return Err(LavaError::Elsewhere {
                                url: url.to_string(),
                                to,
                            });
                        }
                        match resp.bytes().await {
                            Ok(b) => Ok((status.as_u16(), b)),
                            Err(e) => Err((e.is_connect(), e.to_string())),
                        }
                    }
                    Err(e) => Err((e.is_connect(), describe(&e))),
                }
            };
            let retryable = match &res {
                Ok((s, _)) if *s >= 500 || *s == 429 => {
                    retry == Retry::Idempotent || *s == 502 || *s == 503 || *s == 429
                }
                Ok(_) => false,
                Err((connect, _)) => retry == Retry::Idempotent || *connect,
            };
            if !retryable || attempt >= self.retries {
                return match res {
                    Ok(ok) => Ok(ok),
                    Err((_, msg)) => Err(LavaError::Transport {
                        url: url.to_string(),
                        msg,
                    }),
                };
            }
            attempt += 1;
            let wait = crate::client::backoff(
                attempt,
                Duration::from_millis(200),
                Duration::from_secs(10),
            );
            match &res {
                Ok((s, _)) => {
                    tracing::debug!(%url, status = s, retry_in = ?wait, "LAVA busy; retrying")
                }
                Err((_, m)) => {
                    tracing::debug!(%url, error = %m, retry_in = ?wait, "LAVA unreachable; retrying")
                }
            }
            tokio::time::sleep(wait).await;
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, url: Url) -> Result<T, LavaError> {
        let (status, body) = self
            .send(reqwest::Method::GET, url.clone(), None, Retry::Idempotent)
            .await?;
        if !(200..300).contains(&status) {
            return Err(status_error(&url, status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| LavaError::Decode {
            url: url.to_string(),
            msg: e.to_string(),
        })
    }

    /// Every item of a paginated list, following `next` (same origin only).
    async fn list<T: DeserializeOwned>(&self, first: Url) -> Result<Vec<T>, LavaError> {
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 10_000 {
                return Err(LavaError::Decode {
                    url: url.to_string(),
                    msg: "more than 10000 pages".into(),
                });
            }
            let page: Page<T> = self.get_json(url.clone()).await?;
            out.extend(page.results);
            if let Some(n) = page.next.filter(|n| !n.is_empty()) {
                let n = url.join(&n).map_err(|e| LavaError::Decode {
                    url: url.to_string(),
                    msg: format!("bad `next` link {n}: {e}"),
                })?;
                next = Some(n);
            }
        }
        Ok(out)
    }

    /// The server's version (`system/version/`).
    pub async fn version(&self) -> Result<String, LavaError> {
        #[derive(Deserialize)]
        struct V {
            version: String,
        }
        let v: V = self.get_json(self.url("system/version/")).await?;
        Ok(v.version)
    }

    /// Every device type.
    pub async fn device_types(&self) -> Result<Vec<DeviceTypeInfo>, LavaError> {
        self.list(self.url("devicetypes/?limit=100")).await
    }

    /// Every device.
    pub async fn devices(&self) -> Result<Vec<DeviceEntry>, LavaError> {
        self.list(self.url("devices/?limit=100")).await
    }

    /// Submits a job definition (YAML); returns the LAVA job id. A definition LAVA refuses
    /// is `Refused` with LAVA's message.
    pub async fn submit(&self, definition: &str) -> Result<i64, LavaError> {
        #[derive(Deserialize)]
        struct Submitted {
            job_ids: Vec<serde_json::Value>,
        }
        let url = self.url("jobs/");
        let body = serde_json::json!({ "definition": definition });
        let (status, bytes) = self
            .send(
                reqwest::Method::POST,
                url.clone(),
                Some(&body),
                Retry::NotTaken,
            )
            .await?;
        if status == 400 {
            return Err(LavaError::Refused {
                message: message_of(&bytes),
            });
        }
        if !(200..300).contains(&status) {
            return Err(status_error(&url, status, &bytes));
        }
        let s: Submitted = serde_json::from_slice(&bytes).map_err(|e| LavaError::Decode {
            url: url.to_string(),
            msg: e.to_string(),
        })?;
        s.job_ids
            .first()
            .and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .ok_or_else(|| LavaError::Decode {
                url: url.to_string(),
                msg: "no job id in the answer (a multinode definition?)".into(),
            })
    }

    /// Asks LAVA whether a definition is valid without submitting it: `Ok(())` or
    /// `Refused` with LAVA's message.
    pub async fn validate(&self, definition: &str) -> Result<(), LavaError> {
        let url = self.url("jobs/validate/");
        let body = serde_json::json!({ "definition": definition });
        let (status, bytes) = self
            .send(
                reqwest::Method::POST,
                url.clone(),
                Some(&body),
                Retry::Idempotent,
            )
            .await?;
        if !(200..300).contains(&status) {
            return Err(status_error(&url, status, &bytes));
        }
        let message = message_of(&bytes);
        if message.starts_with("Job valid") {
            Ok(())
        } else {
            Err(LavaError::Refused { message })
        }
    }

    /// The newest job with this description (the definition's `job_name`), if any.
    pub async fn find_by_description(&self, description: &str) -> Result<Option<i64>, LavaError> {
        if description.is_empty() {
            return Ok(None);
        }
        let mut url = self.url("jobs/");
        url.query_pairs_mut()
            .append_pair("description", description)
            .append_pair("ordering", "-id")
            .append_pair("limit", "1");
        #[derive(Deserialize)]
        struct Id {
            id: i64,
        }
        let page: Page<Id> = self.get_json(url).await?;
        Ok(page.results.first().map(|j| j.id))
    }

    /// A job's state and health.
    pub async fn job(&self, id: i64) -> Result<JobStatus, LavaError> {
        self.get_json(self.url(&format!("jobs/{id}/"))).await
    }

    /// The lines of a job's log from line `start` (0-based) on; empty while it has none.
    pub async fn logs(&self, id: i64, start: u64) -> Result<Vec<LogLine>, LavaError> {
        let url = self.url(&format!("jobs/{id}/logs/?start={start}"));
        let (status, body) = self
            .send(reqwest::Method::GET, url.clone(), None, Retry::Idempotent)
            .await?;
        if status == 404 {
            // No log yet (or nothing from `start` on).
            return Ok(Vec::new());
        }
        if !(200..300).contains(&status) {
            return Err(status_error(&url, status, &body));
        }
        Ok(super::log::parse_log(&body))
    }

    /// A job's test suites, in the order LAVA created them.
    pub async fn suites(&self, id: i64) -> Result<Vec<Suite>, LavaError> {
        self.list(self.url(&format!("jobs/{id}/suites/?ordering=id&limit=100")))
            .await
    }

    /// A job's test cases, in the order LAVA recorded them (`ordering=id`: an unordered
    /// list comes back scrambled, and its pages may skip or repeat a case).
    pub async fn tests(&self, id: i64) -> Result<Vec<TestCase>, LavaError> {
        self.list(self.url(&format!("jobs/{id}/tests/?ordering=id&limit=500")))
            .await
    }

    /// Asks LAVA to cancel a job.
    pub async fn cancel(&self, id: i64) -> Result<(), LavaError> {
        let url = self.url(&format!("jobs/{id}/cancel/"));
        let (status, body) = self
            .send(reqwest::Method::GET, url.clone(), None, Retry::Idempotent)
            .await?;
        if !(200..300).contains(&status) {
            return Err(status_error(&url, status, &body));
        }
        Ok(())
    }
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn message_of(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct M {
        message: Option<String>,
        detail: Option<String>,
    }
    match serde_json::from_slice::<M>(body) {
        Ok(M {
            message: Some(m), ..
        }) => m,
        Ok(M {
            detail: Some(d), ..
        }) => d,
        _ => String::from_utf8_lossy(&body[..body.len().min(2000)]).into_owned(),
    }
}

fn status_error(url: &Url, status: u16, body: &[u8]) -> LavaError {
    let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
    LavaError::Status {
        url: url.to_string(),
        status,
        body: text,
    }
}
