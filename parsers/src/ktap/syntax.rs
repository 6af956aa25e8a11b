//! What a KTAP/TAP line is: version, plan, result (with its directive), subtest header,
//! KTAP v2 metadata, bail-out or anything else, and how deep it sits (indentation and
//! kselftest's `# ` prefixes).

use crate::line::{indent, trim};
use labwire_common::NodeResult;
use memchr::memchr;

/// Deepest kselftest `# ` nesting recognised.
const MAX_HASH: u32 = 8;

/// How deep a line is: kselftest `# ` prefixes first, then indentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Level {
    pub(super) hash: u32,
    pub(super) cols: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Directive {
    None,
    Skip,
    Todo,
    Other,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ResultLine<'a> {
    pub(super) ok: bool,
    pub(super) num: Option<u64>,
    pub(super) name: &'a [u8],
    pub(super) directive: Directive,
}

impl ResultLine<'_> {
    pub(super) fn result(&self) -> NodeResult {
        match (self.directive, self.ok) {
            (Directive::Skip, _) => NodeResult::Skip,
            // A failing TODO test is expected to fail: not a failure of the run.
            (Directive::Todo, false) => NodeResult::Skip,
            (_, true) => NodeResult::Pass,
            (_, false) => NodeResult::Fail,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Kind<'a> {
    Version,
    Plan(u64),
    Result(ResultLine<'a>),
    Subtest(&'a [u8]),
    Meta(&'a [u8], &'a [u8]),
    BailOut(&'a [u8]),
    Other,
}

/// Classifies a line (lead-in already stripped): its level and what it is.
#[inline]
pub(super) fn classify(body: &[u8]) -> (Level, Kind<'_>) {
    let (cols, start) = indent(body);
    let mut rest = start;
    let mut level = Level { hash: 0, cols };
    loop {
        if let Some(k) = structural(rest) {
            return (level, k);
        }
        if level.hash < MAX_HASH
            && rest.len() >= 2
            && rest[0] == b'#'
            && (rest[1] == b' ' || rest[1] == b'\t')
        {
            let (c, inner) = indent(&rest[1..]);
            level = Level {
                hash: level.hash + 1,
                cols: c.saturating_sub(1),
            };
            rest = inner;
            continue;
        }
        return (Level { hash: 0, cols }, Kind::Other);
    }
}

/// What an unindented KTAP line is, if it is more than a diagnostic.
#[inline]
pub(super) fn structural(s: &[u8]) -> Option<Kind<'_>> {
    match *s.first()? {
        b'K' => s.strip_prefix(b"KTAP version ").and_then(version_number),
        b'T' => s.strip_prefix(b"TAP version ").and_then(version_number),
        b'1' => plan(s),
        b'o' => result_line(true, s.strip_prefix(b"ok")?),
        b'n' => result_line(false, s.strip_prefix(b"not ok")?),
        b'B' => s.strip_prefix(b"Bail out!").map(|r| Kind::BailOut(trim(r))),
        b'#' => {
            if let Some(name) = s.strip_prefix(b"# Subtest:") {
                Some(Kind::Subtest(trim(name)))
            } else if let Some(meta) = s.strip_prefix(b"#:") {
                let colon = memchr(b':', meta)?;
                Some(Kind::Meta(trim(&meta[..colon]), trim(&meta[colon + 1..])))
            } else {
                None
            }
        }
        _ => None,
    }
}

#[inline]
fn version_number(s: &[u8]) -> Option<Kind<'static>> {
    s.first()
        .is_some_and(u8::is_ascii_digit)
        .then_some(Kind::Version)
}

#[inline]
fn plan(s: &[u8]) -> Option<Kind<'_>> {
    let rest = s.strip_prefix(b"1..")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    match rest.get(digits) {
        None | Some(b' ' | b'\t' | b'#') => {}
        Some(_) => return None,
    }
    Some(Kind::Plan(parse_u64(&rest[..digits])))
}

#[inline]
fn parse_u64(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

#[inline]
fn result_line(ok: bool, after: &[u8]) -> Option<Kind<'_>> {
    match after.first() {
        None | Some(b' ' | b'\t') => {}
        Some(_) => return None,
    }
    let after = after.trim_ascii_start();
    let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
    let num = (digits > 0).then(|| parse_u64(&after[..digits]));
    let mut desc = after[digits..].trim_ascii_start();
    if let Some(d) = desc.strip_prefix(b"- ") {
        desc = d;
    } else if desc == b"-" {
        desc = b"";
    }
    let (name, directive) = split_directive(desc);
    Some(Kind::Result(ResultLine {
        ok,
        num,
        name,
        directive,
    }))
}

/// Splits `name # DIRECTIVE reason` at the first `#` that starts a word.
#[inline]
fn split_directive(s: &[u8]) -> (&[u8], Directive) {
    let mut from = 0;
    while let Some(p) = memchr(b'#', &s[from..]) {
        let p = from + p;
        if p == 0 || s[p - 1] == b' ' || s[p - 1] == b'\t' {
            let word = s[p + 1..].trim_ascii_start();
            let word = &word[..word.iter().take_while(|b| b.is_ascii_alphabetic()).count()];
            let directive = if word.len() >= 4 && word[..4].eq_ignore_ascii_case(b"skip") {
                Directive::Skip
            } else if word.len() >= 4 && word[..4].eq_ignore_ascii_case(b"todo") {
                Directive::Todo
            } else if word.is_empty() {
                Directive::None
            } else {
                Directive::Other
            };
            return (trim(&s[..p]), directive);
        }
        from = p + 1;
    }
    (trim(s), Directive::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &str) -> String {
        format!("{:?}", classify(s.as_bytes()))
    }

    #[test]
    fn classifies_lines() {
        assert!(kind("KTAP version 1").contains("Version"));
        assert!(kind("    TAP version 14").contains("cols: 4"));
        assert!(kind("1..0 # SKIP nothing to do").contains("Plan(0)"));
        assert!(kind("1..3x").contains("Other"));
        assert!(kind("# 1..3").contains("hash: 1"));
        assert!(kind("# # ok 1 x").contains("hash: 2"));
        assert!(kind("okay").contains("Other"));
        assert!(kind("# test: ok 1").contains("Other"));
        assert!(kind("    # Subtest: suite").contains("Subtest"));
        assert!(kind("#:ktap_test: t").contains("Meta"));
    }

    #[test]
    fn result_lines() {
        let Some(Kind::Result(r)) = structural(b"ok 3 - name # SKIP because") else {
            panic!("not a result");
        };
        assert_eq!(
            (r.num, r.name, r.directive),
            (Some(3), &b"name"[..], Directive::Skip)
        );
        let Some(Kind::Result(r)) = structural(b"not ok 12 a#b # TODO later") else {
            panic!("not a result");
        };
        assert_eq!(r.name, b"a#b");
        assert_eq!(r.result(), NodeResult::Skip);
        let Some(Kind::Result(r)) = structural(b"not ok 1 t # TIMEOUT 30 seconds") else {
            panic!("not a result");
        };
        assert_eq!(r.result(), NodeResult::Fail);
        let Some(Kind::Result(r)) = structural(b"ok") else {
            panic!("not a result");
        };
        assert_eq!((r.num, r.name), (None, &b""[..]));
    }
}
