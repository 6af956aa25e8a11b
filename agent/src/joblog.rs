//! A job's log: every byte the device prints, kept whole in the job folder (`console.log`)
//! and sent to the coordinator through the outbox in chunks that carry their byte offset.
//! The device's configured secrets are masked before anything is kept or sent
//! ([`crate::secrets::Masker`]); the parser reads the output as the device printed it.
//!
//! Streaming is decided here, once for every driver: a chunk goes to the outbox when it
//! reaches [`CHUNK`] bytes or when its first byte is [`FLUSH_AFTER`] old, whichever comes
//! first. A small task (one per log, while a tokio runtime runs) hands over what waits when
//! the device falls quiet, so the coordinator sees the log within a second while the job
//! runs, and an agent killed mid-job has all but the last moment of the log in the outbox
//! (the rest is in `console.log`, which [`resend_after_restart`] sends).

use crate::outbox::{Item, Outbox};
use crate::secrets::{MASK, Masker, Secret};
use labwire_parsers::{LogParser, ParseReport};
use labwire_proto::v1;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Chunks sent to the coordinator are at most this big.
pub const CHUNK: usize = 64 * 1024;

/// Bytes wait at most this long before they go to the outbox.
pub const FLUSH_AFTER: Duration = Duration::from_millis(500);

/// What is queued for the outbox, shared with the flusher task.
struct Pending {
    /// None for a log kept on the agent only (a health check's).
    outbox: Option<Arc<Outbox>>,
    job: i64,
    attempt: i32,
    /// Bytes already handed to the outbox.
    sent: u64,
    /// Bytes not yet handed to the outbox.
    data: Vec<u8>,
    /// When the first byte of `data` arrived.
    since: Option<Instant>,
}

impl Pending {
    /// Queues `data`, handing full chunks and old bytes to the outbox.
    fn add(&mut self, data: &[u8]) {
        if self.data.is_empty() {
            self.since = Some(Instant::now());
        }
        self.data.extend_from_slice(data);
        while self.data.len() >= CHUNK {
            let rest = self.data.split_off(CHUNK);
            let chunk = std::mem::replace(&mut self.data, rest);
            self.send(chunk);
        }
        if self.since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.data.is_empty() {
            let chunk = std::mem::take(&mut self.data);
            self.send(chunk);
        }
        self.since = None;
    }

    fn send(&mut self, data: Vec<u8>) {
        let len = data.len() as u64;
        let Some(outbox) = &self.outbox else {
            self.sent += len;
            self.since = None;
            return;
        };
        let item = Item::Log(v1::AppendLogRequest {
            job: Some(v1::JobRef {
                job: self.job,
                attempt: self.attempt,
            }),
            offset: self.sent,
            data,
        });
        match outbox.push(self.job, self.attempt, item) {
            Ok(()) => self.sent += len,
            Err(e) => tracing::error!(job = self.job, error = %e, "cannot queue a log chunk"),
        }
        if self.data.is_empty() {
            self.since = None;
        } else {
            self.since = Some(Instant::now());
        }
    }
}

fn lock(p: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands over bytes that waited [`FLUSH_AFTER`] while the device was quiet; ends with the log.
fn spawn_flusher(pending: Weak<Mutex<Pending>>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_AFTER / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(p) = pending.upgrade() else { return };
            let mut p = lock(&p);
            if p.since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER) {
                p.flush();
            }
        }
    });
}

/// The log of one job attempt.
pub struct JobLog {
    file: std::fs::File,
    job: i64,
    /// What waits for the outbox (shared with the flusher task).
    pending: Arc<Mutex<Pending>>,
    /// The parser that reads the device's output as it arrives, if the job wants one.
    parser: Option<LogParser>,
    /// Masks the device's secrets in what is kept and sent.
    masker: Masker,
    /// Every secret of the device, whatever its length (for [`JobLog::redact_args`]).
    secrets: Vec<Secret>,
}

impl JobLog {
    /// Creates `console.log` in `dir`.
    pub fn create(
        dir: &Path,
        outbox: Arc<Outbox>,
        job: i64,
        attempt: i32,
        parser: Option<LogParser>,
    ) -> std::io::Result<Self> {
        Self::open(dir, Some(outbox), job, attempt, parser)
    }

    /// Creates `console.log` in `dir` for a log kept on the agent only (a health check's).
    pub fn local(dir: &Path, parser: Option<LogParser>) -> std::io::Result<Self> {
        Self::open(dir, None, 0, 0, parser)
    }

    fn open(
        dir: &Path,
        outbox: Option<Arc<Outbox>>,
        job: i64,
        attempt: i32,
        parser: Option<LogParser>,
    ) -> std::io::Result<Self> {
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(crate::state::FILE_MODE)
                .open(dir.join("console.log"))?
        };
        let pending = Arc::new(Mutex::new(Pending {
            outbox,
            job,
            attempt,
            sent: 0,
            data: Vec::new(),
            since: None,
        }));
        spawn_flusher(Arc::downgrade(&pending));
        Ok(JobLog {
            file,
            job,
            pending,
            parser,
            masker: Masker::default(),
            secrets: Vec::new(),
        })
    }

    /// Masks these secrets in the log: everywhere for those of at least
    /// [`crate::secrets::MIN_MASKED_LEN`] bytes, where the agent knows them for the others
    /// ([`JobLog::arm_once`], [`JobLog::redact_args`]).
    pub fn with_secrets(mut self, secrets: &[Secret]) -> Self {
        self.masker = Masker::new(secrets);
        self.secrets = secrets
            .iter()
            .filter(|s| !s.0.is_empty())
            .cloned()
            .collect();
        self
    }

    /// Masks the next occurrence of `secret` (a password about to be typed, whose echo may
    /// come back), whatever its length, until [`JobLog::disarm`].
    pub fn arm_once(&mut self, secret: &str) {
        self.masker.arm_once(secret);
    }

    /// Forgets what [`JobLog::arm_once`] armed and did not occur.
    pub fn disarm(&mut self) {
        self.masker.disarm();
    }

    /// An argument list for the log: an argument that is a secret, or holds one of the
    /// masked length, is shown as `[MASKED]`.
    pub fn redact_args(&self, argv: &[String]) -> Vec<String> {
        argv.iter()
            .map(|a| {
                let secret = self.secrets.iter().any(|s| {
                    *a == s.0 || (s.0.len() >= crate::secrets::MIN_MASKED_LEN && a.contains(&s.0))
                });
                if secret {
                    String::from_utf8_lossy(MASK).into_owned()
                } else {
                    a.clone()
                }
            })
            .collect()
    }

    /// Appends what the device printed: it is kept (masked), sent (masked) and parsed.
    pub fn write(&mut self, data: &[u8]) {
        if let Some(p) = &mut self.parser {
            p.feed(data);
        }
        let masked = self.masker.push(data);
        self.append(&masked);
    }

    /// Appends bytes that are kept and sent (masked), but not parsed (output that a back end
    /// has already parsed itself, such as a LAVA job's log).
    pub fn write_unparsed(&mut self, data: &[u8]) {
        let masked = self.masker.push(data);
        self.append(&masked);
    }

    /// Appends bytes as they are to the file and the pending chunk.
    fn append(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if let Err(e) = self.file.write_all(data) {
            tracing::warn!(job = self.job, error = %e, "cannot write the job's console.log");
        }
        lock(&self.pending).add(data);
    }

    /// Appends a line written by labwire itself (not by the device), marked as such, masked
    /// and not parsed. Device bytes the masker held back are written first: the note comes
    /// between them and whatever the device prints next.
    pub fn note(&mut self, line: &str) {
        let held = self.masker.release();
        self.append(&held);
        let line = self.masker.mask_text(line);
        self.append(format!("[labwire] {line}\n").as_bytes());
    }

    /// Ends parsing and returns the parser's report, if the job had a parser.
    pub fn finish_parse(&mut self) -> Option<ParseReport> {
        self.parser.take().map(LogParser::finish)
    }

    /// Ends the log: bytes held back by the masker are written, everything is handed to the
    /// outbox. Call once the job's output is complete, before [`JobLog::len`].
    pub fn finish(&mut self) {
        let held = self.masker.release();
        self.append(&held);
        self.flush();
    }

    /// Hands whatever is pending to the outbox now (the log also streams by itself: see the
    /// module's text). Bytes that may start a secret stay held back until the output tells.
    pub fn flush(&mut self) {
        lock(&self.pending).flush();
    }

    /// Total bytes written so far (not counting bytes the masker holds back).
    pub fn len(&self) -> u64 {
        let p = lock(&self.pending);
        p.sent + p.data.len() as u64
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// After an agent restart, sends an interrupted attempt's whole `console.log` again (the
/// coordinator keeps each byte offset once, so what it already has is not doubled) and
/// appends `note` to it; returns the log's length. The outbox had all but the last
/// [`FLUSH_AFTER`] of the log; the file has every byte (written before it is queued).
pub fn resend_after_restart(
    dir: &Path,
    outbox: &Outbox,
    job: i64,
    attempt: i32,
    note: &str,
) -> std::io::Result<u64> {
    let path = dir.join("console.log");
    if path.exists() {
        let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
        f.write_all(format!("[labwire] {note}\n").as_bytes())?;
    } else {
        return Ok(0);
    }
    let mut f = std::fs::File::open(&path)?;
    let mut offset = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut n = 0;
        while n < CHUNK {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            return Ok(offset);
        }
        let item = Item::Log(v1::AppendLogRequest {
            job: Some(v1::JobRef { job, attempt }),
            offset,
            data: buf[..n].to_vec(),
        });
        outbox
            .push(job, attempt, item)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        offset += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the outbox holds of a job's log, in order.
    fn sent(outbox: &Outbox) -> Vec<u8> {
        let mut out = Vec::new();
        let mut base = None;
        while let Some((id, item)) = outbox.peek().unwrap() {
            if let Item::Log(l) = &item {
                let base = *base.get_or_insert(l.offset as usize);
                assert_eq!(l.offset as usize, base + out.len());
                out.extend_from_slice(&l.data);
            }
            outbox.ack(id, &item).unwrap();
        }
        out
    }

    #[test]
    fn secrets_are_masked_in_the_file_and_in_what_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open(dir.path()).unwrap());
        let secrets = [Secret("lava-token-0123456789".into()), Secret("pw".into())];
        let mut log = JobLog::create(dir.path(), outbox.clone(), 1, 1, None)
            .unwrap()
            .with_secrets(&secrets);
        log.write(b"Authorization: Token lava-tok");
        log.flush();
        log.write(b"en-0123456789\n");
        log.note("pdu on pw");
        log.arm_once("pw");
        log.write(b"Password: p");
        log.write(b"w\r\nroot@board:~# echo pw\n");
        log.disarm();
        log.write_unparsed(b"tail lava-token-0123");
        log.finish();
        let want = "Authorization: Token [MASKED]\n[labwire] pdu on pw\nPassword: [MASKED]\r\nroot@board:~# echo pw\ntail lava-token-0123";
        let file = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
        assert_eq!(file, want);
        assert_eq!(String::from_utf8(sent(&outbox)).unwrap(), want);
        assert_eq!(log.len() as usize, want.len());
        assert_eq!(
            log.redact_args(&["pdu".into(), "pw".into(), "x-lava-token-0123456789".into()]),
            ["pdu", "[MASKED]", "[MASKED]"]
        );
    }

    /// A few bytes and then silence still reach the outbox within [`FLUSH_AFTER`] and a
    /// tick, with no call from the driver; a restart sends the whole file again.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_device_s_bytes_reach_the_outbox_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open(dir.path()).unwrap());
        let mut log = JobLog::create(dir.path(), outbox.clone(), 1, 1, None).unwrap();
        log.write(b"U-Boot 2024.01\n");
        assert_eq!(outbox.len().unwrap(), 0, "not at once: chunks gather bytes");
        tokio::time::sleep(FLUSH_AFTER / 2).await;
        assert_eq!(outbox.len().unwrap(), 0);
        tokio::time::sleep(FLUSH_AFTER).await;
        assert_eq!(sent(&outbox), b"U-Boot 2024.01\n");
        // A steady trickle is not held back by its own writes either.
        for _ in 0..40 {
            log.write(b"x");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(sent(&outbox).len() >= 30, "streamed while written");
        tokio::time::sleep(FLUSH_AFTER * 2).await;
        sent(&outbox);
        drop(log);
        let n = resend_after_restart(dir.path(), &outbox, 1, 1, "the agent restarted").unwrap();
        let all = sent(&outbox);
        assert_eq!(n as usize, all.len());
        assert!(
            all.starts_with(b"U-Boot 2024.01\nxxxx"),
            "{}",
            String::from_utf8_lossy(&all)
        );
        assert!(all.ends_with(b"[labwire] the agent restarted\n"));
    }
}
