//! Placement rules (`placement.yaml`, written by coordinator admins): which labs may take
//! which jobs, how many at once, which labs are preferred, and pins.
//!
//! ```yaml
//! defaults:                # for every lab (a lab's own entry adds to it)
//!   max_in_flight: 50
//! labs:
//!   lab-a:
//!     max_in_flight: 10    # at most 10 jobs leased to lab-a at once
//!     rules:               # KernelCI-style allow/deny lists on the job's attributes:
//!       tree: ['!android'] # tree, branch, job, platform, kind, arch, device_type, ...
//!   lab-b:
//!     rules:
//!       job: ['!kselftest-*']
//! preferences:             # a lab's bonus, in seconds of expected wait
//!   - rules: {platform: [qemu-x86]}
//!     labs: {lab-a: 300}   # lab-a is chosen even when another lab could start 5 min sooner
//! pins:                    # jobs that may run in one lab only
//!   - rules: {job: [baseline-x86], tree: [mainline]}
//!     lab: lab-a
//! ```
//!
//! Where rules allow several labs, the job goes to the lab where it is expected to start
//! soonest, minus the preference bonus: a lab with a free matching device starts it now;
//! a lab whose matching devices are all busy starts it after about half the mean run time
//! of that job there (the coordinator's job statistics), times the number of jobs ahead.

use crate::rules::{Attrs, Refusal, Rules};
use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The placement rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Rules every lab gets.
    #[serde(default)]
    pub(crate) defaults: LabRules,
    /// Rules of named labs (added to the defaults).
    #[serde(default)]
    pub(crate) labs: BTreeMap<String, LabRules>,
    /// Preferences: bonuses in seconds.
    #[serde(default)]
    pub(crate) preferences: Vec<Preference>,
    /// Pins.
    #[serde(default)]
    pub(crate) pins: Vec<Pin>,
}

/// The rules of one lab.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LabRules {
    /// At most this many jobs leased to the lab at once.
    #[serde(default)]
    pub(crate) max_in_flight: Option<u32>,
    /// Allow/deny lists on job attributes.
    #[serde(default)]
    pub(crate) rules: Rules,
}

/// A preference: for the jobs its rules match, bonuses by lab.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Preference {
    /// Which jobs.
    #[serde(default)]
    pub(crate) rules: Rules,
    /// Bonus of each lab, in seconds of expected wait it may have over the others.
    pub(crate) labs: BTreeMap<String, u32>,
}

/// A pin: the jobs its rules match run in `lab` only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pin {
    /// Which jobs.
    #[serde(default)]
    pub(crate) rules: Rules,
    /// The lab.
    pub(crate) lab: String,
}

/// Why a lab may not take a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denial {
    /// Another lab is pinned.
    Pinned(String),
    /// A rule of the lab (or of the defaults) refused.
    Rule {
        /// `labs.NAME` or `defaults`.
        scope: String,
        /// The refusal.
        refusal: Refusal,
    },
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::Pinned(l) => write!(f, "the job is pinned to lab `{l}`"),
            Denial::Rule { scope, refusal } => write!(f, "placement {scope}: {refusal}"),
        }
    }
}

impl Placement {
    /// Loads and checks a placement file; errors name the line and the key.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Placement> {
        let text = crate::config::read_config_text(path)?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses placement text.
    pub fn parse(text: &str) -> anyhow::Result<Placement> {
        let mut value: yaml_serde::Value = yaml_serde::from_str(text)?;
        value.apply_merge()?;
        if value.is_null() {
            return Ok(Placement::default());
        }
        let p: Placement = serde_path_to_error::deserialize(value)
            .map_err(|e| crate::pipeline_config::located(text, &e))?;
        for (i, pin) in p.pins.iter().enumerate() {
            if pin.lab.trim().is_empty() {
                bail!("pins[{i}].lab must name a lab");
            }
        }
        for (name, l) in p
            .labs
            .iter()
            .chain([(&"defaults".to_string(), &p.defaults)])
        {
            if l.max_in_flight == Some(0) {
                bail!("{name}.max_in_flight must be at least 1 (deny the lab with rules instead)");
            }
        }
        Ok(p)
    }

    /// Whether `lab` may take a job with these attributes.
    pub(crate) fn allows(&self, lab: &str, job: &Attrs) -> Result<(), Denial> {
        if let Some(pin) = self.pins.iter().find(|p| p.rules.check(job).is_ok())
            && pin.lab != lab
        {
            return Err(Denial::Pinned(pin.lab.clone()));
        }
        let mut attrs = job.clone();
        attrs.set("lab", lab);
        self.defaults
            .rules
            .check(&attrs)
            .map_err(|refusal| Denial::Rule {
                scope: "defaults".into(),
                refusal,
            })?;
        if let Some(l) = self.labs.get(lab) {
            l.rules.check(&attrs).map_err(|refusal| Denial::Rule {
                scope: format!("labs.{lab}"),
                refusal,
            })?;
        }
        Ok(())
    }

    /// The most jobs the lab may hold at once, if limited.
    pub(crate) fn max_in_flight(&self, lab: &str) -> Option<u32> {
        self.labs
            .get(lab)
            .and_then(|l| l.max_in_flight)
            .or(self.defaults.max_in_flight)
    }

    /// The preference bonus of `lab` for a job, in seconds (the largest that applies).
    pub(crate) fn bonus(&self, lab: &str, job: &Attrs) -> u32 {
        self.preferences
            .iter()
            .filter(|p| p.rules.check(job).is_ok())
            .filter_map(|p| p.labs.get(lab).copied())
            .max()
            .unwrap_or(0)
    }

    /// Whether any rule would ever limit anything (the dispatcher skips the work if not).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.defaults.rules.is_empty()
            && self.defaults.max_in_flight.is_none()
            && self.labs.is_empty()
            && self.preferences.is_empty()
            && self.pins.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
defaults:
  max_in_flight: 50
labs:
  lab-a:
    max_in_flight: 2
    rules:
      tree: ['!android']
  lab-b:
    rules:
      job: ['!kselftest-*']
preferences:
  - rules: {platform: [qemu-x86]}
    labs: {lab-a: 300, lab-c: 60}
pins:
  - rules: {job: [pinned-job]}
    lab: lab-c
"#;

    fn job(name: &str, tree: &str, platform: &str) -> Attrs {
        let mut a = Attrs::default();
        a.set("job", name)
            .set("tree", tree)
            .set("platform", platform);
        a
    }

    #[test]
    fn table() {
        let p = Placement::parse(TEXT).unwrap();
        // (lab, job attributes, allowed?)
        let cases = [
            ("lab-a", job("baseline", "mainline", "qemu-x86"), true),
            ("lab-a", job("baseline", "android", "qemu-x86"), false),
            ("lab-b", job("baseline", "android", "qemu-x86"), true),
            ("lab-b", job("kselftest-net", "mainline", "qemu-x86"), false),
            ("lab-c", job("kselftest-net", "mainline", "qemu-x86"), true),
            ("lab-a", job("pinned-job", "mainline", "qemu-x86"), false),
            ("lab-c", job("pinned-job", "mainline", "qemu-x86"), true),
        ];
        for (lab, attrs, want) in cases {
            assert_eq!(p.allows(lab, &attrs).is_ok(), want, "{lab} {attrs:?}");
        }
        assert_eq!(p.max_in_flight("lab-a"), Some(2));
        assert_eq!(p.max_in_flight("lab-z"), Some(50));
        assert_eq!(p.bonus("lab-a", &job("x", "mainline", "qemu-x86")), 300);
        assert_eq!(p.bonus("lab-a", &job("x", "mainline", "rpi4")), 0);
        let d = p
            .allows("lab-a", &job("pinned-job", "mainline", "qemu-x86"))
            .unwrap_err();
        assert_eq!(d.to_string(), "the job is pinned to lab `lab-c`");
    }

    #[test]
    fn bad_files_name_the_key() {
        let e = format!(
            "{:#}",
            Placement::parse("labs:\n  lab-a:\n    max_inflight: 3\n").unwrap_err()
        );
        assert!(e.contains("line 3") && e.contains("labs.lab-a"), "{e}");
        assert!(e.contains("max_inflight"), "{e}");
        let e = Placement::parse("labs:\n  a: {max_in_flight: 0}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.max_in_flight"), "{e}");
        assert!(Placement::parse("").unwrap().is_empty());
    }
}
