//! Labs, their client certificates (by SHA-256 fingerprint) and client tokens (stored as
//! SHA-256 hashes, never in clear).

use super::db::{Backend, Connection, params};
use super::{Write, corrupt, from_micros, micros};
use crate::error::{Error, Result};
use crate::model::LabName;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A lab as stored.
#[derive(Debug, Clone)]
pub(crate) struct LabRow {
    /// Name (certificate common name).
    pub(crate) name: String,
    /// Fingerprints of its certificates, with whether each is revoked.
    pub(crate) certs: Vec<(String, bool)>,
    /// When an agent of the lab last called.
    pub(crate) last_seen: Option<DateTime<Utc>>,
    /// Its last advertised devices, as JSON.
    pub(crate) devices: serde_json::Value,
    /// Free slots it last advertised.
    pub(crate) free_slots: u32,
    /// When it was revoked.
    pub(crate) revoked_at: Option<DateTime<Utc>>,
}

/// What a client token allows. `admin` includes every other scope; `submit` and `console`
/// each include `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Scope {
    /// Read nodes, events and logs.
    Read,
    /// Create and change nodes, submit jobs.
    Submit,
    /// Labs, jobs, revocation.
    Admin,
    /// Borrow boards: reserve, release, watch and type on a reserved board's console.
    Console,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
            Scope::Console => "console",
        })
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "read" => Ok(Scope::Read),
            "submit" => Ok(Scope::Submit),
            "admin" => Ok(Scope::Admin),
            "console" => Ok(Scope::Console),
            other => Err(format!(
                "`{other}` is not a scope (expected read, submit, console or admin)"
            )),
        }
    }
}

/// A valid token's name and scopes.
#[derive(Debug, Clone)]
pub(crate) struct TokenInfo {
    /// The token's name.
    pub(crate) name: String,
    /// Its scopes.
    pub(crate) scopes: Vec<Scope>,
    /// When it was created.
    pub(crate) created: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub(crate) revoked_at: Option<DateTime<Utc>>,
}

impl TokenInfo {
    /// Whether the token allows `scope` (admin allows everything, submit and console allow
    /// read).
    pub(crate) fn allows(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| {
            *s == scope
                || *s == Scope::Admin
                || (scope == Scope::Read && matches!(s, Scope::Submit | Scope::Console))
        })
    }
}

/// The stored hash of a token.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Finds the lab of a certificate fingerprint. Unknown certificates are refused as
/// unauthenticated, revoked ones as permission denied.
pub(crate) fn lab_for_fingerprint(conn: &Connection, fingerprint: &str) -> Result<LabName> {
    let row: Option<(String, Option<i64>, Option<i64>)> = conn.query_opt(
        "SELECT c.lab, c.revoked_at, l.revoked_at FROM lab_certs c JOIN labs l ON l.name = c.lab \
         WHERE c.fingerprint = ?1",
        params![fingerprint],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    match row {
        None => Err(Error::Unauthenticated(format!(
            "client certificate {}… is not registered with this coordinator \
             (issue one with `labwire-coordinator ca issue-agent LAB`)",
            &fingerprint[..fingerprint.len().min(16)]
        ))),
        Some((lab, cert_revoked, lab_revoked))
            if cert_revoked.is_some() || lab_revoked.is_some() =>
        {
            Err(Error::PermissionDenied(format!(
                "the certificate of lab `{lab}` was revoked"
            )))
        }
        Some((lab, _, _)) => Ok(LabName::new(lab)),
    }
}

/// Every lab, by name.
pub(crate) fn list_labs(conn: &Connection) -> Result<Vec<LabRow>> {
    let rows = conn.query_map(
        "SELECT name, last_seen, devices, free_slots, revoked_at FROM labs ORDER BY name",
        params![],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        },
    )?;
    let mut labs = Vec::new();
    for (name, last_seen, devices, free_slots, revoked_at) in rows {
        let certs = conn.query_map(
            "SELECT fingerprint, revoked_at IS NOT NULL FROM lab_certs WHERE lab = ?1 ORDER BY issued",
            params![&name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        labs.push(LabRow {
            name,
            certs,
            last_seen: last_seen.map(from_micros),
            devices: serde_json::from_str(&devices).map_err(|e| corrupt("lab devices", e))?,
            free_slots,
            revoked_at: revoked_at.map(from_micros),
        });
    }
    Ok(labs)
}

/// The names of the revoked labs.
pub(crate) fn revoked_labs(conn: &Connection) -> Result<Vec<String>> {
    conn.query_map(
        "SELECT name FROM labs WHERE revoked_at IS NOT NULL ORDER BY name",
        params![],
        |r| r.get(0),
    )
}

/// Every certificate that is refused because it or its lab was revoked, as (fingerprint,
/// lab).
pub(crate) fn revoked_certs(conn: &Connection) -> Result<Vec<(String, String)>> {
    conn.query_map(
        "SELECT c.fingerprint, c.lab FROM lab_certs c JOIN labs l ON l.name = c.lab \
         WHERE c.revoked_at IS NOT NULL OR l.revoked_at IS NOT NULL",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// What a lab's agent last advertised (heartbeats update it), for the placement of other
/// replicas.
#[derive(Debug, Clone)]
pub(crate) struct LabAdvert {
    /// The lab.
    pub(crate) name: String,
    /// When its agent last called.
    pub(crate) last_seen: DateTime<Utc>,
    /// Its advertised devices, as JSON.
    pub(crate) devices: serde_json::Value,
    /// Its free slots.
    pub(crate) free_slots: u32,
}

/// Every lab that is not revoked and whose agent has called, with what it advertised: one
/// query (unlike [`list_labs`], no certificates), cheap enough to run every few seconds.
pub(crate) fn adverts(conn: &Connection) -> Result<Vec<LabAdvert>> {
    let rows = conn.query_map(
        "SELECT name, last_seen, devices, free_slots FROM labs \
         WHERE revoked_at IS NULL AND last_seen IS NOT NULL",
        params![],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, u32>(3)?,
            ))
        },
    )?;
    rows.into_iter()
        .map(|(name, seen, devices, free_slots)| {
            Ok(LabAdvert {
                name,
                last_seen: from_micros(seen),
                devices: serde_json::from_str(&devices).map_err(|e| corrupt("lab devices", e))?,
                free_slots,
            })
        })
        .collect()
}

/// Checks a token; errors say whether it is unknown or revoked.
pub(crate) fn verify_token(conn: &Connection, token: &str) -> Result<TokenInfo> {
    let row: Option<(String, String, i64, Option<i64>)> = conn.query_opt(
        "SELECT name, scopes, created, revoked_at FROM tokens WHERE hash = ?1",
        params![token_hash(token)],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let Some((name, scopes, created, revoked_at)) = row else {
        return Err(Error::Unauthenticated("unknown token".into()));
    };
    if revoked_at.is_some() {
        return Err(Error::Unauthenticated(format!(
            "token `{name}` was revoked"
        )));
    }
    Ok(TokenInfo {
        name,
        scopes: parse_scopes(&scopes)?,
        created: from_micros(created),
        revoked_at: None,
    })
}

fn parse_scopes(s: &str) -> Result<Vec<Scope>> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().map_err(|e| corrupt("token scopes", e)))
        .collect()
}

/// Every token (without secrets).
pub(crate) fn list_tokens(conn: &Connection) -> Result<Vec<TokenInfo>> {
    let rows = conn.query_map(
        "SELECT name, scopes, created, revoked_at FROM tokens ORDER BY id",
        params![],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for (name, scopes, created, revoked) in rows {
        out.push(TokenInfo {
            name,
            scopes: parse_scopes(&scopes)?,
            created: from_micros(created),
            revoked_at: revoked.map(from_micros),
        });
    }
    Ok(out)
}

impl Write<'_> {
    /// Registers a certificate for a lab, creating the lab if needed. Issuing a certificate
    /// for a revoked lab re-admits the lab; its old certificates stay revoked.
    pub fn register_lab_cert(
        &mut self,
        lab: &str,
        fingerprint: &str,
        not_after: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let now = micros(self.now);
        self.tx.execute(
            "INSERT INTO labs (name, created) VALUES (?1, ?2) \
             ON CONFLICT(name) DO UPDATE SET revoked_at = NULL",
            params![lab, now],
        )?;
        self.tx.execute(
            "INSERT INTO lab_certs (fingerprint, lab, issued, not_after) VALUES (?1, ?2, ?3, ?4)",
            params![fingerprint, lab, now, not_after.map(micros)],
        )?;
        Ok(())
    }

    /// Records an agent's call: last seen, and its advertisement when given. A call more
    /// than `silent_after` after the lab's last one ends a silence, recorded for the lab
    /// report.
    pub(crate) fn touch_lab(
        &mut self,
        lab: &LabName,
        devices: Option<&serde_json::Value>,
        free_slots: Option<u32>,
        silent_after: chrono::Duration,
    ) -> Result<()> {
        let devices = devices.map(|d| d.to_string());
        self.note_silence(lab, self.now, silent_after)?;
        self.tx.execute(
            "UPDATE labs SET last_seen = ?2, devices = COALESCE(?3, devices), \
                 free_slots = COALESCE(?4, free_slots) WHERE name = ?1",
            params![lab, micros(self.now), devices, free_slots],
        )?;
        Ok(())
    }

    /// Records a lab's call made at `at` with `free_slots` (liveness written in batches, see
    /// `dispatch::liveness`); an older call never overwrites a newer one. A silence it ends
    /// is recorded as by [`Write::touch_lab`].
    pub(crate) fn touch_lab_at(
        &mut self,
        lab: &LabName,
        at: DateTime<Utc>,
        free_slots: u32,
        silent_after: chrono::Duration,
    ) -> Result<()> {
        self.note_silence(lab, at, silent_after)?;
        self.tx.execute(
            "UPDATE labs SET last_seen = ?2, free_slots = ?3 \
             WHERE name = ?1 AND (last_seen IS NULL OR last_seen < ?2)",
            params![lab, micros(at), free_slots],
        )?;
        Ok(())
    }

    /// Records the silence a call of `lab` at `at` ends: its last call before it, when that
    /// was more than `silent_after` earlier (table `lab_silences`).
    fn note_silence(
        &mut self,
        lab: &LabName,
        at: DateTime<Utc>,
        silent_after: chrono::Duration,
    ) -> Result<()> {
        self.tx.execute(
            "INSERT INTO lab_silences (lab, started, ended) SELECT name, last_seen, ?2 \
             FROM labs WHERE name = ?1 AND last_seen IS NOT NULL AND last_seen < ?3",
            params![lab, micros(at), micros(at - silent_after)],
        )?;
        Ok(())
    }

    /// Revokes every certificate of a lab and the lab itself. Returns how many certificates
    /// were revoked. Every coordinator on the store learns of it when the transaction commits
    /// ([`super::Store::labs_changed`]).
    pub(crate) fn revoke_lab(&mut self, lab: &str) -> Result<usize> {
        let now = micros(self.now);
        let n = self.tx.execute(
            "UPDATE labs SET revoked_at = ?2 WHERE name = ?1",
            params![lab, now],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("no lab named `{lab}`")));
        }
        let certs = self.tx.execute(
            "UPDATE lab_certs SET revoked_at = ?2 WHERE lab = ?1 AND revoked_at IS NULL",
            params![lab, now],
        )?;
        // Every coordinator running on this store hears of it (see `store::watch`).
        self.labs_changed = true;
        if self.tx.backend() == Backend::Postgres {
            self.tx.execute(
                "SELECT pg_notify(?1, ?2)",
                params![super::watch::LABS_CHANNEL, lab],
            )?;
        }
        Ok(certs)
    }

    /// Creates a token with `scopes`; returns the secret, which is shown once and stored
    /// only as a hash.
    pub(crate) fn create_token(&mut self, name: &str, scopes: &[Scope]) -> Result<String> {
        if name.trim().is_empty() {
            return Err(Error::Invalid("token name must not be empty".into()));
        }
        if scopes.is_empty() {
            return Err(Error::Invalid("a token needs at least one scope".into()));
        }
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let token = format!("lwt_{}", hex::encode(bytes));
        let scopes = scopes
            .iter()
            .map(Scope::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let n = self.tx.execute(
            "INSERT INTO tokens (name, hash, scopes, created) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (name) DO NOTHING",
            params![name, token_hash(&token), scopes, micros(self.now)],
        )?;
        if n == 0 {
            return Err(Error::AlreadyExists(format!(
                "a token named `{name}` exists already"
            )));
        }
        Ok(token)
    }

    /// Revokes a token by name.
    pub(crate) fn revoke_token(&mut self, name: &str) -> Result<()> {
        let n = self.tx.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            params![name, micros(self.now)],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("no active token named `{name}`")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;

    #[test]
    fn tokens_and_scopes() {
        let (_d, store) = temp_store();
        let t = store
            .write_blocking(|w| w.create_token("ci", &[Scope::Submit]))
            .unwrap();
        let info = store.read_blocking(|c| verify_token(c, &t)).unwrap();
        assert!(
            info.allows(Scope::Read) && info.allows(Scope::Submit) && !info.allows(Scope::Admin)
        );
        assert!(
            store
                .write_blocking(|w| w.create_token("ci", &[Scope::Read]))
                .is_err()
        );
        store.write_blocking(|w| w.revoke_token("ci")).unwrap();
        let e = store.read_blocking(|c| verify_token(c, &t)).unwrap_err();
        assert!(e.to_string().contains("revoked"), "{e}");
        assert!(
            store
                .read_blocking(|c| verify_token(c, "lwt_nope"))
                .is_err()
        );
    }

    #[test]
    fn certs_and_revocation() {
        let (_d, store) = temp_store();
        store
            .write_blocking(|w| w.register_lab_cert("lab-a", "aa11", None))
            .unwrap();
        assert_eq!(
            store
                .read_blocking(|c| lab_for_fingerprint(c, "aa11"))
                .unwrap(),
            LabName::new("lab-a")
        );
        assert!(matches!(
            store.read_blocking(|c| lab_for_fingerprint(c, "bb22")),
            Err(Error::Unauthenticated(_))
        ));
        assert_eq!(store.write_blocking(|w| w.revoke_lab("lab-a")).unwrap(), 1);
        assert!(matches!(
            store.read_blocking(|c| lab_for_fingerprint(c, "aa11")),
            Err(Error::PermissionDenied(_))
        ));
        // A new certificate re-admits the lab; the old one stays revoked.
        store
            .write_blocking(|w| w.register_lab_cert("lab-a", "cc33", None))
            .unwrap();
        assert!(
            store
                .read_blocking(|c| lab_for_fingerprint(c, "cc33"))
                .is_ok()
        );
        assert!(
            store
                .read_blocking(|c| lab_for_fingerprint(c, "aa11"))
                .is_err()
        );
    }
}
