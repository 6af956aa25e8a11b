//! The trigger: polls the configured trees with `git ls-remote` (every `trigger.interval`
//! plus up to `trigger.jitter`) and creates one `checkout` node per new commit at the head of
//! a watched branch. The commit is recorded in the same transaction as its node
//! ([`crate::store::trigger`]), so a commit already seen creates nothing, also after a
//! restart. The node carries KernelCI's `kernel_revision` (tree, url, branch, commit, and
//! describe when a tag names the commit), a `timeout` and a `holdoff`, and is created
//! `available`, ready for builds and jobs.

use super::config::{TreeConfig, TriggerConfig};
use crate::model::Node;
use crate::store::Store;
use crate::store::trigger::SeenCommit;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One commit at the head of a watched branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Revision {
    /// The tree's name.
    pub(crate) tree: String,
    /// The repository URL.
    pub(crate) url: String,
    /// The branch.
    pub(crate) branch: String,
    /// The full commit hash.
    pub(crate) commit: String,
    /// A tag naming exactly this commit, if any.
    pub(crate) describe: Option<String>,
}

impl Revision {
    /// KernelCI's `kernel_revision` object.
    pub(crate) fn kernel_revision(&self) -> Value {
        let mut v = json!({
            "tree": self.tree,
            "url": self.url,
            "branch": self.branch,
            "commit": self.commit,
        });
        if let Some(d) = &self.describe {
            v["describe"] = d.clone().into();
        }
        v
    }

    /// The commit as the store records it.
    pub(crate) fn seen(&self) -> SeenCommit<'_> {
        SeenCommit {
            tree: &self.tree,
            branch: &self.branch,
            commit: &self.commit,
            kernel_revision: self.kernel_revision(),
        }
    }
}

/// What `git ls-remote --heads --tags` said: branch heads, and the tags of each commit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RemoteRefs {
    /// Branch name -> commit.
    pub(crate) heads: BTreeMap<String, String>,
    /// Commit -> the tags that name it, sorted.
    pub(crate) tags: BTreeMap<String, Vec<String>>,
}

/// Parses `git ls-remote` output (`<hash>\t<ref>` lines). Annotated tags name their commit on
/// the peeled `refs/tags/T^{}` line.
pub(crate) fn parse_ls_remote(out: &str) -> anyhow::Result<RemoteRefs> {
    let mut refs = RemoteRefs::default();
    for (i, line) in out.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let Some((hash, name)) = line.split_once('\t') else {
            bail!(
                "git ls-remote line {}: `{line}` is not `<hash>\\t<ref>`",
                i + 1
            );
        };
        if hash.len() < 40 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "git ls-remote line {}: `{hash}` is not a commit hash",
                i + 1
            );
        }
        if let Some(b) = name.strip_prefix("refs/heads/") {
            refs.heads.insert(b.to_string(), hash.to_string());
        } else if let Some(t) = name.strip_prefix("refs/tags/") {
            let t = t.strip_suffix("^{}").unwrap_or(t);
            let tags = refs.tags.entry(hash.to_string()).or_default();
            if !tags.iter().any(|x| x == t) {
                tags.push(t.to_string());
                tags.sort();
            }
        }
    }
    Ok(refs)
}

/// Runs `git ls-remote --heads --tags URL` (an argument list, no shell; no prompt for
/// credentials), at most `timeout` long.
pub(crate) async fn ls_remote(
    git: &Path,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<RemoteRefs> {
    let mut cmd = tokio::process::Command::new(git);
    cmd.args(["ls-remote", "--heads", "--tags", url])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .with_context(|| {
            format!(
                "git ls-remote {url} took longer than {}",
                humantime::format_duration(timeout)
            )
        })?
        .with_context(|| format!("cannot run {}", git.display()))?;
    if !out.status.success() {
        bail!(
            "git ls-remote {url} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ls_remote(&String::from_utf8_lossy(&out.stdout))
}

/// Polls one tree once: new head commits of its branches become checkout nodes.
pub(crate) async fn poll_tree(
    store: &Store,
    cfg: &TriggerConfig,
    tree: &TreeConfig,
) -> anyhow::Result<Vec<Node>> {
    let refs = ls_remote(&cfg.git, &tree.url, cfg.git_timeout).await?;
    let mut created = Vec::new();
    for branch in &tree.branches {
        let Some(commit) = refs.heads.get(branch) else {
            tracing::warn!(tree = %tree.name, %branch, url = %tree.url, "branch not found");
            continue;
        };
        let rev = Revision {
            tree: tree.name.clone(),
            url: tree.url.clone(),
            branch: branch.clone(),
            commit: commit.clone(),
            describe: refs.tags.get(commit).and_then(|t| t.last().cloned()),
        };
        let (timeout, holdoff) = (cfg.checkout_timeout, cfg.holdoff);
        let rev2 = rev.clone();
        if let Some(node) = store
            .write(move |w| w.record_commit(&rev2.seen(), timeout, holdoff))
            .await?
        {
            tracing::info!(
                tree = %rev.tree, branch = %rev.branch, commit = %rev.commit,
                checkout = %node.id, "new commit: checkout created"
            );
            created.push(node);
        }
    }
    Ok(created)
}

/// Polls every configured tree until `shutdown`, each on its own schedule: at start, then
/// every `interval` plus a random part of `jitter`.
pub(crate) async fn run(store: Store, cfg: TriggerConfig, shutdown: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for tree in cfg.trees.clone() {
        let (store, cfg, shutdown) = (store.clone(), cfg.clone(), shutdown.clone());
        tasks.spawn(async move {
            loop {
                if let Err(e) = poll_tree(&store, &cfg, &tree).await {
                    tracing::warn!(tree = %tree.name, error = %format!("{e:#}"), "trigger poll failed");
                }
                let jitter = if cfg.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    cfg.jitter.mul_f64(rand::random::<f64>())
                };
                tokio::select! {
                    _ = tokio::time::sleep(cfg.interval + jitter) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeKind, NodeState};
    use crate::store::nodes::query_nodes;
    use crate::store::{NodeFilter, temp_store};

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const T: &str = "3333333333333333333333333333333333333333";

    #[test]
    fn parses_heads_and_tags() {
        let out = format!(
            "{A}\trefs/heads/master\n{B}\trefs/heads/for-next\n{T}\trefs/tags/v6.1\n\
             {A}\trefs/tags/v6.1^{{}}\n{B}\trefs/tags/light\n"
        );
        let r = parse_ls_remote(&out).unwrap();
        assert_eq!(r.heads["master"], A);
        assert_eq!(r.heads["for-next"], B);
        assert_eq!(r.tags[A], vec!["v6.1"]);
        assert_eq!(r.tags[B], vec!["light"]);
        let e = parse_ls_remote("nonsense\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn a_commit_is_checked_out_once() {
        let (_d, store) = temp_store();
        let rev = Revision {
            tree: "mainline".into(),
            url: "https://git.example/linux.git".into(),
            branch: "master".into(),
            commit: A.into(),
            describe: Some("v6.1".into()),
        };
        let hour = Duration::from_secs(3600);
        let r = rev.clone();
        let first = store
            .write_blocking(move |w| w.record_commit(&r.seen(), hour, hour))
            .unwrap()
            .unwrap();
        assert_eq!(first.state, NodeState::Available);
        assert_eq!(first.data["kernel_revision"]["describe"], "v6.1");
        assert_eq!(
            first.timeout,
            Some(first.created + chrono::Duration::hours(1))
        );
        let r = rev.clone();
        assert!(
            store
                .write_blocking(move |w| w.record_commit(&r.seen(), hour, hour))
                .unwrap()
                .is_none()
        );
        // The same commit on another branch is another checkout.
        let mut other = rev;
        other.branch = "for-next".into();
        assert!(
            store
                .write_blocking(move |w| w.record_commit(&other.seen(), hour, hour))
                .unwrap()
                .is_some()
        );
        let all = store
            .read_blocking(|c| {
                query_nodes(
                    c,
                    &NodeFilter {
                        kind: Some(NodeKind::Checkout),
                        limit: 10,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        assert_eq!(all.len(), 2);
    }
}
