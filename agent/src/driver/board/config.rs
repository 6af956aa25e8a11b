//! How a board boots and how the agent logs in on its console (`boot:` and `login:` of a
//! serial device or a Labgrid place), with the defaults and checks both drivers share.

use crate::config::command::validate_regex;
use crate::config::{DeviceConfig, JOB_PLACEHOLDERS, Secret, placeholder};
use anyhow::bail;
use serde::Deserialize;
use std::time::Duration;

/// How the board boots, from power-on to the kernel's first message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// A ready-made sequence: `kernel` (the kernel starts by itself at power-on, as with QEMU
    /// `-kernel`), `u-boot` or `grub`. Default `kernel`.
    #[serde(default = "default_preset")]
    pub preset: BootPreset,
    /// U-Boot settings for the `u-boot` preset.
    #[serde(default)]
    pub u_boot: UBootConfig,
    /// GRUB settings for the `grub` preset.
    #[serde(default)]
    pub grub: GrubConfig,
    /// Extra expect/send steps, run after the preset's.
    #[serde(default)]
    pub steps: Vec<BootStep>,
    /// A regular expression for the kernel's start message. Default `Linux version \d`.
    #[serde(default = "default_kernel_start")]
    pub kernel_start: String,
    /// How long from power-on until the kernel starts. Default `5m`.
    #[serde(default = "default_boot_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            preset: default_preset(),
            u_boot: UBootConfig::default(),
            grub: GrubConfig::default(),
            steps: Vec::new(),
            kernel_start: default_kernel_start(),
            timeout: default_boot_timeout(),
        }
    }
}

/// Ready-made boot sequences.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BootPreset {
    /// The kernel starts on power-on (QEMU `-kernel`, boards that boot from their own media).
    Kernel,
    /// Interrupt U-Boot, run the boot commands.
    UBoot,
    /// Open GRUB's command line, run the boot commands.
    Grub,
}

/// U-Boot: interrupt autoboot, then type commands at its prompt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UBootConfig {
    /// The autoboot message to interrupt. Default `Hit any key to stop autoboot`.
    #[serde(default = "default_uboot_interrupt")]
    pub interrupt_prompt: String,
    /// What to send to interrupt. Default a space.
    #[serde(default = "default_uboot_char")]
    pub interrupt_char: String,
    /// U-Boot's prompt. Default `=> `.
    #[serde(default = "default_uboot_prompt")]
    pub prompt: String,
    /// Commands typed at the prompt; the last one boots (e.g. `bootz ${kernel_addr_r} ...`).
    /// Placeholders `{artifacts.NAME}` (the file's name), `{tftp.NAME}`, `{job.id}` and
    /// `{device.NAME}` are replaced; job parameters are not allowed here. Empty on a serial
    /// device of an agent with a `tftp:` section: the agent types the TFTP boot of the device
    /// type's `u_boot` (kernel format, load addresses).
    #[serde(default)]
    pub commands: Vec<String>,
    /// For the TFTP boot the agent types: the board's address (`setenv ipaddr`). Absent: the
    /// board asks DHCP (`dhcp`).
    #[serde(default)]
    pub ipaddr: Option<String>,
    /// For the TFTP boot the agent types: the kernel's command line (`setenv bootargs`), e.g.
    /// `console=ttyAMA0,115200`. Absent: U-Boot's own `bootargs`.
    #[serde(default)]
    pub bootargs: Option<String>,
}

impl Default for UBootConfig {
    fn default() -> Self {
        UBootConfig {
            interrupt_prompt: default_uboot_interrupt(),
            interrupt_char: default_uboot_char(),
            prompt: default_uboot_prompt(),
            commands: Vec::new(),
            ipaddr: None,
            bootargs: None,
        }
    }
}

/// GRUB: open the command line with `c`, then type commands.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrubConfig {
    /// Text of GRUB's menu. Default `GNU GRUB`.
    #[serde(default = "default_grub_menu")]
    pub menu_prompt: String,
    /// GRUB's command-line prompt. Default `grub>`.
    #[serde(default = "default_grub_prompt")]
    pub prompt: String,
    /// Commands (`linux ...`, `initrd ...`, `boot`), with the same placeholders as U-Boot's.
    #[serde(default)]
    pub commands: Vec<String>,
}

impl Default for GrubConfig {
    fn default() -> Self {
        GrubConfig {
            menu_prompt: default_grub_menu(),
            prompt: default_grub_prompt(),
            commands: Vec::new(),
        }
    }
}

/// Wait for a regular expression, then optionally send text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootStep {
    /// A regular expression to wait for.
    pub expect: String,
    /// Text to send when it appears (a newline is not added: write `\n` or `\r`).
    #[serde(default)]
    pub send: Option<String>,
    /// How long to wait. Default `60s`.
    #[serde(default = "default_step_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Logging in on the console after boot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The login prompt (a regular expression). Default `login:`.
    #[serde(default = "default_login_prompt")]
    pub login_prompt: String,
    /// The user name. Absent: the board gives a shell without a login, and the agent just
    /// waits for the shell prompt.
    #[serde(default)]
    pub username: Option<String>,
    /// The password prompt (a regular expression). Default `Password:`.
    #[serde(default = "default_password_prompt")]
    pub password_prompt: String,
    /// The password, if one is asked.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The shell prompt after login (a regular expression). Default `# `.
    #[serde(default = "default_shell_prompt")]
    pub shell_prompt: String,
    /// How long from the kernel's start until the shell prompt. Default `3m`.
    #[serde(default = "default_login_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            login_prompt: default_login_prompt(),
            username: None,
            password_prompt: default_password_prompt(),
            password: None,
            shell_prompt: default_shell_prompt(),
            timeout: default_login_timeout(),
        }
    }
}

/// The default `max_download_bytes` of a board: 2 GiB.
pub(crate) fn default_max_download() -> u64 {
    2 << 30
}
/// The default time limit of a power or deploy command: 60 s.
pub(crate) fn default_command_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_preset() -> BootPreset {
    BootPreset::Kernel
}
fn default_kernel_start() -> String {
    r"Linux version \d".to_string()
}
fn default_boot_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_uboot_interrupt() -> String {
    "Hit any key to stop autoboot".into()
}
fn default_uboot_char() -> String {
    " ".into()
}
fn default_uboot_prompt() -> String {
    "=> ".into()
}
fn default_grub_menu() -> String {
    "GNU GRUB".into()
}
fn default_grub_prompt() -> String {
    "grub>".into()
}
fn default_step_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_login_prompt() -> String {
    "login:".into()
}
fn default_password_prompt() -> String {
    "Password:".into()
}
fn default_shell_prompt() -> String {
    "# ".into()
}
fn default_login_timeout() -> Duration {
    Duration::from_secs(180)
}

/// Placeholders allowed in text typed at a bootloader: no job parameters (the bootloader's
/// own command parser would see them raw).
fn validate_boot_text(key: &str, text: &str, device: &DeviceConfig) -> anyhow::Result<()> {
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let token = &rest[start..start + len + 1];
        match placeholder(token) {
            Some(("artifacts", n)) if !n.is_empty() => {}
            Some(("job", _)) if JOB_PLACEHOLDERS.contains(&token) => {}
            Some(("device", n)) if device.settings.contains_key(n) || n == "name" => {}
            Some(("params", _)) => {
                bail!("{key}: `{token}`: job parameters cannot be typed at a bootloader")
            }
            _ => {}
        }
        rest = &rest[start + len + 1..];
    }
    Ok(())
}

/// Checks the boot and login settings of a board (serial and labgrid drivers). `tftp_boot`:
/// the agent can type a TFTP boot itself, so `u_boot.commands` may be empty.
pub(crate) fn validate_boot_login(
    key: &str,
    boot: &BootConfig,
    login: &LoginConfig,
    d: &DeviceConfig,
    tftp_boot: bool,
) -> anyhow::Result<()> {
    validate_regex(&format!("{key}.boot.kernel_start"), &boot.kernel_start)?;
    for (i, st) in boot.steps.iter().enumerate() {
        validate_regex(&format!("{key}.boot.steps[{i}].expect"), &st.expect)?;
        if let Some(t) = &st.send {
            validate_boot_text(&format!("{key}.boot.steps[{i}].send"), t, d)?;
        }
    }
    match boot.preset {
        BootPreset::Kernel => {}
        BootPreset::UBoot => {
            validate_regex(
                &format!("{key}.boot.u_boot.interrupt_prompt"),
                &regex::escape(&boot.u_boot.interrupt_prompt),
            )?;
            if boot.u_boot.commands.is_empty() && !tftp_boot {
                bail!(
                    "{key}.boot.u_boot.commands: the u-boot preset needs the commands that boot the kernel (or a `tftp:` section in agent.yaml, for the TFTP boot the agent types)"
                );
            }
            if let Some(ip) = &boot.u_boot.ipaddr
                && (ip.parse::<std::net::Ipv4Addr>().is_err())
            {
                bail!("{key}.boot.u_boot.ipaddr `{ip}`: expected an IPv4 address");
            }
            if let Some(args) = &boot.u_boot.bootargs {
                if args
                    .chars()
                    .any(|c| c.is_control() || c == '\'' || c == '\\')
                {
                    bail!(
                        "{key}.boot.u_boot.bootargs: no quotes, backslashes or control characters"
                    );
                }
                validate_boot_text(&format!("{key}.boot.u_boot.bootargs"), args, d)?;
            }
            for (i, c) in boot.u_boot.commands.iter().enumerate() {
                validate_boot_text(&format!("{key}.boot.u_boot.commands[{i}]"), c, d)?;
            }
        }
        BootPreset::Grub => {
            if boot.grub.commands.is_empty() {
                bail!(
                    "{key}.boot.grub.commands: the grub preset needs the commands that boot the kernel"
                );
            }
            for (i, c) in boot.grub.commands.iter().enumerate() {
                validate_boot_text(&format!("{key}.boot.grub.commands[{i}]"), c, d)?;
            }
        }
    }
    let l = login;
    validate_regex(&format!("{key}.login.login_prompt"), &l.login_prompt)?;
    validate_regex(&format!("{key}.login.password_prompt"), &l.password_prompt)?;
    validate_regex(&format!("{key}.login.shell_prompt"), &l.shell_prompt)?;
    if l.username.as_deref() == Some("") {
        bail!("{key}.login.username: must not be empty (leave it out when there is no login)");
    }
    Ok(())
}
