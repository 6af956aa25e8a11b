//! The dispatcher's unit tests: placement limits, preferences, run groups and what other
//! replicas change, on a real store (SQLite, or PostgreSQL with LABWIRE_TEST_STORE).

use super::*;
use crate::model::AttemptNo;
use crate::pipeline_config::{Variant, VariantMode};
use crate::store::jobs::JobStats;
use crate::store::{NewJob, RunGroup, temp_store};
use labwire_common::{Health, NodeResult};
use labwire_proto::v1;

fn lab(name: &str) -> LabName {
    LabName::new(name)
}

fn device(name: &str, dt: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        device_type: dt.into(),
        driver: "shell".into(),
        health: Health::Good,
        ..Default::default()
    }
}

fn job(name: &str, group: Option<RunGroup>) -> NewJob {
    NewJob {
        spec: v1::JobSpec {
            name: name.into(),
            ..Default::default()
        },
        group,
        ..Default::default()
    }
}

async fn setup(placement: &str) -> (crate::store::TestStore, Store, Dispatcher) {
    let (dir, store) = temp_store();
    for name in ["lab-a", "lab-b"] {
        let l = name.to_string();
        store
            .write_blocking(move |w| {
                w.touch_lab(&lab(&l), None, None, chrono::Duration::seconds(35))
            })
            .unwrap();
    }
    let d = Dispatcher::load(
        store.clone(),
        Duration::from_secs(60),
        // Labs count as connected for three heartbeats (0.6 s): long enough for a loaded
        // machine's store calls (PostgreSQL included), short for the strict-variant wait.
        Duration::from_millis(200),
        Placement::parse(placement).unwrap(),
    )
    .await
    .unwrap();
    (dir, store, d)
}

async fn submit(store: &Store, d: &Dispatcher, j: NewJob) -> NodeId {
    let (node, row) = store.write(move |w| w.submit_job(j)).await.unwrap();
    d.enqueue(&row).await;
    node.id
}

async fn poll(d: &Dispatcher, name: &str, devs: &[DeviceInfo]) -> Option<Assignment> {
    d.acquire(
        &lab(name),
        &SessionId::new("s"),
        devs.to_vec(),
        Duration::ZERO,
    )
    .await
    .unwrap()
}

/// Labs connected to another replica come from the store's `labs` rows; another
/// replica's job and lease changes come through `sync`.
#[tokio::test]
async fn other_replicas_labs_and_jobs_are_seen() {
    let (_d, store, d) = setup("").await;
    let json = serde_json::to_value(vec![device("c1", "x")]).unwrap();
    store
        .write(move |w| {
            w.register_lab_cert("lab-c", "fp-c", None)?;
            w.touch_lab(
                &lab("lab-c"),
                Some(&json),
                Some(1),
                chrono::Duration::seconds(35),
            )
        })
        .await
        .unwrap();
    let rows = store.read(crate::store::labs::adverts).await.unwrap();
    d.refresh_remote_labs(&rows).await;
    let id = submit(&store, &d, job("one", None)).await;
    let row = store
        .read(move |c| crate::store::jobs::find_job(c, id))
        .await
        .unwrap()
        .unwrap();
    let v = d.explain(&row, &["lab-c".into()]).await;
    assert!(v[0].eligible, "{v:?}");
    // Another replica leases it: this one counts the lease and no longer offers the job.
    let until = chrono::Utc::now() + chrono::Duration::seconds(60);
    let leased = store
        .write(move |w| {
            w.claim_job(
                id,
                &LeaseTerms {
                    lab: &lab("lab-c"),
                    session: &SessionId::new("s"),
                    device: "c1",
                    device_type: "x",
                    until,
                },
            )
        })
        .await
        .unwrap()
        .unwrap();
    d.sync(&leased.job).await;
    assert_eq!(d.queue_len().await, 0);
    // A stale read from before the lease changes nothing.
    d.sync(&row).await;
    assert_eq!(d.queue_len().await, 0);
    // It goes back to the queue there: here it is offered again.
    let again = store
        .write(move |w| w.release_job(&lab("lab-c"), id, AttemptNo(1), "test"))
        .await
        .unwrap();
    d.sync(&again).await;
    assert_eq!(d.queue_len().await, 1);
    assert_eq!(
        poll(&d, "lab-c", &[device("c1", "x")])
            .await
            .unwrap()
            .claim
            .job
            .id,
        id
    );
}

#[tokio::test]
async fn max_in_flight_limits_a_lab() {
    let (_d, store, d) = setup("labs:\n  lab-a: {max_in_flight: 1}\n").await;
    let devs = [device("a1", "x"), device("a2", "x")];
    d.update_lab(&lab("lab-a"), Some(devs.to_vec()), 2, false)
        .await;
    let j1 = submit(&store, &d, job("one", None)).await;
    let j2 = submit(&store, &d, job("two", None)).await;
    assert_eq!(poll(&d, "lab-a", &devs).await.unwrap().claim.job.id, j1);
    assert!(
        poll(&d, "lab-a", &devs[1..]).await.is_none(),
        "limit of 1 in flight"
    );
    let row = store
        .read(move |c| crate::store::jobs::find_job(c, j2))
        .await
        .unwrap()
        .unwrap();
    let v = d.explain(&row, &["lab-a".into()]).await;
    assert!(
        v[0].reasons.iter().any(|r| r.contains("max_in_flight")),
        "{v:?}"
    );
    d.forget(j1).await;
    assert_eq!(
        poll(&d, "lab-a", &devs[1..]).await.unwrap().claim.job.id,
        j2
    );
}

#[tokio::test]
async fn a_preferred_busy_lab_waits_for_its_job_unless_its_runs_are_too_long() {
    let pl = "preferences:\n  - rules: {job: ['pref*']}\n    labs: {lab-a: 300}\n";
    let (_d, store, d) = setup(pl).await;
    let a = [device("a1", "x")];
    let b = [device("b1", "x")];
    d.update_lab(&lab("lab-a"), Some(a.to_vec()), 1, false)
        .await;
    d.update_lab(&lab("lab-b"), Some(b.to_vec()), 1, false)
        .await;
    // lab-a's only device is busy with a first job.
    submit(&store, &d, job("pref-1", None)).await;
    assert!(poll(&d, "lab-a", &a).await.is_some());
    // lab-b could start pref-2 now, but lab-a is expected within half a default run
    // (150 s), less than its 300 s bonus: the job waits for lab-a.
    let j2 = submit(&store, &d, job("pref-2", None)).await;
    assert!(poll(&d, "lab-b", &b).await.is_none(), "lab-a is preferred");
    let row = store
        .read(move |c| crate::store::jobs::find_job(c, j2))
        .await
        .unwrap()
        .unwrap();
    let v = d.explain(&row, &["lab-a".into(), "lab-b".into()]).await;
    assert!(v[0].score.unwrap() < v[1].score.unwrap(), "{v:?}");
    // Once statistics say pref-2 runs 20 minutes in lab-a, lab-b is sooner.
    store
        .write_blocking(|w| {
            w.set_job_stats(
                "pref-2",
                "lab-a",
                &JobStats {
                    runs: 5,
                    wait_ms: 0.0,
                    run_ms: 1_200_000.0,
                },
            )
        })
        .unwrap();
    d.refresh_stats().await.unwrap();
    assert_eq!(poll(&d, "lab-b", &b).await.unwrap().claim.job.id, j2);
}

#[tokio::test]
async fn runs_avoid_earlier_device_types_strict_fails_permissive_reuses() {
    let (_d, store, d) = setup("").await;
    let devs = [device("x1", "type-x"), device("y1", "type-y")];
    d.update_lab(&lab("lab-a"), Some(devs.to_vec()), 2, false)
        .await;
    let group = |id: &str, mode| {
        Some(RunGroup {
            id: id.into(),
            variant: Variant::DeviceType,
            mode,
        })
    };
    let s1 = submit(&store, &d, job("s", group("g1", VariantMode::Strict))).await;
    let s2 = submit(&store, &d, job("s", group("g1", VariantMode::Strict))).await;
    let s3 = submit(&store, &d, job("s", group("g1", VariantMode::Strict))).await;
    let a1 = poll(&d, "lab-a", &devs).await.unwrap();
    assert_eq!(a1.claim.job.id, s1);
    let a2 = poll(&d, "lab-a", &devs).await.unwrap();
    assert_eq!(a2.claim.job.id, s2);
    assert_ne!(
        a1.device, a2.device,
        "the second run avoids the first's device type"
    );
    // The spec sent to the agent carries the exclusion.
    let sent = a2.claim.job.spec.criteria.unwrap();
    assert_eq!(
        sent.avoid_device_types,
        vec![if a1.device == "x1" {
            "type-x"
        } else {
            "type-y"
        }]
    );
    // Nothing is left for the third run: strict mode fails it (after the settling time).
    tokio::time::sleep(Duration::from_millis(700)).await;
    d.update_lab(&lab("lab-a"), Some(devs.to_vec()), 2, false)
        .await;
    assert!(poll(&d, "lab-a", &devs).await.is_none());
    let n3 = store
        .read(move |c| crate::store::nodes::get_node(c, s3))
        .await
        .unwrap();
    assert_eq!(n3.result, Some(NodeResult::Incomplete));
    assert_eq!(n3.data["error_code"], "no_variant");

    let p1 = submit(&store, &d, job("p", group("g2", VariantMode::Permissive))).await;
    let p2 = submit(&store, &d, job("p", group("g2", VariantMode::Permissive))).await;
    // Now the lab has one device type only.
    let only = [device("x1", "type-x")];
    d.update_lab(&lab("lab-a"), Some(only.to_vec()), 2, false)
        .await;
    d.forget(s1).await;
    d.forget(s2).await;
    assert_eq!(poll(&d, "lab-a", &only).await.unwrap().claim.job.id, p1);
    let again = poll(&d, "lab-a", &only).await.unwrap();
    assert_eq!(
        again.claim.job.id, p2,
        "permissive mode reuses the device type"
    );
}

/// Every change made through the JobQueue reaches the dispatcher: a submitted job is offered,
/// a cancelled one is not, and a revoked lab's job goes to another lab at once.
#[tokio::test]
async fn changes_through_the_job_queue_reach_the_dispatcher() {
    let (_d, store, d) = setup("").await;
    store
        .write(|w| {
            w.register_lab_cert("lab-a", "fp-a", None)?;
            w.register_lab_cert("lab-b", "fp-b", None)
        })
        .await
        .unwrap();
    let d = Arc::new(d);
    let q = JobQueue::new(store.clone(), d.clone());
    let (gone, _) = q.submit(job("gone", None)).await.unwrap();
    assert_eq!(d.queue_len().await, 1);
    q.cancel(gone.id, "not wanted".into()).await.unwrap();
    assert_eq!(d.queue_len().await, 0, "a cancelled job is not offered");

    let (moved, _) = q.submit(job("moved", None)).await.unwrap();
    let a = [device("a1", "x")];
    let b = [device("b1", "x")];
    d.update_lab(&lab("lab-a"), Some(a.to_vec()), 1, false)
        .await;
    d.update_lab(&lab("lab-b"), Some(b.to_vec()), 1, false)
        .await;
    assert_eq!(poll(&d, "lab-a", &a).await.unwrap().claim.job.id, moved.id);
    let (certs, requeued) = q.revoke(lab("lab-a")).await.unwrap();
    assert_eq!((certs, requeued.len()), (1, 1));
    assert_eq!(
        poll(&d, "lab-b", &b).await.unwrap().claim.job.id,
        moved.id,
        "the revoked lab's job is offered again at once"
    );
}
