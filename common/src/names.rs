//! One rule for test names, applied where names are made (the log parsers) and where they
//! are stored (the coordinator), so that the two never disagree on what a valid name is.
//!
//! The rule:
//! - **Blanks.** Whitespace (Unicode `White_Space`: spaces, tabs, line breaks, the
//!   non-breaking space U+00A0, U+2007, U+3000, ...) and control characters (`Cc`: NUL,
//!   escape, DEL, C1) are *blanks*: blanks at either end are dropped and each run of blanks
//!   inside a name becomes one ASCII space. Invisible formatting characters (zero-width
//!   space U+200B, LRM/RLM U+200E/U+200F, the bidirectional embeddings and isolates
//!   U+202A-U+202E and U+2066-U+2069, word joiner and invisible operators U+2060-U+2064,
//!   the byte-order mark U+FEFF) are dropped. Zero-width (non-)joiners stay: scripts and
//!   emoji need them.
//! - **Empty.** A name with nothing left is replaced by the test's number in its suite
//!   (`1`, `2`, ...).
//! - **Length.** A name longer than [`MAX_NAME_BYTES`] bytes of UTF-8 is cut at a character
//!   boundary and ends in `~` and 8 hexadecimal digits of a hash of the whole name, so two
//!   long names that differ only at the end stay different.
//! - **Siblings.** Names are unique among siblings: the second `x` becomes `x#2`, the third
//!   `x#3` (a suffix that is itself taken moves on to the next number). See [`UniqueNames`].
//!
//! [`check`] tells whether a name already follows the rule (what the store accepts);
//! [`test_name`] makes a valid name of anything.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// The longest test name kept, in bytes of UTF-8. KUnit and kselftest names are far
/// shorter; a longer name is shortened (see the module documentation).
pub const MAX_NAME_BYTES: usize = 256;

/// Bytes of the suffix a shortened name ends in: `~` and 8 hexadecimal digits.
const HASH_SUFFIX_BYTES: usize = 9;

/// Why a name does not follow the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing but blanks, or nothing at all.
    #[error("is empty")]
    Empty,
    /// Longer than [`MAX_NAME_BYTES`].
    #[error("is {0} bytes long (at most {MAX_NAME_BYTES})")]
    TooLong(usize),
    /// Holds a control or invisible formatting character.
    #[error("contains the control or invisible character {}", Escaped(*.0))]
    Control(char),
    /// Starts or ends with whitespace, or holds whitespace other than single spaces.
    #[error("has whitespace at an end, or whitespace other than single spaces ({})", Escaped(*.0))]
    Spacing(char),
}

/// A character shown as `U+XXXX`.
struct Escaped(char);

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "U+{:04X}", u32::from(self.0))
    }
}

/// Invisible formatting characters that are dropped from names.
#[inline]
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// Whitespace or a control character: a run of them becomes one space.
#[inline]
fn is_blank(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

/// Whether `name` is unchanged by [`clean`]: no blank at either end, no blank but single
/// ASCII spaces inside, no invisible character.
#[inline]
pub fn is_clean(name: &str) -> bool {
    clean_ascii(name.as_bytes()) || first_flaw(name).is_none()
}

const HIGH: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;

/// True when `bytes` is ASCII and clean; false when not, or not ASCII (then
/// [`first_flaw`] decides). Test names are short and parsers check millions of them, so
/// this reads 8 bytes at a time with exact per-byte flags (no carries between bytes).
#[inline]
fn clean_ascii(bytes: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return true;
    };
    if first == b' ' || last == b' ' {
        return false;
    }
    let mut bad = 0;
    let mut space_before = 0;
    let n = bytes.len();
    if n < 8 {
        // Built in a register, padded with `a`.
        let mut word = u64::from_le_bytes(*b"aaaaaaaa");
        for (i, &b) in bytes.iter().enumerate() {
            word = (word & !(0xFF << (8 * i))) | (u64::from(b) << (8 * i));
        }
        return word_flaws(word, &mut space_before) == 0;
    }
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        bad |= word_flaws(load(w), &mut space_before);
    }
    if !words.remainder().is_empty() {
        // The last 8 bytes, overlapping the last whole word: a pair of spaces across the
        // overlap lies inside one of the two words.
        let mut none = 0;
        bad |= word_flaws(load(&bytes[n - 8..]), &mut none);
    }
    bad == 0
}

#[inline(always)]
fn load(eight: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&eight[..8]);
    u64::from_le_bytes(word)
}

/// The high bit of each byte of `w` that is not ASCII, a control character, DEL, or a
/// space after a space (`space_before`: the previous word ended in a space).
#[inline(always)]
fn word_flaws(w: u64, space_before: &mut u64) -> u64 {
    let low = w & LOW7;
    // Each byte of `low` is at most 0x7F: adding at most 0x7F never carries into the next.
    let control = !(low + 0x6060_6060_6060_6060) & HIGH; // below 0x20
    let del = (low + 0x0101_0101_0101_0101) & HIGH; // 0x7F
    let space = !((low ^ 0x2020_2020_2020_2020) + LOW7) & HIGH; // 0x20
    let double = (space & (space << 8)) | (space & *space_before);
    *space_before = (space >> 56) & 0x80;
    (w & HIGH) | control | del | double
}

/// The first character that [`clean`] would change, if any.
fn first_flaw(name: &str) -> Option<char> {
    let bytes = name.as_bytes();
    if bytes.is_ascii() {
        let last = bytes.len().wrapping_sub(1);
        for (i, &b) in bytes.iter().enumerate() {
            let flaw = match b {
                0x00..=0x1F | 0x7F => true,
                b' ' => i == 0 || i == last || bytes[i - 1] == b' ',
                _ => false,
            };
            if flaw {
                return Some(char::from(b));
            }
        }
        return None;
    }
    let mut prev_space = true; // a blank first character is a flaw
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if is_invisible(c) || (is_blank(c) && c != ' ') {
            return Some(c);
        }
        if c == ' ' {
            if prev_space || chars.peek().is_none() {
                return Some(c);
            }
            prev_space = true;
        } else {
            prev_space = false;
        }
    }
    None
}

/// `name` with blanks at the ends dropped, each run of blanks inside made one space and
/// invisible characters dropped. Borrowed when nothing changes.
pub fn clean(name: &str) -> Cow<'_, str> {
    if is_clean(name) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len());
    let mut pending_space = false;
    for c in name.chars() {
        if is_invisible(c) {
            continue;
        }
        if is_blank(c) {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// FNV-1a, 32 bits: a stable hash (the same in every version and on every host), so a
/// shortened name is the same wherever and whenever it is shortened.
fn fnv1a32(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `name` cut to at most `max` bytes (at least 16): the longest prefix that fits, ending on
/// a character boundary, then `~` and 8 hexadecimal digits of a hash of the whole name.
/// Borrowed when it fits.
pub fn shorten(name: &str, max: usize) -> Cow<'_, str> {
    let max = max.max(16);
    if name.len() <= max {
        return Cow::Borrowed(name);
    }
    let mut keep = max - HASH_SUFFIX_BYTES;
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    // A cut right after a space would leave `x ~hash`: still clean (one inner space).
    Cow::Owned(format!("{}~{:08x}", &name[..keep], fnv1a32(name)))
}

/// The name a test gets from whatever it was called: [`clean`]ed, its number in its suite
/// (`number`, from 1) when nothing is left, and [`shorten`]ed to [`MAX_NAME_BYTES`].
pub fn test_name(raw: &str, number: u64) -> Cow<'_, str> {
    match clean(raw) {
        Cow::Borrowed("") => Cow::Owned(number.to_string()),
        Cow::Owned(s) if s.is_empty() => Cow::Owned(number.to_string()),
        Cow::Borrowed(s) => shorten(s, MAX_NAME_BYTES),
        Cow::Owned(s) => Cow::Owned(shorten(&s, MAX_NAME_BYTES).into_owned()),
    }
}

/// Checks that `name` follows the rule: not empty, [`is_clean`], at most
/// [`MAX_NAME_BYTES`] bytes. The store refuses any node name that does not.
pub fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(c) = first_flaw(name) {
        return Err(if is_invisible(c) || c.is_control() {
            NameError::Control(c)
        } else if clean(name).is_empty() {
            NameError::Empty
        } else {
            NameError::Spacing(c)
        });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    Ok(())
}

/// Makes the names of one group's members unique, in the order they come: the first `x`
/// stays `x`, the next ones become `x#2`, `x#3`, ... (skipping suffixes already taken), cut
/// so that they stay within [`MAX_NAME_BYTES`]. Names given in are expected to be valid
/// ([`test_name`]); the names handed out are valid too.
#[derive(Debug, Default, Clone)]
pub struct UniqueNames {
    /// Every name handed out, with the last suffix number tried for it.
    seen: HashMap<String, u32>,
}

impl UniqueNames {
    /// `name` if no sibling has it yet, else the next free `name#N`.
    pub fn unique(&mut self, name: String) -> String {
        let Some(&last) = self.seen.get(&name) else {
            self.seen.insert(name.clone(), 1);
            return name;
        };
        let mut n = last;
        loop {
            n += 1;
            let suffix = format!("#{n}");
            let base = shorten(&name, MAX_NAME_BYTES - suffix.len());
            let candidate = format!("{base}{suffix}");
            if !self.seen.contains_key(&candidate) {
                self.seen.insert(name, n);
                self.seen.insert(candidate.clone(), 1);
                return candidate;
            }
        }
    }

    /// Whether `name` was handed out already.
    pub fn contains(&self, name: &str) -> bool {
        self.seen.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blanks_are_trimmed_and_runs_become_one_space() {
        for (raw, want) in [
            ("plain", "plain"),
            ("  ascii  ", "ascii"),
            ("nbsp\u{a0}", "nbsp"),
            ("\u{3000}ideographic\u{2007}", "ideographic"),
            ("a\t\tb", "a b"),
            ("a \u{a0}\n b", "a b"),
            ("nul\0in\0side", "nul in side"),
            ("esc\u{1b}[31mred", "esc [31mred"),
            ("zero\u{200b}width", "zerowidth"),
            ("bidi\u{202e}txet", "biditxet"),
            ("\u{feff}bom", "bom"),
            ("a \u{200b} b", "a b"),
            ("emoji\u{200d}joined", "emoji\u{200d}joined"),
            ("déjà vu", "déjà vu"),
            ("\u{a0}\u{a0}", ""),
            ("", ""),
        ] {
            assert_eq!(clean(raw), want, "{raw:?}");
            assert_eq!(is_clean(raw), raw == want, "{raw:?}");
        }
        assert!(matches!(clean("fine name"), Cow::Borrowed(_)));
    }

    #[test]
    fn empty_names_get_their_number() {
        assert_eq!(test_name("", 3), "3");
        assert_eq!(test_name(" \u{a0}\t", 12), "12");
        assert_eq!(test_name("x", 12), "x");
    }

    #[test]
    fn long_names_are_cut_and_stay_distinct() {
        let a = format!("{}a", "é".repeat(200));
        let b = format!("{}b", "é".repeat(200));
        let (sa, sb) = (test_name(&a, 1), test_name(&b, 1));
        assert!(sa.len() <= MAX_NAME_BYTES && sb.len() <= MAX_NAME_BYTES);
        assert_ne!(sa, sb);
        assert!(check(&sa).is_ok() && check(&sb).is_ok());
        assert_eq!(test_name(&a, 1), sa, "the same name is cut the same way");
        let exact = "x".repeat(MAX_NAME_BYTES);
        assert_eq!(test_name(&exact, 1), exact);
    }

    #[test]
    fn check_names_the_flaw() {
        assert_eq!(check(""), Err(NameError::Empty));
        assert_eq!(check("\u{a0}"), Err(NameError::Empty));
        assert_eq!(check("x\u{a0}"), Err(NameError::Spacing('\u{a0}')));
        assert_eq!(check(" x"), Err(NameError::Spacing(' ')));
        assert_eq!(check("a  b"), Err(NameError::Spacing(' ')));
        assert_eq!(check("a\0b"), Err(NameError::Control('\0')));
        assert_eq!(check("a\u{200b}b"), Err(NameError::Control('\u{200b}')));
        let long = "y".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(check(&long), Err(NameError::TooLong(MAX_NAME_BYTES + 1)));
        assert_eq!(check("a b/c.sh:d#2"), Ok(()));
        let e = check("a\0b").unwrap_err().to_string();
        assert!(e.contains("U+0000"), "{e}");
    }

    #[test]
    fn siblings_are_made_unique() {
        let mut u = UniqueNames::default();
        let got: Vec<String> = ["a", "a", "a#2", "a", "b"]
            .iter()
            .map(|n| u.unique(n.to_string()))
            .collect();
        assert_eq!(got, ["a", "a#2", "a#2#2", "a#3", "b"]);
        let long = "z".repeat(MAX_NAME_BYTES);
        let mut u = UniqueNames::default();
        assert_eq!(u.unique(long.clone()), long);
        let second = u.unique(long.clone());
        assert!(
            second.len() <= MAX_NAME_BYTES && second.ends_with("#2"),
            "{second}"
        );
        assert!(check(&second).is_ok());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn hostile() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[ \t\u{a0}\u{200b}\u{3000}a-c\u{0}\u{1b}\u{feff}\u{202e}]{0,12}",
                "[a-z\u{e9}]{250,300}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Cleaning gives a clean name, twice is once, and `is_clean` says exactly when
            /// it changes nothing; `test_name` always gives a name `check` accepts, and
            /// leaves a valid one as it is.
            #[test]
            fn the_rule_is_consistent(s in hostile(), n in 1u64..1000) {
                let c = clean(&s);
                prop_assert!(is_clean(&c));
                prop_assert_eq!(clean(&c), c.clone());
                prop_assert_eq!(is_clean(&s), c == s);
                let t = test_name(&s, n);
                prop_assert!(check(&t).is_ok(), "{:?} -> {:?}", s, t);
                if check(&s).is_ok() {
                    prop_assert_eq!(t.as_ref(), s.as_str());
                }
            }

            /// The 8-bytes-at-a-time check agrees with the plain one on ASCII.
            #[test]
            fn the_fast_check_agrees(s in "[ a~\\t\\x00\\x1f\\x7f]{0,40}|[ a]{0,24}") {
                prop_assert_eq!(clean_ascii(s.as_bytes()), first_flaw(&s).is_none(), "{:?}", s);
            }

            /// Siblings get distinct valid names; the first of each keeps its own.
            #[test]
            fn siblings_end_up_distinct(list in proptest::collection::vec(hostile(), 0..30)) {
                let mut u = UniqueNames::default();
                let mut seen = std::collections::HashSet::new();
                for (i, raw) in list.iter().enumerate() {
                    let name = test_name(raw, i as u64 + 1).into_owned();
                    let first = !u.contains(&name);
                    let got = u.unique(name.clone());
                    prop_assert!(check(&got).is_ok(), "{:?}", got);
                    prop_assert!(seen.insert(got.clone()), "{:?} twice", got);
                    if first {
                        prop_assert_eq!(got, name);
                    }
                }
            }
        }
    }
}
