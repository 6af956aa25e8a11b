//! The lab report's figures against a store filled with known health changes and jobs
//! (SQLite, and PostgreSQL with `LABWIRE_TEST_STORE=postgres`).

use super::*;
use crate::store::temp_store;

const H: i64 = 3_600_000_000; // an hour in micros

fn t(hours: i64) -> DateTime<Utc> {
    from_micros(1_800_000_000_000_000 + hours * H)
}

/// Fills the store: lab-r seen last at hour 10; over hours 0..12, board-a is good from hour
/// 0, bad at 2, in maintenance at 3, good at 5; board-b (another type) is first heard of at
/// hour 1, good throughout; board-c was bad before the period and stays so. Jobs: board-a
/// three (one power_failed, login 20 s and 40 s), board-b two passes (login 10 s), one job
/// before the period and one of another lab that do not count.
fn fill(store: &crate::store::Store) {
    store
        .write_blocking(|w| {
            let c = w.conn();
            c.execute(
                "INSERT INTO labs (name, created, last_seen) VALUES ('lab-r', ?1, ?2)",
                params![micros(t(-100)), micros(t(10))],
            )?;
            for (d, ty, at, from, to) in [
                ("board-c", "arm", -50, None, "bad"),
                ("board-a", "qemu", -10, None, "good"),
                ("board-b", "arm", 1, None, "good"),
                ("board-a", "qemu", 2, Some("good"), "bad"),
                ("board-a", "qemu", 3, Some("bad"), "maintenance"),
                ("board-a", "qemu", 5, Some("maintenance"), "good"),
            ] {
                c.execute(
                    "INSERT INTO device_health_log (lab, device, device_type, at, \
                     from_health, to_health, reason) VALUES ('lab-r', ?1, ?2, ?3, ?4, ?5, '')",
                    params![d, ty, micros(t(at)), from, to],
                )?;
            }
            for (d, ty, h) in [
                ("board-a", "qemu", "good"),
                ("board-b", "arm", "good"),
                ("board-c", "arm", "bad"),
            ] {
                c.execute(
                    "INSERT INTO device_health (lab, device, device_type, health, since) \
                     VALUES ('lab-r', ?1, ?2, ?3, 0)",
                    params![d, ty, h],
                )?;
            }
            for (lab, dev, at, data) in [
                ("lab-r", "board-a", 1, r#"{"login_ms": 20000}"#),
                ("lab-r", "board-a", 2, r#"{"error_code": "power_failed"}"#),
                ("lab-r", "board-a", 6, r#"{"login_ms": 40000}"#),
                ("lab-r", "board-b", 7, r#"{"login_ms": 10000}"#),
                ("lab-r", "board-b", 8, r#"{"error_code": "boot_timeout"}"#),
                ("lab-r", "board-b", -1, r#"{"error_code": "power_failed"}"#),
                ("lab-x", "board-a", 4, r#"{"error_code": "power_failed"}"#),
            ] {
                let id: i64 = c.query_row(
                    "INSERT INTO nodes (kind, name, path, state, data, created, updated) \
                     VALUES ('job', 'j', '[]', 'done', ?1, 0, 0) RETURNING id",
                    params![data],
                    |r| r.get(0),
                )?;
                c.execute(
                    "INSERT INTO jobs (node_id, spec, criteria, status, lease_owner, device, \
                     queued_at, finished_at) VALUES (?1, '', '{}', 'finished', ?2, ?3, 0, ?4)",
                    params![id, lab, dev, micros(t(at))],
                )?;
            }
            Ok(())
        })
        .expect("fill the store");
}

#[test]
fn figures_from_known_health_changes_and_jobs() {
    let (_d, store) = temp_store();
    fill(&store);
    // Offline 1 h after the last sight: hour 11 on.
    let r = store
        .read_blocking(|c| lab_report(c, "lab-r", t(0), t(12), Duration::hours(1)))
        .unwrap()
        .expect("lab-r is known");
    let hs = |h: i64| h * 3600;
    let by = |n: &str| r.devices.iter().find(|a| a.name == n).unwrap().clone();
    let a = by("board-a");
    assert_eq!(
        (a.good_s, a.bad_s, a.maintenance_s, a.retired_s, a.offline_s),
        (hs(2 + 6), hs(1), hs(2), 0, hs(1))
    );
    assert_eq!((a.jobs, a.infra_failures), (3, 1));
    assert_eq!(a.boot_ms_mean(), Some(30_000.0));
    let b = by("board-b");
    assert_eq!(
        (b.good_s, b.bad_s, b.offline_s),
        (hs(10), 0, hs(1 + 1)),
        "not heard of before hour 1"
    );
    // boot_timeout is the kernel's fault, not the lab's.
    assert_eq!((b.jobs, b.infra_failures), (2, 0));
    assert_eq!(b.boot_ms_mean(), Some(10_000.0));
    let c = by("board-c");
    assert_eq!(
        (c.good_s, c.bad_s, c.offline_s, c.jobs),
        (0, hs(11), hs(1), 0)
    );
    assert_eq!(c.boot_ms_mean(), None);
    // The worst first: board-c (0 % good), board-a (8/12), board-b (10/12).
    let names: Vec<_> = r.devices.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["board-c", "board-a", "board-b"]);
    // Per type: arm = board-b + board-c, worse than qemu.
    let types: Vec<_> = r.device_types.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(types, ["arm", "qemu"]);
    let arm = &r.device_types[0];
    assert_eq!(
        (arm.good_s, arm.bad_s, arm.offline_s),
        (hs(10), hs(11), hs(3))
    );
    assert_eq!((arm.jobs, arm.infra_failures), (2, 0));
    assert!(r.devices.iter().all(|a| a.total_s() == hs(12)));
    assert!((a.infra_rate() - 1.0 / 3.0).abs() < 1e-9);
    // The changes in the period, for the timeline.
    assert_eq!(r.changes.len(), 4);
    assert_eq!(r.changes[0], ("board-b".to_string(), t(1), Health::Good));
    // board-a's timeline: good, bad, maintenance, good, offline, end to end.
    let spans: Vec<_> = r.timelines["board-a"]
        .iter()
        .map(|s| (s.from, s.to, s.health))
        .collect();
    assert_eq!(
        spans,
        [
            (t(0), t(2), Some(Health::Good)),
            (t(2), t(3), Some(Health::Bad)),
            (t(3), t(5), Some(Health::Maintenance)),
            (t(5), t(11), Some(Health::Good)),
            (t(11), t(12), None),
        ]
    );
    let b: Vec<_> = r.timelines["board-b"].iter().map(|s| s.health).collect();
    assert_eq!(b, [None, Some(Health::Good), None]);
    // An unknown lab.
    let none = store
        .read_blocking(|c| lab_report(c, "nope", t(0), t(12), Duration::hours(1)))
        .unwrap();
    assert!(none.is_none());
}

#[test]
fn earlier_silences_count_as_offline() {
    let (_d, store) = temp_store();
    fill(&store);
    // lab-r went silent after a call at hour 6 until hour 8:30, and from hour -3 to 0:30;
    // a silence that ended before the period does not count.
    store
        .write_blocking(|w| {
            for (s, e) in [(-20 * H, -19 * H), (-3 * H, H / 2), (6 * H, 8 * H + H / 2)] {
                w.conn().execute(
                    "INSERT INTO lab_silences (lab, started, ended) VALUES ('lab-r', ?1, ?2)",
                    params![micros(t(0)) + s, micros(t(0)) + e],
                )?;
            }
            Ok(())
        })
        .unwrap();
    let r = store
        .read_blocking(|c| lab_report(c, "lab-r", t(0), t(12), Duration::hours(1)))
        .unwrap()
        .expect("lab-r is known");
    let a = r.devices.iter().find(|a| a.name == "board-a").unwrap();
    // Offline 0:00-0:30 (an hour after -3:00 is before the period) and 7:00-8:30, and from
    // hour 11 as before.
    let m = |mins: i64| mins * 60;
    assert_eq!(
        (a.good_s, a.bad_s, a.maintenance_s, a.offline_s),
        (m(8 * 60 - 30 - 90), m(60), m(120), m(30 + 90 + 60))
    );
    assert_eq!(a.total_s(), m(12 * 60));
    let spans: Vec<_> = r.timelines["board-a"]
        .iter()
        .map(|s| (s.from, s.to, s.health))
        .collect();
    let half = |h: i64| from_micros(micros(t(h)) + H / 2);
    assert_eq!(
        spans,
        [
            (t(0), half(0), None),
            (half(0), t(2), Some(Health::Good)),
            (t(2), t(3), Some(Health::Bad)),
            (t(3), t(5), Some(Health::Maintenance)),
            (t(5), t(7), Some(Health::Good)),
            (t(7), half(8), None),
            (half(8), t(11), Some(Health::Good)),
            (t(11), t(12), None),
        ]
    );
}

#[test]
fn a_call_after_a_silence_records_it() {
    let clock = crate::clock::Clock::manual(t(0));
    let (_d, store) = crate::store::temp_store_with_clock(clock.clone());
    let lab = crate::model::LabName::new("lab-s");
    store
        .write_blocking(|w| w.register_lab_cert("lab-s", "ss", None))
        .unwrap();
    let gap = Duration::seconds(35);
    let touch = |l: crate::model::LabName| {
        store
            .write_blocking(move |w| w.touch_lab(&l, None, None, gap))
            .unwrap()
    };
    // The first call ends no silence; calls within 35 s of each other neither.
    touch(lab.clone());
    clock.advance(Duration::seconds(30));
    touch(lab.clone());
    clock.advance(Duration::minutes(10));
    touch(lab.clone());
    // A late batch of liveness for an older call records nothing.
    let l = lab.clone();
    store
        .write_blocking(move |w| w.touch_lab_at(&l, t(0), 1, gap))
        .unwrap();
    clock.advance(Duration::minutes(2));
    let (l, at) = (lab.clone(), clock.now());
    store
        .write_blocking(move |w| w.touch_lab_at(&l, at, 1, gap))
        .unwrap();
    let rows: Vec<(i64, i64)> = store
        .read_blocking(|c| {
            c.query_map(
                "SELECT started, ended FROM lab_silences WHERE lab = 'lab-s' ORDER BY id",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .unwrap();
    let s = |secs: i64| micros(t(0)) + secs * 1_000_000;
    assert_eq!(rows, [(s(30), s(630)), (s(630), s(750))]);
}
