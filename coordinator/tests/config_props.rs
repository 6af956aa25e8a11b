//! Property tests of the coordinator's config loaders (`coordinator.yaml`, the pipeline
//! files, `placement.yaml`): random text, YAML-looking token soups and the shipped examples
//! damaged (cut, a line dropped, a byte changed) never make a loader panic: each is loaded
//! or refused with a message. YAML alias bombs and deep nesting are refused or loaded
//! within bounded time and memory. (The agent's loader has the same tests in
//! `agent/src/config.rs`.)

use labwire_coordinator::config::CoordinatorConfig;
use labwire_coordinator::pipeline_config::PipelineConfig;
use labwire_coordinator::placement::Placement;
use proptest::prelude::*;

const EXAMPLES: [&str; 3] = [
    include_str!("../../config/coordinator.yaml"),
    include_str!("../../config/pipeline.yaml"),
    include_str!("../../config/placement.yaml"),
];

/// Runs every loader on `text`; a refusal must say something.
fn load_all(text: &str) -> Result<(), TestCaseError> {
    let said = |e: anyhow::Error| !format!("{e:#}").is_empty();
    if let Err(e) = CoordinatorConfig::parse(text) {
        prop_assert!(said(e));
    }
    match PipelineConfig::parse(text) {
        Ok(loaded) => {
            if let Err(e) = loaded.config.validate() {
                prop_assert!(said(e));
            }
        }
        Err(e) => prop_assert!(said(e)),
    }
    if let Err(e) = Placement::parse(text) {
        prop_assert!(said(e));
    }
    Ok(())
}

fn yaml_soup() -> impl Strategy<Value = String> {
    let tokens: Vec<&'static str> = vec![
        "\n",
        "  ",
        "- ",
        ": ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "&a ",
        "*a",
        "<<: *a\n",
        "!!str ",
        "~",
        "null",
        "true",
        "0",
        "-1",
        "99999999999999999999",
        "10s",
        "1h",
        "bogus",
        "listen",
        "store",
        "sqlite:///x",
        "postgres://u@h/db",
        "leases",
        "duration",
        "heartbeat",
        "results",
        "max_tests",
        "jobs",
        "platforms",
        "runtimes",
        "scheduler",
        "event",
        "channel",
        "kind",
        "rules",
        "runs",
        "variant",
        "mode",
        "labs",
        "pins",
        "allow",
        "deny",
        "weight",
        "max_in_flight",
        "\"",
        "'",
        "#",
        "\u{a0}",
        "\t",
        "\0",
    ];
    proptest::collection::vec(proptest::sample::select(tokens), 0..200)
        .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any printable text is loaded or refused, never a panic.
    #[test]
    fn random_text_never_panics(s in "\\PC{0,400}") {
        load_all(&s)?;
    }

    /// YAML-looking soups of the keys the loaders know, anchors and merge keys.
    #[test]
    fn yaml_soups_never_panic(s in yaml_soup()) {
        load_all(&s)?;
    }

    /// Each shipped example, cut anywhere, with a line dropped or a byte changed.
    #[test]
    fn damaged_examples_never_panic(
        which in 0usize..3,
        cut in any::<proptest::sample::Index>(),
        drop_line in any::<proptest::sample::Index>(),
        at in any::<proptest::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let good = EXAMPLES[which];
        load_all(&good[..good.floor_char_boundary(cut.index(good.len() + 1))])?;
        let lines: Vec<&str> = good.lines().collect();
        let skip = drop_line.index(lines.len());
        let without: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        load_all(&without)?;
        let mut bytes = good.as_bytes().to_vec();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        load_all(&String::from_utf8_lossy(&bytes))?;
    }
}

#[test]
fn the_examples_load() {
    assert!(CoordinatorConfig::parse(EXAMPLES[0]).is_ok());
    let p = PipelineConfig::parse(EXAMPLES[1]).expect("pipeline example");
    p.config.validate().expect("pipeline example is consistent");
    assert!(Placement::parse(EXAMPLES[2]).is_ok());
}

/// A "billion laughs" of aliases and merge keys, and nesting 2,000 deep: refused or loaded
/// without exhausting memory or the stack (a hang fails by the test runner's timeout).
#[test]
fn alias_bombs_and_deep_nesting_are_bounded() {
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        bomb.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            std::iter::repeat_n(prev.as_str(), 10)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut merge = String::from("m0: &m0 {k0: v}\n");
    for i in 1..40 {
        merge.push_str(&format!("m{i}: &m{i} {{<<: *m{}, k{i}: v}}\n", i - 1));
    }
    merge.push_str("jobs:\n  j:\n    <<: *m39\n");
    let deep = format!("jobs: {}x{}\n", "[".repeat(2_000), "]".repeat(2_000));
    let deep_map = format!("placement:{}\n", " {a:".repeat(2_000));
    for (what, text) in [
        ("aliases", bomb),
        ("merge keys", merge),
        ("deep list", deep),
        ("deep map", deep_map),
    ] {
        let started = std::time::Instant::now();
        let _ = CoordinatorConfig::parse(&text);
        let _ = PipelineConfig::parse(&text);
        let _ = Placement::parse(&text);
        // Not a timed test: shown for whoever reads the output; a hang fails by timeout.
        eprintln!("{what}: {:?}", started.elapsed());
    }
}
