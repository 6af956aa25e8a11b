//! Simulated agents: AgentService clients over mutual TLS, one lab (one certificate) each,
//! that speak the protocol like the real agent (register, heartbeat, long-poll for jobs,
//! start, report a result tree) without running anything.

use crate::rig::LabCert;
use anyhow::Context;
use labwire_proto::v1;
use labwire_proto::v1::agent_service_client::AgentServiceClient;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The device type every simulated device has.
pub const DEVICE_TYPE: &str = "bench-board";

/// `n` shell devices named `dev0`.. of type [`DEVICE_TYPE`].
pub fn devices(n: usize) -> Vec<v1::Device> {
    (0..n)
        .map(|i| v1::Device {
            name: format!("dev{i}"),
            device_type: DEVICE_TYPE.into(),
            driver: "shell".into(),
            health: v1::DeviceHealth::Good as i32,
            ..Default::default()
        })
        .collect()
}

/// A job spec that any simulated device can run.
pub fn job_spec(name: &str) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        criteria: Some(v1::Criteria {
            driver: "shell".into(),
            ..Default::default()
        }),
        timeout_seconds: 600,
        ..Default::default()
    }
}

/// A registered simulated agent.
#[derive(Clone)]
pub struct SimAgent {
    /// The lab.
    pub lab: String,
    /// The client (one connection).
    pub client: AgentServiceClient<Channel>,
    /// The session from Register.
    pub session: String,
    /// Device names.
    pub devices: Vec<String>,
    /// The heartbeat interval the coordinator asked for.
    pub heartbeat: Duration,
}

impl SimAgent {
    /// Connects with `cert` and registers `n_devices` free devices.
    pub async fn register(
        url: &str,
        ca_pem: &[u8],
        cert: &LabCert,
        n_devices: usize,
    ) -> anyhow::Result<SimAgent> {
        let mut client = crate::rig::agent_client(url, ca_pem, cert).await?;
        let devs = devices(n_devices);
        let r = client
            .register(v1::RegisterRequest {
                agent_version: "labwire-bench".into(),
                devices: devs.clone(),
                free_slots: n_devices as u32,
                held_jobs: vec![],
            })
            .await
            .with_context(|| format!("lab {}: Register failed", cert.lab))?
            .into_inner();
        Ok(SimAgent {
            lab: cert.lab.clone(),
            client,
            session: r.session,
            devices: devs.into_iter().map(|d| d.name).collect(),
            heartbeat: Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(100))),
        })
    }

    /// Long-polls for a job on all devices, waiting at most `wait`.
    pub async fn acquire(&mut self, wait: Duration) -> anyhow::Result<Option<v1::Assignment>> {
        let r = self
            .client
            .acquire_job(v1::AcquireJobRequest {
                session: self.session.clone(),
                free_devices: self.devices.clone(),
                wait_ms: wait.as_millis() as u32,
            })
            .await
            .with_context(|| format!("lab {}: AcquireJob failed", self.lab))?;
        Ok(r.into_inner().assignment)
    }

    /// Opens the session stream (its `hello` sent), as the real agent does after Register:
    /// the sender for further messages and what the coordinator sends.
    pub async fn open_stream(
        &self,
    ) -> anyhow::Result<(
        tokio::sync::mpsc::Sender<v1::AgentMessage>,
        tonic::Streaming<v1::CoordinatorMessage>,
    )> {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(v1::AgentMessage {
            kind: Some(v1::agent_message::Kind::Hello(v1::SessionHello {
                session: self.session.clone(),
            })),
        })
        .await
        .context("queueing the hello")?;
        let outbound =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let down = self
            .client
            .clone()
            .session(outbound)
            .await
            .with_context(|| format!("lab {}: Session failed", self.lab))?
            .into_inner();
        Ok((tx, down))
    }

    /// Tells the coordinator the job started on its device.
    pub async fn start(&mut self, a: &v1::Assignment) -> anyhow::Result<()> {
        self.client
            .start_job(v1::StartJobRequest {
                session: self.session.clone(),
                job: a.job,
                device: a.device.clone(),
            })
            .await
            .with_context(|| format!("lab {}: StartJob failed", self.lab))?;
        Ok(())
    }

    /// Starts the job and reports it passed with `tests` child tests.
    pub async fn finish(&mut self, a: &v1::Assignment, tests: usize) -> anyhow::Result<()> {
        let job = a.job;
        self.start(a).await?;
        let tests = (0..tests)
            .map(|i| v1::TestResult {
                name: format!("test_{i}"),
                result: v1::NodeResult::Pass as i32,
                ..Default::default()
            })
            .collect();
        self.client
            .report_result(v1::ReportResultRequest {
                job,
                result: v1::NodeResult::Pass as i32,
                tests,
                ..Default::default()
            })
            .await
            .with_context(|| format!("lab {}: ReportResult failed", self.lab))?;
        Ok(())
    }

    /// Sends one heartbeat (no job running).
    pub async fn heartbeat_once(&mut self) -> anyhow::Result<()> {
        self.client
            .heartbeat(v1::HeartbeatRequest {
                session: self.session.clone(),
                free_slots: self.devices.len() as u32,
                ..Default::default()
            })
            .await
            .with_context(|| format!("lab {}: Heartbeat failed", self.lab))?;
        Ok(())
    }

    /// Heartbeats every interval until `stop`, starting after a random part of the first
    /// interval (so that many agents spread out, as real ones started at different times
    /// do). Returns how many heartbeats failed.
    pub fn spawn_heartbeats(
        &self,
        stop: CancellationToken,
        phase: Duration,
    ) -> tokio::task::JoinHandle<u64> {
        let mut me = self.clone();
        tokio::spawn(async move {
            let mut failures = 0;
            tokio::select! {
                _ = tokio::time::sleep(phase) => {}
                _ = stop.cancelled() => return 0,
            }
            let mut tick = tokio::time::interval(me.heartbeat);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return failures,
                }
                if me.heartbeat_once().await.is_err() {
                    failures += 1;
                }
            }
        })
    }

    /// Heartbeats on the session stream (as the real agent does) every interval until
    /// `stop`, starting after `phase`; each heartbeat's answer is read from the stream.
    /// Returns how many heartbeats went unanswered (the stream failed or ended).
    pub fn spawn_stream_heartbeats(
        &self,
        stop: CancellationToken,
        phase: Duration,
    ) -> tokio::task::JoinHandle<u64> {
        use v1::{agent_message, coordinator_message};
        let me = self.clone();
        tokio::spawn(async move {
            let Ok((up, mut down)) = me.open_stream().await else {
                return 1;
            };
            tokio::select! {
                _ = tokio::time::sleep(phase) => {}
                _ = stop.cancelled() => return 0,
            }
            let mut tick = tokio::time::interval(me.heartbeat);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return 0,
                }
                let hb = v1::AgentMessage {
                    kind: Some(agent_message::Kind::Heartbeat(v1::HeartbeatRequest {
                        session: me.session.clone(),
                        free_slots: me.devices.len() as u32,
                        ..Default::default()
                    })),
                };
                if up.send(hb).await.is_err() {
                    return 1;
                }
                // Until its answer (a cancel would come first; none does here).
                loop {
                    match down.message().await {
                        Ok(Some(m)) => {
                            if let Some(coordinator_message::Kind::Heartbeat(_)) = m.kind {
                                break;
                            }
                        }
                        _ => return 1,
                    }
                }
            }
        })
    }

    /// Keeps an AcquireJob long poll open until `stop` (an idle agent waiting for work),
    /// re-issuing it when it runs out. Returns an error if a job arrives (none should).
    pub fn spawn_idle_poll(
        &self,
        stop: CancellationToken,
        wait: Duration,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let mut me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = me.acquire(wait) => {
                        if let Some(a) = r? {
                            anyhow::bail!("idle agent {} got job {:?}", me.lab, a.job);
                        }
                    }
                    _ = stop.cancelled() => return Ok(()),
                }
            }
        })
    }
}
