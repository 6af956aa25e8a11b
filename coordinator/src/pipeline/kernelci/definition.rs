//! A PULL_LABS job definition (the JSON that KernelCI's pipeline renders from kernelci-core's
//! `config/runtime/base/pull_labs.jinja2`, read at kernelci-core commit 69a285e) turned into
//! a labwire job. Everything in it comes from outside and is checked:
//!
//! - `artifacts` (kernel, modules, ramdisk, initrd, rootfs, dtb, kselftest, ...) become the
//!   job's artifacts by role: http and https URLs only, role names of letters, digits and
//!   `_`; `integrity.sha256` gives an artifact its checksum when it names one by role;
//! - `tests` (id, type, depends, timeout_s, subset, parameters, pre-commands,
//!   post-commands) run in dependency order (an unknown or circular dependency refuses the
//!   job); each becomes its pre-commands, the commands of its type from the `tests:` map
//!   (`boot` runs none: the boot and login are the test), its post-commands. Pre- and
//!   post-commands are the job's own board commands, as a submitter's are. A test's fields
//!   reach the type's commands only as job parameters (`kci_t1_parameters`, ...), which
//!   the board's shell sees single-quoted;
//! - the job's time limit is `boot_allowance` plus the tests' `timeout_s`;
//! - `environment.platform` picks the criteria (`platforms:` map, else the device type of
//!   that name); `callback.url` must be under the configured callback prefix, since the
//!   callback carries the runtime's token.
//!
//! The job's data keeps the KernelCI node id, runtime, platform and, per test, which of the
//! job's commands are its own, for the callback.

use super::config::{PullLabConfig, TEST_FIELDS, TestMap};
use crate::store::NewJob;
use labwire_proto::v1;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

/// The largest job definition read (KernelCI's are a few kilobytes).
pub(crate) const MAX_DEFINITION_BYTES: usize = 1 << 20;
/// At most this many tests in one definition.
const MAX_TESTS: usize = 100;

/// A PULL_LABS job definition, as much of it as labwire uses; other keys are ignored so
/// that later versions of KernelCI's template still load.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Definition {
    /// Files by role.
    #[serde(default)]
    pub(crate) artifacts: BTreeMap<String, String>,
    /// The tests.
    #[serde(default)]
    pub(crate) tests: Vec<TestDef>,
    /// Where to run.
    pub(crate) environment: Environment,
    /// Where the results go.
    pub(crate) callback: CallbackDef,
    /// Extra parameters (KernelCI's tuxrun parameters).
    #[serde(default)]
    pub(crate) parameters: BTreeMap<String, Value>,
    /// Checksums.
    #[serde(default)]
    pub(crate) integrity: Option<Integrity>,
}

/// One test of a definition.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TestDef {
    /// Its id (the callback reports it under this name).
    pub(crate) id: String,
    /// Its type (`boot`, `ltp`, `kselftest-COLLECTION`, ...).
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// Ids of tests that must run first.
    #[serde(default)]
    pub(crate) depends: Vec<String>,
    /// Its time limit, seconds.
    #[serde(default = "default_test_timeout")]
    pub(crate) timeout_s: u64,
    /// A subset of the suite, if any (kept as given).
    #[serde(default)]
    pub(crate) subset: Option<Value>,
    /// The suite's parameters (`tst_cmdfiles=smoketest skipfile=...`).
    #[serde(default)]
    pub(crate) parameters: Option<String>,
    /// Board commands before the test.
    #[serde(default, rename = "pre-commands")]
    pub(crate) pre_commands: Vec<String>,
    /// Board commands after the test.
    #[serde(default, rename = "post-commands")]
    pub(crate) post_commands: Vec<String>,
}

fn default_test_timeout() -> u64 {
    600
}

/// The definition's `environment`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Environment {
    /// KernelCI's platform name.
    pub(crate) platform: String,
    /// Its architecture.
    #[serde(default)]
    pub(crate) arch: Option<String>,
}

/// The definition's `callback`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CallbackDef {
    /// Where the callback is posted.
    pub(crate) url: String,
    /// The name of the token it carries (the runtime's `notify.callback.token`).
    #[serde(default)]
    pub(crate) token_name: Option<String>,
}

/// The definition's `integrity`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Integrity {
    /// SHA-256 by artifact role.
    #[serde(default)]
    pub(crate) sha256: BTreeMap<String, Value>,
}

/// A job definition turned into a labwire job.
#[derive(Debug)]
pub(crate) struct Translated {
    /// The job to queue.
    pub(crate) job: NewJob,
    /// Where its callback goes.
    pub(crate) callback_url: String,
}

/// Who the job is for, from KernelCI's job node.
#[derive(Debug, Clone)]
pub(crate) struct Origin<'a> {
    /// KernelCI's node id.
    pub(crate) kci_node: &'a str,
    /// The node's name (the job's name in KernelCI's jobs.yaml).
    pub(crate) name: &'a str,
    /// The runtime.
    pub(crate) runtime: &'a str,
    /// The node's `data.kernel_revision`, if any.
    pub(crate) kernel_revision: Option<&'a Value>,
}

/// Reads a definition's bytes; the error says what is wrong with it.
pub(crate) fn parse(bytes: &[u8]) -> Result<Definition, String> {
    if bytes.len() > MAX_DEFINITION_BYTES {
        return Err(format!(
            "the job definition is {} bytes, more than {MAX_DEFINITION_BYTES}",
            bytes.len()
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        format!(
            "the job definition is not a PULL_LABS definition: {}: {}",
            e.path(),
            e.inner()
        )
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
}

/// The test map for a type: exact key first, then the longest `prefix*` key; `boot` is
/// built in. Returns the map and what a `*` matched.
fn test_map<'a>(
    cfg: &'a PullLabConfig,
    kind: &str,
) -> Option<(std::borrow::Cow<'a, TestMap>, String)> {
    if let Some(m) = cfg.tests.get(kind) {
        return Some((std::borrow::Cow::Borrowed(m), String::new()));
    }
    let best = cfg
        .tests
        .iter()
        .filter_map(|(k, m)| {
            let prefix = k.strip_suffix('*')?;
            kind.strip_prefix(prefix)
                .map(|rest| (prefix.len(), m, rest))
        })
        .max_by_key(|(len, _, _)| *len);
    if let Some((_, m, rest)) = best {
        return Some((std::borrow::Cow::Borrowed(m), rest.to_string()));
    }
    (kind == "boot").then(|| (std::borrow::Cow::Owned(TestMap::default()), String::new()))
}

/// Orders tests so that each comes after those it depends on (stable otherwise).
fn ordered(tests: &[TestDef]) -> Result<Vec<&TestDef>, String> {
    let ids: HashMap<&str, usize> = tests
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    if ids.len() != tests.len() {
        return Err("two tests have the same id".into());
    }
    for t in tests {
        if let Some(d) = t.depends.iter().find(|d| !ids.contains_key(d.as_str())) {
            return Err(format!(
                "test `{}` depends on `{d}`, which is not in the definition",
                t.id
            ));
        }
    }
    let mut done = vec![false; tests.len()];
    let mut out = Vec::new();
    // Each time, the first test (in the definition's order) whose dependencies ran.
    while out.len() < tests.len() {
        let next = tests
            .iter()
            .enumerate()
            .find(|(i, t)| !done[*i] && t.depends.iter().all(|d| done[ids[d.as_str()]]));
        let Some((i, t)) = next else {
            return Err("the tests' dependencies go round in a circle".into());
        };
        done[i] = true;
        out.push(t);
    }
    Ok(out)
}

/// Replaces `{test.FIELD}` with the placeholder of job parameter `kci_tN_FIELD`.
fn expand(text: &str, n: usize, suffix: &str) -> String {
    let mut out = text.replace("{test.type_suffix}", suffix);
    for f in TEST_FIELDS {
        out = out.replace(
            &format!("{{test.{f}}}"),
            &format!("{{params.kci_t{n}_{f}}}"),
        );
    }
    out
}

/// Turns a definition into a labwire job, or says why it cannot run here.
pub(crate) fn translate(
    cfg: &PullLabConfig,
    origin: &Origin<'_>,
    def: &Definition,
) -> Result<Translated, String> {
    // The callback carries the runtime's token: only to where it was configured to go.
    let callback_url = def.callback.url.trim().to_string();
    let prefix = super::callback_prefix(cfg);
    if !callback_url.starts_with(&prefix) || callback_url.contains("..") {
        return Err(format!(
            "the callback URL `{callback_url}` is not under `{prefix}` (kernelci.pull_lab.callback_url)"
        ));
    }
    let platform = def.environment.platform.trim();
    if !valid_name(platform) {
        return Err(format!(
            "environment.platform `{platform}` is not a platform name"
        ));
    }
    if def.tests.is_empty() || def.tests.len() > MAX_TESTS {
        return Err(format!(
            "the definition must have 1 to {MAX_TESTS} tests, it has {}",
            def.tests.len()
        ));
    }
    let mut artifacts = HashMap::new();
    for (role, url) in &def.artifacts {
        if role.is_empty() || !role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("artifacts: `{role}` is not an artifact role"));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "artifacts.{role}: `{url}` is not an http or https URL"
            ));
        }
        let sha256 = match def.integrity.as_ref().and_then(|i| i.sha256.get(role)) {
            Some(Value::String(s)) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                s.to_lowercase()
            }
            _ => String::new(),
        };
        artifacts.insert(
            role.clone(),
            v1::Artifact {
                url: url.clone(),
                sha256,
            },
        );
    }

    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in &def.parameters {
        if crate::store::jobs::valid_param_key(k) {
            params.insert(
                k.clone(),
                crate::pipeline_config::param_value(v)
                    .map_err(|e| format!("parameters.{k}: {e}"))?,
            );
        }
    }
    params.insert("kernelci_node".into(), origin.kci_node.to_string());
    params.insert("kernelci_runtime".into(), origin.runtime.to_string());
    params.insert("platform".into(), platform.to_string());
    if let Some(kr) = origin.kernel_revision.and_then(Value::as_object) {
        for k in ["tree", "branch", "commit", "describe", "url"] {
            if let Some(s) = kr.get(k).and_then(Value::as_str) {
                params.insert(k.to_string(), s.to_string());
            }
        }
    }

    let mut commands = Vec::new();
    let mut plan = Vec::new();
    let mut timeout = cfg.boot_allowance.as_secs();
    for (i, t) in ordered(&def.tests)?.into_iter().enumerate() {
        let n = i + 1;
        if !valid_name(&t.id) {
            return Err(format!(
                "tests[{i}].id `{}` must be letters, digits, `-`, `_`, `.` or `+`",
                t.id
            ));
        }
        let (map, suffix) = test_map(cfg, &t.kind).ok_or_else(|| {
            format!(
                "test `{}` has type `{}`, which this lab does not run (kernelci.pull_lab.tests)",
                t.id, t.kind
            )
        })?;
        if t.timeout_s == 0 || t.timeout_s > 7 * 24 * 3600 {
            return Err(format!(
                "test `{}`: timeout_s {} is not between 1 s and a week",
                t.id, t.timeout_s
            ));
        }
        timeout = timeout.saturating_add(t.timeout_s);
        let subset = match &t.subset {
            None | Some(Value::Null) => String::new(),
            Some(v) => crate::pipeline_config::param_value(v)
                .map_err(|e| format!("test `{}`: subset: {e}", t.id))?,
        };
        let fields = [
            ("id", t.id.clone()),
            ("type", t.kind.clone()),
            ("parameters", t.parameters.clone().unwrap_or_default()),
            ("timeout_s", t.timeout_s.to_string()),
            ("subset", subset),
        ];
        // A test map's parameters are plain values (no shell sees them as text): filled in.
        for (k, v) in &map.params {
            let mut value = v.replace("{test.type_suffix}", &suffix);
            for (f, fv) in &fields {
                value = value.replace(&format!("{{test.{f}}}"), fv);
            }
            params.insert(k.clone(), value);
        }
        for (f, v) in fields {
            params.insert(format!("kci_t{n}_{f}"), v);
        }
        let first = commands.len() + 1;
        commands.extend(t.pre_commands.iter().cloned());
        commands.extend(map.commands.iter().map(|c| expand(c, n, &suffix)));
        commands.extend(t.post_commands.iter().cloned());
        plan.push(json!({
            "id": t.id, "type": t.kind,
            "commands": [first, commands.len()],
        }));
    }
    let mapped = cfg.platforms.get(platform);
    let criteria = v1::Criteria {
        device_type: mapped
            .and_then(|m| m.device_type.clone())
            .unwrap_or_else(|| platform.to_string()),
        arch: mapped.and_then(|m| m.arch.clone()).unwrap_or_default(),
        driver: mapped.and_then(|m| m.driver.clone()).unwrap_or_default(),
        tags: mapped.map(|m| m.tags.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let mut data = Map::new();
    data.insert(
        "kernelci".into(),
        json!({
            "node": origin.kci_node,
            "runtime": origin.runtime,
            "platform": platform,
            "arch": def.environment.arch,
            "callback_token_name": def.callback.token_name,
            "tests": plan,
        }),
    );
    if let Some(kr) = origin.kernel_revision {
        data.insert("kernel_revision".into(), kr.clone());
    }
    let name = if valid_name(origin.name) {
        origin.name
    } else {
        "kernelci-job"
    };
    Ok(Translated {
        job: NewJob {
            spec: v1::JobSpec {
                name: name.to_string(),
                criteria: Some(criteria),
                params,
                artifacts,
                commands,
                timeout_seconds: timeout.min(u32::MAX as u64) as u32,
                priority: cfg.priority,
                parser: String::new(),
                hold_on_failure_seconds: 0,
            },
            submitter: format!("kernelci:{}", origin.runtime),
            owner: "kernelci".into(),
            data,
            ..Default::default()
        },
        callback_url,
    })
}
