//! The coordinator's certificate authority: creates the CA and the server certificate, issues
//! lab client certificates whose common name is the lab, and computes the fingerprints that
//! the store uses to recognise (and revoke) them.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The CA's files in a directory.
#[derive(Debug, Clone)]
pub(crate) struct CaFiles {
    /// The CA certificate (PEM).
    pub(crate) ca_cert: PathBuf,
    /// The CA key (PEM, mode 0600).
    pub(crate) ca_key: PathBuf,
    /// The server certificate (PEM).
    pub(crate) server_cert: PathBuf,
    /// The server key (PEM, mode 0600).
    pub(crate) server_key: PathBuf,
}

impl CaFiles {
    /// The standard file names under `dir`.
    pub(crate) fn in_dir(dir: &Path) -> Self {
        CaFiles {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

/// A certificate and key just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PEM).
    pub key_pem: String,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: String,
    /// End of validity.
    pub not_after: DateTime<Utc>,
}

/// SHA-256 of a DER certificate as lowercase hex.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Checks a lab name: 1 to 63 characters of lowercase letters, digits, `-`, `_` and `.`,
/// starting with a letter or digit. The name becomes a certificate common name and a file
/// name, so nothing else is allowed.
pub(crate) fn validate_lab_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !ok {
        bail!(
            "lab name `{name}` is not valid: use 1-63 lowercase letters, digits, `-`, `_` or `.`, \
             starting with a letter or digit"
        );
    }
    Ok(())
}

/// Writes a secret file atomically (temporary file, then rename) with mode 0600.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn validity(params: &mut CertificateParams, days: i64) -> DateTime<Utc> {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    Utc::now() + chrono::Duration::days(days)
}

/// Creates the CA and a server certificate for `dns` names and `ips` in `dir`. Refuses to
/// overwrite an existing CA.
pub(crate) fn init_ca(dir: &Path, dns: &[String], ips: &[IpAddr]) -> anyhow::Result<CaFiles> {
    let files = CaFiles::in_dir(dir);
    if files.ca_key.exists() {
        bail!(
            "a CA exists already in {} (remove it by hand to start over; every lab certificate would have to be issued again)",
            dir.display()
        );
    }
    crate::files::private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "labwire coordinator CA");
    dn.push(DnType::OrganizationName, "labwire");
    ca.distinguished_name = dn;
    validity(&mut ca, 3650);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names: Vec<String> = dns.to_vec();
    if names.is_empty() && ips.is_empty() {
        names.push("localhost".into());
    }
    let mut server = CertificateParams::new(names.clone())?;
    for ip in ips {
        server.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names
            .first()
            .cloned()
            .unwrap_or_else(|| "labwire-coordinator".into()),
    );
    server.distinguished_name = dn;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut server, 825);
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &issuer)?;

    write_private(&files.ca_key, &issuer.key().serialize_pem())?;
    write_public(&files.ca_cert, &ca_cert.pem())?;
    write_private(&files.server_key, &server_key.serialize_pem())?;
    write_public(&files.server_cert, &server_cert.pem())?;
    Ok(files)
}

/// Issues a client certificate for lab `lab`, signed by the CA in `dir`.
pub fn issue_agent_cert(dir: &Path, lab: &str) -> anyhow::Result<Issued> {
    validate_lab_name(lab)?;
    let files = CaFiles::in_dir(dir);
    let ca_pem = std::fs::read_to_string(&files.ca_cert).with_context(|| {
        format!(
            "cannot read the CA certificate {} (run `labwire-coordinator ca init` first)",
            files.ca_cert.display()
        )
    })?;
    let key_pem = std::fs::read_to_string(&files.ca_key)
        .with_context(|| format!("cannot read the CA key {}", files.ca_key.display()))?;
    let ca_key = KeyPair::from_pem(&key_pem).context("the CA key is not a valid PEM key")?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("the CA certificate is not valid")?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, lab);
    dn.push(DnType::OrganizationName, "labwire lab");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(format!("labwire:lab:{lab}").try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let not_after = validity(&mut params, 825);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        fingerprint: fingerprint(cert.der()),
        not_after,
    })
}

/// Writes an issued lab certificate bundle into `out`: `agent.pem`, `agent.key`, `ca.pem`
/// and an `agent.yaml` skeleton pointing at them under `/etc/labwire/`.
pub(crate) fn write_agent_bundle(
    out: &Path,
    ca_dir: &Path,
    lab: &str,
    issued: &Issued,
    coordinator_url: &str,
) -> anyhow::Result<()> {
    // The folder holds the lab's private key.
    crate::files::private_dir(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_public(&out.join("agent.pem"), &issued.cert_pem)?;
    write_private(&out.join("agent.key"), &issued.key_pem)?;
    let ca = std::fs::read_to_string(ca_dir.join("ca.pem"))?;
    write_public(&out.join("ca.pem"), &ca)?;
    let yaml = format!(
        "# labwire agent configuration for lab `{lab}`, issued {date}.\n\
         # On the lab host, with the package labwire-agent installed, from this folder:\n\
         #   install -m 0640 -g labwire-agent agent.yaml agent.pem agent.key ca.pem /etc/labwire/\n\
         # add your devices there, then:  systemctl enable --now labwire-agent\n\
         # Every key is described in /usr/share/doc/labwire-agent/examples/agent.yaml\n\
         # (config/agent.yaml of the labwire sources).\n\
         lab: {lab}\n\
         coordinator:\n  url: {coordinator_url}\n  ca: /etc/labwire/ca.pem\n  cert: /etc/labwire/agent.pem\n  key: /etc/labwire/agent.key\n\
         state_dir: /var/lib/labwire-agent\n\
         devices: []\n",
        date = Utc::now().format("%Y-%m-%d"),
    );
    write_public(&out.join("agent.yaml"), &yaml)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_issue_and_refuse_twice() {
        let dir = tempfile::tempdir().unwrap();
        let files = init_ca(
            dir.path(),
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
        )
        .unwrap();
        assert!(files.server_cert.exists());
        let mode = std::fs::metadata(&files.ca_key).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        assert!(init_ca(dir.path(), &[], &[]).is_err());
        let a = issue_agent_cert(dir.path(), "lab-a").unwrap();
        let b = issue_agent_cert(dir.path(), "lab-a").unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 64);
        assert!(issue_agent_cert(dir.path(), "Bad Lab").is_err());
    }
}
