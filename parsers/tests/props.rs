//! Property tests: random bytes, random token soups and the corpus logs cut, chunked,
//! truncated and shuffled never make the parser panic; how the bytes are chunked never
//! changes the report; results handed out before a truncation point are the same in the
//! full log.

use labwire_common::NodeResult;
use labwire_parsers::{Completed, Format, LogParser, ParseReport, ParserOptions, PatternSpec};
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

fn corpus() -> &'static Vec<(String, Vec<u8>)> {
    static CORPUS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/data/parse");
        let mut logs: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .expect("corpus directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| {
                let bytes = std::fs::read(&p).expect("read log");
                (p.display().to_string(), bytes)
            })
            .collect();
        logs.sort();
        logs
    })
}

fn options(format: Format) -> ParserOptions {
    ParserOptions {
        format,
        pattern: Some(PatternSpec::new(
            r"^\[RESULT\] (?P<test_case_id>\S+): (?P<result>\w+)",
        )),
        ..ParserOptions::default()
    }
}

const FORMATS: [Format; 5] = [
    Format::Auto,
    Format::Ktap,
    Format::Lava,
    Format::Kmsg,
    Format::Pattern,
];

/// Feeds `log` in chunks of the given sizes (cycled), draining results after each chunk.
fn feed_chunked(format: Format, log: &[u8], sizes: &[usize]) -> (ParseReport, Vec<Completed>) {
    let mut p = LogParser::new(options(format)).expect("parser");
    let mut done = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < log.len() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let end = (at + n).min(log.len());
        p.feed(&log[at..end]);
        done.extend(p.drain_completed());
        at = end;
        i += 1;
    }
    let (report, rest) = p.finish_with_completed();
    done.extend(rest);
    (report, done)
}

fn one_shot(format: Format, log: &[u8]) -> ParseReport {
    let mut p = LogParser::new(options(format)).expect("parser");
    p.feed(log);
    p.finish()
}

/// Byte soups made of pieces of every format, so the parsers' states get exercised.
fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    let tokens: Vec<&'static [u8]> = vec![
        b"KTAP version 1\n",
        b"TAP version 13\n",
        b"KTAP version 2\n",
        b"    ",
        b"\t",
        b"# ",
        b"ok 1 a\n",
        b"not ok 2 b\n",
        b"ok 3 # SKIP\n",
        b"ok\n",
        b"1..2\n",
        b"1..0\n",
        b"# Subtest: s\n",
        b"#:ktap_test: t\n",
        b"Bail out! x\n",
        b"\r",
        b"\n",
        b"\r\n",
        b"[    1.234567] ",
        b"[    T1] ",
        b"<6>",
        b"kunit: ",
        b"<LAVA_SIGNAL_STARTRUN 0_a 1_2>",
        b"<LAVA_SIGNAL_ENDRUN 0_a 1_2>",
        b"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=c RESULT=pass MEASUREMENT=1 UNITS=s>",
        b"<LAVA_SIGNAL_TESTSET START set>",
        b"<LAVA_SIGNAL_TESTSET STOP>",
        b"<LAVA_SIGNAL_STARTTC c>",
        b"<LAVA_SIGNAL_ENDTC c>",
        b"<LAVA_SIGNAL_TESTRAISE boom>",
        b"<LAVA_SIGNAL_",
        b"Linux version 6.1\n",
        b"Booting Linux on physical CPU 0\n",
        b"BUG: x\n",
        b"Oops: 0 [#1]\n",
        b"Kernel panic - not syncing: y\n",
        b"WARNING: CPU: 0\n",
        b"Unable to handle kernel z\n",
        b"Internal error: Oops: 1\n",
        b"INFO: task t blocked for more than 1 seconds.\n",
        b"rcu: INFO: rcu_sched self-detected stall\n",
        b"Call Trace:\n",
        b" <TASK>\n",
        b" </TASK>\n",
        b"---[ end trace 0 ]---\n",
        b"------------[ cut here ]------------\n",
        b"[RESULT] t: PASS\n",
        b"\xff\xfe\xc3",
        b"\xe2\x82",
        b"\x00",
    ];
    proptest::collection::vec(proptest::sample::select(tokens), 0..300)
        .prop_map(|parts| parts.concat())
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..200, 1..20)
}

fn format() -> impl Strategy<Value = Format> {
    proptest::sample::select(FORMATS.to_vec())
}

fn corpus_log() -> impl Strategy<Value = usize> {
    0..corpus().len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_bytes_never_panic_and_chunking_does_not_matter(
        log in proptest::collection::vec(any::<u8>(), 0..3000),
        sizes in chunk_sizes(),
        format in format(),
    ) {
        let whole = one_shot(format, &log);
        let (chunked, _) = feed_chunked(format, &log, &sizes);
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn token_soups_never_panic_and_chunking_does_not_matter(
        log in token_soup(),
        sizes in chunk_sizes(),
        format in format(),
    ) {
        let whole = one_shot(format, &log);
        let (chunked, _) = feed_chunked(format, &log, &sizes);
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn corpus_logs_chunked_anywhere_give_the_same_report(
        idx in corpus_log(),
        sizes in chunk_sizes(),
        format in format(),
    ) {
        let (name, log) = &corpus()[idx];
        let whole = one_shot(format, log);
        let (chunked, _) = feed_chunked(format, log, &sizes);
        prop_assert_eq!(whole, chunked, "{}", name);
    }

    #[test]
    fn shuffled_corpus_lines_never_panic(
        idx in corpus_log(),
        seed in any::<u64>(),
        sizes in chunk_sizes(),
    ) {
        let (_, log) = &corpus()[idx];
        let mut lines: Vec<&[u8]> = log.split_inclusive(|&b| b == b'\n').collect();
        // A deterministic shuffle from the seed (Fisher-Yates with an LCG).
        let mut s = seed | 1;
        for i in (1..lines.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let j = (s >> 33) as usize % (i + 1);
            lines.swap(i, j);
        }
        let shuffled = lines.concat();
        let whole = one_shot(Format::Auto, &shuffled);
        let (chunked, _) = feed_chunked(Format::Auto, &shuffled, &sizes);
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn results_before_a_truncation_point_are_kept(
        idx in corpus_log(),
        cut in any::<proptest::sample::Index>(),
        sizes in chunk_sizes(),
        format in format(),
    ) {
        let (name, log) = &corpus()[idx];
        let at = cut.index(log.len() + 1);
        let truncated = &log[..at];
        let mut p = LogParser::new(options(format)).expect("parser");
        let mut before_end: Vec<Completed> = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < truncated.len() {
            let end = (pos + sizes[i % sizes.len()]).min(truncated.len());
            p.feed(&truncated[pos..end]);
            before_end.extend(p.drain_completed());
            pos = end;
            i += 1;
        }
        let (truncated_report, _) = p.finish_with_completed();
        let (full_report, full_done) = feed_chunked(format, log, &[65536]);
        let full: HashMap<u64, &Completed> = full_done.iter().map(|c| (c.id, c)).collect();
        for c in before_end.iter().filter(|c| c.leaf) {
            let other = full.get(&c.id);
            prop_assert!(other.is_some(), "{}: {:?} lost in the full log", name, c.node.name);
            if let Some(other) = other {
                prop_assert_eq!(&other.node, &c.node, "{}", name);
                prop_assert_eq!(&other.path, &c.path, "{}", name);
            }
        }
        // Leaves counted before the cut are counted in the full log too.
        let done_before: u64 = before_end.iter().filter(|c| c.leaf).count() as u64;
        prop_assert!(full_report.counts.total() >= done_before);
        prop_assert!(truncated_report.counts.total() >= done_before);
        // A failure seen before the cut fails the full run too.
        if before_end.iter().any(|c| c.node.result == NodeResult::Fail) {
            prop_assert_eq!(full_report.result, NodeResult::Fail, "{}", name);
        }
    }
}

#[test]
fn keep_tree_off_gives_the_same_counts_and_result() {
    for (name, log) in corpus() {
        for format in FORMATS {
            let kept = one_shot(format, log);
            let mut p = LogParser::new(ParserOptions {
                keep_tree: false,
                ..options(format)
            })
            .expect("parser");
            p.feed(log);
            let mut leaves = p.drain_completed().iter().filter(|c| c.leaf).count() as u64;
            let (flat, rest) = p.finish_with_completed();
            leaves += rest.iter().filter(|c| c.leaf).count() as u64;
            assert_eq!(kept.counts, flat.counts, "{name} {format:?}");
            assert_eq!(kept.result, flat.result, "{name} {format:?}");
            assert_eq!(kept.errors, flat.errors, "{name} {format:?}");
            assert!(flat.tests.is_empty());
            assert_eq!(leaves, flat.counts.total(), "{name} {format:?}");
        }
    }
}
