//! The `kernelci:` section of coordinator.yaml: joining KernelCI as a pull lab
//! (`pull_lab:`) and serving KernelCI's API read routes to its clients (`read_api:`). Unknown
//! keys are refused; [`KernelciConfig::validate`] names the key of a bad value.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The `kernelci:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelciConfig {
    /// Join KernelCI as a pull lab (PULL_LABS runtime); off when absent.
    #[serde(default)]
    pub pull_lab: Option<PullLabConfig>,
    /// KernelCI's API read routes (`/latest/...`) on the HTTP side, for kci-dev.
    #[serde(default)]
    pub read_api: ReadApiConfig,
}

/// KernelCI's API read routes on the HTTP side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadApiConfig {
    /// Serve `/latest/node/{id}`, `/latest/nodes`, `/latest/nodes/fast` and `/latest/events`.
    /// Default `true` (they want a `read` token like every other route).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Serve them without a token. kci-dev sends none when it reads nodes (`maestro
    /// results`), as KernelCI's API needs none for reads. Default `false`; only for networks
    /// where anyone may read every node and log.
    #[serde(default)]
    pub anonymous: bool,
}

impl Default for ReadApiConfig {
    fn default() -> Self {
        ReadApiConfig {
            enabled: true,
            anonymous: false,
        }
    }
}

/// Joining KernelCI as a pull lab.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullLabConfig {
    /// KernelCI's API, up to its version: `https://api.kernelci.example/latest/`. Events and
    /// nodes are read there.
    pub api: String,
    /// A file with a KernelCI API token, sent as `Authorization: Bearer ...` on reads; KernelCI
    /// reads events and nodes without one, so it is optional.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where KernelCI's pipeline takes callbacks (its `instance_callback`, e.g.
    /// `https://kernelci-pipeline.example/`). A job definition whose `callback.url` is not
    /// under it is refused, since the callback carries the runtime's token. Default: the
    /// scheme, host and port of `api`.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// The runtimes of KernelCI's pipeline.yaml that this installation serves.
    pub runtimes: Vec<RuntimeConfig>,
    /// KernelCI platforms mapped to labwire criteria. A platform not listed asks for the
    /// device type of its own name.
    #[serde(default)]
    pub platforms: BTreeMap<String, PlatformMap>,
    /// KernelCI test types mapped to what runs on the board. `boot` is built in (the boot
    /// and login are the test); a type neither built in nor listed is refused with a
    /// callback that says so. A key ending in `*` matches a prefix (`kselftest-*`).
    #[serde(default)]
    pub tests: BTreeMap<String, TestMap>,
    /// How often KernelCI's events are read. Default `45s` (KernelCI's `poll_interval`).
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// On the very first start, take jobs whose events are at most this old. Default `1h`.
    #[serde(default = "default_lookback", with = "humantime_serde")]
    pub first_lookback: Duration,
    /// Added to the sum of the tests' `timeout_s` for the job's time limit (downloads, power
    /// on, boot, login). Default `10m`.
    #[serde(default = "default_boot_allowance", with = "humantime_serde")]
    pub boot_allowance: Duration,
    /// Priority of the jobs taken from KernelCI. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// First wait before a failed callback or read is tried again; it doubles up to
    /// `retry_max`. Default `5s`.
    #[serde(default = "default_retry_min", with = "humantime_serde")]
    pub retry_min: Duration,
    /// Longest wait between tries. Default `5m`.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Time limit of one request to KernelCI. Default `60s`.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// One KernelCI runtime this installation serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The runtime's name in KernelCI's pipeline.yaml (`pull-labs-demo`).
    pub name: String,
    /// A file with the callback token's value (the secret KernelCI's pipeline pairs with the
    /// runtime's `notify.callback.token` name), sent as the callback's `Authorization`.
    pub callback_token_file: PathBuf,
}

/// What a KernelCI platform asks of a device.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformMap {
    /// The device type. Default: the platform's name.
    #[serde(default)]
    pub device_type: Option<String>,
    /// The architecture, if the device type alone does not say.
    #[serde(default)]
    pub arch: Option<String>,
    /// The driver (`serial`, `labgrid`, `lava`), if only one kind of device should run it.
    #[serde(default)]
    pub driver: Option<String>,
    /// Tags the device must carry.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// What a KernelCI test type runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestMap {
    /// Commands for the board's shell, between the test's pre- and post-commands. The
    /// placeholders `{test.id}`, `{test.type}`, `{test.parameters}`, `{test.timeout_s}` and
    /// `{test.subset}` become job parameters, which the board's shell sees single-quoted.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Job parameters the test sets, for the device type's templates (a LAVA template's
    /// `kselftest`); `{test.type_suffix}` is what a `*` key matched.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn default_poll() -> Duration {
    Duration::from_secs(45)
}
fn default_lookback() -> Duration {
    Duration::from_secs(3600)
}
fn default_boot_allowance() -> Duration {
    Duration::from_secs(600)
}
fn default_retry_min() -> Duration {
    Duration::from_secs(5)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(300)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

/// The placeholders a test map's commands may use.
pub(crate) const TEST_FIELDS: &[&str] = &["id", "type", "parameters", "timeout_s", "subset"];

impl KernelciConfig {
    /// Checks the section; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let Some(p) = &self.pull_lab else {
            return Ok(());
        };
        let url = url::Url::parse(&p.api)
            .with_context(|| format!("kernelci.pull_lab.api `{}` is not a URL", p.api))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!(
                "kernelci.pull_lab.api `{}` must be an http or https URL with a host",
                p.api
            );
        }
        if let Some(c) = &p.callback_url {
            let u = url::Url::parse(c)
                .with_context(|| format!("kernelci.pull_lab.callback_url `{c}` is not a URL"))?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                bail!(
                    "kernelci.pull_lab.callback_url `{c}` must be an http or https URL with a host"
                );
            }
        }
        if p.runtimes.is_empty() {
            bail!("kernelci.pull_lab.runtimes must name at least one KernelCI runtime");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in p.runtimes.iter().enumerate() {
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                bail!(
                    "kernelci.pull_lab.runtimes[{i}].name `{}` must be letters, digits, `-`, `_` or `.`",
                    r.name
                );
            }
            if !seen.insert(&r.name) {
                bail!(
                    "kernelci.pull_lab.runtimes[{i}].name `{}` is listed twice",
                    r.name
                );
            }
        }
        for (name, m) in &p.platforms {
            if let Some(d) = &m.driver
                && !matches!(d.as_str(), "serial" | "labgrid" | "lava" | "shell")
            {
                bail!(
                    "kernelci.pull_lab.platforms.{name}.driver `{d}` is not one of serial, labgrid, lava, shell"
                );
            }
        }
        for (name, t) in &p.tests {
            for c in &t.commands {
                check_placeholders(c)
                    .with_context(|| format!("kernelci.pull_lab.tests.{name}.commands"))?;
            }
            for (k, v) in &t.params {
                if !crate::store::jobs::valid_param_key(k) {
                    bail!(
                        "kernelci.pull_lab.tests.{name}.params: `{k}` must be letters, digits and underscores"
                    );
                }
                check_placeholders(v)
                    .with_context(|| format!("kernelci.pull_lab.tests.{name}.params.{k}"))?;
            }
        }
        if p.poll_interval < Duration::from_millis(100) {
            bail!("kernelci.pull_lab.poll_interval must be at least 100ms");
        }
        if p.retry_min.is_zero() || p.retry_max < p.retry_min {
            bail!("kernelci.pull_lab.retry_min must be more than 0 and at most retry_max");
        }
        if p.request_timeout < Duration::from_secs(1) {
            bail!("kernelci.pull_lab.request_timeout must be at least 1s");
        }
        Ok(())
    }
}

/// Checks that every `{test.X}` in `text` names a known field.
fn check_placeholders(text: &str) -> anyhow::Result<()> {
    let mut rest = text;
    while let Some(at) = rest.find("{test.") {
        let after = &rest[at + 6..];
        let Some(end) = after.find('}') else {
            bail!("`{text}`: `{{test.` is not closed");
        };
        let field = &after[..end];
        if !TEST_FIELDS.contains(&field) && field != "type_suffix" {
            bail!(
                "`{text}`: `{{test.{field}}}` is not one of {}, type_suffix",
                TEST_FIELDS.join(", ")
            );
        }
        rest = &after[end..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::CoordinatorConfig;

    fn err(yaml: &str) -> String {
        format!("{:#}", CoordinatorConfig::parse(yaml).unwrap_err())
    }

    const OK: &str = "kernelci:\n  pull_lab:\n    api: https://kci.example/latest/\n    runtimes:\n      - {name: pull-labs-demo, callback_token_file: /etc/t}\n";

    /// The example's commented-out `pull_lab:` block, uncommented, is a valid section.
    #[test]
    fn the_example_pull_lab_block_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/coordinator.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text
            .find("  #pull_lab:")
            .expect("the example has a pull_lab block");
        let block: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with("  #"))
            .map(|l| format!("  {}\n", &l[3..]))
            .collect();
        let c = CoordinatorConfig::parse(&format!("kernelci:\n{block}")).unwrap();
        let p = c.kernelci.pull_lab.unwrap();
        assert_eq!(p.runtimes[0].name, "pull-labs-demo");
        assert!(p.tests.contains_key("kselftest-*"));
        assert_eq!(p.retry_max, std::time::Duration::from_secs(300));
    }

    #[test]
    fn the_section_parses_with_defaults_and_refuses_bad_values() {
        let c = CoordinatorConfig::parse(OK).unwrap();
        let p = c.kernelci.pull_lab.unwrap();
        assert_eq!(p.poll_interval, std::time::Duration::from_secs(45));
        assert_eq!(p.runtimes[0].name, "pull-labs-demo");
        assert!(c.kernelci.read_api.enabled && !c.kernelci.read_api.anonymous);

        assert!(err("kernelci: {pull_labs: {}}\n").contains("unknown field `pull_labs`"));
        assert!(
            err(&OK.replace("https://kci.example/latest/", "ftp://x/"))
                .contains("kernelci.pull_lab.api")
        );
        assert!(err(&OK.replace("pull-labs-demo", "a b")).contains("runtimes[0].name"));
        let tests = |t: &str| format!("{OK}    tests:\n      ltp: {t}\n");
        assert!(err(&tests("{commands: ['run {test.nope}']}")).contains("`{test.nope}`"));
        assert!(err(&tests("{params: {'a-b': x}}")).contains("tests.ltp.params"));
        let e = err(&format!(
            "{OK}    platforms:\n      p: {{driver: docker}}\n"
        ));
        assert!(e.contains("platforms.p.driver"), "{e}");
    }
}
