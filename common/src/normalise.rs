//! Puts a result tree in the shape that every labwire component accepts: names that follow
//! the [`crate::names`] rule, unique among siblings, and no test deeper than
//! [`MAX_DEPTH`] levels. The log parsers apply it to what they report and the coordinator
//! to what it stores, so a tree that one of them made is never changed by the other.
//!
//! Nesting deeper than the limit is *flattened*: a test at the deepest level keeps its
//! place, its own result and details, and loses its members; all its descendants follow it
//! as its siblings, in the order they came, named by their path from it joined with `/`
//! (`suite/case`, `suite/group/case`). Nothing is dropped and no result changes, so every
//! node of the tree (groups included) is still there with its result; only the groups so
//! moved up count as single tests from then on.

use crate::names::{self, MAX_NAME_BYTES, UniqueNames};
use crate::result::{NodeResult, TestNode};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::HashSet;

/// The deepest level a test may sit at: top-level tests (the job's children) are level 1.
/// KUnit and kselftest nest three or four levels; deeper trees are flattened.
pub const MAX_DEPTH: usize = 32;

/// Joins the names of a flattened path.
pub const PATH_SEPARATOR: char = '/';

/// At most this many renamed tests are listed by name in [`Normalised::renamed`].
pub const MAX_RENAMED_LISTED: usize = 20;

/// Bytes of an original name kept in [`Renamed::was`].
const WAS_BYTES: usize = 2 * MAX_NAME_BYTES;

/// How many tests each kind of change touched (one test may count under several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Names cleaned of blanks or invisible characters at the ends or inside.
    pub cleaned: u64,
    /// Empty names replaced by the test's number in its suite.
    pub numbered: u64,
    /// Names longer than [`MAX_NAME_BYTES`] shortened.
    pub shortened: u64,
    /// Names given a `#N` suffix to tell them from a sibling.
    pub made_unique: u64,
    /// Tests moved up from below [`MAX_DEPTH`].
    pub flattened: u64,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// The changes in words (`2 names cleaned of blanks or control characters, ...`),
    /// empty when nothing changed.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut say = |n: u64, one: &str, many: &str| match n {
            0 => {}
            1 => parts.push(format!("1 {one}")),
            n => parts.push(format!("{n} {many}")),
        };
        say(
            self.cleaned,
            "name cleaned of blanks, control or invisible characters",
            "names cleaned of blanks, control or invisible characters",
        );
        say(
            self.numbered,
            "empty name replaced by the test's number",
            "empty names replaced by the tests' numbers",
        );
        say(
            self.shortened,
            &format!("name shortened to {MAX_NAME_BYTES} bytes"),
            &format!("names shortened to {MAX_NAME_BYTES} bytes"),
        );
        say(
            self.made_unique,
            "duplicate name made unique with a #N suffix",
            "duplicate names made unique with a #N suffix",
        );
        say(
            self.flattened,
            &format!(
                "test nested deeper than {MAX_DEPTH} levels moved up, its path kept in its name"
            ),
            &format!(
                "tests nested deeper than {MAX_DEPTH} levels moved up, their path kept in their name"
            ),
        );
        parts.join("; ")
    }
}

/// A test whose name changed: where it is now and what it was called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Renamed {
    /// Its path after the change, names joined with `/`.
    pub path: String,
    /// Its name before, cut to 512 bytes.
    pub was: String,
}

/// What [`normalise`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Normalised {
    /// Counts by kind of change.
    pub changes: Changes,
    /// The first [`MAX_RENAMED_LISTED`] tests whose name changed (moving a test up is not
    /// a rename; its new name says where it came from).
    pub renamed: Vec<Renamed>,
}

/// Puts `tests` (the top level of a result tree) in shape: every name by
/// [`names::test_name`], unique among siblings, no test below level `max_depth` (at least
/// 1; the rule is [`MAX_DEPTH`]). Applying it twice changes nothing the second time.
pub fn normalise(tests: &mut Vec<TestNode>, max_depth: usize) -> Normalised {
    let mut st = Normalised::default();
    level(tests, 1, max_depth.max(1), "", &mut st);
    st
}

fn level(
    list: &mut Vec<TestNode>,
    depth: usize,
    max_depth: usize,
    path: &str,
    st: &mut Normalised,
) {
    for (i, t) in list.iter_mut().enumerate() {
        if let Some(name) = fixed_name(&t.name, i as u64 + 1, &mut st.changes) {
            let was = std::mem::replace(&mut t.name, name);
            note_rename(st, path, &t.name, &was);
        }
    }
    if depth >= max_depth && list.iter().any(|t| !t.tests.is_empty()) {
        flatten(list, st);
    }
    make_unique(list, path, st);
    if depth < max_depth {
        for t in list.iter_mut().filter(|t| !t.tests.is_empty()) {
            let sub = join(path, &t.name);
            level(&mut t.tests, depth + 1, max_depth, &sub, st);
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}{PATH_SEPARATOR}{name}")
    }
}

/// The valid name for `raw` (the test's `number` in its suite when empty), or `None` when
/// `raw` is valid already; counts what changed.
fn fixed_name(raw: &str, number: u64, c: &mut Changes) -> Option<String> {
    if names::check(raw).is_ok() {
        return None;
    }
    let cleaned = names::clean(raw);
    if cleaned.is_empty() {
        c.numbered += 1;
        return Some(number.to_string());
    }
    if matches!(cleaned, Cow::Owned(_)) {
        c.cleaned += 1;
    }
    if cleaned.len() > MAX_NAME_BYTES {
        c.shortened += 1;
    }
    Some(names::shorten(&cleaned, MAX_NAME_BYTES).into_owned())
}

fn note_rename(st: &mut Normalised, path: &str, now: &str, was: &str) {
    if st.renamed.len() < MAX_RENAMED_LISTED {
        let mut end = was.len().min(WAS_BYTES);
        while !was.is_char_boundary(end) {
            end -= 1;
        }
        st.renamed.push(Renamed {
            path: join(path, now),
            was: was[..end].to_string(),
        });
    }
}

/// Moves every member of `list`'s groups up into `list`, after its group, named by its
/// path from there. Iterative: the part below may be as deep as whoever sent it.
fn flatten(list: &mut Vec<TestNode>, st: &mut Normalised) {
    let old = std::mem::take(list);
    for mut t in old {
        let kids = std::mem::take(&mut t.tests);
        let prefix = t.name.clone();
        list.push(t);
        if kids.is_empty() {
            continue;
        }
        // (path of the group, its remaining members, how many were taken)
        let mut stack: Vec<(String, std::vec::IntoIter<TestNode>, u64)> =
            vec![(prefix, kids.into_iter(), 0)];
        while let Some((prefix, members, taken)) = stack.last_mut() {
            let Some(mut k) = members.next() else {
                stack.pop();
                continue;
            };
            *taken += 1;
            let segment = fixed_name(&k.name, *taken, &mut st.changes);
            let segment = segment.as_deref().unwrap_or(&k.name);
            let full = format!("{prefix}{PATH_SEPARATOR}{segment}");
            let grandkids = std::mem::take(&mut k.tests);
            if full.len() > MAX_NAME_BYTES {
                st.changes.shortened += 1;
            }
            k.name = names::shorten(&full, MAX_NAME_BYTES).into_owned();
            st.changes.flattened += 1;
            list.push(k);
            if !grandkids.is_empty() {
                stack.push((full, grandkids.into_iter(), 0));
            }
        }
    }
}

fn make_unique(list: &mut [TestNode], path: &str, st: &mut Normalised) {
    // Usually every name is distinct already: check that without copying names.
    let mut distinct = HashSet::with_capacity(list.len());
    if list.iter().all(|t| distinct.insert(t.name.as_str())) {
        return;
    }
    let mut names = UniqueNames::default();
    for t in list.iter_mut() {
        let name = names.unique(t.name.clone());
        if name != t.name {
            st.changes.made_unique += 1;
            let was = std::mem::replace(&mut t.name, name);
            note_rename(st, path, &t.name, &was);
        }
    }
}

/// Leaf tests by result, and all nodes, of a tree of any depth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TreeCounts {
    /// Leaf tests that passed.
    pub pass: u64,
    /// Leaf tests that failed.
    pub fail: u64,
    /// Leaf tests that were skipped.
    pub skip: u64,
    /// Leaf tests that did not complete.
    pub incomplete: u64,
    /// Every node: leaf tests and groups.
    pub nodes: u64,
}

impl TreeCounts {
    /// Counts `tests` and everything below them (iteratively: any depth).
    pub fn of(tests: &[TestNode]) -> TreeCounts {
        let mut c = TreeCounts::default();
        let mut stack: Vec<&TestNode> = tests.iter().collect();
        while let Some(t) = stack.pop() {
            c.nodes += 1;
            if t.tests.is_empty() {
                match t.result {
                    NodeResult::Pass => c.pass += 1,
                    NodeResult::Fail => c.fail += 1,
                    NodeResult::Skip => c.skip += 1,
                    NodeResult::Incomplete => c.incomplete += 1,
                }
            } else {
                stack.extend(t.tests.iter());
            }
        }
        c
    }

    /// Leaf tests counted.
    pub fn leaves(&self) -> u64 {
        self.pass + self.fail + self.skip + self.incomplete
    }
}

/// The deepest level in `tests` (0 for none), iteratively.
pub fn depth(tests: &[TestNode]) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&TestNode, usize)> = tests.iter().map(|t| (t, 1)).collect();
    while let Some((t, d)) = stack.pop() {
        deepest = deepest.max(d);
        stack.extend(t.tests.iter().map(|k| (k, d + 1)));
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeResult::*;

    fn chain(depth: usize) -> TestNode {
        let mut t = TestNode::leaf("leaf", Fail);
        for i in (1..depth).rev() {
            t = TestNode::group(format!("l{i}"), vec![t]);
        }
        t
    }

    fn names(list: &[TestNode]) -> Vec<&str> {
        list.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn valid_trees_are_left_alone() {
        let mut t = vec![
            TestNode::group(
                "s",
                vec![TestNode::leaf("a", Pass), TestNode::leaf("b", Fail)],
            ),
            TestNode::leaf("c d", Skip),
        ];
        let before = t.clone();
        assert!(normalise(&mut t, MAX_DEPTH).changes.is_empty());
        assert_eq!(t, before);
    }

    #[test]
    fn names_are_fixed_and_listed() {
        let mut t = vec![
            TestNode::leaf("nbsp\u{a0}", Pass),
            TestNode::leaf("", Pass),
            TestNode::leaf("x", Pass),
            TestNode::leaf(" x ", Fail),
            TestNode::leaf("q".repeat(1000), Pass),
        ];
        let n = normalise(&mut t, MAX_DEPTH);
        assert_eq!(names(&t)[..4], ["nbsp", "2", "x", "x#2"]);
        assert!(t[4].name.len() <= MAX_NAME_BYTES);
        let c = n.changes;
        assert_eq!(
            (c.cleaned, c.numbered, c.shortened, c.made_unique),
            (2, 1, 1, 1)
        );
        assert_eq!(n.renamed[0].was, "nbsp\u{a0}");
        assert_eq!(n.renamed[0].path, "nbsp");
        assert!(n.renamed.iter().any(|r| r.path == "x#2" && r.was == "x"));
        assert!(n.renamed.iter().all(|r| r.was.len() <= WAS_BYTES));
        assert!(n.changes.describe().contains("1 empty name replaced"));
        // Twice changes nothing.
        assert!(normalise(&mut t, MAX_DEPTH).changes.is_empty());
    }

    #[test]
    fn deep_trees_are_flattened_and_nothing_is_lost() {
        let mut t = vec![chain(200)];
        let before = TreeCounts::of(&t);
        let n = normalise(&mut t, MAX_DEPTH);
        assert_eq!(depth(&t), MAX_DEPTH);
        assert_eq!(TreeCounts::of(&t).nodes, before.nodes);
        assert_eq!(n.changes.flattened, 200 - MAX_DEPTH as u64);
        // The level-32 group and its 168 descendants are siblings now.
        let mut level = &t;
        for _ in 1..MAX_DEPTH {
            level = &level[0].tests;
        }
        assert_eq!(level.len(), 200 - MAX_DEPTH + 1);
        assert_eq!(level[0].name, "l32");
        assert_eq!(level[1].name, "l32/l33");
        assert_eq!(level[0].result, Fail, "the group keeps its own result");
        let last = &level[level.len() - 1];
        assert_eq!(last.result, Fail);
        assert!(last.name.len() <= MAX_NAME_BYTES && last.name.contains('~'));
        assert!(normalise(&mut t, MAX_DEPTH).changes.is_empty());
    }

    #[test]
    fn flattened_names_are_made_unique_too() {
        let mut t = vec![TestNode::group(
            "g",
            vec![
                TestNode::group("a", vec![TestNode::leaf("b", Pass)]),
                TestNode::leaf("a/b", Fail),
            ],
        )];
        let n = normalise(&mut t, 2);
        assert_eq!(names(&t[0].tests), ["a", "a/b", "a/b#2"]);
        assert_eq!((n.changes.flattened, n.changes.made_unique), (1, 1));
    }

    #[test]
    fn counts_cover_any_depth() {
        let t = vec![chain(5000), TestNode::leaf("p", Pass)];
        let c = TreeCounts::of(&t);
        assert_eq!((c.fail, c.pass, c.nodes, c.leaves()), (1, 1, 5001, 2));
        assert_eq!(depth(&t), 5000);
        // Dropping a deep tree recurses; take it apart first.
        let mut stack = t;
        while let Some(mut n) = stack.pop() {
            stack.append(&mut n.tests);
        }
    }
}
