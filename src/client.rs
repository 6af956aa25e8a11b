//! Connecting to the coordinator as a client: TLS (verifying the coordinator against its CA)
//! plus a bearer token on every call.

use anyhow::Context;
use labwire_proto::MAX_MESSAGE_BYTES;
use labwire_proto::v1::admin_service_client::AdminServiceClient;
use labwire_proto::v1::borrow_service_client::BorrowServiceClient;
use labwire_proto::v1::event_service_client::EventServiceClient;
use labwire_proto::v1::node_service_client::NodeServiceClient;
use std::path::Path;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(labwire_proto::AUTHORIZATION, self.0.clone());
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Bearer>;

/// Clients of the client-facing services over one channel.
#[derive(Clone)]
pub struct Clients {
    /// Nodes and jobs.
    pub nodes: NodeServiceClient<Svc>,
    /// Events.
    pub events: EventServiceClient<Svc>,
    /// Administration.
    pub admin: AdminServiceClient<Svc>,
    /// Borrowing boards: reservations.
    pub borrow: BorrowServiceClient<Svc>,
}

/// Opens a channel to `server` trusting `ca_pem`, sending `token`.
pub async fn connect(server: &str, ca_pem: &[u8], token: &str) -> anyhow::Result<Clients> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    let channel = Channel::from_shared(server.to_string())
        .with_context(|| format!("`{server}` is not a valid URL"))?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("cannot connect to the coordinator at {server}"))?;
    let value: MetadataValue<_> = format!("Bearer {}", token.trim())
        .parse()
        .context("the token contains characters that cannot be sent")?;
    let bearer = Bearer(value);
    Ok(Clients {
        nodes: NodeServiceClient::with_interceptor(channel.clone(), bearer.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        events: EventServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        admin: AdminServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        borrow: BorrowServiceClient::with_interceptor(channel, bearer),
    })
}

/// Reads a CA file with a clear error.
pub fn read_ca(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "cannot read the coordinator CA certificate {}",
            path.display()
        )
    })
}
