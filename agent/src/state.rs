//! The agent's state folder (`state_dir`): the outbox database and one folder per job attempt
//! (`jobs/JOB-ATTEMPT/`, with its console.log, artifacts and back-end files). Everything in it
//! is private to the agent's user, whatever the umask: the folders are made 0700 (an existing
//! state folder open to others is closed, and said so), files 0600. Job folders are kept for
//! `state.keep_jobs` after their last change (default a week) and then removed, at start and
//! every hour, except those of jobs the journal still holds (running, or not yet reported).

use anyhow::Context;
use serde::Deserialize;
use std::collections::HashSet;
use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The `state:` section of agent.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// How long a finished job's folder is kept after its last change. Default `7d`.
    #[serde(default = "default_keep_jobs", with = "humantime_serde")]
    pub keep_jobs: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            keep_jobs: default_keep_jobs(),
        }
    }
}

fn default_keep_jobs() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// Mode of the agent's folders.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of the agent's files.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and its parents) as a private folder; an existing folder that others may
/// read or enter is made private, and the change is logged.
pub(crate) fn private_dir(dir: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)) {
            Ok(()) => {
                tracing::info!(folder = %dir.display(), was = %format!("{mode:o}"), "made the agent's folder private (0700)")
            }
            // Not ours (a parent folder given by someone else): say so, carry on.
            Err(e) => {
                tracing::warn!(folder = %dir.display(), mode = %format!("{mode:o}"), error = %e, "cannot make the agent's folder private (0700)")
            }
        }
    }
    Ok(())
}

/// Makes an existing file private (0600) if others may read it.
pub(crate) fn private_file(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Options that create a new private file (0600) for writing, truncating an old one.
pub(crate) fn private_create() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true).mode(FILE_MODE);
    o
}

/// Logs a warning when a secret file (a key, a token) may be read by others than its owner.
pub(crate) fn warn_if_shared(path: &Path, what: &str) {
    if let Ok(m) = std::fs::metadata(path)
        && m.mode() & 0o077 != 0
    {
        tracing::warn!(file = %path.display(), mode = %format!("{:o}", m.mode() & 0o7777), "the {what} may be read by others than its owner; make it 0600");
    }
}

/// The folder that holds the job folders.
pub(crate) fn jobs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("jobs")
}

/// The folder of a job attempt.
pub(crate) fn job_dir(state_dir: &Path, job: i64, attempt: i32) -> PathBuf {
    jobs_dir(state_dir).join(format!("{job}-{attempt}"))
}

/// The job and attempt a job folder's name stands for.
fn parse_job_dir(name: &str) -> Option<(i64, i32)> {
    let (j, a) = name.split_once('-')?;
    Some((j.parse().ok()?, a.parse().ok()?))
}

/// The newest change in a job folder: the folder itself or one of its files.
fn last_change(dir: &Path) -> Option<SystemTime> {
    let mut newest = std::fs::symlink_metadata(dir).ok()?.modified().ok()?;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    Some(newest)
}

/// Removes the job folders under `jobs` whose last change is older than `keep` at `now`,
/// except those of `held` attempts; returns the folders removed. Entries that are not job
/// folders are left alone.
pub(crate) fn prune_job_dirs(
    jobs: &Path,
    keep: Duration,
    now: SystemTime,
    held: &HashSet<(i64, i32)>,
) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(jobs) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(parse_job_dir) else {
            continue;
        };
        let path = e.path();
        if held.contains(&id) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let old = last_change(&path)
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > keep);
        if !old {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(folder = %path.display(), error = %e, "cannot remove an old job folder")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        let t = SystemTime::now() - by;
        let f = std::fs::File::open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    #[test]
    fn old_job_folders_go_held_and_recent_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = dir.path().join("jobs");
        let week = Duration::from_secs(7 * 24 * 3600);
        for name in ["1-1", "2-1", "3-2", "4-1"] {
            std::fs::create_dir_all(jobs.join(name)).unwrap();
            std::fs::write(jobs.join(name).join("console.log"), b"x").unwrap();
        }
        std::fs::create_dir_all(jobs.join("not-a-job")).unwrap();
        let old = week + Duration::from_secs(3600);
        for name in ["1-1", "2-1", "3-2"] {
            age(&jobs.join(name).join("console.log"), old);
            age(&jobs.join(name), old);
        }
        age(&jobs.join("not-a-job"), old);
        // 3-2's log was written an hour ago: its folder is recent.
        age(
            &jobs.join("3-2").join("console.log"),
            Duration::from_secs(3600),
        );
        let held: HashSet<(i64, i32)> = [(2, 1)].into();
        let removed = prune_job_dirs(&jobs, week, SystemTime::now(), &held);
        assert_eq!(removed, vec![jobs.join("1-1")]);
        for stays in ["2-1", "3-2", "4-1", "not-a-job"] {
            assert!(jobs.join(stays).exists(), "{stays}");
        }
        assert_eq!(parse_job_dir("12-3"), Some((12, 3)));
        assert_eq!(parse_job_dir("x-3"), None);
    }

    #[test]
    fn folders_and_files_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("state");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&open).unwrap();
        assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o777, 0o700);
        let fresh = dir.path().join("a/b");
        private_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        let f = open.join("f");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&f).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        let g = open.join("g");
        private_create().open(&g).unwrap();
        assert_eq!(std::fs::metadata(&g).unwrap().mode() & 0o777, 0o600);
        private_file(&open.join("missing")).unwrap();
    }
}
