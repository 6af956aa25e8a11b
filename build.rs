//! Build script of the `labwire` package: records the git revision the binaries are built
//! from, for `--version` on all three (`labwire 0.1.0 (git 1a2b3c4d5e6f)`). Outside a git
//! checkout (a source tarball, a vendored copy) the version is the package version alone,
//! unless the packager sets `LABWIRE_GIT_REV`.

use std::path::Path;
use std::process::Command;

/// Runs `git ARGS` in the package directory; its trimmed output, if it succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LABWIRE_GIT_REV");
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let rev = match std::env::var("LABWIRE_GIT_REV") {
        Ok(r) if !r.trim().is_empty() => Some(r.trim().to_string()),
        _ => git(&dir, &["rev-parse", "--short=12", "HEAD"]),
    };
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points to (a
    // commit), and packed-refs (a gc). `--git-path` finds them in a worktree as well.
    if rev.is_some() {
        let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
        if let Some(r) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
            watched.push(r);
        }
        for w in watched {
            if let Some(p) = git(
                &dir,
                &["rev-parse", "--path-format=absolute", "--git-path", &w],
            ) && Path::new(&p).exists()
            {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let full = match rev {
        Some(r) => format!("{version} (git {r})"),
        None => version,
    };
    println!("cargo:rustc-env=LABWIRE_VERSION={full}");
}
