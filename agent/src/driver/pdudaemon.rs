//! pdudaemon as a board's power back end (`power: {pdudaemon: {url, hostname, port}}` of a
//! serial device): `on`, `off` and `reboot` through pdudaemon's HTTP listener
//! (`GET /power/control/on?hostname=PDU&port=N`). pdudaemon answers once it has taken the
//! request, which is not when the power changed (it queues requests per PDU and may retry);
//! the serial driver therefore waits for the board's console to show it started, within the
//! boot timeout, and says so when it does not.

use anyhow::bail;
use serde::Deserialize;
use std::time::Duration;

/// Where a board's power is: a PDU of a pdudaemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdudaemonConfig {
    /// pdudaemon's HTTP listener, `http://HOST:PORT` (pdudaemon's default port is 16421).
    pub url: String,
    /// The PDU's name in pdudaemon's configuration (its `pdus` key).
    pub hostname: String,
    /// The board's outlet on that PDU.
    pub port: u32,
    /// How a job starts the board: `on` (default) or `reboot` (off, then on: a board left
    /// on boots afresh).
    #[serde(default)]
    pub start: PduStart,
    /// For `reboot`: seconds pdudaemon waits between off and on. Default 2.
    #[serde(default = "default_delay")]
    pub reboot_delay: u32,
}

/// How a job starts the board.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PduStart {
    /// `on`.
    #[default]
    On,
    /// `reboot`: off, wait, on.
    Reboot,
}

fn default_delay() -> u32 {
    2
}

/// The `power:` of a serial device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum PowerConfig {
    /// Through pdudaemon.
    Pdudaemon(PdudaemonConfig),
}

impl PdudaemonConfig {
    /// Checks the settings; errors name the key.
    pub(crate) fn validate(&self, key: &str) -> anyhow::Result<()> {
        let u = url::Url::parse(&self.url)
            .map_err(|e| anyhow::anyhow!("{key}.url `{}`: {e}", self.url))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            bail!("{key}.url `{}`: expected http://HOST:PORT", self.url);
        }
        if u.query().is_some() || u.username() != "" || u.password().is_some() {
            bail!(
                "{key}.url `{}`: expected http://HOST:PORT without user, password or query",
                self.url
            );
        }
        if self.hostname.is_empty() || self.hostname.chars().any(|c| c.is_control()) {
            bail!("{key}.hostname: expected the PDU's name in pdudaemon's configuration");
        }
        if self.reboot_delay > 600 {
            bail!("{key}.reboot_delay: at most 600 seconds");
        }
        Ok(())
    }

    /// Asks pdudaemon for `request` (`on`, `off`, `reboot`) within `timeout`. An error says
    /// what failed: pdudaemon not reachable, or its refusal.
    pub(crate) async fn request(&self, request: &str, timeout: Duration) -> Result<(), String> {
        let base = self.url.trim_end_matches('/');
        let mut url = url::Url::parse(&format!("{base}/power/control/{request}"))
            .map_err(|e| format!("pdudaemon url `{base}`: {e}"))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("hostname", &self.hostname);
            q.append_pair("port", &self.port.to_string());
            if request == "reboot" {
                q.append_pair("delay", &self.reboot_delay.to_string());
            }
        }
        crate::ensure_crypto();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("pdudaemon: {e}"))?;
        let what = format!(
            "pdudaemon at {base}: `{request}` for PDU `{}` port {}",
            self.hostname, self.port
        );
        let resp = client.get(url).send().await.map_err(|e| {
            if e.is_timeout() {
                format!(
                    "{what}: no answer within {}",
                    humantime::format_duration(timeout)
                )
            } else {
                format!("{what}: pdudaemon is not reachable ({})", error_chain(&e))
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        let body: String = body
            .trim()
            .chars()
            .take(200)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Err(format!("{what}: refused ({status}: {body})"))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> PdudaemonConfig {
        PdudaemonConfig {
            url: url.into(),
            hostname: "pdu1".into(),
            port: 3,
            start: PduStart::On,
            reboot_delay: 2,
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(cfg("http://127.0.0.1:16421").validate("p").is_ok());
        for bad in [
            "127.0.0.1:16421",
            "ftp://x",
            "http://u:p@x:1",
            "http://x:1/?a=b",
        ] {
            assert!(cfg(bad).validate("p").is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_pdudaemon_is_named() {
        // A port nobody listens on: bind, learn the port, close.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = cfg(&format!("http://127.0.0.1:{port}"))
            .request("on", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.contains("not reachable"), "{e}");
        assert!(e.contains("`on` for PDU `pdu1` port 3"), "{e}");
    }
}
