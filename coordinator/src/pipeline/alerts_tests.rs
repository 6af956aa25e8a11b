//! Which health alerts fall due, on a real store (SQLite, and PostgreSQL with
//! `LABWIRE_TEST_STORE=postgres`) under a hand-moved clock: one alert per incident, none
//! again after a restart, one per `repeat_after` for a flapping device, a silent lab
//! alerted once, and not after the coordinator's own downtime.

use super::*;
use crate::clock::Clock;
use crate::model::LabName;
use crate::pipeline::config::{LabSettings, SmtpSecurity};
use crate::store::temp_store_with_clock;
use labwire_common::{DeviceInfo, Health};
use std::collections::BTreeMap;

fn alerter() -> Alerter {
    let mut labs = BTreeMap::new();
    labs.insert(
        "lab-a".to_string(),
        LabSettings {
            contacts: vec!["admin@lab-a.example.org".into()],
        },
    );
    Alerter {
        email: EmailConfig {
            smtp_host: "127.0.0.1".into(),
            smtp_port: 25,
            security: SmtpSecurity::None,
            username: None,
            password_file: None,
            from: "ci@example.org".into(),
            to: vec!["reports@example.org".into()],
            format: Default::default(),
        },
        alerts: AlertConfig {
            contacts: vec!["farm@example.org".into(), "admin@lab-a.example.org".into()],
            labs,
            ..Default::default()
        },
    }
}

fn dev(h: Health, reason: &str) -> DeviceInfo {
    DeviceInfo {
        name: "b1".into(),
        device_type: "qemu-x86_64".into(),
        driver: "serial".into(),
        health: h,
        health_reason: reason.into(),
        last_check: 1_800_000_000,
        failure_streak: 3,
        ..Default::default()
    }
}

/// Records `alerts` as mailed, as `run` does after sending.
fn record(store: &Store, alerts: &[Alert]) {
    for a in alerts.iter().cloned() {
        store
            .write_blocking(move |w| w.record_alert(a.key(), "sent", &a.to, &a.subject))
            .unwrap();
    }
}

#[test]
fn one_alert_per_incident_and_none_while_a_device_flaps() {
    let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let clock = Clock::manual(t0);
    let (_d, store) = temp_store_with_clock(clock.clone());
    let a = alerter();
    let lab = LabName::new("lab-a");
    store
        .write_blocking(|w| w.register_lab_cert("lab-a", "aa", None))
        .unwrap();
    store
        .write_blocking(|w| w.touch_lab(&lab, None, None, chrono::Duration::seconds(35)))
        .unwrap();
    // Each report is a call of the lab's agent: the lab is not silent.
    let report = |h: Health, why: &'static str| {
        store
            .write_blocking(move |w| {
                let lab = LabName::new("lab-a");
                w.touch_lab(&lab, None, None, chrono::Duration::seconds(35))?;
                w.report_health(&lab, &[dev(h, why)])
            })
            .unwrap();
    };
    let due = |a: &Alerter| {
        let (a, now) = (a.clone(), clock.now());
        store.read_blocking(move |c| a.due(c, now, t0)).unwrap()
    };
    report(Health::Good, "");
    assert!(due(&a).is_empty());

    // Bad: one alert to the lab's contacts and every lab's, each once.
    clock.advance(chrono::Duration::seconds(10));
    report(
        Health::Bad,
        "health check failed: kernel_panic: Kernel panic",
    );
    let first = due(&a);
    assert_eq!(first.len(), 1, "{first:?}");
    let m = &first[0];
    assert_eq!(m.kind, AlertKind::DeviceBad);
    assert_eq!(
        m.to,
        vec![
            "admin@lab-a.example.org".to_string(),
            "farm@example.org".to_string()
        ]
    );
    assert_eq!(
        m.subject,
        "[labwire] lab-a/b1 is bad: health check failed: kernel_panic: Kernel panic"
    );
    for want in [
        "reason:      health check failed: kernel_panic: Kernel panic",
        "bad since:   2027-01-15 08:00:10 UTC",
        "last check:  2027-01-15 08:00:00 UTC",
        "streak:      3 infrastructure failures in a row",
        "labwire device resume lab-a/b1",
    ] {
        assert!(m.body.contains(want), "{want:?} not in\n{}", m.body);
    }
    assert!(message(&a.email, m).is_ok());
    record(&store, &first);
    // Recorded: not due again (a restart reads the same store).
    assert!(due(&a).is_empty());

    // It flaps: good, bad, good, bad within the hour: no mail meanwhile.
    for (h, why) in [
        (Health::Good, ""),
        (Health::Bad, "flap"),
        (Health::Good, ""),
        (Health::Bad, "flap again"),
    ] {
        clock.advance(chrono::Duration::minutes(5));
        report(h, why);
        assert!(due(&a).is_empty());
    }
    // An hour after the last mail, still bad: one mail, which counts the flaps.
    clock.advance(chrono::Duration::minutes(45));
    report(Health::Bad, "flap again");
    let next = due(&a);
    assert_eq!(next.len(), 1, "{next:?}");
    assert!(next[0].subject.ends_with("is bad: flap again"), "{next:?}");
    assert!(
        next[0]
            .body
            .contains("went bad 2 times since the last alert"),
        "{}",
        next[0].body
    );
    record(&store, &next);
    assert!(due(&a).is_empty());

    // A lab without contacts gets no alert (and nothing is recorded for it).
    let mut quiet = a.clone();
    quiet.alerts.contacts.clear();
    quiet.alerts.labs.clear();
    assert!(!quiet.has_contacts());
    let log = store.read_blocking(crate::store::alerts::alerts).unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log.iter().all(
        |(k, l, d, o)| (k.as_str(), l.as_str(), d.as_str(), o.as_str())
            == ("device_bad", "lab-a", "b1", "sent")
    ));
}

#[test]
fn a_silent_lab_is_alerted_once_and_not_after_the_coordinators_own_downtime() {
    let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let clock = Clock::manual(t0);
    let (_d, store) = temp_store_with_clock(clock.clone());
    let a = alerter();
    let lab = LabName::new("lab-a");
    store
        .write_blocking(|w| w.register_lab_cert("lab-a", "aa", None))
        .unwrap();
    store
        .write_blocking(move |w| w.touch_lab(&lab, None, None, chrono::Duration::seconds(35)))
        .unwrap();
    let due = |started: DateTime<Utc>| {
        let (a, now) = (a.clone(), clock.now());
        store
            .read_blocking(move |c| a.due(c, now, started))
            .unwrap()
    };
    clock.advance(chrono::Duration::minutes(14));
    assert!(due(t0).is_empty(), "alerted before the threshold");
    clock.advance(chrono::Duration::minutes(2));
    // A coordinator that started a minute ago knows no better than its own start.
    assert!(due(clock.now() - chrono::Duration::minutes(1)).is_empty());
    let out = due(t0);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].kind, AlertKind::LabUnreachable);
    assert_eq!(
        out[0].subject,
        "[labwire] lab lab-a is unreachable since 2027-01-15 08:00:00 UTC"
    );
    assert!(
        out[0]
            .body
            .contains("has not called the coordinator for 16m")
    );
    record(&store, &out);
    clock.advance(chrono::Duration::hours(3));
    assert!(due(t0).is_empty(), "the same silence alerted twice");
    // A revoked lab is nobody's concern.
    store
        .write_blocking(|w| w.revoke_lab("lab-a").map(|_| ()))
        .unwrap();
    assert!(due(t0).is_empty());
}
