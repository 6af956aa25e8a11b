//! The web dashboard in a real browser: a coordinator and an agent as real processes, a
//! checkout with a passing and a failing job (KTAP with a `not ok` line), a job that cannot be
//! placed, then Debian's headless Chromium driven by `playwright-core`
//! (`tests/dashboard/browser.js`) signs in with a read token, loads every page, checks what it
//! shows, follows checkout → failing job → the failing test's line in the log, and watches a
//! job finish on an open page without reloading it. Screenshots of every page go to
//! `$CARGO_TARGET_TMPDIR/dashboard-screenshots/` (or `LABWIRE_SCREENSHOTS`).
//!
//! Needs `scripts/setup.d/50-dashboard.sh` (Chromium, Node.js, playwright-core in
//! `~/.cache/labwire/dashboard-node`).

use crate::common;

use common::*;
use labwire_proto::v1;
use reqwest::StatusCode;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const KTAP_PASS: &str = "KTAP version 1\n1..2\nok 1 boot\nok 2 probe\n";

fn node_dir() -> PathBuf {
    match std::env::var_os("LABWIRE_DASHBOARD_NODE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/labwire/dashboard-node"),
    }
}

fn require_browser() -> PathBuf {
    let dir = node_dir();
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/setup.d/50-dashboard.sh"
    );
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is missing in {}: run scripts/setup.d/50-dashboard.sh",
        dir.display()
    );
    dir
}

async fn post_node(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    body: serde_json::Value,
) -> i64 {
    let resp = http
        .post(format!("{base}/node"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("post node");
    let st = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(st, StatusCode::CREATED, "{text}");
    serde_json::from_str::<serde_json::Value>(&text).expect("json")["id"]
        .as_i64()
        .expect("id")
}

#[tokio::test]
async fn dashboard_in_a_browser() {
    let mut steps = Steps::new();
    let node_modules = require_browser();
    let rig = Rig::new("http: {listen: 127.0.0.1:0}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let base = rig.http_url();
    let http = rig.http_client();
    let read = rig.create_token("viewer", "read");

    // The slow device waits for a file the browser script creates once the page is open.
    steps.at("The slow device waits for a file the browser script creates once the page is open");
    let go = rig.path("go");
    let slow_script = format!(
        "while [ ! -e {} ]; do sleep 0.1; done; printf '{}'",
        go.display(),
        KTAP_PASS.replace('\n', "\\n")
    );
    rig.issue_lab("lab-a");
    rig.agent_config(
        "lab-a",
        &[
            ("host-pass", &["printf", KTAP_PASS], &["pass"]),
            (
                "host-fail",
                &[
                    "sh",
                    "-c",
                    "printf 'booting\\nKTAP version 1\\n1..3\\nok 1 a\\nnot ok 2 b\\nok 3 c\\n'; exit 1",
                ],
                &["fail"],
            ),
            ("host-slow", &["sh", "-c", &slow_script], &["slow"]),
        ],
        "",
    );
    let _agent = rig.start_agent("lab-a");

    // A checkout with jobs under it, and a node whose name is markup.
    steps.at("A checkout with jobs under it, and a node whose name is markup");
    let checkout = post_node(
        &http,
        &base,
        &rig.admin_token,
        serde_json::json!({
            "kind": "checkout", "name": "checkout",
            "data": {"kernel_revision": {"tree": "mainline", "branch": "master",
                     "commit": "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c", "describe": "v6.13-rc1"}}
        }),
    )
    .await;
    post_node(
        &http,
        &base,
        &rig.admin_token,
        serde_json::json!({"kind": "process", "name": "<img src=x onerror=alert(1)>", "parent": checkout}),
    )
    .await;
    let mut c = rig.client().await;
    let pass = submit_spec_under(
        &mut c,
        shell_spec("kunit-pass", &["pass"], &[], 120),
        checkout,
    )
    .await;
    let failing = submit_spec_under(
        &mut c,
        shell_spec("kunit-fail", &["fail"], &[], 120),
        checkout,
    )
    .await;
    let stuck = submit_spec_under(&mut c, shell_spec("needs-gpu", &["gpu"], &[], 120), 0).await;
    for j in [pass, failing] {
        wait_node(&mut c, j, Duration::from_secs(60), is_done).await;
    }
    let slow = submit_spec_under(
        &mut c,
        shell_spec("kunit-slow", &["slow"], &[], 120),
        checkout,
    )
    .await;
    wait_node(&mut c, slow, Duration::from_secs(30), |n| {
        n.state == v1::NodeState::Running as i32 && data(n).contains_key("lab")
    })
    .await;

    // Without a token the pages send the browser to the sign-in form; a bearer header works.
    steps.at("Without a token the pages send the browser to the sign-in form");
    let r = http
        .get(format!("{base}/ui/labs"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/ui/login");
    let r = http
        .get(format!("{base}/ui/stream"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .get(format!("{base}/ui/node/{checkout}"))
        .bearer_auth(&read)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let page = r.text().await.expect("body");
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{page}"
    );
    assert!(!page.contains("<img"), "unescaped markup: {page}");
    // A wrong token is refused at sign-in.
    steps.at("A wrong token is refused at sign-in");
    let r = http
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=nope")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let shots = match std::env::var_os("LABWIRE_SCREENSHOTS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots"),
    };
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/browser.js");
    let profile = rig.path("chromium-profile");
    let out = tokio::task::spawn_blocking({
        let base = base.clone();
        let read = read.clone();
        let shots = shots.clone();
        let go = go.clone();
        move || {
            Command::new("node")
                .arg(script)
                .env("NODE_PATH", node_modules.join("node_modules"))
                .env("BASE", base)
                .env("TOKEN", read)
                .env("SHOTS", shots)
                .env("GO_FILE", go)
                .env("PROFILE", profile)
                .env("CHECKOUT", checkout.to_string())
                .env("PASS_JOB", pass.to_string())
                .env("FAIL_JOB", failing.to_string())
                .env("SLOW_JOB", slow.to_string())
                .env("STUCK_JOB", stuck.to_string())
                .output()
                .expect("run node")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    for p in ["checkouts", "node", "job-log", "labs", "queue", "live"] {
        let f = shots.join(format!("{p}.png"));
        assert!(
            std::fs::metadata(&f)
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "no screenshot {}",
            f.display()
        );
    }
    println!("screenshots in {}", shots.display());
}

#[tokio::test]
async fn anonymous_read_when_configured() {
    let mut steps = Steps::new();
    let rig = Rig::new("http: {listen: 127.0.0.1:0, ui: {anonymous_read: true}}\n");
    let _keep = rig.keep_on_failure();
    let _coord = rig.start_coordinator();
    let base = rig.http_url();
    let http = rig.http_client();
    for page in [
        "/ui/checkouts",
        "/ui/labs",
        "/ui/queue",
        "/ui/assets/app.js",
    ] {
        let r = http.get(format!("{base}{page}")).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{page}");
    }
    let r = http
        .get(format!("{base}/ui/node/999"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The JSON API still wants a token.
    steps.at("The JSON API still wants a token");
    let r = http.get(format!("{base}/nodes")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
