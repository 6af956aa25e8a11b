//! The job file of `labwire submit -f FILE` (YAML or JSON): the fields of a job spec in a
//! form people write, like a `lavacli jobs submit` definition. Options on the command line
//! add to it (`--artifact`, `--param`, `--tag`, `--device`, `--command`) or replace it
//! (`--name`, `--parser`, `--timeout`, `--priority`, ...). `--dry-run` prints the merged job
//! in this same format, so its output is a job file again. See docs/cli.md.

use anyhow::{Context, bail};
use labwire_common::Criteria;
use labwire_proto::{convert, v1};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The largest job file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A job as written in a job file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobFile {
    /// The job's name (becomes the job node's name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What the device must be: device_type, arch, driver, properties, features, tags,
    /// devices, avoid_device_types, avoid_devices.
    #[serde(default)]
    pub criteria: Criteria,
    /// Parameters for the driver and the commands.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Files to fetch before the run, by role: `URL` or `URL#SHA256`, or `{url, sha256}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, ArtifactRef>,
    /// Commands to run on the device's shell after boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// The time limit: seconds, or a duration such as `10m` (none: the agent's default).
    #[serde(
        default,
        deserialize_with = "de_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<u32>,
    /// Higher runs first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Which parser reads the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parser: Option<Parser>,
    /// The parent node's id (a checkout or kbuild).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<i64>,
    /// Keep the board reserved for the submitter, powered and logged in, this long (seconds
    /// or a duration such as `30m`) when the job fails.
    #[serde(
        default,
        deserialize_with = "de_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub hold_on_failure: Option<u32>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// The parsers a job may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Parser {
    /// KTAP/TAP, LAVA signals and kernel messages together.
    Auto,
    /// KTAP or TAP only.
    Ktap,
    /// LAVA test signals only.
    Lava,
    /// Kernel messages only.
    Kmsg,
    /// The pattern in the `pattern` parameter.
    Pattern,
    /// No parsing: the result comes from the commands' exit codes.
    None,
}

impl Parser {
    fn as_str(self) -> &'static str {
        match self {
            Parser::Auto => "auto",
            Parser::Ktap => "ktap",
            Parser::Lava => "lava",
            Parser::Kmsg => "kmsg",
            Parser::Pattern => "pattern",
            Parser::None => "none",
        }
    }
}

/// An artifact: where to fetch it and, optionally, its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ArtifactRef {
    /// An http, https or file URL.
    pub url: String,
    /// The expected SHA-256 as 64 lowercase hexadecimal digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl ArtifactRef {
    /// Parses `URL` or `URL#SHA256`, checking the scheme and the digest. A `#` always
    /// starts the digest (a URL with a fragment takes the `{url, sha256}` form).
    pub fn parse(s: &str) -> Result<ArtifactRef, String> {
        match s.rsplit_once('#') {
            Some((u, h)) => Self::new(u, Some(h)).and_then(|a| match a.sha256 {
                Some(_) => Ok(a),
                None => Err(format!("`{s}`: nothing after `#`; expected URL#SHA256")),
            }),
            None => Self::new(s, None),
        }
    }

    fn new(url: &str, sha: Option<&str>) -> Result<ArtifactRef, String> {
        if !["http://", "https://", "file://"]
            .iter()
            .any(|p| url.starts_with(p) && url.len() > p.len())
        {
            return Err(format!(
                "`{url}` is not an http://, https:// or file:// URL"
            ));
        }
        if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "`{}` contains the character U+{:04X}",
                url.escape_debug(),
                u32::from(c)
            ));
        }
        let sha256 = match sha {
            None | Some("") => None,
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(h.to_ascii_lowercase())
            }
            Some(h) => return Err(format!("sha256 `{h}` is not 64 hexadecimal digits")),
        };
        Ok(ArtifactRef {
            url: url.to_string(),
            sha256,
        })
    }
}

impl<'de> Deserialize<'de> for ArtifactRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Short(String),
            Full {
                url: String,
                #[serde(default)]
                sha256: Option<String>,
            },
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected `URL`, `URL#SHA256` or {url: URL, sha256: SHA256}")
        })?;
        match raw {
            Raw::Short(s) => ArtifactRef::parse(&s),
            Raw::Full { url, sha256 } => ArtifactRef::new(&url, sha256.as_deref()),
        }
        .map_err(serde::de::Error::custom)
    }
}

fn de_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u32),
        Text(String),
    }
    let raw = Raw::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected seconds (600) or a duration (10m, 1h 30m)")
    })?;
    let secs = match raw {
        Raw::Secs(s) => s,
        Raw::Text(t) => {
            let d = humantime::parse_duration(t.trim()).map_err(|e| {
                serde::de::Error::custom(format!("`{t}` is not a duration (10m, 1h 30m): {e}"))
            })?;
            u32::try_from(d.as_secs())
                .map_err(|_| serde::de::Error::custom(format!("`{t}` is too long")))?
        }
    };
    Ok(Some(secs))
}

impl JobFile {
    /// Reads a job file: JSON when its name ends in `.json`, YAML otherwise (`-` is
    /// standard input, YAML or JSON). Errors name the file and the field.
    pub fn load(path: &Path) -> anyhow::Result<JobFile> {
        let shown = if path.as_os_str() == "-" {
            "standard input".to_string()
        } else {
            path.display().to_string()
        };
        let mut text = String::new();
        let read = if path.as_os_str() == "-" {
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), MAX_FILE_BYTES + 1),
                &mut text,
            )
        } else {
            std::fs::File::open(path).and_then(|f| {
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(f, MAX_FILE_BYTES + 1),
                    &mut text,
                )
            })
        };
        read.with_context(|| format!("cannot read the job file {shown}"))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            bail!("the job file {shown} is larger than {MAX_FILE_BYTES} bytes");
        }
        let json = path.extension().is_some_and(|e| e == "json");
        Self::parse(&text, json).with_context(|| format!("job file {shown}"))
    }

    /// Parses the text of a job file (JSON or YAML).
    pub fn parse(text: &str, json: bool) -> anyhow::Result<JobFile> {
        if json {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| anyhow::anyhow!("`{}`: {}", e.path(), e.inner()))
        } else {
            let de = yaml_serde::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| anyhow::anyhow!("`{}`: {}", e.path(), e.inner()))
        }
    }

    /// The job spec to send, checked as the coordinator will check it (so that `--dry-run`
    /// finds what the coordinator would refuse).
    pub fn to_spec(&self) -> anyhow::Result<v1::JobSpec> {
        if self.name.trim().is_empty() {
            bail!("the job has no name: give `name:` in the job file or --name");
        }
        for k in self.params.keys() {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                bail!("params: `{k}` must be letters, digits and underscores");
            }
        }
        let spec = v1::JobSpec {
            name: self.name.clone(),
            criteria: Some(convert::criteria_to_proto(&self.criteria)),
            params: self.params.clone().into_iter().collect(),
            artifacts: self
                .artifacts
                .iter()
                .map(|(role, a)| {
                    let art = v1::Artifact {
                        url: a.url.clone(),
                        sha256: a.sha256.clone().unwrap_or_default(),
                    };
                    (role.clone(), art)
                })
                .collect(),
            commands: self.commands.clone(),
            timeout_seconds: self.timeout.unwrap_or(0),
            priority: self.priority,
            hold_on_failure_seconds: self.hold_on_failure.unwrap_or(0),
            parser: self
                .parser
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
        };
        labwire_coordinator::submit_limits::check_spec(&spec).map_err(|e| {
            anyhow::anyhow!("{}", e.to_string().trim_start_matches("invalid argument: "))
        })?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_take_a_url_and_an_optional_digest() {
        let sha = "AB".repeat(32);
        let a = ArtifactRef::parse(&format!("https://x.example/bzImage#{sha}")).expect("ok");
        assert_eq!(a.url, "https://x.example/bzImage");
        assert_eq!(a.sha256.as_deref(), Some(sha.to_ascii_lowercase().as_str()));
        // A `#` always starts the digest: a fragment is refused, naming the digest rule.
        let e = ArtifactRef::parse("file:///srv/a#frag").expect_err("a fragment");
        assert!(e.contains("64 hexadecimal"), "{e}");
        for bad in [
            "/srv/a",
            "ftp://x/y",
            "https://",
            "file:///a b",
            "http://x/\u{7}",
        ] {
            assert!(ArtifactRef::parse(bad).is_err(), "{bad}");
        }
        let e = ArtifactRef::new("https://x/y", Some("12")).expect_err("short digest");
        assert!(e.contains("64 hexadecimal"), "{e}");
    }

    #[test]
    fn a_job_file_reads_as_yaml_and_json_and_errors_name_the_field() {
        let yaml = "name: boot\ncriteria: {arch: x86_64, tags: [qemu]}\nartifacts:\n  kernel: file:///k\n  ramdisk: {url: 'https://r/i.cpio.gz'}\ntimeout: 10m\nparser: ktap\n";
        let j = JobFile::parse(yaml, false).expect("yaml");
        assert_eq!(j.timeout, Some(600));
        assert_eq!(j.parser, Some(Parser::Ktap));
        assert_eq!(j.criteria.tags, ["qemu"]);
        let spec = j.to_spec().expect("spec");
        assert_eq!(spec.artifacts["ramdisk"].url, "https://r/i.cpio.gz");
        assert_eq!(spec.parser, "ktap");
        let back = serde_json::to_string(&j).expect("json");
        assert_eq!(JobFile::parse(&back, true).expect("json again"), j);

        let e = JobFile::parse("name: x\nartifact: {}\n", false).unwrap_err();
        assert!(e.to_string().contains("artifact"), "{e}");
        let e = JobFile::parse("name: x\nartifacts: {kernel: ftp://k}\n", false).unwrap_err();
        assert!(e.to_string().contains("artifacts.kernel"), "{e}");
        let e = JobFile::parse(r#"{"name": "x", "parser": "perl"}"#, true).unwrap_err();
        assert!(e.to_string().contains("parser"), "{e}");
        let j = JobFile::parse("name: x\nhold_on_failure: 30m\n", false).unwrap();
        assert_eq!(j.to_spec().unwrap().hold_on_failure_seconds, 1800);
        let j = JobFile::parse("name: x\nhold_on_failure: 25h\n", false).unwrap();
        let e = j.to_spec().unwrap_err().to_string();
        assert!(
            e.contains("spec.hold_on_failure_seconds") && e.contains("24 hours"),
            "{e}"
        );
        let e = JobFile::parse("name: x\ntimeout: soon\n", false).unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
        let no_name = JobFile::parse("commands: [true]\n", false).expect("parses");
        assert!(
            no_name
                .to_spec()
                .unwrap_err()
                .to_string()
                .contains("no name")
        );
        let bad_param = JobFile::parse("name: x\nparams: {'a b': '1'}\n", false).expect("parses");
        assert!(
            bad_param
                .to_spec()
                .unwrap_err()
                .to_string()
                .contains("`a b`")
        );
    }
}
