//! A job's log: every byte the device prints, kept whole in the job folder (`console.log`)
//! and sent to the coordinator through the outbox in chunks that carry their byte offset.

use crate::outbox::{Item, Outbox};
use labwire_parsers::{LogParser, ParseReport};
use labwire_proto::v1;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Chunks sent to the coordinator are at most this big.
pub const CHUNK: usize = 64 * 1024;

/// The log of one job attempt.
pub struct JobLog {
    file: std::fs::File,
    outbox: Arc<Outbox>,
    job: i64,
    attempt: i32,
    /// Bytes already handed to the outbox.
    sent: u64,
    /// Bytes not yet handed to the outbox.
    pending: Vec<u8>,
    /// The parser that reads the device's output as it arrives, if the job wants one.
    parser: Option<LogParser>,
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
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(crate::state::FILE_MODE)
                .open(dir.join("console.log"))?
        };
        Ok(JobLog {
            file,
            outbox,
            job,
            attempt,
            sent: 0,
            pending: Vec::new(),
            parser,
        })
    }

    /// Appends what the device printed: it is kept, sent and parsed.
    pub fn write(&mut self, data: &[u8]) {
        if let Some(p) = &mut self.parser {
            p.feed(data);
        }
        self.append(data);
    }

    /// Appends bytes that are kept and sent, but not parsed (output that a back end has
    /// already parsed itself, such as a LAVA job's log).
    pub fn write_unparsed(&mut self, data: &[u8]) {
        self.append(data);
    }

    /// Appends bytes that are kept and sent, but not parsed.
    fn append(&mut self, data: &[u8]) {
        if let Err(e) = self.file.write_all(data) {
            tracing::warn!(job = self.job, error = %e, "cannot write the job's console.log");
        }
        self.pending.extend_from_slice(data);
        while self.pending.len() >= CHUNK {
            let rest = self.pending.split_off(CHUNK);
            let chunk = std::mem::replace(&mut self.pending, rest);
            self.send(chunk);
        }
    }

    /// Appends a line written by labwire itself (not by the device), marked as such and
    /// not parsed.
    pub fn note(&mut self, line: &str) {
        self.append(format!("[labwire] {line}\n").as_bytes());
    }

    /// Ends parsing and returns the parser's report, if the job had a parser.
    pub fn finish_parse(&mut self) -> Option<ParseReport> {
        self.parser.take().map(LogParser::finish)
    }

    /// Hands whatever is pending to the outbox (call periodically so the log streams).
    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            let chunk = std::mem::take(&mut self.pending);
            self.send(chunk);
        }
    }

    fn send(&mut self, data: Vec<u8>) {
        let len = data.len() as u64;
        let item = Item::Log(v1::AppendLogRequest {
            job: Some(v1::JobRef {
                job: self.job,
                attempt: self.attempt,
            }),
            offset: self.sent,
            data,
        });
        match self.outbox.push(self.job, self.attempt, item) {
            Ok(()) => self.sent += len,
            Err(e) => tracing::error!(job = self.job, error = %e, "cannot queue a log chunk"),
        }
    }

    /// Total bytes written so far.
    pub fn len(&self) -> u64 {
        self.sent + self.pending.len() as u64
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
