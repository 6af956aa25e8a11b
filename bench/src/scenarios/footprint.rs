//! Agent footprint: a real agent process (`labwire-bench agent run`, the same entry point as
//! `labwire-agent run`) with many shell devices, connected to a coordinator and idle: its RSS
//! and CPU once it has registered.

use crate::Opts;
use crate::procstat::ProcStat;
use crate::report::{Figure, Goal};
use crate::rig::{Rig, wait_until};
use anyhow::Context;
use labwire_proto::v1;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the scenario.
pub async fn run(o: &Opts) -> anyhow::Result<Vec<Figure>> {
    let hb = humantime::format_duration(o.heartbeat);
    let lease = humantime::format_duration(o.heartbeat * 4);
    let mut rig = Rig::new(
        &o.store,
        &format!("leases: {{duration: {lease}, heartbeat: {hb}}}\n"),
    )?;
    let cert = rig.issue_labs("footprint-", 1)?.remove(0);
    let bundle = rig.write_bundle(&cert)?;
    rig.start()?;
    let mut yaml = format!(
        "lab: {}\ncoordinator:\n  url: {}\n  ca: {b}/ca.pem\n  cert: {b}/agent.pem\n  key: {b}/agent.key\nstate_dir: {b}/state\ndevices:\n",
        cert.lab,
        rig.url(),
        b = bundle.display()
    );
    for i in 0..o.devices {
        yaml.push_str(&format!(
            "  - name: board-{i}\n    device_type: lab-host\n    tags: [rack-{}]\n    driver:\n      type: shell\n      command: [\"/bin/true\"]\n",
            i % 10
        ));
    }
    let cfg = bundle.join("agent.yaml");
    std::fs::write(&cfg, yaml)?;
    let log = std::fs::File::create(rig.path("agent.log"))?;
    let mut child = Command::new(crate::self_exe()?)
        .args(["agent", "run", "--config"])
        .arg(&cfg)
        .env("LABWIRE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start the agent")?;
    let pid = child.id();
    let result = async {
        let mut c = rig.client().await?;
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let labs = c
                .admin
                .list_labs(v1::ListLabsRequest {})
                .await?
                .into_inner()
                .labs;
            if labs
                .iter()
                .any(|l| l.name == cert.lab && l.connected && l.devices.len() == o.devices)
            {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                anyhow::bail!(
                    "the agent exited ({st}); see {}",
                    rig.path("agent.log").display()
                );
            }
            anyhow::ensure!(
                Instant::now() < end,
                "the agent did not register its {} devices",
                o.devices
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let start-up work settle, then measure over the window.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let a = ProcStat::read(pid)?;
        tokio::time::sleep(o.footprint_window).await;
        let b = ProcStat::read(pid)?;
        anyhow::Ok((a, b))
    }
    .await;
    // SAFETY: kill(2) on our own child's pid, not yet reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = wait_until(Duration::from_secs(10), "the agent to exit", || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    let _ = child.kill();
    let _ = child.wait();
    let (a, b) = result?;
    let mib = |x: u64| x as f64 / 1048576.0;
    let window = format!(
        "idle agent, {} shell devices, connected, heartbeat {hb}, measured over {:.0}s",
        o.devices,
        b.at.duration_since(a.at).as_secs_f64()
    );
    Ok(vec![
        Figure::new(
            "footprint",
            "agent RSS",
            mib(b.rss),
            "MiB",
            Some(Goal::Below(20.0)),
        )
        .note(format!("{window}; peak RSS {:.1} MiB", mib(b.peak_rss))),
        Figure::new(
            "footprint",
            "agent CPU",
            b.cpu_since(&a) * 100.0,
            "% of a core",
            None,
        )
        .note(format!(
            "{window}; CPU time is counted in clock ticks of {:.0} ms",
            1000.0 / crate::procstat::clock_ticks()
        )),
    ])
}
