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
        "login.jinja2",
        include_str!("../../../config/templates/lava/login.jinja2"),
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
    /// The job's commands as the job gave them (the steps below run them).
    pub commands: Vec<String>,
    /// The run steps of labwire's test definition (`commands`): the job's commands, KUnit
    /// and kselftest, each reporting its exit status to LAVA ([`super::steps`]). Empty for a
    /// boot-only job, which then has no test action.
    pub test_steps: Vec<String>,
    /// The shell prompts LAVA waits for: the job's `prompt` parameter, else the device
    /// type's `prompts`, else `/ #`.
    pub prompts: Vec<String>,
    /// The boards' login from the device type's settings (never from job parameters).
    pub login: Option<LoginVar>,
    /// The device type's kernel command line, if its settings give one (the job's own
    /// `kernel_args` parameter, checked, is in `params`).
    pub kernel_args: Option<String>,
    /// The URL LAVA calls back when the job finishes, when the agent listens for it.
    pub notify_url: Option<String>,
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
    /// Its compression as LAVA names it (`gz`, `xz`, `bz2`, `zstd`), from the URL's suffix.
    pub compression: Option<String>,
}

impl ArtifactVar {
    /// An artifact at `url`, its compression guessed from the URL's path.
    pub fn new(url: impl Into<String>, sha256: Option<String>) -> Self {
        let url = url.into();
        let path = url::Url::parse(&url)
            .map(|u| u.path().to_ascii_lowercase())
            .unwrap_or_default();
        let compression = [
            (".gz", "gz"),
            (".tgz", "gz"),
            (".xz", "xz"),
            (".bz2", "bz2"),
            (".zst", "zstd"),
        ]
        .iter()
        .find(|(suffix, _)| path.ends_with(suffix))
        .map(|(_, c)| c.to_string());
        ArtifactVar {
            url,
            sha256,
            compression,
        }
    }
}

/// A board's login, as the definition's `auto_login` gets it.
#[derive(Debug, Clone, Serialize)]
pub struct LoginVar {
    /// The user name.
    pub username: String,
    /// The password, if any.
    pub password: Option<String>,
    /// The login prompt.
    pub login_prompt: String,
    /// The password prompt.
    pub password_prompt: String,
}

/// Checks a kernel command line (a device type's or a job's `kernel_args`): words of
/// letters, digits and `_ . , : = / @ + -`, separated by spaces. Anything else (quotes,
/// `$`, braces, a backslash) could end the argument LAVA gives QEMU and add options of its
/// own, or be taken by LAVA for one of its `{placeholders}`.
pub fn check_kernel_args(s: &str) -> Result<(), String> {
    if s.len() > 1024 {
        return Err("longer than 1024 bytes".into());
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || " _.,:=/@+-".contains(*c)))
    {
        Some(c) => Err(format!(
            "`{}` is not allowed: expected words of letters, digits and `_.,:=/@+-` separated by spaces",
            c.escape_default()
        )),
        None => Ok(()),
    }
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
        env.add_filter("shell_quote", |s: String| {
            crate::placeholders::shell_quote(&s)
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn art(url: &str) -> ArtifactVar {
        ArtifactVar::new(url, None)
    }

    fn vars(boot: &str) -> JobVars {
        let params: BTreeMap<String, String> = [
            (
                "prompt".to_string(),
                "a\nactions: [evil]\n'\"{{x}}".to_string(),
            ),
            ("kselftest".to_string(), "timers net'x".to_string()),
        ]
        .into();
        let commands = vec![
            "echo 'hi'; uname -a".to_string(),
            "cat /proc/cmdline".into(),
        ];
        JobVars {
            device_type: "qemu".into(),
            boot_method: boot.into(),
            job: JobInfo {
                id: 42,
                attempt: 1,
                name: "baseline \"x86\"".into(),
            },
            test_steps: super::super::steps::build(42, &params, &commands).unwrap(),
            prompts: vec![params["prompt"].clone()],
            params,
            artifacts: [
                ("kernel".to_string(), art("http://example.invalid/bzImage")),
                (
                    "ramdisk".to_string(),
                    ArtifactVar::new(
                        "http://example.invalid/initrd.cpio.gz",
                        Some("ab".repeat(32)),
                    ),
                ),
                ("dtb".to_string(), art("http://example.invalid/board.dtb")),
                ("boot".to_string(), art("http://example.invalid/boot.img")),
                (
                    "rootfs".to_string(),
                    art("http://example.invalid/rootfs.img.xz"),
                ),
            ]
            .into(),
            commands,
            login: Some(LoginVar {
                username: "root".into(),
                password: Some("pa'ss: {x}".into()),
                login_prompt: "login:".into(),
                password_prompt: "Password:".into(),
            }),
            kernel_args: None,
            notify_url: Some("http://127.0.0.1:9/lava/test/42/1".into()),
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
            assert_eq!(
                y["notify"]["callbacks"][0]["url"].as_str(),
                Some("http://127.0.0.1:9/lava/test/42/1")
            );
            let actions = y["actions"].as_sequence().unwrap();
            assert_eq!(actions.len(), 3, "{boot}: {text}");
            // The parameter with YAML and Jinja syntax in it stayed one string.
            assert!(!text.contains("\nactions: [evil]"), "{text}");
            let b = actions.iter().find(|a| a.get("boot").is_some()).unwrap();
            assert_eq!(
                b["boot"]["prompts"][0].as_str(),
                Some("a\nactions: [evil]\n'\"{{x}}"),
                "{text}"
            );
            let login = &b["boot"]["auto_login"];
            assert_eq!(login["username"].as_str(), Some("root"), "{boot}: {text}");
            assert_eq!(login["password"].as_str(), Some("pa'ss: {x}"));
            // The steps of the commands test definition, as built.
            let def = &actions[2]["test"]["definitions"][0];
            assert_eq!(def["name"].as_str(), Some("commands"));
            let steps = def["repository"]["run"]["steps"].as_sequence().unwrap();
            let want = vars(boot).test_steps;
            assert_eq!(steps.len(), want.len());
            for (s, w) in steps.iter().zip(&want) {
                assert_eq!(s.as_str(), Some(w.as_str()));
            }
        }
    }

    #[test]
    fn qemu_boots_a_cpio_ramdisk_with_the_overlay_and_a_command_line() {
        let t = Templates::load(None).unwrap();
        let mut v = vars("qemu");
        v.params
            .insert("kernel_args".into(), "quiet labwire.cols=200".into());
        let y: yaml_serde::Value = yaml_serde::from_str(&t.render(&v).unwrap()).unwrap();
        let images = &y["actions"][0]["deploy"]["images"];
        assert_eq!(
            images["kernel"]["image_arg"].as_str(),
            Some("-kernel {kernel} -append \"console=ttyS0,115200 quiet labwire.cols=200\"")
        );
        assert_eq!(images["ramdisk"]["format"].as_str(), Some("cpio.newc"));
        assert_eq!(images["ramdisk"]["compression"].as_str(), Some("gz"));
        assert_eq!(images["ramdisk"]["overlays"]["lava"].as_bool(), Some(true));
        assert_eq!(images["rootfs"]["compression"].as_str(), Some("xz"));
        v.kernel_args = Some("console=hvc0".into());
        v.params.remove("kernel_args");
        v.params.insert("qemu_arch".into(), "arm64".into());
        v.login = None;
        v.test_steps.clear();
        v.notify_url = None;
        let y: yaml_serde::Value = yaml_serde::from_str(&t.render(&v).unwrap()).unwrap();
        assert_eq!(
            y["actions"][0]["deploy"]["images"]["kernel"]["image_arg"].as_str(),
            Some("-kernel {kernel} -append \"console=hvc0\"")
        );
        assert_eq!(y["context"]["arch"].as_str(), Some("arm64"));
        assert_eq!(y["actions"].as_sequence().map(Vec::len), Some(2));
        assert!(y["actions"][1]["boot"].get("auto_login").is_none());
        assert!(y.get("notify").is_none());
    }

    #[test]
    fn kernel_args_cannot_carry_options_or_quotes() {
        assert!(check_kernel_args("console=ttyS0,115200 root=/dev/vda1 a.b=c-d+e@f:g").is_ok());
        for bad in [
            "x\" -drive file=/etc/shadow \"",
            "a'b",
            "$(reboot)",
            "{kernel}",
            "a\\b",
            "a\nb",
            "a\tb",
        ] {
            assert!(check_kernel_args(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compression_comes_from_the_url() {
        assert_eq!(
            art("http://h/x.cpio.gz?x=1").compression.as_deref(),
            Some("gz")
        );
        assert_eq!(
            art("http://h/x.CPIO.ZST").compression.as_deref(),
            Some("zstd")
        );
        assert_eq!(art("http://h/x.cpio").compression, None);
        assert_eq!(art("not a url").compression, None);
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
