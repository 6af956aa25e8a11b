//! `labwire report lab LAB --since 7d [--format markdown|json]` (admin): each device's time
//! good, bad, in maintenance, retired and offline over the period, jobs run, the
//! infrastructure-failure rate and the mean boot time; the same per device type; the worst
//! first (the coordinator's `AdminService.LabReport` does the sums).

use crate::client::Clients;
use crate::output::outln;
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use labwire_proto::v1;

/// The lab report's output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LabFormat {
    /// Markdown tables.
    Markdown,
    /// One JSON document.
    Json,
}

/// `labwire report lab` arguments.
#[derive(Debug, Args)]
pub(crate) struct LabReportArgs {
    /// The lab.
    lab: String,
    /// The period up to now: `7d`, `24h`, `30m` (at most 366 days).
    #[arg(long, default_value = "7d")]
    since: String,
    /// markdown or json.
    #[arg(long, value_enum, default_value = "markdown")]
    format: LabFormat,
}

fn pct(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn total(a: &v1::DeviceAvailability) -> i64 {
    a.good_seconds + a.bad_seconds + a.maintenance_seconds + a.retired_seconds + a.offline_seconds
}

fn json(a: &v1::DeviceAvailability) -> serde_json::Value {
    let t = total(a);
    serde_json::json!({
        "name": a.name,
        "device_type": a.device_type,
        "seconds": {
            "good": a.good_seconds, "bad": a.bad_seconds,
            "maintenance": a.maintenance_seconds, "retired": a.retired_seconds,
            "offline": a.offline_seconds,
        },
        "availability": pct(a.good_seconds, t) / 100.0,
        "jobs": a.jobs,
        "infra_failures": a.infra_failures,
        "infra_failure_rate": pct(a.infra_failures, a.jobs) / 100.0,
        "boot_ms_mean": (a.boot_samples > 0).then_some(a.boot_ms_mean),
        "boot_samples": a.boot_samples,
    })
}

fn table(title: &str, first: &str, rows: &[v1::DeviceAvailability]) -> anyhow::Result<()> {
    outln!("\n## {title}\n")?;
    outln!(
        "| {first} | type | available | bad | maintenance | retired | offline | jobs | infra failures | mean boot |"
    )?;
    outln!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for a in rows {
        let t = total(a);
        let boot = if a.boot_samples > 0 {
            format!("{:.1} s", a.boot_ms_mean / 1000.0)
        } else {
            "-".into()
        };
        outln!(
            "| {} | {} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {} | {} ({:.1} %) | {} |",
            a.name.replace('|', "\\|"),
            a.device_type.replace('|', "\\|"),
            pct(a.good_seconds, t),
            pct(a.bad_seconds, t),
            pct(a.maintenance_seconds, t),
            pct(a.retired_seconds, t),
            pct(a.offline_seconds, t),
            a.jobs,
            a.infra_failures,
            pct(a.infra_failures, a.jobs),
            boot
        )?;
    }
    Ok(())
}

/// Runs `labwire report lab`.
/// `labwire report lab`; the global `--json` means `--format json`.
pub(super) async fn lab_report(
    c: &mut Clients,
    mut a: LabReportArgs,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        a.format = LabFormat::Json;
    }
    let since = humantime::parse_duration(&a.since)
        .with_context(|| format!("--since `{}`: expected an age such as 7d or 12h", a.since))?;
    let since_seconds = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    if since_seconds < 1 {
        bail!("--since `{}`: at least one second", a.since);
    }
    let r = c
        .admin
        .lab_report(v1::LabReportRequest {
            lab: a.lab.clone(),
            since_seconds,
        })
        .await?
        .into_inner();
    let time = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    match a.format {
        LabFormat::Json => outln!(
            "{}",
            serde_json::json!({
                "lab": r.lab,
                "from": time(&r.from),
                "to": time(&r.to),
                "last_seen": time(&r.last_seen),
                "devices": r.devices.iter().map(json).collect::<Vec<_>>(),
                "device_types": r.device_types.iter().map(json).collect::<Vec<_>>(),
            })
        )?,
        LabFormat::Markdown => {
            outln!("# Lab {}", r.lab)?;
            outln!(
                "\n{} to {}; last seen {}. The worst first.",
                time(&r.from).unwrap_or_default(),
                time(&r.to).unwrap_or_default(),
                time(&r.last_seen).unwrap_or_else(|| "never".into())
            )?;
            table("Devices", "device", &r.devices)?;
            table("Device types", "device type", &r.device_types)?;
        }
    }
    Ok(())
}
