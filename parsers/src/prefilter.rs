//! One SIMD pass over the log for the words the detectors look for (`<LAVA_SIGNAL_`,
//! `TAP version `, the kernel's problem words), so that most lines need no search of
//! their own: a detector only looks closer at a line that holds one of its words.
//!
//! Skipping a line is only an optimisation: every detector gives the same result when it
//! looks at every line, so how the log is chunked does not matter.

use crate::line::Line;
use aho_corasick::{AhoCorasick, packed};
use memchr::memchr2;

/// A LAVA signal.
pub(crate) const LAVA: u8 = 1;
/// A KTAP/TAP version line.
pub(crate) const VERSION: u8 = 2;
/// A word of a kernel message the `kmsg` detector cares about.
pub(crate) const KMSG: u8 = 4;

/// The words, and whose they are. Every line a detector acts on holds one of its words
/// (kernel problems: see `kmsg::trigger`; `Linux ` for the kernel's start; `cut here` for
/// the line before a WARNING).
const WORDS: &[(&str, u8)] = &[
    ("<LAVA_SIGNAL_", LAVA),
    ("TAP version ", VERSION),
    ("Kernel panic", KMSG),
    ("Oops", KMSG),
    ("Unable to handle kernel", KMSG),
    ("general protection fault", KMSG),
    ("BUG", KMSG),
    ("WARNING: ", KMSG),
    ("INFO: ", KMSG),
    ("cut here", KMSG),
    ("Linux ", KMSG),
];

/// How much of a chunk is searched at a time (the hits of one window are kept).
const WINDOW: usize = 64 * 1024;

#[derive(Debug)]
enum Searcher {
    /// SIMD (Teddy) where the CPU has it.
    Packed(packed::Searcher),
    /// An automaton elsewhere.
    Automaton(AhoCorasick),
    /// Neither could be built: every line is looked at by every detector.
    None,
}

/// Finds the words in the chunk being split and tells which a line holds.
#[derive(Debug)]
pub(crate) struct Prefilter {
    searcher: Searcher,
    /// Hits (position in the chunk, kind) in `[window_start, window_end)`.
    hits: Vec<(usize, u8)>,
    next: usize,
    window_start: usize,
    window_end: usize,
}

impl Prefilter {
    pub(crate) fn new() -> Self {
        let words = WORDS.iter().map(|(w, _)| *w);
        let searcher = if let Some(s) = packed::Config::new()
            .builder()
            .extend(words.clone())
            .build()
        {
            Searcher::Packed(s)
        } else if let Ok(a) = AhoCorasick::new(words) {
            Searcher::Automaton(a)
        } else {
            Searcher::None
        };
        Prefilter {
            searcher,
            hits: Vec::new(),
            next: 0,
            window_start: 0,
            window_end: 0,
        }
    }

    /// A new chunk begins.
    pub(crate) fn reset(&mut self) {
        self.hits.clear();
        self.next = 0;
        self.window_start = 0;
        self.window_end = 0;
    }

    /// The kinds of words `line` holds (`LAVA | VERSION | KMSG` bits). `chunk` is the chunk
    /// the line came from, when it lies inside it.
    #[inline]
    pub(crate) fn kinds(&mut self, line: &Line<'_>, chunk: &[u8]) -> u8 {
        let Some(start) = line.offset else {
            return self.search(line.bytes);
        };
        let end = start + line.bytes.len();
        if end > self.window_end || start < self.window_start {
            self.scan(chunk, start, end);
        }
        while self.next < self.hits.len() && self.hits[self.next].0 < start {
            self.next += 1;
        }
        let mut kinds = 0;
        let mut i = self.next;
        while i < self.hits.len() && self.hits[i].0 < end {
            kinds |= self.hits[i].1;
            i += 1;
        }
        kinds
    }

    /// Searches the chunk from `start` to at least `end` (the end of a line) and on to
    /// the end of a line past [`WINDOW`]: words hold no line terminator, so none is cut.
    #[cold]
    fn scan(&mut self, chunk: &[u8], start: usize, end: usize) {
        let mut stop = (start + WINDOW).max(end).min(chunk.len());
        if stop < chunk.len() {
            stop = memchr2(b'\n', b'\r', &chunk[stop..]).map_or(chunk.len(), |i| stop + i + 1);
        }
        self.hits.clear();
        self.next = 0;
        self.window_start = start;
        self.window_end = stop;
        let hay = &chunk[start..stop];
        match &self.searcher {
            Searcher::Packed(s) => {
                for m in s.find_iter(hay) {
                    self.hits
                        .push((start + m.start(), kind(m.pattern().as_usize())));
                }
            }
            Searcher::Automaton(a) => {
                for m in a.find_iter(hay) {
                    self.hits
                        .push((start + m.start(), kind(m.pattern().as_usize())));
                }
            }
            Searcher::None => {}
        }
    }

    /// The kinds of words in `bytes` (a line assembled from several chunks).
    fn search(&self, bytes: &[u8]) -> u8 {
        match &self.searcher {
            Searcher::Packed(s) => s
                .find_iter(bytes)
                .fold(0, |k, m| k | kind(m.pattern().as_usize())),
            Searcher::Automaton(a) => a
                .find_iter(bytes)
                .fold(0, |k, m| k | kind(m.pattern().as_usize())),
            Searcher::None => LAVA | VERSION | KMSG,
        }
    }
}

fn kind(pattern: usize) -> u8 {
    WORDS
        .get(pattern)
        .map_or(LAVA | VERSION | KMSG, |(_, k)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::LineSplitter;

    #[test]
    fn lines_get_their_kinds() {
        let log =
            b"plain\n<LAVA_SIGNAL_ENDRUN x>\nKTAP version 1\n[ 1.0] BUG: x\nLinux version 6\n";
        let mut p = Prefilter::new();
        let mut kinds = Vec::new();
        let mut s = LineSplitter::default();
        s.feed(log, |l| kinds.push(p.kinds(&l, log)));
        assert_eq!(kinds, [0, LAVA, VERSION, KMSG, KMSG]);
        let long = [b"x".repeat(70_000), b"\nWARNING: y\n".to_vec()].concat();
        let mut p = Prefilter::new();
        let mut kinds = Vec::new();
        s.feed(&long, |l| kinds.push(p.kinds(&l, &long)));
        assert_eq!(kinds, [0, KMSG]);
    }
}
