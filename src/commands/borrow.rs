//! `labwire reserve`, `labwire release`, `labwire reservations` (console scope): borrow a
//! board out of CI under a lease that ends by itself (docs/borrow.md).

use super::device::target;
use crate::client::Clients;
use crate::output::outln;
use anyhow::{Context, bail};
use labwire_proto::v1;

/// `labwire reserve` arguments.
#[derive(Debug, clap::Args)]
pub(super) struct ReserveArgs {
    /// LAB/DEVICE; with --criteria, nothing or a LAB to pick in.
    #[arg(required_unless_present = "criteria")]
    target: Option<String>,
    /// Any device in good health, not reserved, that meets these instead of a named one
    /// (repeatable): `device_type=`, `arch=`, `driver=`, `tag=`, `feature=`, or any other
    /// device-type property as KEY=VALUE.
    #[arg(long = "criteria", value_name = "KEY=VALUE", conflicts_with = "extend")]
    criteria: Vec<String>,
    /// How long the lease lasts from now (`30m`, `2h`, `1d`; at most 7 days).
    #[arg(long = "for", value_name = "DURATION")]
    duration: String,
    /// Why (shown with the device and in its events).
    #[arg(long, default_value = "")]
    reason: String,
    /// Cancel the job running on the device now (else the device leaves the pool when that
    /// job ends).
    #[arg(long, conflicts_with = "extend")]
    now: bool,
    /// Extend your reservation instead: it ends `--for` from now.
    #[arg(long)]
    extend: bool,
}

/// The seconds of a humane duration, within what the coordinator takes.
fn seconds(d: &str) -> anyhow::Result<u32> {
    let d = humantime::parse_duration(d)
        .with_context(|| format!("--for `{d}`: expected a duration such as 30m, 2h or 1d"))?;
    let s = d.as_secs();
    if s == 0 || s > 7 * 24 * 3600 {
        bail!("--for: expected 1s to 7d");
    }
    Ok(s as u32)
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map_or("-".into(), |t| {
            t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
        })
}

/// A reservation as one JSON object.
fn json(r: &v1::Reservation) -> serde_json::Value {
    serde_json::json!({
        "lab": r.lab,
        "device": r.device,
        "owner": r.owner,
        "reason": r.reason,
        "created": time(&r.created),
        "expires": time(&r.expires),
        "job_running": r.job_running,
    })
}

/// `--criteria KEY=VALUE...` as criteria.
fn criteria(pairs: &[String]) -> anyhow::Result<v1::Criteria> {
    let mut c = v1::Criteria::default();
    for p in pairs {
        let Some((k, v)) = p
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        else {
            bail!("--criteria `{p}`: expected KEY=VALUE");
        };
        let v = v.to_string();
        match k {
            "device_type" => c.device_type = v,
            "arch" => c.arch = v,
            "driver" => c.driver = v,
            "tag" => c.tags.push(v),
            "feature" => c.features.push(v),
            _ => {
                c.properties.insert(k.to_string(), v);
            }
        }
    }
    Ok(c)
}

/// `labwire reserve LAB/DEVICE|--criteria .. --for 2h [--reason ..] [--now] [--extend]`.
pub(super) async fn reserve(c: &mut Clients, a: ReserveArgs, as_json: bool) -> anyhow::Result<()> {
    let (lab, device, crit) = if a.criteria.is_empty() {
        let t = a.target.as_deref().context("LAB/DEVICE or --criteria")?;
        let (lab, device) = target(t)?;
        (lab, device, None)
    } else {
        let lab = a.target.clone().unwrap_or_default();
        if lab.contains('/') {
            bail!("with --criteria, give no device: `{lab}` (a LAB alone picks in that lab)");
        }
        (lab, String::new(), Some(criteria(&a.criteria)?))
    };
    let r = c
        .borrow
        .reserve(v1::ReserveRequest {
            lab,
            device,
            seconds: seconds(&a.duration)?,
            reason: a.reason,
            now: a.now,
            extend: a.extend,
            criteria: crit,
        })
        .await?
        .into_inner();
    let res = r
        .reservation
        .context("the coordinator sent no reservation")?;
    if as_json {
        let mut v = json(&res);
        v["cancelled_jobs"] = r.cancelled_jobs.clone().into();
        outln!("{v}")?;
        return Ok(());
    }
    let verb = if a.extend { "extended" } else { "reserved" };
    outln!(
        "{}/{} {verb} for {} until {}",
        res.lab,
        res.device,
        res.owner,
        time(&res.expires)
    )?;
    for j in r.cancelled_jobs {
        outln!("cancelled job {j}")?;
    }
    if res.job_running {
        outln!("a job still runs on it; the device leaves the pool when that job ends")?;
    }
    Ok(())
}

/// `labwire release LAB/DEVICE`.
pub(super) async fn release(c: &mut Clients, t: String, as_json: bool) -> anyhow::Result<()> {
    let (lab, device) = target(&t)?;
    let r = c
        .borrow
        .release(v1::ReleaseRequest { lab, device })
        .await?
        .into_inner();
    let res = r
        .reservation
        .context("the coordinator sent no reservation")?;
    if as_json {
        outln!("{}", json(&res))?;
    } else {
        outln!(
            "{}/{} released; its agent powers it off and it is back in the pool",
            res.lab,
            res.device
        )?;
    }
    Ok(())
}

/// `labwire reservations [LAB]`: the live reservations.
pub(super) async fn list(
    c: &mut Clients,
    lab: Option<String>,
    as_json: bool,
) -> anyhow::Result<()> {
    let r = c
        .borrow
        .list_reservations(v1::ListReservationsRequest {
            lab: lab.unwrap_or_default(),
        })
        .await?
        .into_inner();
    if !as_json {
        outln!(
            "{:<32} {:<16} {:<24} {:<4} REASON",
            "DEVICE",
            "OWNER",
            "UNTIL",
            "JOB"
        )?;
    }
    for res in &r.reservations {
        if as_json {
            outln!("{}", json(res))?;
        } else {
            outln!(
                "{:<32} {:<16} {:<24} {:<4} {}",
                format!("{}/{}", res.lab, res.device),
                res.owner,
                time(&res.expires),
                if res.job_running { "yes" } else { "-" },
                res.reason
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_durations_are_humane_and_bounded() {
        assert_eq!(seconds("2h").expect("2h"), 7200);
        assert_eq!(seconds("90s").expect("90s"), 90);
        assert!(seconds("0s").is_err());
        assert!(seconds("8d").is_err());
        assert!(seconds("soon").is_err());
    }

    #[test]
    fn criteria_pairs_become_criteria() {
        let c = criteria(&[
            "device_type=qemu-x86_64".into(),
            "tag=borrow".into(),
            "tag=x86".into(),
            "mach=pc".into(),
        ])
        .expect("criteria");
        assert_eq!(c.device_type, "qemu-x86_64");
        assert_eq!(c.tags, ["borrow", "x86"]);
        assert_eq!(c.properties.get("mach").map(String::as_str), Some("pc"));
        assert!(criteria(&["tag".into()]).is_err());
        assert!(criteria(&["=x".into()]).is_err());
    }
}
