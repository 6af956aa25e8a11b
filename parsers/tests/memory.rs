//! The parser's memory is bounded whatever the log holds: a hostile log ten times longer
//! does not make it use more. Measured with a counting allocator (this test binary's only
//! test, so nothing else allocates meanwhile), with the tree and the progress queue off, as
//! a consumer that streams results uses it.

use labwire_parsers::{Format, LogParser, ParserOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One block of hostile log: nesting 300 levels deep (deeper than the parser follows),
/// results at every level with names that differ every time, failures with long
/// diagnostics, a 100 KiB line, LAVA signals left open, kernel crashes, binary garbage.
fn hostile_block(round: usize) -> Vec<u8> {
    let mut s = String::new();
    s.push_str("KTAP version 1\n1..5\n");
    for depth in 1..300 {
        let pad = " ".repeat(depth * 2);
        s.push_str(&format!(
            "{pad}KTAP version 1\n{pad}# Subtest: s{round}_{depth}\u{a0}\n{pad}1..3\n"
        ));
        for i in 0..3 {
            s.push_str(&format!("{pad}# diag {}\n", "x".repeat(200)));
            s.push_str(&format!(
                "{pad}not ok {i} case_{round}_{depth}_{i}\u{200b}\n"
            ));
        }
    }
    s.push_str(&"y".repeat(100 * 1024));
    s.push('\n');
    s.push_str(&format!(
        "<LAVA_SIGNAL_STARTRUN 0_r{round} 1>\n<LAVA_SIGNAL_TESTSET START set{round}>\n"
    ));
    for i in 0..50 {
        s.push_str(&format!(
            "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=tc{round}_{i} RESULT=fail>\n"
        ));
    }
    s.push_str("Kernel panic - not syncing: boom\nCall Trace:\n");
    s.push_str(&"  frame\n".repeat(200));
    let mut bytes = s.into_bytes();
    bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    bytes.push(b'\n');
    bytes
}

/// The most memory in use above the starting point while `total` bytes of hostile log are
/// parsed in 64 KiB chunks.
fn peak_while_parsing(total: usize) -> usize {
    let mut p = LogParser::new(ParserOptions {
        format: Format::Auto,
        pattern: None,
        keep_tree: false,
        progress: false,
    })
    .expect("parser");
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut fed = 0;
    let mut round = 0;
    while fed < total {
        let block = hostile_block(round);
        for chunk in block.chunks(64 * 1024) {
            p.feed(chunk);
        }
        fed += block.len();
        round += 1;
        drop(block);
    }
    let report = p.finish();
    assert!(report.counts.total() > 0);
    PEAK.load(Ordering::Relaxed) - base
}

#[test]
fn memory_does_not_grow_with_a_hostile_log() {
    let small = peak_while_parsing(2 << 20);
    let large = peak_while_parsing(20 << 20);
    eprintln!("peak above start: {small} bytes for 2 MiB of log, {large} bytes for 20 MiB");
    // Bounded by the open levels' excerpts (16 KiB each), one line and one log block.
    assert!(large < 16 << 20, "{large} bytes");
    assert!(
        large <= small + (256 << 10),
        "ten times the log took {large} bytes against {small}"
    );
}
