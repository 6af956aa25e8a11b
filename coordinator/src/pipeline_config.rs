//! The scheduler's configuration, in the format of the KernelCI pipeline (`pipeline.yaml`):
//! `jobs:`, `platforms:`, `runtimes:` and `scheduler:` entries, with YAML anchors and `<<`
//! merge keys. A KernelCI file loads as it is; what labwire does differently:
//!
//! - Top-level sections labwire has no use for (`api`, `storage`, `trees`, `build_configs`,
//!   `_anchors` and any key starting with `_`) are skipped and listed as warnings.
//! - Keys inside entries that labwire does not use (`image`, `context`, `notify`,
//!   `frequency`, ...) are kept in `extra` and listed as warnings by
//!   `labwire-coordinator check-config`; they are never an error, so KernelCI files load.
//!   A job's `kcidb_test_suite` is copied into the job node's data.
//! - A job's `template` is handed to the agent as the job parameter `template` (the LAVA
//!   driver renders it); labwire adds the optional keys `commands`, `parser` and `timeout`.
//! - `runs:` (labwire) repeats a job on different device types or devices.
//! - Merge keys work at any depth ([`merge`]); priorities may be KernelCI's words (`low`,
//!   `medium`, `high`: 0, 50 and 100, KernelCI's own values) or numbers; a parameter that is
//!   a mapping (KernelCI's `flash_kernel: {url, image}`) becomes its JSON text.

mod merge;

use crate::rules::Rules;
use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Top-level keys of KernelCI pipeline files that labwire skips.
pub(crate) const SKIPPED_TOP: &[&str] = &[
    "api",
    "storage",
    "trees",
    "build_configs",
    "device_types",
    "fragments",
    "rootfs",
    "build_environments",
    "build_variants",
];

/// A whole pipeline configuration (several files may be merged into one).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// What can be run, by name.
    #[serde(default)]
    pub(crate) jobs: BTreeMap<String, JobConfig>,
    /// Where: platforms (device types with their properties), by name.
    #[serde(default)]
    pub(crate) platforms: BTreeMap<String, PlatformConfig>,
    /// Kinds of lab, by name.
    #[serde(default)]
    pub(crate) runtimes: BTreeMap<String, RuntimeConfig>,
    /// When: which event runs which job on which platforms.
    #[serde(default)]
    pub(crate) scheduler: Vec<SchedulerEntry>,
}

/// One job.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct JobConfig {
    /// `job` (a test job run by a lab; the default), `test`, `kbuild` or `process`.
    #[serde(default = "default_kind")]
    pub(crate) kind: String,
    /// The template (handed to the agent as the parameter `template`).
    #[serde(default)]
    pub(crate) template: Option<String>,
    /// Parameters (strings, numbers, booleans or lists; lists become comma-separated).
    #[serde(default)]
    pub(crate) params: Map<String, Value>,
    /// Rules on the kernel and the tree.
    #[serde(default)]
    pub(crate) rules: Rules,
    /// Priority (higher first): a number, or KernelCI's `low`, `medium`, `high`.
    #[serde(default, deserialize_with = "priority")]
    pub(crate) priority: Option<i32>,
    /// Commands to run on the device's shell (labwire).
    #[serde(default)]
    pub(crate) commands: Vec<String>,
    /// The log parser (labwire): auto, ktap, lava, kmsg, pattern or none.
    #[serde(default)]
    pub(crate) parser: Option<String>,
    /// Time limit of a run (labwire), e.g. `30m`.
    #[serde(default, with = "humantime_serde")]
    pub(crate) timeout: Option<std::time::Duration>,
    /// Repeat the job (labwire).
    #[serde(default)]
    pub(crate) runs: Option<Runs>,
    /// Keys labwire does not use.
    #[serde(flatten)]
    pub(crate) extra: BTreeMap<String, Value>,
}

fn default_kind() -> String {
    "job".into()
}

/// A string, or a list of strings joined with commas.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::One(s)) => Some(s),
        Some(Raw::Many(v)) => Some(v.join(",")),
    })
}

/// A priority as KernelCI writes it: `low`, `medium` or `high` (0, 50, 100, the values
/// kernelci-core's runtime config gives these words), or a number.
fn priority<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i32),
        Word(String),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::Number(n)) => Some(n),
        Some(Raw::Word(w)) => Some(match w.as_str() {
            "low" => 0,
            "medium" => 50,
            "high" => 100,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "`{other}` is not a priority (a number, or low, medium, high)"
                )));
            }
        }),
    })
}

/// One platform: a device type and its properties.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct PlatformConfig {
    /// The device type (LAVA's and labwire's name for it). Default: the platform's name.
    #[serde(default)]
    pub(crate) base_name: Option<String>,
    /// Architecture.
    #[serde(default)]
    pub(crate) arch: Option<String>,
    /// Machine family.
    #[serde(default)]
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "KernelCI's key, type-checked on load; the agent's device-type library has the value"
        )
    )]
    pub(crate) mach: Option<String>,
    /// Boot method.
    #[serde(default)]
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "KernelCI's key, type-checked on load; the agent's device-type library has the value"
        )
    )]
    pub(crate) boot_method: Option<String>,
    /// Device tree blob path in the build's artifacts; KernelCI also writes a list of them
    /// (joined with commas here, as list parameters are).
    #[serde(default, deserialize_with = "one_or_many")]
    pub(crate) dtb: Option<String>,
    /// Device-tree compatible strings.
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "KernelCI's key, type-checked on load; the agent's device-type library has the value"
    )]
    pub(crate) compatible: Vec<String>,
    /// Parameters added to the job's.
    #[serde(default)]
    pub(crate) params: Map<String, Value>,
    /// Rules on the kernel and the tree.
    #[serde(default)]
    pub(crate) rules: Rules,
    /// Keys labwire does not use.
    #[serde(flatten)]
    pub(crate) extra: BTreeMap<String, Value>,
}

/// A kind of lab.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RuntimeConfig {
    /// `lava`, `labgrid`, `serial` or `shell` (KernelCI's `kubernetes`/`docker` runtimes
    /// load, but no labwire agent offers them).
    pub(crate) lab_type: String,
    /// Rules on the kernel and the tree.
    #[serde(default)]
    pub(crate) rules: Rules,
    /// Keys labwire does not use (`url`, `notify`, `priority_min`, ...).
    #[serde(flatten)]
    #[expect(
        dead_code,
        reason = "collects KernelCI's runtime keys so that its files load as they are"
    )]
    pub(crate) extra: BTreeMap<String, Value>,
}

/// `runs:`: the job is created `number` times; with a variant, later runs avoid what
/// earlier runs used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Runs {
    /// How many runs. At least 1.
    pub(crate) number: u32,
    /// What must differ between runs: `device_type` or `device`; none: plain repeats.
    #[serde(default)]
    pub(crate) variant: Option<Variant>,
    /// What happens when no different one is left. Default `strict`.
    #[serde(default)]
    pub(crate) mode: VariantMode,
}

/// What differs between the runs of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Variant {
    /// Each run on another device type.
    DeviceType,
    /// Each run on another device.
    Device,
}

/// When no different device type (device) is left for a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum VariantMode {
    /// The run fails with `error_code=no_variant`.
    #[default]
    Strict,
    /// The run may reuse one.
    Permissive,
}

/// One `scheduler:` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchedulerEntry {
    /// The job to create (a key of `jobs:`).
    pub(crate) job: String,
    /// The event that creates it.
    pub(crate) event: EventMatch,
    /// Where it may run.
    #[serde(default)]
    pub(crate) runtime: RuntimeSelector,
    /// The platforms to run it on (keys of `platforms:`); none: one job with no platform.
    #[serde(default)]
    pub(crate) platforms: Vec<String>,
    /// Rules of this entry.
    #[serde(default)]
    pub(crate) rules: Rules,
    /// Repeat the job (overrides the job's `runs`).
    #[serde(default)]
    pub(crate) runs: Option<Runs>,
}

/// Which event an entry reacts to. Fields left out match anything; the entry fires on the
/// change that makes the given fields match (edge-triggered).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventMatch {
    /// The event channel; only `node` exists in labwire.
    #[serde(default = "default_channel")]
    pub(crate) channel: String,
    /// Node kind (`checkout`, `kbuild`, `job`, ...).
    #[serde(default)]
    pub(crate) kind: Option<String>,
    /// Node name.
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// Node state after the change.
    #[serde(default)]
    pub(crate) state: Option<String>,
    /// Node result after the change.
    #[serde(default)]
    pub(crate) result: Option<String>,
}

fn default_channel() -> String {
    "node".into()
}

/// `runtime:` of an entry: by type, by name, or both.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuntimeSelector {
    /// A `lab_type`.
    #[serde(default, rename = "type")]
    pub(crate) kind: Option<String>,
    /// A key of `runtimes:`.
    #[serde(default)]
    pub(crate) name: Option<String>,
}

/// A config file with what was skipped in it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The configuration.
    pub config: PipelineConfig,
    /// Things a user may want to know: skipped sections, keys labwire does not use.
    pub warnings: Vec<String>,
}

impl PipelineConfig {
    /// Loads and merges several files (later files add entries; a name defined twice is an
    /// error naming both files).
    pub(crate) fn load_files(paths: &[impl AsRef<Path>]) -> anyhow::Result<Loaded> {
        let mut out = Loaded::default();
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        for p in paths {
            let p = p.as_ref();
            let text = crate::config::read_config_text(p)?;
            let one = Self::parse(&text).with_context(|| format!("in {}", p.display()))?;
            for w in one.warnings {
                out.warnings.push(format!("{}: {w}", p.display()));
            }
            let c = one.config;
            let here = p.display().to_string();
            let mut claim = |section: &str, name: &str| -> anyhow::Result<()> {
                let key = format!("{section}.{name}");
                if let Some(prev) = origin.insert(key.clone(), here.clone()) {
                    bail!("{key} is defined in both {prev} and {here}");
                }
                Ok(())
            };
            for (k, v) in c.jobs {
                claim("jobs", &k)?;
                out.config.jobs.insert(k, v);
            }
            for (k, v) in c.platforms {
                claim("platforms", &k)?;
                out.config.platforms.insert(k, v);
            }
            for (k, v) in c.runtimes {
                claim("runtimes", &k)?;
                out.config.runtimes.insert(k, v);
            }
            out.config.scheduler.extend(c.scheduler);
        }
        out.config.validate()?;
        out.warnings.extend(out.config.notes());
        Ok(out)
    }

    /// What loads but deserves a word: scheduler entries naming a runtime no file defines
    /// (KernelCI's own scheduler.yaml names runtimes that its pipeline.yaml leaves to other
    /// deployments; such an entry's jobs take its `runtime.type`, if any).
    pub(crate) fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, e) in self.scheduler.iter().enumerate() {
            if let Some(n) = &e.runtime.name
                && !self.runtimes.contains_key(n)
            {
                out.push(format!(
                    "scheduler[{i}] (job {}): runtime.name `{n}` is not defined under runtimes:",
                    e.job
                ));
            }
        }
        out
    }

    /// Parses one file's text (not cross-checked: see [`PipelineConfig::validate`]).
    /// Errors name the line and the key.
    pub fn parse(text: &str) -> anyhow::Result<Loaded> {
        let mut value: yaml_serde::Value = yaml_serde::from_str(text)?;
        merge::resolve(&mut value).map_err(anyhow::Error::msg)?;
        let mut warnings = Vec::new();
        if let yaml_serde::Value::Mapping(m) = &mut value {
            let keys: Vec<String> = m
                .keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
            for k in keys {
                if k.starts_with('_') || SKIPPED_TOP.contains(&k.as_str()) {
                    m.remove(k.as_str());
                    warnings.push(format!("section `{k}` is not used by labwire; skipped"));
                }
            }
        }
        let config: PipelineConfig =
            serde_path_to_error::deserialize(value).map_err(|e| located(text, &e))?;
        for (name, j) in &config.jobs {
            for k in j.extra.keys().filter(|k| *k != "kcidb_test_suite") {
                warnings.push(format!("jobs.{name}.{k} is not used by labwire"));
            }
        }
        for (name, p) in &config.platforms {
            for k in p.extra.keys() {
                warnings.push(format!("platforms.{name}.{k} is not used by labwire"));
            }
        }
        Ok(Loaded { config, warnings })
    }

    /// Cross-checks names and values; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, j) in &self.jobs {
            if !matches!(j.kind.as_str(), "job" | "test" | "kbuild" | "process") {
                bail!(
                    "jobs.{name}.kind `{}` is not one of job, test, kbuild, process",
                    j.kind
                );
            }
            if let Some(p) = &j.parser
                && !matches!(
                    p.as_str(),
                    "auto" | "ktap" | "lava" | "kmsg" | "pattern" | "none"
                )
            {
                bail!(
                    "jobs.{name}.parser `{p}` is not one of auto, ktap, lava, kmsg, pattern, none"
                );
            }
            if let Some(r) = &j.runs {
                check_runs(&format!("jobs.{name}.runs"), r)?;
            }
            for (k, v) in &j.params {
                param_value(v).with_context(|| format!("jobs.{name}.params.{k}"))?;
            }
        }
        for (name, r) in &self.runtimes {
            if !matches!(
                r.lab_type.as_str(),
                "lava" | "labgrid" | "serial" | "shell" | "kubernetes" | "docker" | "pull_labs"
            ) {
                bail!(
                    "runtimes.{name}.lab_type `{}` is not one of lava, labgrid, serial, shell \
                     (or KernelCI's kubernetes, docker, pull_labs)",
                    r.lab_type
                );
            }
        }
        for (i, e) in self.scheduler.iter().enumerate() {
            let at = format!("scheduler[{i}] (job {})", e.job);
            if !self.jobs.contains_key(&e.job) {
                bail!("{at}: job `{}` is not defined under jobs:", e.job);
            }
            if e.event.channel != "node" {
                bail!(
                    "{at}: event.channel `{}` is not supported (labwire has the `node` channel)",
                    e.event.channel
                );
            }
            if let Some(s) = &e.event.state {
                s.parse::<crate::model::NodeState>()
                    .map_err(|_| anyhow::anyhow!("{at}: event.state `{s}` is not a node state"))?;
            }
            if let Some(r) = &e.event.result {
                r.parse::<labwire_common::NodeResult>()
                    .map_err(|_| anyhow::anyhow!("{at}: event.result `{r}` is not a result"))?;
            }
            if let Some(k) = &e.event.kind {
                k.parse::<crate::model::NodeKind>()
                    .map_err(|_| anyhow::anyhow!("{at}: event.kind `{k}` is not a node kind"))?;
            }
            for p in &e.platforms {
                if !self.platforms.contains_key(p) {
                    bail!("{at}: platform `{p}` is not defined under platforms:");
                }
            }
            if let Some(r) = &e.runs {
                check_runs(&format!("{at}: runs"), r)?;
            }
        }
        Ok(())
    }

    /// The driver (lab type) an entry's jobs need, if it names one.
    pub(crate) fn runtime_type(&self, e: &SchedulerEntry) -> Option<String> {
        e.runtime.kind.clone().or_else(|| {
            e.runtime
                .name
                .as_ref()
                .and_then(|n| self.runtimes.get(n))
                .map(|r| r.lab_type.clone())
        })
    }
}

fn check_runs(at: &str, r: &Runs) -> anyhow::Result<()> {
    if r.number == 0 || r.number > 100 {
        bail!("{at}.number must be between 1 and 100, got {}", r.number);
    }
    Ok(())
}

/// A parameter value as the string a job parameter is: scalars as written, lists joined
/// with commas, a mapping (or a mapping in a list) as its JSON text.
pub(crate) fn param_value(v: &Value) -> anyhow::Result<String> {
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        Value::Array(a) => a
            .iter()
            .map(param_value)
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(","),
        Value::Object(_) => serde_json::to_string(v)?,
    })
}

/// An error with its key path and, when it can be found, the line of that key.
pub(crate) fn located<E: std::fmt::Display>(
    text: &str,
    e: &serde_path_to_error::Error<E>,
) -> anyhow::Error {
    let path = e.path().to_string();
    match find_line(text, &path) {
        Some(line) => anyhow::anyhow!("line {line}: key `{path}`: {}", e.inner()),
        None => anyhow::anyhow!("key `{path}`: {}", e.inner()),
    }
}

/// The line (1-based) of a key path such as `jobs.baseline.rules` or `scheduler[2].event` in
/// block-style YAML: each segment is looked for below the previous one, deeper indented.
pub(crate) fn find_line(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize;
    let mut min_indent: isize = -1;
    for seg in path.split('.').filter(|s| !s.is_empty() && *s != "?") {
        let (key, index) = match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let mut found = None;
        for (i, l) in lines.iter().enumerate().skip(start) {
            let indent = (l.len() - l.trim_start().len()) as isize;
            let t = l.trim_start().trim_start_matches("- ");
            if indent > min_indent
                && (t.starts_with(&format!("{key}:"))
                    || t.starts_with(&format!("'{key}':"))
                    || t.starts_with(&format!("\"{key}\":")))
            {
                found = Some((i, indent));
                break;
            }
        }
        let (mut i, indent) = found?;
        if let Some(n) = index {
            let mut seen = 0usize;
            let mut item = None;
            for (j, l) in lines.iter().enumerate().skip(i + 1) {
                let t = l.trim_start();
                let ind = (l.len() - t.len()) as isize;
                if !t.is_empty() && !t.starts_with('#') && ind <= indent && !t.starts_with('-') {
                    break;
                }
                if t.starts_with("- ") || t == "-" {
                    if seen == n {
                        item = Some(j);
                        break;
                    }
                    seen += 1;
                }
            }
            i = item?;
        }
        start = i;
        min_indent = indent;
    }
    Some(start + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNELCI: &str = r#"
_anchors:
  checkout: &checkout-event
    channel: node
    name: checkout
    state: available
  kbuild-gcc-12-x86: &kbuild-gcc-12-x86-event
    channel: node
    name: kbuild-gcc-12-x86
    result: pass

api:
  docker-host:
    url: http://172.17.0.1:8001

jobs:
  baseline-x86: &baseline-job
    template: baseline.jinja2
    kind: job
    kcidb_test_suite: boot
    rules:
      tree:
      - '!android'
  baseline-arm64:
    <<: *baseline-job
    rules:
      arch: [arm64]
  kbuild-gcc-12-x86:
    template: kbuild.jinja2
    kind: kbuild
    image: kernelci/staging-gcc-12:x86-kselftest-kernelci
    params:
      arch: x86_64
      compiler: gcc-12
      defconfig: x86_64_defconfig
      fragments: [lab-setup, 'x86-board']

platforms:
  x86-board: &x86-board
    arch: x86_64
    boot_method: grub
    mach: x86
  qemu-x86:
    <<: *x86-board
    base_name: qemu
    boot_method: qemu
    context:
      arch: x86_64
  bcm2711-rpi-4-b:
    arch: arm64
    boot_method: u-boot
    mach: broadcom
    dtb: dtbs/broadcom/bcm2711-rpi-4-b.dtb

runtimes:
  lava-collabora: &lava-collabora
    lab_type: lava
    url: https://lava.collabora.dev/
    priority_min: 40
    notify:
      callback:
        token: kernelci-api-token
  k8s-gke-eu-west4:
    lab_type: kubernetes

scheduler:
  - job: kbuild-gcc-12-x86
    event: *checkout-event
    runtime:
      type: kubernetes
  - job: baseline-x86
    event: *kbuild-gcc-12-x86-event
    runtime:
      name: lava-collabora
    platforms:
      - qemu-x86
      - x86-board
"#;

    #[test]
    fn a_kernelci_file_loads_with_anchors_and_merge_keys() {
        let l = PipelineConfig::parse(KERNELCI).unwrap();
        l.config.validate().unwrap();
        let c = &l.config;
        assert_eq!(c.jobs.len(), 3);
        // `<<: *baseline-job` brought the template; the own `rules` replaced the merged one.
        assert_eq!(
            c.jobs["baseline-arm64"].template.as_deref(),
            Some("baseline.jinja2")
        );
        assert!(c.jobs["baseline-arm64"].rules.lists.contains_key("arch"));
        assert!(!c.jobs["baseline-arm64"].rules.lists.contains_key("tree"));
        assert_eq!(c.platforms["qemu-x86"].mach.as_deref(), Some("x86"));
        assert_eq!(c.platforms["qemu-x86"].boot_method.as_deref(), Some("qemu"));
        assert_eq!(c.scheduler[1].event.result.as_deref(), Some("pass"));
        assert_eq!(c.runtime_type(&c.scheduler[1]).as_deref(), Some("lava"));
        assert!(l.warnings.iter().any(|w| w.contains("`api`")));
        assert!(l.warnings.iter().any(|w| w.contains("`_anchors`")));
        assert!(
            l.warnings
                .iter()
                .any(|w| w.contains("jobs.kbuild-gcc-12-x86.image"))
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let text = "jobs:\n  a:\n    kind: job\nscheduler:\n  - job: a\n    event:\n      channel: node\n      nmae: checkout\n";
        let e = format!("{:#}", PipelineConfig::parse(text).unwrap_err());
        assert!(e.contains("line 8"), "{e}");
        assert!(e.contains("scheduler[0].event"), "{e}");
        assert!(e.contains("nmae"), "{e}");

        let mut c = PipelineConfig::parse(
            "jobs:\n  a: {kind: job}\nscheduler:\n  - job: b\n    event: {name: checkout}\n",
        )
        .unwrap()
        .config;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("scheduler[0]") && e.contains("`b`"), "{e}");
        c.scheduler[0].job = "a".into();
        c.scheduler[0].event.state = Some("finished".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("event.state `finished`"), "{e}");
    }

    #[test]
    fn runs_are_checked() {
        let text = "jobs:\n  a:\n    runs: {number: 3, variant: device_type, mode: permissive}\n";
        let c = PipelineConfig::parse(text).unwrap().config;
        let r = c.jobs["a"].runs.unwrap();
        assert_eq!(r.variant, Some(Variant::DeviceType));
        assert_eq!(r.mode, VariantMode::Permissive);
        let bad = PipelineConfig::parse("jobs:\n  a:\n    runs: {number: 0}\n")
            .unwrap()
            .config;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("runs.number")
        );
    }
}

#[cfg(test)]
mod shapes_tests;
