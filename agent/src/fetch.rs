//! Downloads a job's artifacts (kernel, ramdisk, dtb, modules, rootfs) into the job folder:
//! http, https and file URLs, a size limit, and the SHA-256 checked when the job gives one.
//! A file is written under a temporary name and renamed only once complete and checked, so a
//! failed download never leaves a half file behind.

use futures::StreamExt;
use labwire_proto::v1;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Why an artifact could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is malformed or of an unsupported scheme.
    #[error("artifact `{name}`: {msg}")]
    BadUrl {
        /// The artifact's role.
        name: String,
        /// What is wrong.
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
    /// The content does not have the expected hash.
    #[error("artifact `{name}` from {url}: SHA-256 is {got}, the job expects {want}")]
    Checksum {
        /// The artifact's role.
        name: String,
        /// Where from.
        url: String,
        /// The hash of what arrived.
        got: String,
        /// The expected hash.
        want: String,
    },
}

/// Fetches every artifact into `dir`; returns the local path of each, by role.
pub async fn fetch_all(
    artifacts: &std::collections::HashMap<String, v1::Artifact>,
    dir: &Path,
    limit: u64,
    timeout: Duration,
) -> Result<BTreeMap<String, PathBuf>, FetchError> {
    let mut out = BTreeMap::new();
    let mut names: Vec<&String> = artifacts.keys().collect();
    names.sort();
    for name in names {
        let a = &artifacts[name];
        let path = fetch(name, a, dir, limit, timeout).await?;
        out.insert(name.clone(), path);
    }
    Ok(out)
}

fn file_name(name: &str, url: &url::Url) -> String {
    let base = url
        .path_segments()
        .and_then(|mut s| s.next_back().map(str::to_string))
        .filter(|s| !s.is_empty() && s != "." && s != "..")
        .unwrap_or_else(|| name.to_string());
    // Keep names safe on disk: the role as a prefix avoids clashes between artifacts.
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{name}-{clean}")
}

/// Fetches one artifact.
pub async fn fetch(
    name: &str,
    a: &v1::Artifact,
    dir: &Path,
    limit: u64,
    timeout: Duration,
) -> Result<PathBuf, FetchError> {
    let url = url::Url::parse(&a.url).map_err(|e| FetchError::BadUrl {
        name: name.into(),
        msg: format!("`{}` is not a URL: {e}", a.url),
    })?;
    let dest = dir.join(file_name(name, &url));
    let tmp = dest.with_extension("part");
    let transfer = |msg: String| FetchError::Transfer {
        name: name.into(),
        url: a.url.clone(),
        msg,
    };
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| transfer(format!("cannot create {}: {e}", tmp.display())))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let add = |chunk: &[u8], size: &mut u64, hasher: &mut Sha256| -> Result<(), FetchError> {
        *size += chunk.len() as u64;
        if *size > limit {
            return Err(FetchError::TooBig {
                name: name.into(),
                url: a.url.clone(),
                limit,
            });
        }
        hasher.update(chunk);
        Ok(())
    };
    let result: Result<(), FetchError> = async {
        match url.scheme() {
            "file" => {
                let src = url
                    .to_file_path()
                    .map_err(|_| transfer("not a local file path".into()))?;
                let mut f = tokio::fs::File::open(&src)
                    .await
                    .map_err(|e| transfer(format!("cannot open {}: {e}", src.display())))?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    use tokio::io::AsyncReadExt;
                    let n = f
                        .read(&mut buf)
                        .await
                        .map_err(|e| transfer(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    add(&buf[..n], &mut size, &mut hasher)?;
                    file.write_all(&buf[..n])
                        .await
                        .map_err(|e| transfer(e.to_string()))?;
                }
            }
            "http" | "https" => {
                crate::ensure_crypto();
                // No credentials are ever attached to artifact requests, so following
                // redirects (reqwest's default policy) cannot leak any.
                let client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(30))
                    .timeout(timeout)
                    .build()
                    .map_err(|e| transfer(e.to_string()))?;
                let resp = client
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|e| transfer(e.to_string()))?;
                if !resp.status().is_success() {
                    return Err(transfer(format!("HTTP status {}", resp.status())));
                }
                if let Some(len) = resp.content_length()
                    && len > limit
                {
                    return Err(FetchError::TooBig {
                        name: name.into(),
                        url: a.url.clone(),
                        limit,
                    });
                }
                let mut body = resp.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| transfer(e.to_string()))?;
                    add(&chunk, &mut size, &mut hasher)?;
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| transfer(e.to_string()))?;
                }
            }
            other => {
                return Err(FetchError::BadUrl {
                    name: name.into(),
                    msg: format!("scheme `{other}` is not supported (http, https or file)"),
                });
            }
        }
        file.flush().await.map_err(|e| transfer(e.to_string()))?;
        let got = hex::encode(hasher.finalize());
        if !a.sha256.is_empty() && !got.eq_ignore_ascii_case(&a.sha256) {
            return Err(FetchError::Checksum {
                name: name.into(),
                url: a.url.clone(),
                got,
                want: a.sha256.clone(),
            });
        }
        Ok(())
    }
    .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn art(url: String, sha: &str) -> v1::Artifact {
        v1::Artifact {
            url,
            sha256: sha.into(),
        }
    }

    #[tokio::test]
    async fn file_urls_checksums_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinuz");
        std::fs::write(&src, b"kernel bytes").unwrap();
        let url = format!("file://{}", src.display());
        let sha = hex::encode(Sha256::digest(b"kernel bytes"));
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let p = fetch(
            "kernel",
            &art(url.clone(), &sha),
            &out,
            1 << 20,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"kernel bytes");
        assert_eq!(p.file_name().unwrap(), "kernel-vmlinuz");

        let e = fetch(
            "kernel",
            &art(url.clone(), &"0".repeat(64)),
            &out,
            1 << 20,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, FetchError::Checksum { .. }), "{e}");
        let e = fetch(
            "kernel",
            &art(url.clone(), ""),
            &out,
            4,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, FetchError::TooBig { .. }), "{e}");
        let e = fetch(
            "kernel",
            &art("ftp://x/y".into(), ""),
            &out,
            4,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("scheme `ftp`"), "{e}");
        // Nothing half-written is left behind.
        let left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("kernel-vmlinuz")]);
    }

    #[tokio::test]
    async fn http_downloads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let resp = if req.starts_with("GET /initrd") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
                        .to_string()
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string()
                };
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let p = fetch(
            "ramdisk",
            &art(format!("http://{addr}/initrd.gz"), ""),
            dir.path(),
            100,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"hello");
        let e = fetch(
            "dtb",
            &art(format!("http://{addr}/missing.dtb"), ""),
            dir.path(),
            100,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
    }
}
