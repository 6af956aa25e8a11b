//! Results and the tree of test results that parsers build and agents report.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The result of a node or of a test, with the KernelCI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeResult {
    /// The test ran and passed.
    Pass,
    /// The test ran and failed.
    Fail,
    /// The test was not run on purpose.
    Skip,
    /// The test did not complete: infrastructure failure, crash, cut log.
    Incomplete,
}

impl NodeResult {
    /// All results, in a stable order.
    pub const ALL: [NodeResult; 4] = [Self::Pass, Self::Fail, Self::Skip, Self::Incomplete];

    /// The lowercase name (`pass`, `fail`, `skip`, `incomplete`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Skip => "skip",
            Self::Incomplete => "incomplete",
        }
    }

    /// The result of a group from the results of its members: `fail` if any failed,
    /// else `incomplete` if any is incomplete, `skip` if all were skipped (or there are
    /// none), `pass` otherwise.
    pub fn aggregate(results: impl IntoIterator<Item = NodeResult>) -> NodeResult {
        let (mut any, mut fail, mut incomplete, mut all_skip) = (false, false, false, true);
        for r in results {
            any = true;
            match r {
                Self::Fail => fail = true,
                Self::Incomplete => incomplete = true,
                Self::Skip => {}
                Self::Pass => {}
            }
            if r != Self::Skip {
                all_skip = false;
            }
        }
        if fail {
            Self::Fail
        } else if incomplete {
            Self::Incomplete
        } else if !any || all_skip {
            Self::Skip
        } else {
            Self::Pass
        }
    }
}

impl fmt::Display for NodeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a result name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{0}` is not a result (expected pass, fail, skip or incomplete)")]
pub struct BadResult(pub String);

impl FromStr for NodeResult {
    type Err = BadResult;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pass" => Ok(Self::Pass),
            "fail" => Ok(Self::Fail),
            "skip" => Ok(Self::Skip),
            "incomplete" => Ok(Self::Incomplete),
            other => Err(BadResult(other.to_string())),
        }
    }
}

/// One test or group of tests in a result tree. Groups (suites) have `tests`; leaves don't.
/// The coordinator stores each as a `test` node under the job node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestNode {
    /// The test's name, unique among its siblings.
    pub name: String,
    /// Its result; for a group, usually the aggregate of its members.
    pub result: NodeResult,
    /// Its members, empty for a leaf test.
    #[serde(default)]
    pub tests: Vec<TestNode>,
    /// Lines of the log that explain the result (a crash trace, a failure message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_excerpt: Option<String>,
    /// A measured value reported with the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<f64>,
    /// The units of `measurement`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<String>,
    /// Why the test is `incomplete` (or another note from the parser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TestNode {
    /// A leaf test with just a name and a result.
    pub fn leaf(name: impl Into<String>, result: NodeResult) -> Self {
        TestNode {
            name: name.into(),
            result,
            tests: Vec::new(),
            log_excerpt: None,
            measurement: None,
            units: None,
            error: None,
        }
    }

    /// A group whose result is the aggregate of its members.
    pub fn group(name: impl Into<String>, tests: Vec<TestNode>) -> Self {
        let result = NodeResult::aggregate(tests.iter().map(|t| t.result));
        TestNode {
            tests,
            ..TestNode::leaf(name, result)
        }
    }

    /// Calls `f` on every leaf with its dotted path (`suite.case`).
    pub fn for_each_leaf(&self, prefix: &str, f: &mut impl FnMut(&str, &TestNode)) {
        let path = if prefix.is_empty() {
            self.name.clone()
        } else {
            format!("{prefix}.{}", self.name)
        };
        if self.tests.is_empty() {
            f(&path, self);
        } else {
            for t in &self.tests {
                t.for_each_leaf(&path, f);
            }
        }
    }

    /// Number of nodes in this tree, this one included.
    pub fn count_nodes(&self) -> usize {
        1 + self.tests.iter().map(TestNode::count_nodes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_rules() {
        use NodeResult::*;
        assert_eq!(NodeResult::aggregate([Pass, Skip]), Pass);
        assert_eq!(NodeResult::aggregate([Pass, Incomplete]), Incomplete);
        assert_eq!(NodeResult::aggregate([Incomplete, Fail]), Fail);
        assert_eq!(NodeResult::aggregate([Skip, Skip]), Skip);
        assert_eq!(NodeResult::aggregate([]), Skip);
    }

    #[test]
    fn parse_and_print() {
        for r in NodeResult::ALL {
            assert_eq!(r.as_str().parse::<NodeResult>().unwrap(), r);
        }
        let e = "passed".parse::<NodeResult>().unwrap_err().to_string();
        assert!(e.contains("`passed`"), "{e}");
    }

    #[test]
    fn json_shape() {
        let t = TestNode::group("suite", vec![TestNode::leaf("a", NodeResult::Pass)]);
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "suite", "result": "pass",
                "tests": [{"name": "a", "result": "pass", "tests": []}]})
        );
    }
}
