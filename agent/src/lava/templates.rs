//! LAVA job definitions rendered from Jinja2 templates (minijinja). The built-in templates
//! are those of `config/templates/lava/`, compiled in; a lab admin's `templates_dir` adds
//! templates or replaces built-in ones of the same name. A job's template is its boot
//! method's (`qemu.jinja2`, `u-boot.jinja2`, ...), which extends `base.jinja2`.
//!
//! Every value printed with `{{ ... }}` is written as a JSON literal (minijinja's JSON
//! auto-escaping), which YAML reads as the same string or number: a job parameter cannot
//! add keys or actions to the definition, whatever it contains.

use minijinja::{AutoEscape, Environment, Value};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The built-in templates: name and text.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "base.jinja2",
        include_str!("../../../config/templates/lava/base.jinja2"),
    ),
    (
        "qemu.jinja2",
        include_str!("../../../config/templates/lava/qemu.jinja2"),
    ),
    (
        "u-boot.jinja2",
        include_str!("../../../config/templates/lava/u-boot.jinja2"),
    ),
    (
        "depthcharge.jinja2",
        include_str!("../../../config/templates/lava/depthcharge.jinja2"),
    ),
    (
        "grub.jinja2",
        include_str!("../../../config/templates/lava/grub.jinja2"),
    ),
    (
        "fastboot.jinja2",
        include_str!("../../../config/templates/lava/fastboot.jinja2"),
    ),
];

/// Everything a template sees.
#[derive(Debug, Clone, Serialize)]
pub struct JobVars {
    /// The LAVA device type.
    pub device_type: String,
    /// The boot method (the template's name without `.jinja2`).
    pub boot_method: String,
    /// The labwire job.
    pub job: JobInfo,
    /// The job's parameters.
    pub params: BTreeMap<String, String>,
    /// The job's artifacts by role (`kernel`, `ramdisk`, `dtb`, `modules`, `rootfs`, ...).
    pub artifacts: BTreeMap<String, ArtifactVar>,
    /// The job's commands: the test-shell test runs each as a LAVA test case.
    pub commands: Vec<String>,
    /// Time limits in minutes.
    pub timeouts: Timeouts,
    /// LAVA priority, 0 to 100.
    pub priority: u8,
    /// LAVA visibility (`public`, `personal`).
    pub visibility: String,
    /// The lab's name.
    pub lab: String,
}

/// The labwire job a definition is for.
#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    /// The job node id.
    pub id: i64,
    /// The attempt.
    pub attempt: i32,
    /// The job's name.
    pub name: String,
}

/// An artifact.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactVar {
    /// Where LAVA downloads it from.
    pub url: String,
    /// Its SHA-256, when the job gives one.
    pub sha256: Option<String>,
}

/// Time limits, in minutes.
#[derive(Debug, Clone, Serialize)]
pub struct Timeouts {
    /// The whole job.
    pub job: u64,
    /// One action (deploy, boot).
    pub action: u64,
    /// The tests.
    pub test: u64,
}

/// The loaded templates.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// The built-in templates plus those of `dir` (`*.jinja2`), which win.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Json);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.add_filter("shell_quote", |s: String| shell_quote(&s));
        for (name, text) in BUILTIN {
            env.add_template(name, text)
                .map_err(|e| anyhow::anyhow!("built-in template {name}: {e}"))?;
        }
        if let Some(dir) = dir {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
            for entry in entries {
                let path = entry?.path();
                if path.extension().and_then(|e| e.to_str()) != Some("jinja2") {
                    continue;
                }
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                env.add_template_owned(name.to_string(), text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            }
        }
        Ok(Templates { env })
    }

    /// Whether a template for this boot method exists.
    pub fn has(&self, boot_method: &str) -> bool {
        self.env
            .get_template(&format!("{boot_method}.jinja2"))
            .is_ok()
    }

    /// Renders the definition of a job; the result is checked to be a YAML map.
    pub fn render(&self, vars: &JobVars) -> Result<String, String> {
        let name = format!("{}.jinja2", vars.boot_method);
        let t = self.env.get_template(&name).map_err(|_| {
            format!(
                "no LAVA job template `{name}` for boot method `{}` (built in: qemu, u-boot, depthcharge, grub, fastboot)",
                vars.boot_method
            )
        })?;
        let text = t
            .render(Value::from_serialize(vars))
            .map_err(|e| format!("template {name}: {e}"))?;
        match yaml_serde::from_str::<yaml_serde::Value>(&text) {
            Ok(yaml_serde::Value::Mapping(_)) => Ok(text),
            Ok(_) => Err(format!("template {name} did not render a YAML map")),
            Err(e) => Err(format!("template {name} rendered invalid YAML: {e}")),
        }
    }
}

/// `s` in single quotes for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(boot: &str) -> JobVars {
        JobVars {
            device_type: "qemu".into(),
            boot_method: boot.into(),
            job: JobInfo {
                id: 42,
                attempt: 1,
                name: "baseline \"x86\"".into(),
            },
            params: [
                (
                    "prompt".to_string(),
                    "a\nactions: [evil]\n'\"{{x}}".to_string(),
                ),
                ("kselftest".to_string(), "timers net'x".to_string()),
            ]
            .into(),
            artifacts: [
                (
                    "kernel".to_string(),
                    ArtifactVar {
                        url: "http://example.invalid/bzImage".into(),
                        sha256: None,
                    },
                ),
                (
                    "ramdisk".to_string(),
                    ArtifactVar {
                        url: "http://example.invalid/initrd.cpio.gz".into(),
                        sha256: Some("ab".repeat(32)),
                    },
                ),
                (
                    "dtb".to_string(),
                    ArtifactVar {
                        url: "http://example.invalid/board.dtb".into(),
                        sha256: None,
                    },
                ),
                (
                    "boot".to_string(),
                    ArtifactVar {
                        url: "http://example.invalid/boot.img".into(),
                        sha256: None,
                    },
                ),
                (
                    "rootfs".to_string(),
                    ArtifactVar {
                        url: "http://example.invalid/rootfs.img".into(),
                        sha256: None,
                    },
                ),
            ]
            .into(),
            commands: vec!["echo 'hi'; uname -a".into(), "cat /proc/cmdline".into()],
            timeouts: Timeouts {
                job: 30,
                action: 10,
                test: 20,
            },
            priority: 50,
            visibility: "public".into(),
            lab: "lab-a".into(),
        }
    }

    #[test]
    fn every_builtin_boot_method_renders_yaml_with_the_job_id() {
        let t = Templates::load(None).unwrap();
        for boot in ["qemu", "u-boot", "depthcharge", "grub", "fastboot"] {
            let text = t.render(&vars(boot)).unwrap();
            let y: yaml_serde::Value = yaml_serde::from_str(&text).unwrap();
            assert_eq!(y["device_type"].as_str(), Some("qemu"), "{boot}: {text}");
            assert_eq!(y["metadata"]["labwire.job"].as_str(), Some("42"), "{text}");
            assert_eq!(y["priority"].as_u64(), Some(50));
            let actions = y["actions"].as_sequence().unwrap();
            assert!(actions.len() >= 3, "{boot}: {text}");
            // The parameter with YAML and Jinja syntax in it stayed one string.
            assert!(!text.contains("\nactions: [evil]"), "{text}");
            let boot = actions.iter().find(|a| a.get("boot").is_some()).unwrap();
            assert_eq!(
                boot["boot"]["prompts"][0].as_str(),
                Some("a\nactions: [evil]\n'\"{{x}}"),
                "{text}"
            );
            // kselftest collections: one shell word each, quoted.
            let steps = format!("{:?}", y["actions"]);
            assert!(
                steps.contains(r#"for c in 'timers' 'net'\\''x'; do"#),
                "{steps}"
            );
        }
    }

    #[test]
    fn an_admin_template_overrides_a_builtin_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("qemu.jinja2"),
            "device_type: {{ device_type }}\njob_name: custom\n",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert!(t.render(&vars("qemu")).unwrap().contains("custom"));
        let e = t.render(&vars("pxe")).unwrap_err();
        assert!(e.contains("no LAVA job template `pxe.jinja2`"), "{e}");
        let mut v = vars("grub");
        v.artifacts.remove("ramdisk");
        let e = t.render(&v).unwrap_err();
        assert!(e.contains("undefined") && e.contains("grub.jinja2:"), "{e}");
        let e = Templates::load(None)
            .unwrap()
            .render(&vars("pxe"))
            .unwrap_err();
        assert!(e.contains("no LAVA job template `pxe.jinja2`"), "{e}");
    }
}
