//! KernelCI-style rules: allow and deny lists on attributes of a job or its kernel.
//!
//! ```yaml
//! rules:
//!   tree: ['!android']              # any tree but android
//!   branch: ['mainline:master', 'stable']   # `tree:branch` or a branch of any tree
//!   arch: ['x86_64', 'arm64']       # only these
//!   fragments: ['!kselftest']       # none of the node's fragments may be kselftest
//!   min_version: {version: 6, patchlevel: 1}
//!   max_version: {version: 6, patchlevel: 12}
//! ```
//!
//! The semantics, written down because KernelCI's are implicit in its code:
//! - an entry `!x` denies the value `x`; any other entry allows it;
//! - a list with at least one allow entry admits only the values it allows;
//! - a value the node does not have passes deny-only lists and fails lists that allow;
//! - for list attributes (`fragments`), every allowed value must be present and no denied
//!   one may be;
//! - in `tree` and `branch`, an entry `tree:branch` matches that branch of that tree only;
//! - `min_version`/`max_version` compare `version.patchlevel.sublevel` of the kernel; a
//!   kernel without a known version fails them.
//! - every key given must pass (AND); keys are compared exactly (no globs), except that
//!   `job`, `platform` and `lab` entries may end in `*` to match a prefix.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A kernel version as KernelCI writes it (`kernel_revision.version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Version {
    /// Major version.
    #[serde(default)]
    pub(crate) version: u32,
    /// Minor version (patch level).
    #[serde(default)]
    pub(crate) patchlevel: u32,
    /// Stable sub-level.
    #[serde(default)]
    pub(crate) sublevel: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.version, self.patchlevel, self.sublevel)
    }
}

/// A set of rules, keyed by attribute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Rules {
    /// Oldest kernel version allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) min_version: Option<Version>,
    /// Newest kernel version allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_version: Option<Version>,
    /// Allow/deny lists by attribute name (`tree`, `branch`, `arch`, `defconfig`,
    /// `fragments`, `job`, `platform`, `kind`, `lab`, ...).
    #[serde(flatten)]
    pub(crate) lists: BTreeMap<String, Vec<String>>,
}

/// What rules are evaluated against: scalar attributes, list attributes and the version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Attrs {
    /// Scalar attributes (`tree`, `branch`, `arch`, `defconfig`, `job`, `platform`, ...).
    pub(crate) scalars: BTreeMap<String, String>,
    /// List attributes (`fragments`).
    pub(crate) lists: BTreeMap<String, Vec<String>>,
    /// The kernel version, when known.
    pub(crate) version: Option<Version>,
}

impl Attrs {
    /// Sets a scalar attribute.
    pub(crate) fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.scalars.insert(key.to_string(), value.into());
        self
    }

    /// Reads the attributes of a node's `data` the way KernelCI keeps them:
    /// `kernel_revision.{tree,branch,version}`, and `arch`, `defconfig`, `config_full`,
    /// `compiler`, `fragments` at the top of `data`.
    pub(crate) fn from_node_data(data: &serde_json::Map<String, serde_json::Value>) -> Attrs {
        let mut a = Attrs::default();
        if let Some(kr) = data.get("kernel_revision").and_then(|v| v.as_object()) {
            for k in ["tree", "branch", "url", "commit"] {
                if let Some(s) = kr.get(k).and_then(|v| v.as_str()) {
                    a.set(k, s);
                }
            }
            if let Some(v) = kr.get("version") {
                a.version = serde_json::from_value(v.clone()).ok();
            }
        }
        for k in ["arch", "defconfig", "config_full", "compiler"] {
            if let Some(s) = data.get(k).and_then(|v| v.as_str()) {
                a.set(k, s);
            }
        }
        if let Some(f) = data.get("fragments").and_then(|v| v.as_array()) {
            a.lists.insert(
                "fragments".into(),
                f.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
            );
        }
        a
    }
}

/// Why a rule refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The attribute.
    pub(crate) key: String,
    /// A sentence saying why.
    pub(crate) why: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule `{}`: {}", self.key, self.why)
    }
}

fn entry_matches(key: &str, entry: &str, value: &str, attrs: &Attrs) -> bool {
    if (key == "branch" || key == "tree")
        && let Some((tree, branch)) = entry.split_once(':')
    {
        return attrs.scalars.get("tree").map(String::as_str) == Some(tree)
            && attrs.scalars.get("branch").map(String::as_str) == Some(branch);
    }
    if (key == "job" || key == "platform" || key == "lab")
        && let Some(prefix) = entry.strip_suffix('*')
    {
        return value.starts_with(prefix);
    }
    entry == value
}

impl Rules {
    /// Whether there are no rules at all.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.min_version.is_none() && self.max_version.is_none() && self.lists.is_empty()
    }

    /// Checks every rule; the first refusal is returned.
    pub(crate) fn check(&self, attrs: &Attrs) -> Result<(), Refusal> {
        if let Some(min) = self.min_version {
            match attrs.version {
                Some(v) if v >= min => {}
                Some(v) => {
                    return Err(Refusal {
                        key: "min_version".into(),
                        why: format!("kernel {v} is older than {min}"),
                    });
                }
                None => {
                    return Err(Refusal {
                        key: "min_version".into(),
                        why: "the kernel version is not known".into(),
                    });
                }
            }
        }
        if let Some(max) = self.max_version {
            match attrs.version {
                Some(v) if v <= max => {}
                Some(v) => {
                    return Err(Refusal {
                        key: "max_version".into(),
                        why: format!("kernel {v} is newer than {max}"),
                    });
                }
                None => {
                    return Err(Refusal {
                        key: "max_version".into(),
                        why: "the kernel version is not known".into(),
                    });
                }
            }
        }
        for (key, entries) in &self.lists {
            let (denies, allows): (Vec<&str>, Vec<&str>) = {
                let mut d = Vec::new();
                let mut a = Vec::new();
                for e in entries {
                    match e.strip_prefix('!') {
                        Some(x) => d.push(x),
                        None => a.push(e.as_str()),
                    }
                }
                (d, a)
            };
            if let Some(values) = attrs.lists.get(key) {
                if let Some(v) = values
                    .iter()
                    .find(|v| denies.iter().any(|d| entry_matches(key, d, v, attrs)))
                {
                    return Err(Refusal {
                        key: key.clone(),
                        why: format!("`{v}` is denied"),
                    });
                }
                if let Some(a) = allows
                    .iter()
                    .find(|a| !values.iter().any(|v| entry_matches(key, a, v, attrs)))
                {
                    return Err(Refusal {
                        key: key.clone(),
                        why: format!("`{a}` is required and missing"),
                    });
                }
                continue;
            }
            match attrs.scalars.get(key) {
                Some(v) => {
                    if denies.iter().any(|d| entry_matches(key, d, v, attrs)) {
                        return Err(Refusal {
                            key: key.clone(),
                            why: format!("`{v}` is denied"),
                        });
                    }
                    if !allows.is_empty() && !allows.iter().any(|a| entry_matches(key, a, v, attrs))
                    {
                        return Err(Refusal {
                            key: key.clone(),
                            why: format!("`{v}` is not one of {}", allows.join(", ")),
                        });
                    }
                }
                None if !allows.is_empty() => {
                    return Err(Refusal {
                        key: key.clone(),
                        why: format!(
                            "no {key} is known and only {} is allowed",
                            allows.join(", ")
                        ),
                    });
                }
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Rules {
        yaml_serde::from_str(yaml).unwrap()
    }

    fn attrs(tree: &str, branch: &str, arch: &str, version: Option<(u32, u32)>) -> Attrs {
        let mut a = Attrs::default();
        a.set("tree", tree).set("branch", branch).set("arch", arch);
        a.version = version.map(|(v, p)| Version {
            version: v,
            patchlevel: p,
            sublevel: 0,
        });
        a.lists.insert(
            "fragments".into(),
            vec!["lab-setup".into(), "kselftest".into()],
        );
        a
    }

    #[test]
    fn table() {
        let main = attrs("mainline", "master", "x86_64", Some((6, 12)));
        let android = attrs("android", "android15-6.6", "arm64", Some((6, 6)));
        let unknown_version = attrs("next", "master", "x86_64", None);
        // (rules, attrs, expected refusal key or None)
        let cases: Vec<(&str, &Attrs, Option<&str>)> = vec![
            ("{}", &main, None),
            ("tree: ['!android']", &main, None),
            ("tree: ['!android']", &android, Some("tree")),
            ("tree: [mainline, next]", &main, None),
            ("tree: [mainline, next]", &android, Some("tree")),
            ("branch: ['mainline:master']", &main, None),
            ("branch: ['next:master']", &main, Some("branch")),
            ("branch: ['master']", &main, None),
            ("branch: ['!mainline:master']", &main, Some("branch")),
            ("branch: ['!mainline:master']", &unknown_version, None),
            ("tree: ['mainline:master']", &main, None),
            ("tree: ['mainline:stable']", &main, Some("tree")),
            ("arch: ['!arm64']", &android, Some("arch")),
            ("arch: [x86_64, arm64]", &android, None),
            ("defconfig: ['!allnoconfig']", &main, None),
            ("defconfig: [defconfig]", &main, Some("defconfig")),
            ("fragments: ['!kselftest']", &main, Some("fragments")),
            ("fragments: [kselftest]", &main, None),
            ("fragments: [kunit]", &main, Some("fragments")),
            ("min_version: {version: 6, patchlevel: 1}", &main, None),
            (
                "min_version: {version: 6, patchlevel: 7}",
                &android,
                Some("min_version"),
            ),
            ("max_version: {version: 6, patchlevel: 7}", &android, None),
            (
                "max_version: {version: 6, patchlevel: 7}",
                &main,
                Some("max_version"),
            ),
            (
                "min_version: {version: 5}",
                &unknown_version,
                Some("min_version"),
            ),
            ("tree: ['!android']\narch: [arm64]", &main, Some("arch")),
        ];
        for (yaml, a, want) in cases {
            let got = rules(yaml).check(a).err().map(|r| r.key);
            assert_eq!(got.as_deref(), want, "rules `{yaml}`");
        }
    }

    #[test]
    fn prefixes_for_jobs_and_platforms() {
        let mut a = Attrs::default();
        a.set("job", "baseline-arm64").set("platform", "qemu-x86");
        assert!(rules("job: ['baseline-*']").check(&a).is_ok());
        assert!(rules("job: ['!baseline-*']").check(&a).is_err());
        assert!(rules("platform: ['qemu*']").check(&a).is_ok());
        // Only job/platform/lab take prefixes; a `*` elsewhere is literal.
        a.set("tree", "next");
        assert!(rules("tree: ['n*']").check(&a).is_err());
    }

    #[test]
    fn node_data_attributes() {
        let data = serde_json::json!({
            "kernel_revision": {"tree": "mainline", "branch": "master",
                                "version": {"version": 6, "patchlevel": 12, "sublevel": 3}},
            "arch": "arm64", "defconfig": "defconfig", "fragments": ["kselftest"]
        });
        let a = Attrs::from_node_data(data.as_object().unwrap());
        assert_eq!(a.scalars["tree"], "mainline");
        assert_eq!(a.scalars["arch"], "arm64");
        assert_eq!(a.version.unwrap().to_string(), "6.12.3");
        assert_eq!(a.lists["fragments"], vec!["kselftest".to_string()]);
    }
}
