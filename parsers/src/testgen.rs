//! A generator of realistic KTAP console logs for benchmarks and tests: KUnit documents with
//! printk timestamps, nested suites, parameterised tests, diagnostics, failures with
//! expectation text, skips, interleaved kernel messages, an occasional WARNING trace, and
//! kselftest TAP 13 with `# ` nesting, with varying names. Deterministic (a fixed seed), so
//! two calls give the same bytes. Used by the `parse_bench` example and `labwire-bench`.

use std::fmt::Write as _;

/// A small deterministic random number generator (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const SUITES: &[&str] = &[
    "kunit_example",
    "list-kunit-test",
    "hash",
    "bitfields",
    "cpumask",
    "overflow",
    "memcpy",
    "siphash",
    "rational",
    "time_test_cases",
    "kfence",
    "drm_format",
    "ext4_inode_test",
    "sysctl_test",
    "string-stream-test",
    "kunit-resource-test",
    "mptcp-crypto",
    "qos-kunit-test",
];
const VERBS: &[&str] = &[
    "init", "add", "del", "parse", "copy", "lookup", "resize", "walk", "flush", "compare",
    "encode", "decode", "alloc", "free", "split", "merge", "shift", "rotate",
];
const OBJECTS: &[&str] = &[
    "empty",
    "single",
    "many",
    "tail",
    "head",
    "overlap",
    "boundary",
    "large",
    "unaligned",
    "negative",
    "zero",
    "max",
    "wraparound",
    "null",
    "nested",
];
const KMSGS: &[&str] = &[
    "random: crng reseeded on system resumption",
    "virtio_net virtio0 enp0s2: renamed from eth0",
    "EXT4-fs (vda): mounted filesystem 5a7c0e2b-4b1e-4b5e-9a3e-1f0d8c3b2a11 r/w with ordered data mode",
    "clocksource: tsc: mask: 0xffffffffffffffff max_cycles: 0x2e1e4a6a4a7, max_idle_ns: 440795235291 ns",
    "audit: type=1403 audit(1712570000.123:2): auid=4294967295 ses=4294967295 lsm=selinux res=1",
    "systemd[1]: Started systemd-journald.service - Journal Service.",
];

struct Gen {
    rng: Lcg,
    ts: u64,
    doc: u64,
}

impl Gen {
    fn stamp(&mut self, out: &mut String) {
        self.ts += 1 + self.rng.below(400);
        let _ = write!(
            out,
            "[{:5}.{:06}] ",
            self.ts / 1_000_000,
            self.ts % 1_000_000
        );
    }

    fn kline(&mut self, out: &mut String, text: &str) {
        self.stamp(out);
        out.push_str(text);
        out.push('\n');
    }

    fn test_name(&mut self, suite: &str, i: u64) -> String {
        let s = suite.replace('-', "_");
        format!(
            "{}_test_{}_{}_{}",
            s,
            self.rng.pick(VERBS),
            self.rng.pick(OBJECTS),
            i
        )
    }

    /// One KUnit document: a version line, a plan, several suites.
    fn kunit_doc(&mut self, out: &mut String) {
        self.doc += 1;
        let suites = 3 + self.rng.below(6);
        self.kline(out, "KTAP version 1");
        self.kline(out, &format!("1..{suites}"));
        for s in 1..=suites {
            let base = self.rng.pick(SUITES);
            let suite = format!("{base}-{}", self.doc % 1000);
            let tests = 4 + self.rng.below(20);
            self.kline(out, "    KTAP version 1");
            self.kline(out, &format!("    # Subtest: {suite}"));
            self.kline(out, &format!("    # module: {}", base.replace('-', "_")));
            self.kline(out, &format!("    1..{tests}"));
            let (mut pass, mut fail, mut skip) = (0, 0, 0);
            for t in 1..=tests {
                let name = self.test_name(base, t);
                if self.rng.below(12) == 0 {
                    let msg = self.rng.pick(KMSGS);
                    self.kline(out, msg);
                }
                if self.rng.below(400) == 0 {
                    self.warning(out);
                }
                let roll = self.rng.below(100);
                if roll < 8 {
                    self.kline(out, "        KTAP version 1");
                    self.kline(out, &format!("        # Subtest: {name}"));
                    let params = 2 + self.rng.below(6);
                    for p in 1..=params {
                        self.kline(out, &format!("        ok {p} {name} param-{p}"));
                    }
                    self.kline(
                        out,
                        &format!("    # {name}: pass:{params} fail:0 skip:0 total:{params}"),
                    );
                    self.kline(out, &format!("    ok {t} {name}"));
                    pass += 1;
                } else if roll < 11 {
                    let line = 20 + self.rng.below(900);
                    self.kline(
                        out,
                        &format!("    # {name}: EXPECTATION FAILED at lib/{base}.c:{line}"),
                    );
                    self.kline(out, "    Expected ptr == expected, but");
                    self.kline(out, "        ptr == ffff8880043e1c38");
                    self.kline(out, "        expected == ffff8880043e1c48");
                    self.kline(out, &format!("    not ok {t} {name}"));
                    fail += 1;
                } else if roll < 17 {
                    self.kline(
                        out,
                        &format!("    ok {t} {name} # SKIP not supported on this platform"),
                    );
                    skip += 1;
                } else {
                    if roll < 40 {
                        self.kline(out, &format!("    # {name}: initializing"));
                    }
                    self.kline(out, &format!("    ok {t} {name}"));
                    pass += 1;
                }
            }
            let total = pass + fail + skip;
            self.kline(
                out,
                &format!("# {suite}: pass:{pass} fail:{fail} skip:{skip} total:{total}"),
            );
            self.kline(
                out,
                &format!("# Totals: pass:{pass} fail:{fail} skip:{skip} total:{total}"),
            );
            let verdict = if fail > 0 { "not ok" } else { "ok" };
            self.kline(out, &format!("{verdict} {s} {suite}"));
        }
    }

    fn warning(&mut self, out: &mut String) {
        self.kline(out, "------------[ cut here ]------------");
        self.kline(
            out,
            "WARNING: CPU: 1 PID: 58 at lib/kunit/test.c:312 kunit_try_run_case+0x4e/0x110",
        );
        self.kline(out, "Modules linked in:");
        self.kline(
            out,
            "CPU: 1 PID: 58 Comm: kunit_try_catch Tainted: G N 6.9.0 #1",
        );
        self.kline(out, "Call Trace:");
        self.kline(out, " <TASK>");
        self.kline(out, " kunit_generic_run_threadfn_adapter+0x1c/0x40");
        self.kline(out, " kthread+0xe5/0x120");
        self.kline(out, " </TASK>");
        self.kline(out, "---[ end trace 0000000000000000 ]---");
    }

    /// One kselftest run as run_kselftest.sh prints it (user space: no timestamps).
    fn kselftest_doc(&mut self, out: &mut String) {
        let progs = 2 + self.rng.below(5);
        let col = self
            .rng
            .pick(&["timers", "net", "mm", "seccomp", "futex", "cgroup"]);
        let _ = writeln!(out, "TAP version 13\n1..{progs}");
        for p in 1..=progs {
            let prog = format!("{}_{}", self.rng.pick(VERBS), self.rng.below(100));
            let _ = writeln!(out, "# timeout set to 45\n# selftests: {col}: {prog}");
            let cases = 3 + self.rng.below(10);
            let _ = writeln!(out, "# TAP version 13\n# 1..{cases}");
            for c in 1..=cases {
                if self.rng.below(25) == 0 {
                    let _ = writeln!(out, "# ok {c} {prog} case {c} # SKIP missing CONFIG");
                } else {
                    let _ = writeln!(out, "# ok {c} {prog} case {c}");
                }
            }
            let _ = writeln!(
                out,
                "# # Totals: pass:{cases} fail:0 xfail:0 xpass:0 skip:0 error:0"
            );
            let _ = writeln!(out, "ok {p} selftests: {col}: {prog}");
        }
    }
}

/// Generates at least `bytes` bytes of log (whole documents, so a little more).
pub fn generate(bytes: usize) -> Vec<u8> {
    let mut g = Gen {
        rng: Lcg(0x5eed),
        ts: 400_000,
        doc: 0,
    };
    let mut out = String::with_capacity(bytes + 64 * 1024);
    while out.len() < bytes {
        if g.rng.below(5) == 0 {
            g.kselftest_doc(&mut out);
        } else {
            g.kunit_doc(&mut out);
        }
    }
    out.into_bytes()
}
