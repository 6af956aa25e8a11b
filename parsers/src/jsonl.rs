//! The test lines of `parse --output jsonl`, written by hand into a byte buffer.
//!
//! Why not serde_json here: on the 200 MB generated log (1.76 million tests, 345 MB of
//! lines) serde_json's string escaping, which looks at every byte, and the serialisation of
//! each test's unchanged group path took half of the command's time. This writer copies a
//! string whole when no byte of it needs escaping (the usual test name), and writes a group's
//! path once for all the tests that share it. The lines are byte for byte what serde_json
//! writes for the same fields (the unit tests compare the two), so readers see one format.

use crate::{Completed, Name};
use std::io::{self, Write};
use std::sync::Arc;

/// Writes `jsonl` test lines; remembers the last group path it wrote.
#[derive(Default)]
pub(crate) struct TestLines {
    /// The output of the current batch.
    buf: Vec<u8>,
    /// The path last written and its JSON text (`["a","b"]`).
    path: Option<(Arc<[Name]>, Vec<u8>)>,
}

impl TestLines {
    /// Writes one line per completed test to `out`.
    pub(crate) fn write(&mut self, out: &mut impl Write, batch: &[Completed]) -> io::Result<()> {
        self.buf.clear();
        for c in batch {
            self.line(c)?;
        }
        out.write_all(&self.buf)
    }

    /// Appends the line of `c` to the buffer.
    fn line(&mut self, c: &Completed) -> io::Result<()> {
        let b = &mut self.buf;
        let mut num = itoa::Buffer::new();
        b.extend_from_slice(b"{\"type\":\"test\",\"id\":");
        b.extend_from_slice(num.format(c.id).as_bytes());
        b.extend_from_slice(b",\"parent\":");
        match c.parent {
            Some(p) => b.extend_from_slice(num.format(p).as_bytes()),
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"path\":");
        match &self.path {
            Some((p, text)) if Arc::ptr_eq(p, &c.path) => b.extend_from_slice(text),
            _ => {
                let mut text = Vec::with_capacity(64);
                text.push(b'[');
                for (i, n) in c.path.iter().enumerate() {
                    if i > 0 {
                        text.push(b',');
                    }
                    string(&mut text, n.as_str());
                }
                text.push(b']');
                b.extend_from_slice(&text);
                self.path = Some((Arc::clone(&c.path), text));
            }
        }
        b.extend_from_slice(b",\"name\":");
        string(b, c.node.name.as_str());
        b.extend_from_slice(b",\"result\":\"");
        b.extend_from_slice(c.node.result.as_str().as_bytes());
        b.extend_from_slice(if c.leaf {
            b"\",\"leaf\":true,\"line\":"
        } else {
            b"\",\"leaf\":false,\"line\":"
        });
        b.extend_from_slice(num.format(c.line).as_bytes());
        if let Some(d) = c.node.details.as_deref() {
            if let Some(e) = &d.log_excerpt {
                b.extend_from_slice(b",\"log_excerpt\":");
                string(b, e);
            }
            if let Some(m) = d.measurement {
                b.extend_from_slice(b",\"measurement\":");
                // Rare; serde_json's float text (and `null` for NaN and infinities).
                serde_json::to_writer(&mut *b, &m).map_err(io::Error::from)?;
            }
            if let Some(u) = &d.units {
                b.extend_from_slice(b",\"units\":");
                string(b, u);
            }
            if let Some(e) = &d.error {
                b.extend_from_slice(b",\"error\":");
                string(b, e);
            }
        }
        b.extend_from_slice(b"}\n");
        Ok(())
    }
}

/// Whether JSON needs `b` escaped in a string.
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // A fold without early exit: the compiler turns it into vector compares.
    if !bytes.iter().fold(false, |any, &b| any | needs_escape(b)) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CompletedNode, Details};
    use labwire_common::NodeResult;
    use serde::Serialize;

    /// What serde_json writes for a test line: the reference.
    #[derive(Serialize)]
    struct Reference<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: u64,
        parent: Option<u64>,
        path: Vec<&'a str>,
        name: &'a str,
        result: NodeResult,
        leaf: bool,
        line: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        log_excerpt: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        measurement: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        units: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    }

    fn reference(c: &Completed) -> Vec<u8> {
        let d = c.node.details.as_deref();
        let r = Reference {
            kind: "test",
            id: c.id,
            parent: c.parent,
            path: c.path.iter().map(|n| n.as_str()).collect(),
            name: c.node.name.as_str(),
            result: c.node.result,
            leaf: c.leaf,
            line: c.line,
            log_excerpt: d.and_then(|d| d.log_excerpt.as_deref()),
            measurement: d.and_then(|d| d.measurement),
            units: d.and_then(|d| d.units.as_deref()),
            error: d.and_then(|d| d.error.as_deref()),
        };
        let mut v = serde_json::to_vec(&r).expect("serialises");
        v.push(b'\n');
        v
    }

    fn completed(path: &Arc<[Name]>, name: &str, details: Option<Details>) -> Completed {
        Completed {
            id: 7,
            parent: if path.is_empty() { None } else { Some(3) },
            path: Arc::clone(path),
            node: CompletedNode {
                name: Name::from(name),
                result: NodeResult::Fail,
                details: details.map(Box::new),
            },
            leaf: !name.is_empty(),
            line: 1234567,
        }
    }

    #[test]
    fn lines_are_what_serde_json_writes() {
        let all: String = (0u8..0x80).map(char::from).collect();
        let names = [
            "plain_name",
            "",
            "quote \" and \\ backslash",
            "tab\there\r\n",
            "ünïcödé ✓ \u{7f}",
            all.as_str(),
        ];
        let root: Arc<[Name]> = Arc::from(Vec::new());
        let deep: Arc<[Name]> = Arc::from(vec![Name::from("suite \"a\""), Name::from("b\u{1}")]);
        let mut lines = TestLines::default();
        for path in [&root, &deep, &deep, &root] {
            for name in names {
                for details in [
                    None,
                    Some(Details {
                        log_excerpt: Some(format!("not ok 1 {name}\n")),
                        measurement: Some(1.5e-7),
                        units: Some(name.to_string()),
                        error: Some("cut \u{8}\u{c} short".into()),
                    }),
                    Some(Details {
                        measurement: Some(f64::NAN),
                        ..Details::default()
                    }),
                ] {
                    let c = completed(path, name, details);
                    let mut out = Vec::new();
                    lines
                        .write(&mut out, std::slice::from_ref(&c))
                        .expect("writes");
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&reference(&c)),
                        "{name:?}"
                    );
                }
            }
        }
    }
}
