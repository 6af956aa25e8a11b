//! Tests of artifact fetching: file and http URLs, checksums and limits, and everything a
//! hostile job may send (roles, file:// outside the allowed folders, FIFOs, symlinks).

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn art(url: String, sha: &str) -> v1::Artifact {
    v1::Artifact {
        url,
        sha256: sha.into(),
    }
}

fn opts(dirs: &[&Path]) -> FetchOptions {
    FetchOptions {
        limit: 1 << 20,
        timeout: Duration::from_secs(5),
        cancel: CancellationToken::new(),
        file_dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
    }
}

fn left_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn file_urls_checksums_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vmlinuz");
    std::fs::write(&src, b"kernel bytes").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    let url = format!("file://{}", src.display());
    let sha = hex::encode(Sha256::digest(b"kernel bytes"));
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = opts(&[dir.path()]);
    let p = fetch("kernel", &art(url.clone(), &sha), &out, &o)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"kernel bytes");
    assert_eq!(p.file_name().unwrap(), "kernel-vmlinuz");
    // Copied as the job folder's private mode, not the source's 0644.
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);

    let e = fetch("kernel", &art(url.clone(), &"0".repeat(64)), &out, &o)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Checksum { .. }), "{e}");
    // The hash of what was read is not in the message.
    assert!(!e.to_string().contains(&sha), "{e}");
    let small = FetchOptions {
        limit: 4,
        ..o.clone()
    };
    let e = fetch("kernel", &art(url.clone(), ""), &out, &small)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::TooBig { .. }), "{e}");
    let e = fetch("kernel", &art("ftp://x/y".into(), ""), &out, &o)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("scheme `ftp`"), "{e}");
    assert_eq!(e.code(), ErrorCode::InvalidJob);
    // Nothing half-written is left behind.
    assert_eq!(left_in(&out), ["kernel-vmlinuz"]);
}

#[test]
fn roles_are_plain_names() {
    for bad in [
        "",
        ".",
        "..",
        "../../x",
        "/etc/cron.d/x",
        "a/b",
        "a\0b",
        "a\nb",
        "/",
    ] {
        let e = check_role(bad).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidJob);
        assert!(e.to_string().contains("artifact role `"), "{e}");
    }
    for good in [
        "kernel",
        "ramdisk.gz",
        "modules-6.1",
        "$(id)",
        "a b",
        "..x",
        "x..",
    ] {
        check_role(good).unwrap();
    }
    assert_eq!(file_name("$(id)", "http://h/a;b"), "__id_-a_b");
}

#[tokio::test]
async fn a_bad_role_fetches_nothing_and_writes_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("allowed");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("k"), b"k").unwrap();
    let job = dir.path().join("jobs/1-1");
    std::fs::create_dir_all(&job).unwrap();
    let url = format!("file://{}", src.join("k").display());
    let abs = format!("{}/abs", dir.path().display());
    for role in ["../../x", abs.as_str(), ".."] {
        let arts: HashMap<String, v1::Artifact> = [
            ("kernel".to_string(), art(url.clone(), "")),
            (role.to_string(), art(url.clone(), "")),
        ]
        .into();
        let e = fetch_all(&arts, &job, &opts(&[&src])).await.unwrap_err();
        assert!(matches!(e, FetchError::BadRole { .. }), "{e}");
        assert!(
            e.to_string().contains(&role.escape_debug().to_string()),
            "{e}"
        );
    }
    assert!(left_in(&job).is_empty(), "{:?}", left_in(&job));
    assert_eq!(left_in(dir.path()), ["allowed", "jobs"]);
}

#[tokio::test]
async fn file_urls_only_from_the_allowed_folders() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    let secret = dir.path().join("secret");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("shadow"), b"root:$6$secret").unwrap();
    let hash = hex::encode(Sha256::digest(b"root:$6$secret"));
    std::os::unix::fs::symlink(secret.join("shadow"), allowed.join("link")).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let cases = [
        (vec![], secret.join("shadow"), "not allowed on this lab"),
        (
            vec![allowed.as_path()],
            secret.join("shadow"),
            "not in a folder",
        ),
        (
            vec![allowed.as_path()],
            allowed.join("../secret/shadow"),
            "not in a folder",
        ),
        (
            vec![allowed.as_path()],
            allowed.join("link"),
            "not in a folder",
        ),
        (
            vec![allowed.as_path()],
            PathBuf::from("/etc/shadow"),
            "not in a folder",
        ),
    ];
    for (dirs, path, want) in cases {
        let url = format!("file://{}", path.display());
        let e = fetch("kernel", &art(url, &"0".repeat(64)), &out, &opts(&dirs))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(want), "{path:?}: {msg}");
        assert!(!msg.contains(&hash) && !msg.contains("secret\n"), "{msg}");
        assert_eq!(e.code(), ErrorCode::InvalidJob, "{msg}");
    }
    assert!(left_in(&out).is_empty());
}

#[tokio::test]
async fn a_fifo_or_a_device_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = FetchOptions {
        timeout: Duration::from_secs(60),
        ..opts(&[dir.path(), Path::new("/dev")])
    };
    let started = std::time::Instant::now();
    for (path, kind) in [
        (fifo.clone(), "a FIFO"),
        (PathBuf::from("/dev/zero"), "a device"),
    ] {
        let url = format!("file://{}", path.display());
        let e = fetch("kernel", &art(url, ""), &out, &o).await.unwrap_err();
        assert!(e.to_string().contains(kind), "{e}");
        assert_eq!(e.code(), ErrorCode::InvalidJob);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = fetch(
        "kernel",
        &art(format!("file://{}", dir.path().display()), ""),
        &out,
        &o,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("a folder"), "{e}");
}

/// An HTTP server on loopback that answers `/initrd` with five bytes, `/missing` with 404,
/// and never answers `/hang`.
async fn server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let resp = if req.starts_with("GET /initrd") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
                } else if req.starts_with("GET /hang") {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_downloads() {
    let addr = server().await;
    let dir = tempfile::tempdir().unwrap();
    let o = opts(&[]);
    let p = fetch(
        "ramdisk",
        &art(format!("http://{addr}/initrd.gz"), ""),
        dir.path(),
        &o,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"hello");
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    let e = fetch(
        "dtb",
        &art(format!("http://{addr}/missing.dtb"), ""),
        dir.path(),
        &o,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
    assert_eq!(e.code(), ErrorCode::DownloadFailed);
}

#[tokio::test]
async fn a_cancel_stops_a_download_that_hangs() {
    let addr = server().await;
    let dir = tempfile::tempdir().unwrap();
    let o = FetchOptions {
        timeout: Duration::from_secs(3600),
        ..opts(&[])
    };
    let cancel = o.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel();
    });
    let e = fetch("k", &art(format!("http://{addr}/hang"), ""), dir.path(), &o)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Cancelled { .. }), "{e}");
    assert_eq!(e.code(), ErrorCode::Cancelled);
    assert!(left_in(dir.path()).is_empty());
}

/// The server never answers, so whatever the machine's load the limit is what ends it.
#[tokio::test]
async fn the_time_limit_stops_a_download_that_hangs() {
    let addr = server().await;
    let dir = tempfile::tempdir().unwrap();
    let o = FetchOptions {
        timeout: Duration::from_millis(300),
        ..opts(&[])
    };
    let e = fetch("k", &art(format!("http://{addr}/hang"), ""), dir.path(), &o)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("did not finish within 300ms"), "{e}");
    assert_eq!(e.code(), ErrorCode::DownloadFailed);
}
