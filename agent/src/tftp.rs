//! TFTP staging: the `tftp:` section of agent.yaml. For each job on a board that boots over
//! TFTP, the agent puts the job's artifacts into a folder of its own under the TFTP server's
//! root (`ROOT/labwire/job-ID-ATTEMPT/`), gives their paths as the board must ask for them
//! (`{tftp.dir}`, `{tftp.kernel}`, ...), and removes the folder when the job ends, on every
//! path (the [`Staged`] value removes it when dropped). Folders left by an agent that was
//! killed are removed at its next start ([`clean_leftovers`]).
//!
//! The agent does not serve TFTP itself: the lab's TFTP server (tftpd-hpa, or QEMU's built-in
//! one in the tests) serves the root. docs/drivers.md says why.

use anyhow::bail;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The folder under the TFTP root that belongs to the agent; everything in it is the agent's.
pub const FOLDER: &str = "labwire";

/// The `tftp:` section: where the lab's TFTP server takes its files from, and the address the
/// boards reach it at.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpConfig {
    /// The TFTP server's root folder (tftpd-hpa's `TFTP_DIRECTORY`, e.g. `/srv/tftp`). The
    /// agent writes only under `ROOT/labwire/`.
    pub root: PathBuf,
    /// The server's address as the boards reach it (U-Boot's `serverip`).
    pub server: String,
}

impl TftpConfig {
    /// Checks the root (absolute, no `..`) and the address (an IPv4 address or a host name
    /// made of letters, digits, dots and dashes: it is typed at U-Boot's prompt).
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if !self.root.is_absolute() || self.root.components().any(|c| c == Component::ParentDir) {
            bail!(
                "tftp.root `{}`: expected an absolute folder without `..`",
                self.root.display()
            );
        }
        if self.server.is_empty()
            || self.server.len() > 253
            || !self
                .server
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            bail!(
                "tftp.server `{}`: expected the TFTP server's address as the boards reach it (e.g. 192.168.1.1)",
                self.server
            );
        }
        Ok(())
    }

    /// The agent's folder under the root.
    pub fn folder(&self) -> PathBuf {
        self.root.join(FOLDER)
    }
}

/// A job's files staged under the TFTP root. Dropping it removes the folder.
#[derive(Debug)]
pub(crate) struct Staged {
    /// The folder on the lab host.
    dir: PathBuf,
    /// The folder as the board asks for it (relative to the TFTP root).
    rel: String,
    /// Each artifact's path as the board asks for it, by role.
    files: BTreeMap<String, String>,
    /// The server's address for the boards.
    server: String,
}

impl Staged {
    /// Stages `artifacts` (role -> file in the job folder) for job `job`, attempt `attempt`:
    /// a hard link where the TFTP root is on the same file system, else a copy. Files are
    /// world-readable (tftpd-hpa runs as its own user).
    pub(crate) fn stage(
        cfg: &TftpConfig,
        job: i64,
        attempt: i32,
        artifacts: &BTreeMap<String, PathBuf>,
    ) -> std::io::Result<Staged> {
        let name = format!("job-{job}-{attempt}");
        let top = cfg.folder();
        std::fs::create_dir_all(&top)?;
        let dir = top.join(&name);
        // A folder of an earlier try of the same attempt (an agent restarted mid-job).
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir(&dir)?;
        let staged = Staged {
            rel: format!("{FOLDER}/{name}"),
            dir,
            files: BTreeMap::new(),
            server: cfg.server.clone(),
        };
        staged.fill(artifacts)
    }

    fn fill(mut self, artifacts: &BTreeMap<String, PathBuf>) -> std::io::Result<Staged> {
        use std::os::unix::fs::PermissionsExt;
        for (role, src) in artifacts {
            // The job folder's file names are already cleaned by the fetcher (letters,
            // digits, `._-`); the check keeps that promise here too.
            let Some(file) = src.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if !file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                continue;
            }
            let dst = self.dir.join(file);
            if std::fs::hard_link(src, &dst).is_err() {
                std::fs::copy(src, &dst)?;
            }
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644))?;
            self.files
                .insert(role.clone(), format!("{}/{file}", self.rel));
        }
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(self)
    }

    /// The value of `{tftp.NAME}`: `dir` (the folder), `server`, or an artifact's role.
    pub(crate) fn lookup(&self, name: &str) -> Option<String> {
        match name {
            "dir" => Some(self.rel.clone()),
            "server" => Some(self.server.clone()),
            role => self.files.get(role).cloned(),
        }
    }

    /// Whether the job staged an artifact with this role.
    pub(crate) fn has(&self, role: &str) -> bool {
        self.files.contains_key(role)
    }

    /// The folder on the lab host.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a job's TFTP folder");
        }
    }
}

/// Removes the job folders an agent left under the TFTP root (it was killed mid-job). Run at
/// the agent's start, before it takes jobs. Returns how many it removed.
pub fn clean_leftovers(cfg: &TftpConfig) -> std::io::Result<usize> {
    let top = cfg.folder();
    let entries = match std::fs::read_dir(&top) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for entry in entries {
        let entry = entry?;
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_by_role_and_removes_on_drop_and_at_start() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tftp");
        let job = t.path().join("job");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::write(job.join("kernel-Image"), b"kernel").unwrap();
        std::fs::write(job.join("ramdisk-initrd.gz"), b"rd").unwrap();
        let cfg = TftpConfig {
            root: root.clone(),
            server: "10.0.2.2".into(),
        };
        cfg.validate().unwrap();
        let arts: BTreeMap<String, PathBuf> = [
            ("kernel".to_string(), job.join("kernel-Image")),
            ("ramdisk".to_string(), job.join("ramdisk-initrd.gz")),
        ]
        .into();
        let s = Staged::stage(&cfg, 7, 2, &arts).unwrap();
        assert_eq!(s.lookup("dir").unwrap(), "labwire/job-7-2");
        assert_eq!(s.lookup("kernel").unwrap(), "labwire/job-7-2/kernel-Image");
        assert_eq!(s.lookup("server").unwrap(), "10.0.2.2");
        assert!(s.lookup("dtb").is_none());
        assert_eq!(
            std::fs::read(root.join("labwire/job-7-2/ramdisk-initrd.gz")).unwrap(),
            b"rd"
        );
        let dir = s.path().to_path_buf();
        drop(s);
        assert!(!dir.exists(), "the job's folder outlived it");

        // Left behind by a killed agent: removed at the next start.
        let s = Staged::stage(&cfg, 8, 1, &arts).unwrap();
        std::mem::forget(s);
        assert!(root.join("labwire/job-8-1/kernel-Image").exists());
        assert_eq!(clean_leftovers(&cfg).unwrap(), 1);
        assert!(!root.join("labwire/job-8-1").exists());
        assert!(root.join("labwire").exists());
    }

    #[test]
    fn refuses_bad_settings() {
        for (root, server) in [
            ("relative", "10.0.0.1"),
            ("/srv/../etc", "10.0.0.1"),
            ("/srv/tftp", ""),
            ("/srv/tftp", "10.0.0.1; reset"),
            ("/srv/tftp", "${serverip}"),
        ] {
            let c = TftpConfig {
                root: root.into(),
                server: server.into(),
            };
            assert!(c.validate().is_err(), "{root} {server}");
        }
    }
}
