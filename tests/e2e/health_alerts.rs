//! Health alerts end to end (a submodule of `health`, so `health::` runs it, on SQLite and
//! on PostgreSQL): a shell device whose health check fails goes bad and its lab's contacts
//! get one mail on the SMTP sink, not again after a coordinator restart; the lab's agent
//! stopped past `alerts.lab_unreachable_after` brings one more mail.

use crate::common;
use crate::report::smtp_sink;

use common::*;
use std::time::Duration;

/// The next mail of the sink, within `within`.
async fn next_mail(
    mails: &mut tokio::sync::mpsc::UnboundedReceiver<(Vec<String>, String)>,
    within: Duration,
) -> (Vec<String>, String) {
    tokio::time::timeout(within, mails.recv())
        .await
        .expect("an alert mail in time")
        .expect("the SMTP sink ended")
}

/// Fails if a mail arrives within `within`.
async fn no_mail(
    mails: &mut tokio::sync::mpsc::UnboundedReceiver<(Vec<String>, String)>,
    within: Duration,
    why: &str,
) {
    if let Ok(Some((_, data))) = tokio::time::timeout(within, mails.recv()).await {
        panic!("{why}:\n{data}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_device_and_a_silent_lab_are_mailed_to_the_labs_contacts_once() {
    let mut steps = Steps::new();
    let (smtp_port, mut mails) = smtp_sink(0).await;
    let rig = Rig::new(&format!(
        "leases: {{duration: 6s, heartbeat: 500ms}}\n\
         reports:\n  email: {{smtp_host: 127.0.0.1, smtp_port: {smtp_port}, security: none, \
         from: ci@example.org, to: [reports@example.org]}}\n\
         alerts:\n  interval: 200ms\n  lab_unreachable_after: 6s\n  \
         contacts: [farm@example.org]\n  labs: {{lab-m: {{contacts: [admin@lab-m.example.org]}}}}\n"
    ));
    let _keep = rig.keep_on_failure();
    let mut coord = rig.start_coordinator();
    rig.issue_lab("lab-m");
    // The board "works" while this file is absent: its health check is the device's own
    // command, run by the agent through the shell driver.
    let broken = rig.path("broken");
    std::fs::write(&broken, "").unwrap();
    let test = format!("test ! -e '{}'", broken.display());
    rig.agent_config(
        "lab-m",
        &[("d1", &["sh", "-c", &test], &["m"])],
        "health: {checks: [{device: d1, timeout: 30s}]}\n",
    );
    let mut agent = rig.start_agent("lab-m");

    steps.at("the check at agent start fails: one mail to the lab's contacts");
    let (rcpt, data) = next_mail(&mut mails, Duration::from_secs(40)).await;
    let rcpt = rcpt.join(" ");
    assert!(
        rcpt.contains("admin@lab-m.example.org")
            && rcpt.contains("farm@example.org")
            && !rcpt.contains("reports@example.org"),
        "{rcpt}"
    );
    for want in [
        "Subject: [labwire] lab-m/d1 is bad",
        "The device lab-m/d1 is bad and takes no jobs.",
        "device type: lab-host",
        "reason:      health check failed",
        "bad since:   ",
        "last check:  20",
        "labwire device resume lab-m/d1",
    ] {
        assert!(data.contains(want), "{want:?} not in\n{data}");
    }
    no_mail(
        &mut mails,
        Duration::from_secs(2),
        "a second mail for one incident",
    )
    .await;

    steps.at("a coordinator restart does not mail the incident again");
    coord.terminate(Duration::from_secs(20));
    let mut coord = rig.start_coordinator();
    no_mail(
        &mut mails,
        Duration::from_secs(3),
        "mailed again after a restart",
    )
    .await;

    steps.at("the agent stopped past the threshold: one mail about the lab");
    agent.terminate(Duration::from_secs(20));
    let stopped = std::time::Instant::now();
    let (rcpt, data) = next_mail(&mut mails, Duration::from_secs(30)).await;
    assert!(
        stopped.elapsed() >= Duration::from_secs(5),
        "alerted {:?} after the agent stopped, before the threshold",
        stopped.elapsed()
    );
    assert!(
        rcpt.join(" ").contains("admin@lab-m.example.org"),
        "{rcpt:?}"
    );
    for want in [
        "Subject: [labwire] lab lab-m is unreachable since",
        "The agent of lab lab-m has not called the coordinator for",
        "last call:  20",
    ] {
        assert!(data.contains(want), "{want:?} not in\n{data}");
    }
    no_mail(
        &mut mails,
        Duration::from_secs(2),
        "a second mail for one silence",
    )
    .await;
    let log = std::fs::read_to_string(rig.path("coordinator.log")).unwrap_or_default();
    assert_eq!(
        log.matches("health alert mailed").count(),
        2,
        "the coordinator's log:\n{log}"
    );
    let _ = coord.terminate(Duration::from_secs(20));
}
