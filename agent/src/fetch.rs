//! Fetches a job's artifacts (kernel, ramdisk, dtb, modules, rootfs) into the job folder:
//! http, https and file URLs, a size limit, the SHA-256 checked when the job gives one, the
//! job's time limit and its cancellation.
//!
//! What a submitter sends is hostile:
//! - a **role** (the artifact's name in the job) is a plain name: not empty, not `.` or `..`,
//!   no `/`, NUL or control characters; the file is written under a cleaned name inside the
//!   job folder and nowhere else;
//! - a **`file://` URL** is read only from the folders the lab admin lists in
//!   `artifacts.file_dirs` (none by default): the path must lie under one of them, before
//!   and after symlinks are resolved, and be a regular file (a FIFO, a device or a folder is
//!   refused at once, without waiting on it);
//! - nothing of a refused or mismatching file reaches an error message or a log: not its
//!   content, not its hash (a checksum error names only the hash the job expected).
//!
//! A file is written under a temporary name (private, 0600) and renamed only once complete
//! and checked, so a failed download never leaves a half file behind.

use futures::StreamExt;
use labwire_common::ErrorCode;
use labwire_proto::v1;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The `artifacts:` section of agent.yaml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// Folders (absolute) whose files jobs may name with `file://` URLs. Empty (the
    /// default): `file://` artifacts are refused.
    #[serde(default)]
    pub file_dirs: Vec<PathBuf>,
}

impl ArtifactsConfig {
    /// Checks the folders: absolute, no `..`; errors name the key.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        for (i, d) in self.file_dirs.iter().enumerate() {
            if !d.is_absolute() || d.components().any(|c| c == Component::ParentDir) {
                anyhow::bail!(
                    "artifacts.file_dirs[{i}] `{}`: expected an absolute folder without `..`",
                    d.display()
                );
            }
        }
        Ok(())
    }
}

/// How a job's artifacts are fetched.
#[derive(Debug, Clone)]
pub(crate) struct FetchOptions {
    /// The largest file accepted, in bytes.
    pub limit: u64,
    /// How long fetching one artifact may take.
    pub timeout: Duration,
    /// Cancelled when the job must stop.
    pub cancel: CancellationToken,
    /// The folders `file://` URLs may read from.
    pub file_dirs: Vec<PathBuf>,
}

/// Why an artifact could not be fetched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The role is not a plain name.
    #[error(
        "artifact role `{role}`: expected a plain name (not empty, not `.` or `..`, no `/`, NUL or control characters)"
    )]
    BadRole {
        /// The role, with control characters escaped.
        role: String,
    },
    /// The URL is malformed or of an unsupported scheme.
    #[error("artifact `{name}`: {msg}")]
    BadUrl {
        /// The artifact's role.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// The lab does not let jobs read this file.
    #[error("artifact `{name}`: {msg}")]
    Refused {
        /// The artifact's role.
        name: String,
        /// Why.
        msg: String,
    },
    /// Reading or transferring failed.
    #[error("artifact `{name}` from {url}: {msg}")]
    Transfer {
        /// The artifact's role.
        name: String,
        /// Where from.
        url: String,
        /// What went wrong.
        msg: String,
    },
    /// Larger than allowed.
    #[error("artifact `{name}` from {url} is larger than the limit of {limit} bytes")]
    TooBig {
        /// The artifact's role.
        name: String,
        /// Where from.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The content does not have the expected hash (what it has is not said: a file the job
    /// should not see must leave no trace).
    #[error("artifact `{name}` from {url}: its SHA-256 is not the {want} the job expects")]
    Checksum {
        /// The artifact's role.
        name: String,
        /// Where from.
        url: String,
        /// The expected hash.
        want: String,
    },
    /// The job was cancelled while fetching.
    #[error("artifact `{name}`: the job was cancelled while fetching it")]
    Cancelled {
        /// The artifact's role.
        name: String,
    },
}

impl FetchError {
    /// The job's error code: the job's own fault is `invalid_job` (not retried), a cancel is
    /// `cancelled`, the rest `download_failed`.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            FetchError::BadRole { .. } | FetchError::BadUrl { .. } | FetchError::Refused { .. } => {
                ErrorCode::InvalidJob
            }
            FetchError::Cancelled { .. } => ErrorCode::Cancelled,
            _ => ErrorCode::DownloadFailed,
        }
    }
}

/// Checks that a role is a plain name.
pub(crate) fn check_role(role: &str) -> Result<(), FetchError> {
    let bad = role.is_empty()
        || role == "."
        || role == ".."
        || role.chars().any(|c| c == '/' || c.is_control());
    if bad {
        return Err(FetchError::BadRole {
            role: role.escape_debug().to_string(),
        });
    }
    Ok(())
}

/// Fetches every artifact into `dir`; returns the local path of each, by role. Every role
/// is checked before anything is fetched.
pub(crate) async fn fetch_all(
    artifacts: &HashMap<String, v1::Artifact>,
    dir: &Path,
    opts: &FetchOptions,
) -> Result<BTreeMap<String, PathBuf>, FetchError> {
    let mut names: Vec<&String> = artifacts.keys().collect();
    names.sort();
    let mut files = HashMap::new();
    for name in &names {
        check_role(name)?;
        let file = file_name(name, &artifacts[*name].url);
        if let Some(other) = files.insert(file, *name) {
            return Err(FetchError::BadRole {
                role: format!("{}` and `{}", other.escape_debug(), name.escape_debug()),
            });
        }
    }
    let mut out = BTreeMap::new();
    for name in names {
        let path = fetch(name, &artifacts[name], dir, opts).await?;
        out.insert(name.clone(), path);
    }
    Ok(out)
}

/// Keeps the characters safe in a file name, at most `max` of them.
fn clean(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The name of an artifact's file in the job folder: the cleaned role, then the cleaned last
/// part of the URL's path (the role as a prefix avoids clashes between artifacts).
fn file_name(name: &str, url: &str) -> String {
    let base = url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.next_back().map(str::to_string))
        })
        .filter(|s| !s.is_empty() && s != "." && s != "..")
        .unwrap_or_else(|| name.to_string());
    format!("{}-{}", clean(name, 64), clean(&base, 128))
}

/// Fetches one artifact whose role was checked.
async fn fetch(
    name: &str,
    a: &v1::Artifact,
    dir: &Path,
    opts: &FetchOptions,
) -> Result<PathBuf, FetchError> {
    let url = url::Url::parse(&a.url).map_err(|e| FetchError::BadUrl {
        name: name.into(),
        msg: format!("`{}` is not a URL: {e}", a.url),
    })?;
    let dest = dir.join(file_name(name, &a.url));
    if dest.parent() != Some(dir) {
        return Err(FetchError::BadRole {
            role: name.escape_debug().to_string(),
        });
    }
    let tmp = dest.with_extension("part");
    let transfer = |msg: String| FetchError::Transfer {
        name: name.into(),
        url: a.url.clone(),
        msg,
    };
    let _ = tokio::fs::remove_file(&tmp).await;
    let std_file = crate::state::private_create()
        .create_new(true)
        .open(&tmp)
        .map_err(|e| transfer(format!("cannot create {}: {e}", tmp.display())))?;
    let mut file = tokio::fs::File::from_std(std_file);
    let work = async {
        let mut sink = Sink {
            file: &mut file,
            hasher: Sha256::new(),
            size: 0,
            limit: opts.limit,
            name,
            url: &a.url,
        };
        match url.scheme() {
            "file" => read_file(name, &url, opts, &mut sink).await?,
            "http" | "https" => download(&url, &mut sink).await?,
            other => {
                return Err(FetchError::BadUrl {
                    name: name.into(),
                    msg: format!("scheme `{other}` is not supported (http, https or file)"),
                });
            }
        }
        sink.file
            .flush()
            .await
            .map_err(|e| transfer(e.to_string()))?;
        let got = hex::encode(sink.hasher.finalize());
        if !a.sha256.is_empty() && !got.eq_ignore_ascii_case(&a.sha256) {
            return Err(FetchError::Checksum {
                name: name.into(),
                url: a.url.clone(),
                want: a.sha256.clone(),
            });
        }
        Ok(())
    };
    let result = tokio::select! {
        r = tokio::time::timeout(opts.timeout, work) => r.unwrap_or_else(|_| Err(transfer(format!(
            "did not finish within {}",
            humantime::format_duration(opts.timeout)
        )))),
        _ = opts.cancel.cancelled() => Err(FetchError::Cancelled { name: name.into() }),
    };
    drop(file);
    match result {
        Ok(()) => {
            tokio::fs::rename(&tmp, &dest)
                .await
                .map_err(|e| transfer(format!("cannot rename {}: {e}", tmp.display())))?;
            Ok(dest)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

/// Where fetched bytes go: the file, its hash, its size against the limit.
struct Sink<'a> {
    file: &'a mut tokio::fs::File,
    hasher: Sha256,
    size: u64,
    limit: u64,
    name: &'a str,
    url: &'a str,
}

impl Sink<'_> {
    async fn add(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(self.too_big());
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| self.error(e.to_string()))
    }

    fn too_big(&self) -> FetchError {
        FetchError::TooBig {
            name: self.name.into(),
            url: self.url.into(),
            limit: self.limit,
        }
    }

    fn error(&self, msg: String) -> FetchError {
        FetchError::Transfer {
            name: self.name.into(),
            url: self.url.into(),
            msg,
        }
    }
}

/// Reads a `file://` artifact from the folders the lab allows.
async fn read_file(
    name: &str,
    url: &url::Url,
    opts: &FetchOptions,
    sink: &mut Sink<'_>,
) -> Result<(), FetchError> {
    let refused = |msg: String| FetchError::Refused {
        name: name.into(),
        msg,
    };
    if opts.file_dirs.is_empty() {
        return Err(refused(format!(
            "{url}: file:// artifacts are not allowed on this lab (artifacts.file_dirs in agent.yaml lists no folder)"
        )));
    }
    let outside = || {
        refused(format!(
            "{url} is not in a folder this lab allows file:// artifacts from (artifacts.file_dirs in agent.yaml)"
        ))
    };
    let path = url
        .to_file_path()
        .map_err(|_| refused(format!("{url} is not a local file path")))?;
    // Before touching the file system: the path as written must lie under an allowed folder,
    // so that nothing outside them is even looked at.
    if path.components().any(|c| c == Component::ParentDir)
        || !opts.file_dirs.iter().any(|d| path.starts_with(d))
    {
        return Err(outside());
    }
    let dirs = opts.file_dirs.clone();
    let opened = tokio::task::spawn_blocking(move || open_allowed(&path, &dirs))
        .await
        .map_err(|e| sink.error(e.to_string()))?;
    let f = match opened {
        Ok(f) => f,
        Err(Open::Outside) => return Err(outside()),
        Err(Open::NotRegular(kind)) => {
            return Err(refused(format!("{url} is {kind}, not a regular file")));
        }
        Err(Open::Io(e)) => return Err(sink.error(format!("cannot open it: {e}"))),
    };
    if f.metadata().map(|m| m.len()).unwrap_or(0) > sink.limit {
        return Err(sink.too_big());
    }
    let mut f = tokio::fs::File::from_std(f);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| sink.error(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        sink.add(&buf[..n]).await?;
    }
}

/// Why a `file://` artifact was not opened.
enum Open {
    Outside,
    NotRegular(&'static str),
    Io(std::io::Error),
}

/// Opens `path` for reading if it resolves (symlinks followed) to a regular file under one
/// of `dirs`. The file is opened without following a last symlink and without blocking (a
/// FIFO does not wait for a writer), and its type and real path are checked on the open
/// file, so that nothing can be swapped in between.
fn open_allowed(path: &Path, dirs: &[PathBuf]) -> Result<std::fs::File, Open> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let roots: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect();
    let under = |p: &Path| roots.iter().any(|r| p.starts_with(r));
    let real = std::fs::canonicalize(path).map_err(Open::Io)?;
    if !under(&real) {
        return Err(Open::Outside);
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&real)
        .map_err(Open::Io)?;
    let t = f.metadata().map_err(Open::Io)?.file_type();
    if !t.is_file() {
        return Err(Open::NotRegular(if t.is_fifo() {
            "a FIFO"
        } else if t.is_dir() {
            "a folder"
        } else if t.is_block_device() || t.is_char_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a file"
        }));
    }
    use std::os::fd::AsRawFd;
    if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        && !under(&opened)
    {
        return Err(Open::Outside);
    }
    Ok(f)
}

/// Downloads an `http`/`https` artifact.
async fn download(url: &url::Url, sink: &mut Sink<'_>) -> Result<(), FetchError> {
    crate::ensure_crypto();
    // No credentials are ever attached to artifact requests, so following redirects
    // (reqwest's default policy, http and https only) cannot leak any.
    // The time limit is the caller's (`opts.timeout`, around the whole fetch).
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| sink.error(e.to_string()))?;
    let resp = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| sink.error(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(sink.error(format!("HTTP status {}", resp.status())));
    }
    if resp.content_length().is_some_and(|len| len > sink.limit) {
        return Err(sink.too_big());
    }
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| sink.error(e.to_string()))?;
        sink.add(&chunk).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
