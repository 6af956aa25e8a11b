//! The connection to the coordinator: one HTTP/2 channel over mutual TLS per configured
//! address (a coordinator's replicas share one database and one CA), opened lazily and
//! re-opened by tonic after an outage, shared by every task of the agent. The agent talks to
//! one replica at a time; when a call to it fails for want of a connection, the next address
//! (round robin) becomes the current one, and the caller's usual back-off and retry carry on
//! there.

use crate::config::CoordinatorLink;
use anyhow::Context;
use labwire_proto::MAX_MESSAGE_BYTES;
use labwire_proto::v1::agent_service_client::AgentServiceClient;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The agent's gRPC client.
pub(crate) type Client = AgentServiceClient<Channel>;

/// The coordinator's replicas and the one the agent talks to now.
pub(crate) struct Coordinator {
    /// Each address with its client, in the configured order.
    replicas: Vec<(String, Client)>,
    /// The index of the current replica.
    current: AtomicUsize,
}

impl Coordinator {
    /// Builds a client per configured address from the config's TLS files. Nothing is
    /// dialled until the first call; the first address is the current one.
    pub(crate) fn connect(link: &CoordinatorLink) -> anyhow::Result<Self> {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
        };
        let ca = read(&link.ca, "coordinator CA certificate")?;
        let cert = read(&link.cert, "lab certificate")?;
        let key = read(&link.key, "lab key")?;
        let mut replicas = Vec::new();
        for (name, url) in link.addresses() {
            // Every replica must present a certificate of the shared CA that is valid for the
            // host in its own URL (tonic checks the name against the URL's host).
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .identity(Identity::from_pem(&cert, &key));
            let channel = Channel::from_shared(url.to_string())
                .with_context(|| format!("{name} `{url}` is not a valid URL"))?
                .tls_config(tls)
                .context("bad TLS settings")?
                .connect_timeout(Duration::from_secs(10))
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true)
                .tcp_nodelay(true)
                .connect_lazy();
            let client = AgentServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            replicas.push((url.to_string(), client));
        }
        anyhow::ensure!(!replicas.is_empty(), "no coordinator address is configured");
        Ok(Coordinator {
            replicas,
            current: AtomicUsize::new(0),
        })
    }

    /// The address of the current replica.
    pub(crate) fn url(&self) -> &str {
        &self.replicas[self.current.load(Ordering::SeqCst) % self.replicas.len()].0
    }

    /// Makes one call on the current replica. When it fails for want of a connection
    /// ([`is_connection_failure`]), the next replica becomes the current one for the next
    /// call; the error is returned either way, for the caller to back off and retry as usual.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let used = self.current.load(Ordering::SeqCst);
        let client = self.replicas[used % self.replicas.len()].1.clone();
        let res = f(client).await;
        if let Err(s) = &res {
            self.failed(used, s);
        }
        res
    }

    /// A call to replica `used` failed with `s`: switch to the next replica, unless the
    /// failure is the replica's answer or another task already switched away from it (calls
    /// that were in flight on a dead replica all fail; only the first one moves on).
    fn failed(&self, used: usize, s: &tonic::Status) {
        let n = self.replicas.len();
        if n < 2 || !is_connection_failure(s) {
            return;
        }
        let next = (used + 1) % n;
        if self
            .current
            .compare_exchange(used, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            tracing::info!(
                from = %self.replicas[used].0,
                to = %self.replicas[next].0,
                code = ?s.code(),
                error = %s.message(),
                "coordinator replica unreachable; switching to the next one"
            );
        }
    }
}

/// Whether a failed call never got an answer from the coordinator: it could not connect
/// (refused, TLS, timeout), the connection broke, or the coordinator says it is unavailable
/// (shutting down). A status made on this side, not sent by the server, carries its cause
/// as its source; a server's answer has none.
pub(crate) fn is_connection_failure(s: &tonic::Status) -> bool {
    use std::error::Error;
    s.code() == tonic::Code::Unavailable || s.source().is_some()
}

/// Whether a failed call may succeed later (transport trouble, a coordinator restart), as
/// opposed to a refusal that will not change (the lease is gone, the request is invalid).
pub(crate) fn is_transient(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        s.code(),
        Unavailable
            | Unknown
            | DeadlineExceeded
            | Internal
            | ResourceExhausted
            | Aborted
            | Cancelled
            | Unauthenticated
    )
}

/// Back-off with full jitter: a random wait up to `base * 2^attempt`, capped at `max`.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    use rand::Rng;
    let cap = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let ms = rand::rng().random_range(cap.as_millis() as u64 / 2..=cap.as_millis() as u64);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A coordinator of `urls` with plain (no TLS) lazy channels: what is tested is which
    /// replica is current, not the handshake.
    fn replicas(urls: &[&str]) -> Coordinator {
        Coordinator {
            replicas: urls
                .iter()
                .map(|u| {
                    let ch = Channel::from_shared(u.to_string()).unwrap().connect_lazy();
                    (u.to_string(), AgentServiceClient::new(ch))
                })
                .collect(),
            current: AtomicUsize::new(0),
        }
    }

    /// A port nobody listens on.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_refused_connection_moves_to_the_next_replica_once() {
        let (a, b) = (
            format!("http://127.0.0.1:{}", closed_port()),
            format!("http://127.0.0.1:{}", closed_port()),
        );
        let co = replicas(&[&a, &b]);
        assert_eq!(co.url(), a);
        let req = labwire_proto::v1::RegisterRequest::default();
        let e = co
            .call(|mut c| async move { c.register(req).await })
            .await
            .unwrap_err();
        assert!(is_connection_failure(&e), "{e:?}");
        assert_eq!(co.url(), b);
        // A late failure of a call that was still on the first replica changes nothing.
        co.failed(0, &tonic::Status::unavailable("late"));
        assert_eq!(co.url(), b);
        // The replica's own answer is not a reason to leave it.
        co.failed(1, &tonic::Status::failed_precondition("unknown session"));
        assert_eq!(co.url(), b);
        // Round robin: after the last comes the first again.
        co.failed(1, &tonic::Status::unavailable("shutting down"));
        assert_eq!(co.url(), a);
    }

    #[tokio::test]
    async fn one_address_is_never_left() {
        let a = format!("http://127.0.0.1:{}", closed_port());
        let co = replicas(&[&a]);
        let req = labwire_proto::v1::RegisterRequest::default();
        let e = co
            .call(|mut c| async move { c.register(req).await })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert_eq!(co.url(), a);
    }
}
