//! Where the store lives: the `store:` URL of the coordinator config (`sqlite://PATH` or
//! `postgres://...`), checked when the config is loaded, and its redacted form for logs.

use std::path::PathBuf;

/// Where the store lives: the coordinator config's `store:` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `sqlite://PATH`: one file, one coordinator process.
    Sqlite(PathBuf),
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (or `postgresql://`): a PostgreSQL
    /// database that several coordinator replicas may share. With
    /// `?sslrootcert=/path/ca.pem` the connection uses TLS and the server's certificate must
    /// be signed by that CA and name the host (as libpq's `sslmode=verify-full`).
    Postgres(String),
}

impl Location {
    /// Parses `sqlite://PATH`, `postgres://...` or `postgresql://...`; the error says what
    /// is expected.
    pub fn parse(s: &str) -> std::result::Result<Location, String> {
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(format!(
                    "store `{s}`: expected sqlite://PATH with a file path"
                ));
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            pg_config(s)?;
            return Ok(Location::Postgres(s.to_string()));
        }
        Err(format!(
            "store `{}` is not supported: expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE",
            redact(s)
        ))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Location::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// Parses a PostgreSQL store URL: the client settings, and the CA file of its
/// `sslrootcert` parameter (which the `postgres` client does not know, so it is taken out).
pub(super) fn pg_config(
    url: &str,
) -> std::result::Result<(postgres::Config, Option<PathBuf>), String> {
    let bad = |e: &dyn std::fmt::Display| format!("store `{}`: {e}", redact(url));
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut ca = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslrootcert", v)) if !v.is_empty() => ca = Some(PathBuf::from(v)),
            Some(("sslrootcert", _)) => return Err(bad(&"sslrootcert needs a file path")),
            _ => rest.push(pair),
        }
    }
    let plain = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config: postgres::Config = plain
        .parse()
        .map_err(|e| bad(&format!("not a PostgreSQL URL: {e}")))?;
    use postgres::config::SslMode;
    match (&ca, config.get_ssl_mode()) {
        (Some(_), SslMode::Disable) => {
            return Err(bad(&"sslrootcert with sslmode=disable: choose one"));
        }
        // A CA given means TLS, never a silent fallback to plain text.
        (Some(_), _) => {
            config.ssl_mode(SslMode::Require);
        }
        (None, SslMode::Require) => {
            return Err(bad(&"sslmode=require needs sslrootcert=PATH (the CA that \
                             signed the server's certificate)"));
        }
        // Without a CA the connection is plain (also with the default sslmode=prefer).
        (None, _) => {}
    }
    Ok((config, ca))
}

/// A store URL with its password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(x) => x,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_checked() {
        assert!(Location::parse("sqlite://").is_err());
        assert!(matches!(
            Location::parse("sqlite:///x/y.db"),
            Ok(Location::Sqlite(_))
        ));
        let e = Location::parse("mysql://a@b/c").unwrap_err();
        assert!(e.contains("sqlite://PATH or postgres://"), "{e}");
        let e = Location::parse("postgres://u:secret@h/db?sslmode=require").unwrap_err();
        assert!(
            e.contains("needs sslrootcert") && !e.contains("secret"),
            "{e}"
        );
        let e =
            Location::parse("postgres://u@h/db?sslrootcert=/ca.pem&sslmode=disable").unwrap_err();
        assert!(e.contains("choose one"), "{e}");
        let (cfg, ca) =
            pg_config("postgres://u@h:5/db?sslrootcert=/ca.pem&connect_timeout=3").unwrap();
        assert_eq!(ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(cfg.get_ssl_mode(), postgres::config::SslMode::Require);
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }
}
