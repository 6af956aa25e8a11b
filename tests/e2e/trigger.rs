//! The trigger against a real git repository on disk: a bare repository in a temporary
//! folder, commits pushed to it from a clone, and a coordinator process polling it with
//! `git ls-remote`. Each new head commit makes exactly one checkout, also across a restart.

use crate::common;

use common::*;
use labwire_proto::v1;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .output()
        .expect("git must be installed (scripts/setup.d/40-pipeline.sh installs it)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Commits a change on the clone's current branch and pushes it; returns the commit.
fn commit_and_push(work: &Path, branch: &str, msg: &str) -> String {
    std::fs::write(work.join("file"), msg).unwrap();
    git(work, &["add", "file"]);
    git(work, &["commit", "-q", "-m", msg]);
    git(
        work,
        &["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")],
    );
    git(work, &["rev-parse", "HEAD"])
}

async fn checkouts(c: &mut labwire::client::Clients) -> Vec<v1::Node> {
    c.nodes
        .query_nodes(v1::QueryNodesRequest {
            kind: v1::NodeKind::Checkout as i32,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .nodes
}

async fn wait_checkouts(c: &mut labwire::client::Clients, n: usize) -> Vec<v1::Node> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let got = checkouts(c).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < end,
            "waited for {n} checkouts, have {}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn revision(n: &v1::Node) -> serde_json::Value {
    data(n)["kernel_revision"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_commits_make_one_checkout_each_across_a_restart() {
    let mut steps = Steps::new();
    let repos = tempfile::tempdir().unwrap();
    let bare = repos.path().join("linux.git");
    let work = repos.path().join("work");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    git(
        repos.path(),
        &["clone", "-q", bare.to_str().unwrap(), "work"],
    );
    let first = commit_and_push(&work, "master", "one");
    git(&work, &["tag", "-a", "-m", "v1.0", "v1.0"]);
    git(&work, &["push", "-q", "origin", "v1.0"]);
    let url = format!("file://{}", bare.display());

    let rig = Rig::new(&format!(
        "trigger:\n  interval: 100ms\n  jitter: 50ms\n  checkout_timeout: 1h\n  holdoff: 30m\n  \
         trees:\n    - name: mainline\n      url: {url}\n      branches: [master, next]\n"
    ));
    let _keep = rig.keep_on_failure();
    let mut coord = rig.start_coordinator();
    let mut c = rig.client().await;

    let got = wait_checkouts(&mut c, 1).await;
    assert_eq!(got.len(), 1);
    let n = &got[0];
    assert_eq!(n.name, "checkout");
    assert_eq!(n.state, v1::NodeState::Available as i32);
    assert!(n.timeout.is_some() && n.holdoff.is_some());
    assert_eq!(
        revision(n),
        serde_json::json!({"tree": "mainline", "url": url, "branch": "master",
                           "commit": first, "describe": "v1.0"})
    );

    // A new commit on master and the first one on next: one checkout each.
    steps.at("A new commit on master and the first one on next");
    let second = commit_and_push(&work, "master", "two");
    let on_next = commit_and_push(&work, "next", "three");
    let got = wait_checkouts(&mut c, 3).await;
    // Let many more polls pass: nothing seen before is checked out again.
    steps.at("Let many more polls pass");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got_later = checkouts(&mut c).await;
    assert_eq!(got_later.len(), 3, "{got_later:#?}");
    assert_eq!(got.len(), 3);
    let mut revs: Vec<(String, String)> = got_later
        .iter()
        .map(|n| {
            let r = revision(n);
            (
                r["branch"].as_str().unwrap().to_string(),
                r["commit"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    revs.sort();
    let mut want = vec![
        ("master".to_string(), first.clone()),
        ("master".to_string(), second.clone()),
        ("next".to_string(), on_next.clone()),
    ];
    want.sort();
    assert_eq!(revs, want);
    // Only tagged commits carry a describe.
    steps.at("Only tagged commits carry a describe");
    assert!(
        got_later
            .iter()
            .filter(|n| revision(n)["commit"] != first.as_str())
            .all(|n| revision(n).get("describe").is_none())
    );

    // Restart: the heads are unchanged, so nothing new, however many polls. (The client
    // goes first: `terminate` blocks this test's runtime, which drives the connection.)
    steps.at("Restart");
    drop(c);
    assert!(coord.terminate(Duration::from_secs(20)).is_some());
    drop(coord);
    coord = rig.start_coordinator();
    let mut c = rig.client().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(checkouts(&mut c).await.len(), 3);
    // A commit pushed after the restart is picked up, once.
    steps.at("A commit pushed after the restart is picked up, once");
    let fourth = commit_and_push(&work, "next", "four");
    let got = wait_checkouts(&mut c, 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = checkouts(&mut c).await;
    assert_eq!(after.len(), 4, "{after:#?}");
    assert_eq!(revision(&got[3])["commit"], fourth.as_str());
    drop(coord);
}

#[tokio::test]
async fn an_unreachable_tree_is_reported_and_others_still_polled() {
    let repos = tempfile::tempdir().unwrap();
    let bare = repos.path().join("good.git");
    let work = repos.path().join("work");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    git(
        repos.path(),
        &["clone", "-q", bare.to_str().unwrap(), "work"],
    );
    let head = commit_and_push(&work, "main", "one");
    let rig = Rig::new(&format!(
        "trigger:\n  interval: 100ms\n  jitter: 0s\n  trees:\n    \
         - {{name: gone, url: 'file://{}/missing.git', branches: [main]}}\n    \
         - {{name: good, url: 'file://{}', branches: [main]}}\n",
        repos.path().display(),
        bare.display()
    ));
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let mut c = rig.client().await;
    let got = wait_checkouts(&mut c, 1).await;
    assert_eq!(revision(&got[0])["commit"], head.as_str());
    assert_eq!(revision(&got[0])["tree"], "good");
    let log_path = rig.path("coordinator.log");
    wait_for(
        Duration::from_secs(10),
        "the failed poll in the log",
        || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("trigger poll failed")
        },
    );
}
