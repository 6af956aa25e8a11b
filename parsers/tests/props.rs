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

/// A generated KTAP test: a leaf with its result, or a subtest with members.
#[derive(Debug, Clone)]
enum Gen {
    Leaf(String, NodeResult),
    Group(String, Vec<Gen>),
}

impl Gen {
    /// Tests counted as leaves by the parser: leaves and subtests without members.
    fn leaves(&self) -> u64 {
        match self {
            Gen::Leaf(..) => 1,
            Gen::Group(_, kids) if kids.is_empty() => 1,
            Gen::Group(_, kids) => kids.iter().map(Gen::leaves).sum(),
        }
    }
}

/// Names as hostile as a board can print on one line: any Unicode (blanks, NBSP, control
/// and invisible characters included), empty, very long.
fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z_]{1,12}",
        2 => "\\PC{0,16}",
        2 => any::<String>(),
        1 => Just(String::new()),
        1 => "[a-z]{1,6}".prop_map(|s| format!("{s}\u{a0}")),
        1 => "[a-z]{1,6}".prop_map(|s| format!("\u{200b}{s}\t\u{3000}{s} ")),
        1 => "[a-z]{300,600}",
    ]
    // One line each: the parser splits at \n and \r.
    .prop_map(|s| s.replace(['\n', '\r'], " "))
}

fn any_result() -> impl Strategy<Value = NodeResult> {
    proptest::sample::select(NodeResult::ALL.to_vec())
}

/// Trees of tests a few levels deep, and now and then a chain far deeper than the
/// coordinator keeps (32 levels).
fn any_tests() -> impl Strategy<Value = Vec<Gen>> {
    let leaf = (any_name(), any_result()).prop_map(|(n, r)| Gen::Leaf(n, r));
    let tree = leaf.prop_recursive(6, 120, 6, |inner| {
        (any_name(), proptest::collection::vec(inner, 0..6)).prop_map(|(n, k)| Gen::Group(n, k))
    });
    let chain = (20usize..90, any_name(), any_result()).prop_map(|(depth, name, r)| {
        let mut t = Gen::Leaf(name, r);
        for i in 0..depth {
            t = Gen::Group(format!("level{i}"), vec![t]);
        }
        t
    });
    proptest::collection::vec(prop_oneof![6 => tree, 1 => chain], 1..6)
}

/// KTAP as KUnit prints it: a version line, a plan, `# Subtest:` headers, members indented
/// by four spaces more than their subtest's result line.
fn render(tests: &[Gen], indent: &str, out: &mut String) {
    out.push_str(&format!("{indent}1..{}\n", tests.len()));
    for (i, t) in tests.iter().enumerate() {
        let (name, result) = match t {
            Gen::Leaf(name, r) => (name, *r),
            Gen::Group(name, kids) => {
                let inner = format!("{indent}    ");
                out.push_str(&format!(
                    "{inner}KTAP version 1\n{inner}# Subtest: {name}\n"
                ));
                render(kids, &inner, out);
                (name, NodeResult::Pass)
            }
        };
        let line = match result {
            NodeResult::Pass | NodeResult::Incomplete => format!("ok {} {name}", i + 1),
            NodeResult::Fail => format!("not ok {} {name}", i + 1),
            NodeResult::Skip => format!("ok {} {name} # SKIP", i + 1),
        };
        out.push_str(&format!("{indent}{line}\n"));
    }
}

fn ktap(tests: &[Gen]) -> Vec<u8> {
    let mut s = String::from("KTAP version 1\n");
    render(tests, "", &mut s);
    s.into_bytes()
}

/// What the coordinator requires of a report's tree, and what the parser promises: valid,
/// sibling-unique names, at most 32 levels, a shape the common rule leaves as it is, and
/// counts that match the tree's leaves unless tests were moved up.
fn assert_stored_as_is(report: &ParseReport) -> Result<(), TestCaseError> {
    use labwire_common::{names, normalise};
    let mut stack: Vec<&[labwire_common::TestNode]> = vec![&report.tests];
    while let Some(level) = stack.pop() {
        let mut seen = std::collections::HashSet::new();
        for t in level {
            prop_assert!(names::check(&t.name).is_ok(), "invalid name {:?}", t.name);
            prop_assert!(seen.insert(t.name.as_str()), "duplicate name {:?}", t.name);
            stack.push(&t.tests);
        }
    }
    prop_assert!(normalise::depth(&report.tests) <= normalise::MAX_DEPTH);
    let mut again = report.tests.clone();
    let changes = normalise::normalise(&mut again, normalise::MAX_DEPTH).changes;
    prop_assert!(
        changes.is_empty(),
        "the common rule changed the report: {:?}",
        changes
    );
    let flattened = report
        .errors
        .iter()
        .any(|e| e.message.contains("were moved up"));
    let tree = normalise::TreeCounts::of(&report.tests);
    if flattened {
        prop_assert!(tree.leaves() >= report.counts.total());
    } else {
        let by_result = (tree.pass, tree.fail, tree.skip, tree.incomplete);
        let c = report.counts;
        prop_assert_eq!(by_result, (c.pass, c.fail, c.skip, c.incomplete));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Generated KTAP with hostile names and any nesting: every test is counted, and the
    /// report's tree is one the coordinator stores as it is.
    #[test]
    fn generated_ktap_is_counted_and_shaped_for_the_store(
        tests in any_tests(),
        sizes in chunk_sizes(),
    ) {
        let log = ktap(&tests);
        let whole = one_shot(Format::Ktap, &log);
        let expected: u64 = tests.iter().map(Gen::leaves).sum();
        prop_assert_eq!(whole.counts.total(), expected, "{}", String::from_utf8_lossy(&log));
        assert_stored_as_is(&whole)?;
        let (chunked, _) = feed_chunked(Format::Auto, &log, &sizes);
        assert_stored_as_is(&chunked)?;
    }

    /// The same logs damaged (cut anywhere, a line dropped, a byte changed): never a
    /// panic, and the report still has the shape the store takes.
    #[test]
    fn damaged_ktap_still_gives_a_storable_report(
        tests in any_tests(),
        cut in any::<proptest::sample::Index>(),
        drop_line in any::<proptest::sample::Index>(),
        flip in any::<proptest::sample::Index>(),
        byte in any::<u8>(),
        format in format(),
    ) {
        let log = ktap(&tests);
        let mut lines: Vec<&[u8]> = log.split_inclusive(|&b| b == b'\n').collect();
        if !lines.is_empty() {
            lines.remove(drop_line.index(lines.len()));
        }
        let mut damaged = lines.concat();
        if !damaged.is_empty() {
            let i = flip.index(damaged.len());
            damaged[i] = byte;
        }
        damaged.truncate(cut.index(damaged.len() + 1));
        let report = one_shot(format, &damaged);
        assert_stored_as_is(&report)?;
    }
}
