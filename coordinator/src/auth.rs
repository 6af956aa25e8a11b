//! Who is calling: a lab, identified by its client certificate (checked against the store on
//! every call, so a revocation takes effect at once), or a client, identified by a bearer
//! token whose scopes must allow the call.

use crate::error::Error;
use crate::model::LabName;
use crate::pki::fingerprint;
use crate::store::Store;
use crate::store::labs::{Scope, TokenInfo, lab_for_fingerprint, verify_token};
use tonic::{Request, Status};

/// Authenticates callers against the store.
#[derive(Clone)]
pub(crate) struct Auth {
    store: Store,
}

impl Auth {
    /// An authenticator reading `store`.
    pub(crate) fn new(store: Store) -> Self {
        Auth { store }
    }

    /// The lab named by the request's client certificate. Refused when there is no
    /// certificate, when it is not registered, or when it (or its lab) is revoked.
    pub(crate) async fn lab<T>(&self, req: &Request<T>) -> Result<LabName, Status> {
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated(
                "agents must present a client certificate issued by this coordinator's CA",
            )
        })?;
        let leaf = certs.first().ok_or_else(|| {
            Status::unauthenticated("the TLS session carries no client certificate")
        })?;
        let fp = fingerprint(leaf.as_ref());
        Ok(self
            .store
            .read(move |c| lab_for_fingerprint(c, &fp))
            .await?)
    }

    /// The token of a client request, checked to allow `scope`.
    pub(crate) async fn token<T>(
        &self,
        req: &Request<T>,
        scope: Scope,
    ) -> Result<TokenInfo, Status> {
        let header = match req.metadata().get(labwire_proto::AUTHORIZATION) {
            None => None,
            Some(h) => Some(
                h.to_str()
                    .map_err(|_| Status::unauthenticated("the authorization header is not text"))?,
            ),
        };
        Ok(self.bearer(header, scope).await?)
    }

    /// Checks the value of an `authorization` header (`Bearer <token>`) for `scope`; the
    /// gRPC services and the HTTP side share it.
    pub(crate) async fn bearer(
        &self,
        header: Option<&str>,
        scope: Scope,
    ) -> Result<TokenInfo, Error> {
        let header = header.ok_or_else(|| {
            Error::Unauthenticated("missing `authorization: Bearer <token>`".into())
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| {
                Error::Unauthenticated("the authorization header must be `Bearer <token>`".into())
            })?
            .trim()
            .to_string();
        let info = self.store.read(move |c| verify_token(c, &token)).await?;
        if !info.allows(scope) {
            return Err(Error::PermissionDenied(format!(
                "token `{}` has scopes [{}]; this call needs `{scope}`",
                info.name,
                info.scopes
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(info)
    }
}
