//! Who is calling: a lab, identified by its client certificate, or a client, identified by a
//! bearer token whose scopes must allow the call.
//!
//! A certificate is looked up in the store once; its fingerprint's lab is then kept in
//! memory ([`LabCache`]), so an agent's calls cost no store read. Only accepted certificates
//! are kept (an unknown or revoked one is looked up every time). A revocation, by this
//! coordinator or by another process (heard of through the store's notifications), removes
//! the lab's certificates from the cache and closes the lab's connections at once
//! ([`Auth::revoked`]); a lookup that was under way while it happened is not cached.

use crate::error::Error;
use crate::model::LabName;
use crate::net::Tracker;
use crate::pki::fingerprint;
use crate::store::Store;
use crate::store::labs::{Scope, TokenInfo, lab_for_fingerprint, verify_token};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tonic::{Request, Status};

/// Accepted certificate fingerprints and their labs.
#[derive(Default)]
struct LabCache {
    /// Fingerprint → lab.
    labs: HashMap<String, LabName>,
    /// Moves at every revocation, so that a lookup that started before one is not cached.
    generation: u64,
}

/// Authenticates callers against the store.
#[derive(Clone)]
pub(crate) struct Auth {
    store: Store,
    cache: Arc<Mutex<LabCache>>,
    /// The gRPC port's connections, once serving: a revoked lab's are closed.
    conns: Arc<OnceLock<Arc<Tracker>>>,
}

impl Auth {
    /// An authenticator reading `store`.
    pub(crate) fn new(store: Store) -> Self {
        Auth {
            store,
            cache: Default::default(),
            conns: Default::default(),
        }
    }

    /// Tells the authenticator the connections of the agents' port, so that a revocation
    /// closes the lab's connections.
    pub(crate) fn track_connections(&self, conns: Arc<Tracker>) {
        let _ = self.conns.set(conns);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LabCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
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
        let (cached, generation) = {
            let c = self.cache();
            (c.labs.get(&fp).cloned(), c.generation)
        };
        let lab = match cached {
            Some(lab) => lab,
            None => {
                let fp2 = fp.clone();
                let lab = self
                    .store
                    .read(move |c| lab_for_fingerprint(c, &fp2))
                    .await?;
                let cached = {
                    let mut c = self.cache();
                    // A revocation while the store was read: the answer may be stale.
                    let fresh = c.generation == generation;
                    if fresh {
                        c.labs.insert(fp.clone(), lab.clone());
                    }
                    fresh
                };
                if cached {
                    lab
                } else {
                    self.store
                        .read(move |c| lab_for_fingerprint(c, &fp))
                        .await?
                }
            }
        };
        if let (Some(conns), Some(peer)) = (self.conns.get(), req.remote_addr()) {
            conns.mark_owner(peer, lab.as_str());
        }
        Ok(lab)
    }

    /// Certificates were revoked: they leave the cache (their next call reads the store and
    /// is refused) and the connections of their labs are closed. `certs` are (fingerprint,
    /// lab) pairs. Returns how many connections were closed.
    pub(crate) fn revoked(&self, certs: &[(String, String)]) -> usize {
        {
            let mut c = self.cache();
            c.generation += 1;
            for (fp, _) in certs {
                c.labs.remove(fp);
            }
        }
        let Some(conns) = self.conns.get() else {
            return 0;
        };
        let mut labs: Vec<&str> = certs.iter().map(|(_, l)| l.as_str()).collect();
        labs.sort_unstable();
        labs.dedup();
        labs.into_iter().map(|l| conns.close_owned_by(l)).sum()
    }

    /// Every certificate of `lab` was revoked (RevokeLab on this coordinator): as
    /// [`Auth::revoked`], for all of them, before the call that revoked them returns.
    pub(crate) fn lab_revoked(&self, lab: &LabName) -> usize {
        {
            let mut c = self.cache();
            c.generation += 1;
            c.labs.retain(|_, l| l != lab);
        }
        self.conns
            .get()
            .map_or(0, |t| t.close_owned_by(lab.as_str()))
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
