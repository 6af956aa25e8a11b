//! An expect/send session on a console: every byte the board prints goes to the job's log as
//! it arrives; `expect` waits for one of several regular expressions in what has not been
//! matched yet, and notices kernel panics, a closed console, a cancel and timeouts on the way.

use super::console::{Console, ConsoleEvent};
use crate::joblog::JobLog;
use regex::bytes::Regex;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Why an `expect` ended without a match.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExpectError {
    /// None of the patterns appeared in time.
    Timeout,
    /// The console closed (the board or its console server went away).
    Closed(String),
    /// The job was cancelled.
    Cancelled,
    /// The kernel panicked; the panic line and what follows (bounded).
    Panic(String),
}

/// Most unmatched output kept for matching; older bytes are dropped (they are in the log).
const WINDOW: usize = 256 * 1024;

/// A session on one console for one job.
pub(crate) struct Session<'a> {
    console: Console,
    log: &'a mut JobLog,
    window: Vec<u8>,
    panic_re: Regex,
    /// Bytes of `window` already searched for a panic.
    panic_checked: usize,
    closed: Option<String>,
    cancel: CancellationToken,
    /// Bytes the board printed in this session.
    received: u64,
}

impl<'a> Session<'a> {
    /// A session writing to `log`, stopped by `cancel`.
    pub(crate) fn new(console: Console, log: &'a mut JobLog, cancel: CancellationToken) -> Self {
        Session {
            console,
            log,
            window: Vec::new(),
            panic_re: PANIC.clone(),
            panic_checked: 0,
            closed: None,
            cancel,
            received: 0,
        }
    }

    /// The job log, to add labwire's own notes.
    pub(crate) fn log(&mut self) -> &mut JobLog {
        self.log
    }

    /// Sends bytes to the board.
    pub(crate) async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.console.writer.write_all(data).await?;
        self.console.writer.flush().await
    }

    /// How many bytes the board printed in this session (has it shown any sign of life?).
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    fn take(&mut self, data: &[u8]) {
        self.received += data.len() as u64;
        self.log.write(data);
        self.window.extend_from_slice(data);
        if self.window.len() > WINDOW {
            let drop = self.window.len() - WINDOW / 2;
            self.window.drain(..drop);
            self.panic_checked = self.panic_checked.saturating_sub(drop);
        }
    }

    fn find_panic(&mut self) -> Option<String> {
        // Re-check a little before the boundary so a message split across reads is found.
        let from = self.panic_checked.saturating_sub(64);
        let m = self.panic_re.find(&self.window[from..]);
        self.panic_checked = self.window.len();
        m.map(|m| {
            let start = from + m.start();
            let end = (start + 2048).min(self.window.len());
            String::from_utf8_lossy(&self.window[start..end]).into_owned()
        })
    }

    /// Waits up to `timeout` for any of `patterns`; returns the index of the one that matched
    /// first (earliest in the output) and the text it matched. What was matched, and
    /// everything before it, is consumed.
    pub(crate) async fn expect(
        &mut self,
        patterns: &[&Regex],
        timeout: Duration,
    ) -> Result<(usize, String), ExpectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(p) = self.find_panic() {
                return Err(ExpectError::Panic(p));
            }
            let best = patterns
                .iter()
                .enumerate()
                .filter_map(|(i, re)| re.find(&self.window).map(|m| (m.start(), m.end(), i)))
                .min();
            if let Some((start, end, i)) = best {
                let text = String::from_utf8_lossy(&self.window[start..end]).into_owned();
                self.window.drain(..end);
                self.panic_checked = self.panic_checked.saturating_sub(end);
                return Ok((i, text));
            }
            if let Some(why) = &self.closed {
                return Err(ExpectError::Closed(why.clone()));
            }
            tokio::select! {
                ev = self.console.rx.recv() => match ev {
                    Some(ConsoleEvent::Data(d)) => self.take(&d),
                    Some(ConsoleEvent::Closed(why)) => self.closed = Some(why),
                    None => self.closed = Some("the console reader stopped".into()),
                },
                _ = tokio::time::sleep_until(deadline) => return Err(ExpectError::Timeout),
                _ = self.cancel.cancelled() => return Err(ExpectError::Cancelled),
            }
        }
    }

    /// Reads whatever arrives for `d` (to let the board settle); keeps it in the log.
    pub(crate) async fn drain_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while self.closed.is_none() {
            tokio::select! {
                ev = self.console.rx.recv() => match ev {
                    Some(ConsoleEvent::Data(d)) => self.take(&d),
                    Some(ConsoleEvent::Closed(why)) => self.closed = Some(why),
                    None => self.closed = Some("the console reader stopped".into()),
                },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Forgets unmatched output (before a new step whose prompt may already have passed).
    pub(crate) fn clear(&mut self) {
        self.panic_checked = self.panic_checked.saturating_sub(self.window.len());
        self.window.clear();
    }

    /// Where the console is, for messages.
    pub(crate) fn describe(&self) -> &str {
        &self.console.describe
    }
}

/// The kernel's panic message.
static PANIC: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
    Regex::new(r"Kernel panic - not syncing").expect("a literal pattern compiles")
});
