//! Splitting a console byte stream into lines, and recognising the prefixes consoles put
//! before each line (printk timestamps, caller ids, syslog levels, fixed lead-ins).
//!
//! Lines end at `\n`, `\r\n` or a lone `\r`. Bytes are never decoded here: parsers see raw
//! bytes and decode lossily only what they keep, so invalid UTF-8 and binary garbage pass
//! through harmlessly, whatever the chunk boundaries.

use memchr::{memchr, memchr2};
use std::cell::Cell;

/// The longest line kept, in bytes; the rest of a longer line is dropped.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// One line of the log, without its terminator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Line<'a> {
    /// 1-based line number.
    pub(crate) no: u64,
    /// The line's bytes (at most [`MAX_LINE`]).
    pub(crate) bytes: &'a [u8],
    /// The line was longer than [`MAX_LINE`] and was cut.
    pub(crate) truncated: bool,
    /// Where the line starts in the chunk given to [`LineSplitter::feed`], when it lies
    /// wholly inside that chunk (`None` for a line assembled from several chunks).
    pub(crate) offset: Option<usize>,
}

/// Splits a byte stream fed in arbitrary chunks into lines. Memory is bounded by the
/// longest line kept; complete lines inside a chunk are handed out without copying.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
    partial_truncated: bool,
    in_line: bool,
    pending_cr: bool,
    max_line: usize,
    line_no: u64,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new(MAX_LINE)
    }
}

impl LineSplitter {
    /// A splitter that keeps at most `max_line` bytes of each line (at least 1).
    pub(crate) fn new(max_line: usize) -> Self {
        LineSplitter {
            partial: Vec::new(),
            partial_truncated: false,
            in_line: false,
            pending_cr: false,
            max_line: max_line.max(1),
            line_no: 0,
        }
    }

    /// Number of lines handed out so far.
    pub(crate) fn lines(&self) -> u64 {
        self.line_no
    }

    /// Feeds a chunk; calls `f` for every line it completes.
    pub(crate) fn feed(&mut self, chunk: &[u8], mut f: impl FnMut(Line<'_>)) {
        let mut data = chunk;
        if self.pending_cr {
            self.pending_cr = false;
            if let Some(rest) = data.strip_prefix(b"\n") {
                data = rest;
            }
        }
        while let Some(i) = memchr2(b'\n', b'\r', data) {
            let line = &data[..i];
            self.line_no += 1;
            if self.in_line {
                self.append(line);
                f(Line {
                    no: self.line_no,
                    bytes: &self.partial,
                    truncated: self.partial_truncated,
                    offset: None,
                });
                self.partial.clear();
                self.partial_truncated = false;
                self.in_line = false;
            } else {
                let keep = line.len().min(self.max_line);
                f(Line {
                    no: self.line_no,
                    bytes: &line[..keep],
                    truncated: keep < line.len(),
                    offset: Some(chunk.len() - data.len()),
                });
            }
            let cr = data[i] == b'\r';
            data = &data[i + 1..];
            if cr {
                match data.first() {
                    None => self.pending_cr = true,
                    Some(b'\n') => data = &data[1..],
                    Some(_) => {}
                }
            }
        }
        if !data.is_empty() {
            self.in_line = true;
            self.append(data);
        }
    }

    /// Ends the stream: hands out the last line if it had no terminator.
    pub(crate) fn finish(&mut self, mut f: impl FnMut(Line<'_>)) {
        if self.in_line {
            self.line_no += 1;
            f(Line {
                no: self.line_no,
                bytes: &self.partial,
                truncated: self.partial_truncated,
                offset: None,
            });
            self.partial.clear();
            self.partial_truncated = false;
            self.in_line = false;
        }
        self.pending_cr = false;
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = self.max_line.saturating_sub(self.partial.len());
        if bytes.len() > room {
            self.partial_truncated = true;
        }
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// For each byte: 1 when it may appear in a printk bracket (digits, blank, `.`, `T`, `C`),
/// 3 when it is a digit, 0 otherwise.
static BRACKET_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = 3;
        d += 1;
    }
    t[b' ' as usize] = 1;
    t[b'.' as usize] = 1;
    t[b'T' as usize] = 1;
    t[b'C' as usize] = 1;
    t
};

/// True when every byte of `inside` may appear in a printk bracket (digits, blank, `.`,
/// `T`, `C`) and one is a digit.
#[inline]
fn bracket_inside(inside: &[u8]) -> bool {
    // A table lookup per byte and no early exit.
    let (all, any) = inside.iter().fold((1u8, 0u8), |(all, any), &b| {
        let t = BRACKET_BYTE[usize::from(b)];
        (all & t, any | t)
    });
    all & 1 == 1 && any & 2 == 2
}

/// [`bracket_inside`] for the first `len` bytes of `s`, 16 bytes at once, when `s` has 16
/// bytes to read and `len` is at most 16 (`None` otherwise).
#[cfg(target_arch = "x86_64")]
#[inline]
fn bracket_inside_simd(s: &[u8], len: usize) -> Option<bool> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm_sub_epi8,
    };
    if s.len() < 16 || len > 16 {
        return None;
    }
    // SAFETY: SSE2 is part of the x86_64 baseline, and `s` has 16 bytes to read (an
    // unaligned load).
    let (ok, digit) = unsafe {
        let v = _mm_loadu_si128(s.as_ptr().cast::<__m128i>());
        let d = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
        // A digit when `b - '0'` (unsigned) is at most 9.
        let digit = _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d);
        let eq = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
        let other = _mm_or_si128(
            _mm_or_si128(eq(b' '), eq(b'.')),
            _mm_or_si128(eq(b'T'), eq(b'C')),
        );
        (
            _mm_movemask_epi8(_mm_or_si128(digit, other)) as u32,
            _mm_movemask_epi8(digit) as u32,
        )
    };
    let mask = (1u32 << len) - 1;
    Some(ok & mask == mask && digit & mask != 0)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn bracket_inside_simd(_s: &[u8], _len: usize) -> Option<bool> {
    None
}

/// Length of a printk-style bracket at the start of `s`: a timestamp `[   12.345678]` or a
/// caller id `[    T1]` / `[  C0]`.
#[inline]
fn bracket_len(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'[') {
        return None;
    }
    let window = &s[1..s.len().min(33)];
    let close = memchr(b']', window)?;
    bracket_inside(&window[..close]).then_some(close + 2)
}

/// [`bracket_len`], trying first the length the previous line had (timestamps keep their
/// width for long stretches). Gives the same answer either way.
#[inline]
fn bracket_len_hinted(s: &[u8], hint: &Cell<u8>) -> Option<usize> {
    let h = usize::from(hint.get());
    if h >= 3 && s.len() >= h && s[0] == b'[' && s[h - 1] == b']' && {
        let inside = &s[1..h - 1];
        bracket_inside_simd(&s[1..], inside.len()).unwrap_or_else(|| bracket_inside(inside))
    } {
        return Some(h);
    }
    let n = bracket_len(s)?;
    hint.set(u8::try_from(n).unwrap_or(0));
    Some(n)
}

/// Length of a syslog level `<6>` at the start of `s`.
#[inline]
fn level_len(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'<') {
        return None;
    }
    let digits = s[1..]
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits > 0 && s.get(1 + digits) == Some(&b'>') {
        Some(digits + 2)
    } else {
        None
    }
}

/// Strips the printk prefixes a kernel console puts before a message: syslog levels
/// (`<6>`), timestamps (`[   12.345678]`) and caller ids (`[    T1]`), in any order, and
/// the one space that follows them.
#[inline]
pub(crate) fn strip_printk(line: &[u8]) -> &[u8] {
    let mut rest = line;
    let mut stripped = false;
    while let Some(n) = bracket_len(rest).or_else(|| level_len(rest)) {
        rest = &rest[n..];
        stripped = true;
    }
    if stripped {
        rest.strip_prefix(b" ").unwrap_or(rest)
    } else {
        rest
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A printk timestamp or caller id: `[...]` with digits, spaces, dots, `T` or `C`; the
    /// cell remembers the last length matched.
    Bracket(Cell<u8>),
    /// A syslog level `<N>`.
    Level,
    /// A run of one or more digits (counters, clocks in board prefixes).
    Digits,
    /// Literal bytes.
    Lit(Vec<u8>),
}

/// The lead-in a console puts before every line, learned from the text that precedes an
/// anchor (a KTAP version line, the kernel's first message). Timestamps, caller ids,
/// syslog levels and digit runs in it match any value; the rest must match exactly.
/// Trailing blanks are not part of the lead-in, so they count as indentation of the rest
/// of the line, the same for every line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LeadIn {
    toks: Vec<Tok>,
}

impl LeadIn {
    /// Learns a lead-in from the text before an anchor. Text made only of blanks and `#`
    /// (indentation, kselftest nesting) gives an empty lead-in.
    pub(crate) fn learn(text: &[u8]) -> LeadIn {
        let end = text
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let text = &text[..end];
        if text.iter().all(|&b| b == b'#' || b.is_ascii_whitespace()) {
            return LeadIn::default();
        }
        let mut toks: Vec<Tok> = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if let Some(n) = bracket_len(rest) {
                toks.push(Tok::Bracket(Cell::new(0)));
                i += n;
            } else if let Some(n) = level_len(rest) {
                toks.push(Tok::Level);
                i += n;
            } else if rest[0].is_ascii_digit() {
                toks.push(Tok::Digits);
                i += rest.iter().take_while(|b| b.is_ascii_digit()).count();
            } else {
                if let Some(Tok::Lit(l)) = toks.last_mut() {
                    l.push(rest[0]);
                } else {
                    toks.push(Tok::Lit(vec![rest[0]]));
                }
                i += 1;
            }
        }
        LeadIn { toks }
    }

    /// True when the lead-in is empty (every line matches as it is).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.toks.is_empty()
    }

    /// The rest of `line` after the lead-in, or `None` when the line does not start with it.
    #[inline]
    pub(crate) fn strip<'a>(&self, line: &'a [u8]) -> Option<&'a [u8]> {
        let mut rest = line;
        for tok in &self.toks {
            let n = match tok {
                Tok::Bracket(hint) => bracket_len_hinted(rest, hint)?,
                Tok::Level => level_len(rest)?,
                Tok::Digits => match rest.iter().take_while(|b| b.is_ascii_digit()).count() {
                    0 => return None,
                    n => n,
                },
                Tok::Lit(l) => {
                    if rest.starts_with(l) {
                        l.len()
                    } else {
                        return None;
                    }
                }
            };
            rest = &rest[n..];
        }
        Some(rest)
    }
}

/// Splits leading blanks off `s`: returns the indentation in columns (a space counts 1, a
/// tab 8) and the rest.
#[inline]
pub(crate) fn indent(s: &[u8]) -> (u32, &[u8]) {
    let spaces = s.iter().take_while(|&&b| b == b' ').count();
    if s.get(spaces) != Some(&b'\t') {
        return (u32::try_from(spaces).unwrap_or(u32::MAX), &s[spaces..]);
    }
    let mut cols = 0u32;
    for (i, &b) in s.iter().enumerate() {
        match b {
            b' ' => cols = cols.saturating_add(1),
            b'\t' => cols = cols.saturating_add(8),
            _ => return (cols, &s[i..]),
        }
    }
    (cols, &[])
}

/// The text of `bytes`, with invalid UTF-8 replaced by U+FFFD.
#[inline]
pub(crate) fn lossy(bytes: &[u8]) -> String {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8. (`is_ascii` reads words at a time; `from_utf8`
        // is much slower on the short strings this is called on, test names.)
        return unsafe { String::from_utf8_unchecked(bytes.to_vec()) };
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// `s` without leading and trailing ASCII blanks.
#[inline]
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]], max: usize) -> Vec<(Vec<u8>, bool)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l| out.push((l.bytes.to_vec(), l.truncated)));
        }
        s.finish(|l| out.push((l.bytes.to_vec(), l.truncated)));
        out
    }

    #[test]
    fn terminators() {
        let got = split_all(&[b"a\r\nb\rc\nd"], 100);
        let lines: Vec<_> = got.iter().map(|(l, _)| l.as_slice()).collect();
        assert_eq!(lines, [&b"a"[..], b"b", b"c", b"d"]);
    }

    #[test]
    fn crlf_split_across_chunks() {
        let got = split_all(&[b"a\r", b"\nb\r", b"", b"c"], 100);
        let lines: Vec<_> = got.iter().map(|(l, _)| l.as_slice()).collect();
        assert_eq!(lines, [&b"a"[..], b"b", b"c"]);
    }

    #[test]
    fn long_lines_truncated_the_same_way_whatever_the_chunks() {
        let one = split_all(&[b"abcdefgh\nxy\n"], 4);
        let many = split_all(&[b"ab", b"cdef", b"gh\nx", b"y\n"], 4);
        assert_eq!(one, many);
        assert_eq!(one[0], (b"abcd".to_vec(), true));
        assert_eq!(one[1], (b"xy".to_vec(), false));
    }

    #[test]
    fn printk_prefixes() {
        assert_eq!(strip_printk(b"[   12.345678] hello"), b"hello");
        assert_eq!(strip_printk(b"[    0.060000][    T1] hi"), b"hi");
        assert_eq!(strip_printk(b"<6>[    1.0] x"), b"x");
        assert_eq!(strip_printk(b"[board] x"), b"[board] x");
    }

    #[test]
    fn lead_in_matches_varying_timestamps() {
        let l = LeadIn::learn(b"[    0.060000][    T1] ");
        assert_eq!(
            l.strip(b"[ 1234.000001][  T123]   ok 1 a"),
            Some(&b"   ok 1 a"[..])
        );
        assert_eq!(l.strip(b"[    0.060000][    T1]"), Some(&b""[..]));
        assert_eq!(l.strip(b"ok 1 a"), None);
        let b = LeadIn::learn(b"rpi4-01 | ");
        assert_eq!(b.strip(b"rpi4-01 | 1..3"), Some(&b" 1..3"[..]));
        assert_eq!(b.strip(b"rpi4-02 | 1..3"), Some(&b" 1..3"[..]));
        assert_eq!(b.strip(b"qemu | 1..3"), None);
        assert!(LeadIn::learn(b"  # ").is_empty());
    }
}
