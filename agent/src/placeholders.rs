//! Placeholders in configured commands and in the commands a job runs on a board.
//!
//! - In argument lists (power, deploy and shell-driver commands) a placeholder is a whole
//!   argument and is replaced by exactly one argument: `{params.NAME}`, `{artifacts.NAME}`
//!   (the downloaded file's path), `{device.NAME}` (a device setting, or `name`), `{job.id}`,
//!   `{job.attempt}`, `{job.dir}`. With a trailing `?` (`{params.NAME?}`) the argument is left
//!   out when the value is not set; without it a missing value is an error.
//! - In text typed at a bootloader, placeholders may sit inside the text, but job parameters
//!   are not allowed there; `{artifacts.NAME}` is the file's name (bootloaders fetch files by
//!   name, e.g. over TFTP).
//! - `{tftp.dir}`, `{tftp.server}` and `{tftp.NAME}` (an artifact staged for TFTP) are the
//!   paths as the board asks the TFTP server for them, and the server's address.
//! - In commands run on a board's shell, `{params.NAME}` becomes the value in single quotes,
//!   so the board's shell sees it as one literal word.

use crate::config::{DeviceConfig, placeholder};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The values placeholders stand for.
pub(crate) struct Values<'a> {
    /// The job's parameters.
    pub params: &'a HashMap<String, String>,
    /// The device.
    pub device: &'a DeviceConfig,
    /// The job id.
    pub job: i64,
    /// The attempt.
    pub attempt: i32,
    /// The job's folder.
    pub dir: &'a Path,
    /// Downloaded artifacts by role.
    pub artifacts: &'a BTreeMap<String, PathBuf>,
    /// The job's files staged under the TFTP root, when the board boots over TFTP.
    pub tftp: Option<&'a crate::tftp::Staged>,
}

impl Values<'_> {
    fn lookup(&self, ns: &str, name: &str, file_name_only: bool) -> Option<String> {
        match (ns, name) {
            ("params", n) => self.params.get(n).cloned(),
            ("artifacts", n) => self.artifacts.get(n).map(|p| {
                if file_name_only {
                    p.file_name()
                        .map_or_else(String::new, |f| f.to_string_lossy().into_owned())
                } else {
                    p.display().to_string()
                }
            }),
            ("device", "name") => Some(self.device.name.clone()),
            ("device", n) => self.device.settings.get(n).cloned(),
            ("job", "id") => Some(self.job.to_string()),
            ("job", "attempt") => Some(self.attempt.to_string()),
            ("job", "dir") => Some(self.dir.display().to_string()),
            ("tftp", n) => self.tftp.and_then(|t| t.lookup(n)),
            _ => None,
        }
    }
}

/// Expands an argument list: each placeholder argument becomes one argument (or none, for an
/// optional one without a value).
pub(crate) fn expand_argv(argv: &[String], v: &Values<'_>) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(argv.len());
    for arg in argv {
        match placeholder(arg) {
            Some((ns, name)) => {
                let (name, optional) = match name.strip_suffix('?') {
                    Some(n) => (n, true),
                    None => (name, false),
                };
                match v.lookup(ns, name, false) {
                    Some(val) => out.push(val),
                    None if optional => {}
                    None => {
                        return Err(match ns {
                            "params" => format!(
                                "the command needs job parameter `{name}`, which the job does not set"
                            ),
                            "artifacts" => format!(
                                "the command needs artifact `{name}`, which the job does not provide"
                            ),
                            _ => format!("`{arg}` has no value"),
                        });
                    }
                }
            }
            None => out.push(arg.clone()),
        }
    }
    Ok(out)
}

/// Expands placeholders inside text typed at a bootloader (no job parameters).
pub(crate) fn expand_boot_text(text: &str, v: &Values<'_>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let token = &rest[start..start + len + 1];
        match placeholder(token) {
            Some(("params", _)) => {
                return Err(format!(
                    "`{token}`: job parameters cannot be typed at a bootloader"
                ));
            }
            Some((ns, name)) if ["artifacts", "device", "job", "tftp"].contains(&ns) => out
                .push_str(
                    &v.lookup(ns, name, true)
                        .ok_or_else(|| format!("`{token}` has no value"))?,
                ),
            _ => out.push_str(token),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Quotes a value for a POSIX shell: one word, nothing expanded.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Expands `{params.NAME}` in a command for a board's shell, quoting each value.
pub(crate) fn expand_board_command(
    cmd: &str,
    params: &HashMap<String, String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = cmd;
    while let Some(start) = rest.find("{params.") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &rest[start + "{params.".len()..start + len];
        let val = params.get(name).ok_or_else(|| {
            format!("the command uses job parameter `{name}`, which the job does not set")
        })?;
        out.push_str(&shell_quote(val));
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceConfig {
        yaml_serde::from_str(
            "{name: b1, device_type: qemu-x86_64, settings: {port: '3'}, driver: {type: shell, command: ['true']}}",
        )
        .unwrap()
    }

    #[test]
    fn whole_arguments_and_optional_ones() {
        let params: HashMap<String, String> =
            [("x".to_string(), "a b; rm -rf /".to_string())].into();
        let arts: BTreeMap<String, PathBuf> =
            [("kernel".to_string(), PathBuf::from("/j/kernel-bzImage"))].into();
        let d = device();
        let v = Values {
            params: &params,
            device: &d,
            job: 7,
            attempt: 2,
            dir: Path::new("/j"),
            artifacts: &arts,
            tftp: None,
        };
        let argv: Vec<String> = [
            "pdu",
            "{device.port}",
            "{params.x}",
            "{params.y?}",
            "{artifacts.kernel}",
            "{job.id}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            expand_argv(&argv, &v).unwrap(),
            vec!["pdu", "3", "a b; rm -rf /", "/j/kernel-bzImage", "7"]
        );
        let e = expand_argv(&["{params.y}".to_string()], &v).unwrap_err();
        assert!(e.contains("`y`"), "{e}");
        assert_eq!(
            expand_boot_text("tftp {artifacts.kernel}; echo {job.id}", &v).unwrap(),
            "tftp kernel-bzImage; echo 7"
        );
        assert!(expand_boot_text("setenv x {params.x}", &v).is_err());
    }

    #[test]
    fn board_commands_quote_parameters() {
        let params: HashMap<String, String> =
            [("msg".to_string(), "it's $(id) `id`; ls".to_string())].into();
        let c = expand_board_command("echo {params.msg} > /tmp/x", &params).unwrap();
        assert_eq!(c, r"echo 'it'\''s $(id) `id`; ls' > /tmp/x");
        assert!(expand_board_command("echo {params.nope}", &params).is_err());
    }
}
