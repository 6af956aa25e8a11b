//! Logs on the dashboard: the first 2 MiB of a job's log on its page, failing lines
//! highlighted and anchored for the failing tests; the whole log at `/ui/log/{job}`, streamed
//! from the store in batches (memory does not grow with the log, however many read it).
//! Boards print terminal escapes (colours, cursor moves, `\r`): the page drops them from the
//! lines it shows, so that they do not show as boxes; the raw log keeps every byte.

use super::{Page, fail, page_auth, secured};
use crate::error::Error;
use crate::http::ApiError;
use crate::model::NodeId;
use crate::shared::SharedRef;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Serialize;
use std::borrow::Cow;

/// Most log bytes a job page shows inline (the whole log is at `/ui/log/{job}`).
pub(super) const INLINE_LIMIT: usize = 2 << 20;

/// Reads up to `limit` bytes of a job attempt's log; true when it was cut.
pub(super) fn read_head(
    c: &crate::store::Connection,
    job: NodeId,
    attempt: i32,
    limit: usize,
) -> crate::error::Result<(String, bool)> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let batch = crate::store::jobs::read_log(c, job, attempt, from, 1 << 20)?;
        let Some(last) = batch.last().map(|(o, _)| *o) else {
            break;
        };
        for (_, d) in batch {
            out.extend_from_slice(&d);
        }
        if out.len() >= limit {
            out.truncate(limit);
            return Ok((String::from_utf8_lossy(&out).into_owned(), true));
        }
        from = last + 1;
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), false))
}

/// One line of a log as a page shows it.
#[derive(Debug, Serialize)]
pub(super) struct Line<'a> {
    /// `L{n}`, or `test-{id}` on the line that reports a failing test.
    id: String,
    /// A failing line (`not ok`, a kernel oops or panic, `FAIL`).
    fail: bool,
    text: Cow<'a, str>,
}

/// A log line without terminal escapes (CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ST`, other
/// `ESC x` pairs, `ESC ( x` charset designations) and without control characters other than tab: what a terminal would show.
pub(super) fn printable(line: &str) -> Cow<'_, str> {
    if !line.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ST (ESC \\).
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                // Character set designation: one more byte.
                Some('(' | ')' | '*' | '+') => {
                    chars.next();
                }
                _ => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A log as lines: failing lines (`not ok`, kernel oopses and panics, `FAIL`) are marked, and
/// the line that reports a failing test named in `failing` gets the anchor `test-ID`.
/// Returns the lines, the failing tests without a line of their own (their anchors go at the
/// end), and the number of failing lines.
pub(super) fn highlight<'a>(
    text: &'a str,
    failing: &[(NodeId, &str)],
) -> (Vec<Line<'a>>, Vec<i64>, usize) {
    let mut lines = Vec::new();
    let mut anchored: Vec<bool> = vec![false; failing.len()];
    let mut n = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = printable(raw);
        let t = line.trim_start();
        // KTAP/TAP prefixes (`# `, indentation) are allowed before `not ok`.
        let body = t.trim_start_matches(['#', ' ', '\t']);
        let bad = (body.starts_with("not ok") && !body.contains("# SKIP"))
            || t.contains("Kernel panic")
            || t.contains("Oops")
            || t.contains("BUG:")
            || t.contains(" FAIL")
            || t.starts_with("FAIL");
        let mut id = format!("L{}", i + 1);
        if bad {
            n += 1;
            if let Some(rest) = body.strip_prefix("not ok") {
                // `not ok N name # directive`
                let name = rest
                    .trim_start()
                    .split_once(' ')
                    .map(|(_, nm)| nm)
                    .unwrap_or("")
                    .split(" # ")
                    .next()
                    .unwrap_or("")
                    .trim();
                if let Some(k) = failing
                    .iter()
                    .enumerate()
                    .position(|(k, (_, fname))| !anchored[k] && *fname == name)
                {
                    anchored[k] = true;
                    id = format!("test-{}", failing[k].0.0);
                }
            }
        }
        lines.push(Line {
            id,
            fail: bad,
            text: line,
        });
    }
    // A failing test with no line of its own (an exit status, a timeout) points at the end.
    let rest = failing
        .iter()
        .zip(&anchored)
        .filter(|(_, a)| !**a)
        .map(|((id, _), _)| id.0)
        .collect();
    (lines, rest, n)
}

/// `GET /ui/log/{job}`: the whole log of a job's reported attempt as text, streamed.
pub(super) async fn raw(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Path(job): Path<String>,
) -> Page {
    page_auth(&shared, &headers).await?;
    let job = match job.parse::<i64>() {
        Ok(n) if n > 0 => NodeId(n),
        _ => return Err(fail(ApiError::invalid(format!("`{job}` is not a job id")))),
    };
    let attempt = shared
        .store
        .read(move |c| crate::store::jobs::log_attempt(c, job))
        .await
        .map_err(fail)?
        .ok_or_else(|| fail(Error::NotFound(format!("job {job} has no log yet"))))?;
    let log = crate::http::logs::send_log(shared, job, attempt)
        .await
        .map_err(fail)?;
    Ok(secured(log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highlights_failing_lines_and_anchors_tests() {
        let log = "KTAP version 1\n1..2\nok 1 a\nnot ok 2 b <i>\n    # not ok 3 c # SKIP\n";
        let (lines, rest, n) = highlight(log, &[(NodeId(7), "b <i>"), (NodeId(9), "gone")]);
        assert_eq!(n, 1);
        let fail: Vec<_> = lines.iter().filter(|l| l.fail).collect();
        assert_eq!(fail.len(), 1);
        assert_eq!(
            (fail[0].id.as_str(), &*fail[0].text),
            ("test-7", "not ok 2 b <i>")
        );
        assert_eq!((lines[2].id.as_str(), lines[2].fail), ("L3", false));
        assert_eq!(rest, vec![9]);
    }

    #[test]
    fn terminal_escapes_are_dropped_from_shown_lines() {
        assert!(matches!(printable("plain\tline"), Cow::Borrowed(_)));
        assert_eq!(printable("\u{1b}[1;31mnot ok\u{1b}[0m 1 x\r"), "not ok 1 x");
        assert_eq!(
            printable("a\u{1b}]0;title\u{7}b\u{1b}]2;t\u{1b}\\c\u{0}"),
            "abc"
        );
        assert_eq!(printable("\u{1b}(Bend\u{1b}"), "end");
        let (lines, _, n) = highlight("\u{1b}[31mnot ok 1 a\u{1b}[0m\n", &[(NodeId(3), "a")]);
        assert_eq!((n, lines[0].id.as_str()), (1, "test-3"));
    }
}
