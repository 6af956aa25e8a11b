//! The connection to the coordinator: one HTTP/2 channel over mutual TLS, opened lazily and
//! re-opened by tonic after an outage, shared by every task of the agent.

use crate::config::CoordinatorLink;
use anyhow::Context;
use labwire_proto::MAX_MESSAGE_BYTES;
use labwire_proto::v1::agent_service_client::AgentServiceClient;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The agent's gRPC client.
pub type Client = AgentServiceClient<Channel>;

/// Builds the client from the config's TLS files. Nothing is dialled until the first call.
pub fn connect(link: &CoordinatorLink) -> anyhow::Result<Client> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(
            &link.ca,
            "coordinator CA certificate",
        )?))
        .identity(Identity::from_pem(
            read(&link.cert, "lab certificate")?,
            read(&link.key, "lab key")?,
        ));
    let channel = Channel::from_shared(link.url.clone())
        .with_context(|| format!("coordinator.url `{}` is not a valid URL", link.url))?
        .tls_config(tls)
        .context("bad TLS settings")?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Whether a failed call may succeed later (transport trouble, a coordinator restart), as
/// opposed to a refusal that will not change (the lease is gone, the request is invalid).
pub fn is_transient(s: &tonic::Status) -> bool {
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
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    use rand::Rng;
    let cap = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let ms = rand::rng().random_range(cap.as_millis() as u64 / 2..=cap.as_millis() as u64);
    Duration::from_millis(ms)
}
