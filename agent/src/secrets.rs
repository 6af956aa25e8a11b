//! Secrets of the agent's configuration (a board's login password, a LAVA token): a type
//! that never prints its value.

use serde::Deserialize;

/// A secret from the config; it prints as `MASKED` in `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MASKED")
    }
}

/// Secrets at least this long are masked wherever they appear in a job log. A shorter one
/// (a board's `root` password) would also mask ordinary words of the log, so it is masked
/// only where the agent knows it is: the echo of a password it typed, an argument it
/// expanded from a secret setting. GitLab masks variables by the same rule.
pub(crate) const MIN_MASKED_LEN: usize = 8;

/// What a masked secret becomes in the log.
pub(crate) const MASK: &[u8] = b"[MASKED]";

/// Masks secrets in a stream of log bytes, also across chunk boundaries: bytes that may be
/// the start of a secret are held back until the next chunk tells.
#[derive(Debug, Default)]
pub(crate) struct Masker {
    /// Secrets masked everywhere (at least [`MIN_MASKED_LEN`] bytes).
    always: Vec<Vec<u8>>,
    /// Secrets masked at their next occurrence only (the echo of a typed password).
    once: Vec<Vec<u8>>,
    /// Bytes held back: a proper prefix of a secret, at the end of what came so far.
    held: Vec<u8>,
}

impl Masker {
    /// A masker of `secrets` (those shorter than [`MIN_MASKED_LEN`] are left out).
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut always: Vec<Vec<u8>> = secrets
            .into_iter()
            .filter(|s| s.0.len() >= MIN_MASKED_LEN)
            .map(|s| s.0.as_bytes().to_vec())
            .collect();
        // Longest first, so that a secret containing another is masked whole.
        always.sort_by_key(|s| std::cmp::Reverse(s.len()));
        always.dedup();
        Masker {
            always,
            ..Default::default()
        }
    }

    /// Whether nothing is masked.
    pub(crate) fn is_empty(&self) -> bool {
        self.always.is_empty() && self.once.is_empty()
    }

    /// Masks the next occurrence of `secret`, whatever its length (until [`Masker::disarm`]).
    pub(crate) fn arm_once(&mut self, secret: &str) {
        if !secret.is_empty() {
            self.once.push(secret.as_bytes().to_vec());
        }
    }

    /// Forgets the secrets armed with [`Masker::arm_once`] that did not occur.
    pub(crate) fn disarm(&mut self) {
        self.once.clear();
    }

    /// Takes the next bytes of the stream; returns what can be written now (masked).
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.is_empty() && self.held.is_empty() {
            return data.to_vec();
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        self.scan(&buf, false)
    }

    /// Gives back the bytes held back, masked (the stream ends, or something else is written
    /// in between, so the secret they may start cannot follow them).
    pub(crate) fn release(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        self.scan(&held, true)
    }

    /// Masks `buf`; unless `at_end`, a tail that may still grow into a (longer) secret is
    /// held back instead of written.
    fn scan(&mut self, buf: &[u8], at_end: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            let rest = &buf[i..];
            if !at_end {
                let prefix = |s: &Vec<u8>| rest.len() < s.len() && s.starts_with(rest);
                if self.always.iter().any(prefix) || self.once.iter().any(prefix) {
                    self.held = rest.to_vec();
                    return out;
                }
            }
            // The longest secret that starts here.
            let once = (0..self.once.len())
                .filter(|&k| rest.starts_with(&self.once[k]))
                .max_by_key(|&k| self.once[k].len());
            let always = self
                .always
                .iter()
                .find(|s| rest.starts_with(s))
                .map(Vec::len);
            match (once, always) {
                (Some(k), a) if a.is_none_or(|a| a <= self.once[k].len()) => {
                    out.extend_from_slice(MASK);
                    i += self.once[k].len();
                    self.once.remove(k);
                    continue 'scan;
                }
                (_, Some(len)) => {
                    out.extend_from_slice(MASK);
                    i += len;
                    continue 'scan;
                }
                _ => {}
            }
            out.push(buf[i]);
            i += 1;
        }
        out
    }

    /// Masks a whole text at once (a line labwire writes itself).
    pub(crate) fn mask_text(&self, text: &str) -> String {
        let mut t = text.to_string();
        for s in &self.always {
            if let Ok(s) = std::str::from_utf8(s) {
                t = t.replace(s, std::str::from_utf8(MASK).unwrap_or("[MASKED]"));
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret(s: &str) -> Secret {
        Secret(s.to_string())
    }

    /// Feeds `text` in the given chunk sizes (cycled) and returns the whole output.
    fn stream(m: &mut Masker, text: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = text;
        let mut k = 0;
        while !rest.is_empty() {
            let n = sizes[k % sizes.len()].clamp(1, rest.len());
            out.extend(m.push(&rest[..n]));
            rest = &rest[n..];
            k += 1;
        }
        out.extend(m.release());
        out
    }

    #[test]
    fn secrets_are_masked_across_every_split() {
        let text = b"token=hunter2hunter2; again hunter2hunter2 and hunter2hunter no";
        let want = b"token=[MASKED]; again [MASKED] and hunter2hunter no".to_vec();
        for size in 1..text.len() {
            let mut m = Masker::new(&[secret("hunter2hunter2")]);
            assert_eq!(stream(&mut m, text, &[size]), want, "chunks of {size}");
        }
    }

    #[test]
    fn short_secrets_are_masked_only_where_armed() {
        let mut m = Masker::new(&[secret("labwire")]);
        assert!(m.is_empty());
        assert_eq!(m.push(b"root@labwire-board"), b"root@labwire-board");
        m.arm_once("labwire");
        let out = stream(&mut m, b"Password: lab", &[100]);
        assert_eq!(out, b"Password: lab");
        let mut m = Masker::new(&[]);
        m.arm_once("labwire");
        let mut out = m.push(b"Password: lab");
        out.extend(m.push(b"wire\r\nroot@labwire-board:~# "));
        out.extend(m.release());
        assert_eq!(out, b"Password: [MASKED]\r\nroot@labwire-board:~# ");
        // Armed, not seen, disarmed: later text is left alone.
        m.arm_once("secret");
        m.disarm();
        assert_eq!(m.push(b"a secret"), b"a secret");
    }

    #[test]
    fn the_longest_secret_wins_and_text_is_masked_whole() {
        let m = Masker::new(&[secret("abcdefgh"), secret("abcdefghijkl")]);
        assert_eq!(
            m.mask_text("x abcdefghijkl y abcdefgh"),
            "x [MASKED] y [MASKED]"
        );
        let mut m = m;
        assert_eq!(stream(&mut m, b"abcdefghijkl", &[3]), b"[MASKED]");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the text around it and however the stream is cut, the secret never
        /// comes out, and text without it comes out unchanged.
        #[test]
        fn never_leaks(before in "[a-z ]{0,40}", after in "[a-z ]{0,40}", sizes in proptest::collection::vec(1usize..20, 1..6)) {
            let s = "Sekr3t-Pa55";
            let mut m = Masker::new(&[secret(s)]);
            let text = format!("{before}{s}{after}{s}");
            let out = stream(&mut m, text.as_bytes(), &sizes);
            let out = String::from_utf8(out).unwrap();
            prop_assert!(!out.contains(s), "{}", out);
            prop_assert_eq!(out, format!("{before}[MASKED]{after}[MASKED]"));
        }
    }
}
