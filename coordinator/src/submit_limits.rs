//! What a submitted job may hold. Everything in a job spec ends up on a lab host (as
//! arguments, environment, file names, console input) or in the store, so what no lab could
//! use is refused at submit, with the field named, instead of failing on the lab host and
//! being retried there:
//!
//! - `spec.name`: a valid node name ([`labwire_common::names::check`]);
//! - `spec.params`: at most 256, keys of at most 64 bytes, values without NUL (they become
//!   arguments and environment variables) of at most 32 KiB, 256 KiB in all;
//! - `spec.artifacts`: at most 64; each role a plain file name: 1 to 64 of `A-Z a-z 0-9 . _
//!   -`, not starting with `.` (so no `/`, no `.` or `..`, no NUL); each URL at most 4 KiB
//!   without whitespace or control characters;
//! - `spec.commands`: at most 1000, each without NUL and at most 32 KiB;
//! - `spec.criteria`: every string (device type, arch, driver, property keys and values,
//!   features, tags, devices, avoided devices and device types) at most 256 bytes without
//!   control characters, at most 256 entries per list or map;
//! - the node's `group` and `submitter`: no NUL, at most 256 bytes.

use crate::error::{Error, Result};
use labwire_common::names;
use labwire_proto::v1;

/// Parameters per job.
pub const MAX_PARAMS: usize = 256;
/// Bytes of a parameter's name.
pub const MAX_PARAM_KEY_BYTES: usize = 64;
/// Bytes of one parameter's value: eight times the longest kernel command line, a quarter
/// of what Linux allows for one argument (`MAX_ARG_STRLEN`, 128 KiB).
pub const MAX_PARAM_VALUE_BYTES: usize = 32 * 1024;
/// Bytes of all parameter values together (well under Linux's 2 MiB for arguments and
/// environment together).
pub const MAX_PARAMS_TOTAL_BYTES: usize = 256 * 1024;
/// Artifacts per job.
pub const MAX_ARTIFACTS: usize = 64;
/// Bytes of an artifact's role.
pub const MAX_ROLE_BYTES: usize = 64;
/// Bytes of an artifact's URL.
pub const MAX_URL_BYTES: usize = 4096;
/// Commands per job.
pub const MAX_COMMANDS: usize = 1000;
/// Bytes of one command.
pub const MAX_COMMAND_BYTES: usize = 32 * 1024;
/// Bytes of one criteria string, a group or a submitter.
pub const MAX_SHORT_TEXT_BYTES: usize = 256;
/// Entries of one criteria list or map.
pub const MAX_CRITERIA_ENTRIES: usize = 256;

/// Up to 64 characters of a value a client sent, quoted and escaped for an error message.
fn shown(s: &str) -> String {
    if s.chars().count() <= 64 {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(64).collect();
        format!("{head:?}...")
    }
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

/// Why `role` is not a plain file name for an artifact, if it is not.
pub fn role_problem(role: &str) -> Option<String> {
    if role.is_empty() {
        return Some("is empty".into());
    }
    if role.len() > MAX_ROLE_BYTES {
        return Some(format!(
            "is {} bytes long (at most {MAX_ROLE_BYTES})",
            role.len()
        ));
    }
    if role == "." || role == ".." {
        return Some("is a folder name, not a file name".into());
    }
    if role.contains('/') {
        return Some("contains `/`".into());
    }
    if role.starts_with('.') {
        return Some("starts with `.`".into());
    }
    if let Some(c) = role
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "contains {} (use letters, digits, `.`, `_` and `-`)",
            shown(&c.to_string())
        ));
    }
    None
}

/// Refuses NUL (anything that reaches an argument, an environment variable or the store).
fn no_nul(field: &str, value: &str) -> Result<()> {
    match value.find('\0') {
        Some(at) => Err(invalid(format!(
            "{field} contains a NUL byte (at byte {at}), which no command line or environment can carry"
        ))),
        None => Ok(()),
    }
}

fn at_most(field: &str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(invalid(format!(
            "{field} is {len} bytes long (at most {max})"
        )));
    }
    Ok(())
}

fn count(field: &str, n: usize, max: usize) -> Result<()> {
    if n > max {
        return Err(invalid(format!("{field} has {n} entries (at most {max})")));
    }
    Ok(())
}

/// A short text: at most [`MAX_SHORT_TEXT_BYTES`], no control character.
fn short_text(field: &str, value: &str) -> Result<()> {
    at_most(field, value.len(), MAX_SHORT_TEXT_BYTES)?;
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(invalid(format!(
            "{field} {} contains the control character U+{:04X}",
            shown(value),
            u32::from(c)
        )));
    }
    Ok(())
}

/// Checks the sizes and characters of everything in `spec` (see the module
/// documentation); the error names the field.
pub fn check_spec(spec: &v1::JobSpec) -> Result<()> {
    if let Err(e) = names::check(&spec.name) {
        return Err(invalid(format!("spec.name {} {e}", shown(&spec.name))));
    }
    let hold = spec.hold_on_failure_seconds;
    if hold != 0
        && !(labwire_common::MIN_HOLD_ON_FAILURE_SECONDS
            ..=labwire_common::MAX_HOLD_ON_FAILURE_SECONDS)
            .contains(&hold)
    {
        return Err(invalid(format!(
            "spec.hold_on_failure_seconds is {hold}: a failed job's board is held from 1 minute \
             to 24 hours (60 to 86400 seconds), or not at all (0)"
        )));
    }
    count("spec.params", spec.params.len(), MAX_PARAMS)?;
    let mut total = 0;
    for (k, v) in &spec.params {
        at_most(
            &format!("the name of spec.params.{}", shown(k)),
            k.len(),
            MAX_PARAM_KEY_BYTES,
        )?;
        let field = format!("spec.params.{k}");
        no_nul(&field, v)?;
        at_most(&field, v.len(), MAX_PARAM_VALUE_BYTES)?;
        total += v.len();
    }
    at_most(
        "spec.params (all values together)",
        total,
        MAX_PARAMS_TOTAL_BYTES,
    )?;
    count("spec.artifacts", spec.artifacts.len(), MAX_ARTIFACTS)?;
    for (role, a) in &spec.artifacts {
        if let Some(why) = role_problem(role) {
            return Err(invalid(format!(
                "spec.artifacts: the role {} {why}; a role is a plain file name",
                shown(role)
            )));
        }
        let field = format!("spec.artifacts.{role}.url");
        at_most(&field, a.url.len(), MAX_URL_BYTES)?;
        if let Some(c) = a.url.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid(format!(
                "{field} contains whitespace or the control character U+{:04X}",
                u32::from(c)
            )));
        }
    }
    count("spec.commands", spec.commands.len(), MAX_COMMANDS)?;
    for (i, c) in spec.commands.iter().enumerate() {
        let field = format!("spec.commands[{i}]");
        no_nul(&field, c)?;
        at_most(&field, c.len(), MAX_COMMAND_BYTES)?;
    }
    if let Some(c) = &spec.criteria {
        check_criteria(c)?;
    }
    Ok(())
}

fn check_criteria(c: &v1::Criteria) -> Result<()> {
    for (field, value) in [
        ("spec.criteria.device_type", &c.device_type),
        ("spec.criteria.arch", &c.arch),
        ("spec.criteria.driver", &c.driver),
    ] {
        short_text(field, value)?;
    }
    count(
        "spec.criteria.properties",
        c.properties.len(),
        MAX_CRITERIA_ENTRIES,
    )?;
    for (k, v) in &c.properties {
        short_text("a key of spec.criteria.properties", k)?;
        short_text(&format!("spec.criteria.properties.{k}"), v)?;
    }
    for (field, list) in [
        ("spec.criteria.features", &c.features),
        ("spec.criteria.tags", &c.tags),
        ("spec.criteria.devices", &c.devices),
        ("spec.criteria.avoid_device_types", &c.avoid_device_types),
        ("spec.criteria.avoid_devices", &c.avoid_devices),
    ] {
        count(field, list.len(), MAX_CRITERIA_ENTRIES)?;
        for (i, v) in list.iter().enumerate() {
            short_text(&format!("{field}[{i}]"), v)?;
        }
    }
    Ok(())
}

/// Checks what a new node carries besides its data: a valid name
/// ([`labwire_common::names::check`]), and a group and submitter without NUL of at most
/// 256 bytes.
pub fn check_node(name: &str, group: Option<&str>, submitter: &str) -> Result<()> {
    if let Err(e) = names::check(name) {
        return Err(invalid(format!("node name {} {e}", shown(name))));
    }
    for (field, value) in [
        ("group", group.unwrap_or_default()),
        ("submitter", submitter),
    ] {
        no_nul(field, value)?;
        at_most(field, value.len(), MAX_SHORT_TEXT_BYTES)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> v1::JobSpec {
        v1::JobSpec {
            name: "job".into(),
            ..Default::default()
        }
    }

    fn refused(s: &v1::JobSpec) -> String {
        match check_spec(s) {
            Err(Error::Invalid(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn roles_are_plain_file_names() {
        for ok in ["kernel", "rootfs.cpio.gz", "dtb-1", "modules_tar"] {
            assert_eq!(role_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            (".", "folder"),
            ("..", "folder"),
            ("../x", "`/`"),
            ("/etc/passwd", "`/`"),
            (".hidden", "starts with"),
            ("a\0b", "contains"),
            ("a b", "contains"),
        ] {
            let p = role_problem(bad).unwrap_or_default();
            assert!(p.contains(why), "{bad:?}: {p}");
        }
        assert!(role_problem(&"r".repeat(65)).is_some());
        let mut s = spec();
        s.artifacts.insert("../x".into(), v1::Artifact::default());
        let m = refused(&s);
        assert!(
            m.contains("spec.artifacts") && m.contains("\"../x\""),
            "{m}"
        );
    }

    #[test]
    fn params_are_bounded_and_free_of_nul() {
        let mut s = spec();
        s.params.insert("arg".into(), "a\0b".into());
        let m = refused(&s);
        assert!(m.contains("spec.params.arg") && m.contains("NUL"), "{m}");
        let mut s = spec();
        s.params.insert("big".into(), "x".repeat(1 << 20));
        let m = refused(&s);
        assert!(m.contains("spec.params.big is 1048576 bytes"), "{m}");
        let mut s = spec();
        for i in 0..9 {
            s.params
                .insert(format!("p{i}"), "x".repeat(MAX_PARAM_VALUE_BYTES));
        }
        assert!(refused(&s).contains("all values together"));
        let mut s = spec();
        s.params.insert("k".repeat(65), String::new());
        assert!(refused(&s).contains("the name of spec.params"));
        let mut s = spec();
        s.params
            .insert("cmdline".into(), "console=ttyS0\nquiet $(x)".into());
        assert!(
            check_spec(&s).is_ok(),
            "newlines and metacharacters are fine"
        );
    }

    #[test]
    fn names_commands_and_criteria_are_checked() {
        let mut s = spec();
        s.name = "job\u{a0}".into();
        assert!(refused(&s).starts_with("spec.name \"job\\u{a0}\""));
        let mut s = spec();
        s.commands = vec!["ok".into(), "a\0".into()];
        assert!(refused(&s).contains("spec.commands[1]"));
        let mut s = spec();
        s.criteria = Some(v1::Criteria {
            tags: vec!["fine".into(), "bad\u{1b}".into()],
            ..Default::default()
        });
        assert!(refused(&s).contains("spec.criteria.tags[1]"));
        let mut s = spec();
        s.criteria = Some(v1::Criteria {
            device_type: "d".repeat(300),
            ..Default::default()
        });
        assert!(refused(&s).contains("spec.criteria.device_type is 300 bytes"));
        let mut s = spec();
        s.artifacts.insert(
            "kernel".into(),
            v1::Artifact {
                url: "https://x/a b".into(),
                sha256: String::new(),
            },
        );
        assert!(refused(&s).contains("spec.artifacts.kernel.url"));
    }

    #[test]
    fn node_fields_are_checked() {
        assert!(check_node("checkout", None, "me").is_ok());
        let e = check_node("a\0", None, "").unwrap_err().to_string();
        assert!(
            e.contains("node name \"a\\0\"") && e.contains("U+0000"),
            "{e}"
        );
        let e = check_node("x", Some("g\0"), "").unwrap_err().to_string();
        assert!(e.contains("group"), "{e}");
        let e = check_node("x", None, &"s".repeat(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("submitter is 300 bytes"), "{e}");
    }
}
