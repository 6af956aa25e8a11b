//! The agent's configuration file (`/etc/labwire/agent.yaml`): parsed with unknown keys
//! refused, defaults filled in, then one validation pass whose errors name the file, the key
//! and what was expected. `config/agent.yaml` in the sources documents every key.

use crate::device_types::Library;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Config files larger than this are refused before parsing.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The lab's name; must equal the common name of the client certificate.
    pub lab: String,
    /// How to reach the coordinator.
    pub coordinator: CoordinatorLink,
    /// Where the agent keeps its outbox, journal and job folders.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Extra device-type directories (the built-in library is always loaded first).
    #[serde(default)]
    pub device_type_dirs: Vec<PathBuf>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// The lab's devices.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// LAVA servers whose device types this agent offers (one pooled device per type).
    #[serde(default)]
    pub lava: Vec<crate::lava::LavaConfig>,
    /// Labgrid coordinators whose places the agent runs jobs on.
    #[serde(default)]
    pub labgrid: Vec<LabgridConfig>,
}

/// The coordinator's address (or the addresses of its replicas) and the TLS files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorLink {
    /// `https://host:port` of the coordinator. Exactly one of `url` and `urls` is given.
    #[serde(default)]
    pub url: Option<String>,
    /// `https://host:port` of each replica of the coordinator (they share one database and one
    /// CA): the agent talks to one at a time and moves on to the next when it stops answering.
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    /// The coordinator's CA certificate (PEM).
    pub ca: PathBuf,
    /// This lab's client certificate (PEM).
    pub cert: PathBuf,
    /// This lab's private key (PEM).
    pub key: PathBuf,
}

impl CoordinatorLink {
    /// The coordinator's addresses, in the order the agent tries them, each with its key
    /// (`coordinator.url` or `coordinator.urls[N]`) for messages.
    pub fn addresses(&self) -> Vec<(String, &str)> {
        match (&self.url, &self.urls) {
            (Some(u), _) => vec![("coordinator.url".to_string(), u.as_str())],
            (None, Some(us)) => us
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("coordinator.urls[{i}]"), u.as_str()))
                .collect(),
            (None, None) => Vec::new(),
        }
    }

    /// Whether `other` dials the same addresses in the same order with the same TLS files
    /// (`url: X` and `urls: [X]` are the same link).
    pub fn same_link(&self, other: &CoordinatorLink) -> bool {
        let urls = |l: &CoordinatorLink| -> Vec<String> {
            l.addresses()
                .into_iter()
                .map(|(_, u)| u.to_string())
                .collect()
        };
        urls(self) == urls(other)
            && (&self.ca, &self.cert, &self.key) == (&other.ca, &other.cert, &other.key)
    }

    /// Exactly one of `url` and `urls`; every address an `https://HOST:PORT` URL, none twice.
    fn validate(&self) -> anyhow::Result<()> {
        match (&self.url, &self.urls) {
            (Some(_), Some(_)) => bail!(
                "coordinator: give either `url` (one coordinator) or `urls` (its replicas), not both"
            ),
            (None, None) => bail!(
                "coordinator: `url` (https://HOST:PORT) or `urls` (a list of them, one per replica) is required"
            ),
            (None, Some(us)) if us.is_empty() => {
                bail!("coordinator.urls: list at least one https://HOST:PORT")
            }
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        for (key, url) in self.addresses() {
            check_coordinator_url(&key, url)?;
            if !seen.insert(url) {
                bail!("{key} `{url}`: listed twice");
            }
        }
        Ok(())
    }
}

/// An address the agent dials: an `https://HOST:PORT` URL with a host.
fn check_coordinator_url(key: &str, url: &str) -> anyhow::Result<()> {
    let has_host = url::Url::parse(url)
        .ok()
        .is_some_and(|u| u.host_str().is_some_and(|h| !h.is_empty()));
    if !url.starts_with("https://") || !has_host {
        bail!("{key} `{url}`: expected https://HOST:PORT");
    }
    Ok(())
}

/// Concurrency and time limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// At most this many jobs at once over all devices. Default: one per device.
    #[serde(default)]
    pub max_jobs: Option<usize>,
    /// A job's time limit when it does not set one. Default `1h`.
    #[serde(default = "default_job_timeout", with = "humantime_serde")]
    pub job_timeout: Duration,
    /// On SIGTERM, how long running jobs may go on before they are stopped. Default `5m`.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a long poll for work waits. Default `20s`.
    #[serde(default = "default_poll_wait", with = "humantime_serde")]
    pub poll_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_jobs: None,
            job_timeout: default_job_timeout(),
            drain_timeout: default_drain_timeout(),
            poll_wait: default_poll_wait(),
        }
    }
}

/// One device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Name, unique in the lab.
    pub name: String,
    /// Its device type, from the device-type library.
    pub device_type: String,
    /// Labels that jobs can require.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form settings for command placeholders (`{device.NAME}`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// The driver and its settings.
    pub driver: DriverConfig,
}

/// The driver of a device, tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DriverConfig {
    /// Run a command on the lab host.
    Shell(ShellConfig),
    /// Power, boot, log in and test a board on its serial console.
    Serial(Box<SerialConfig>),
    /// A place of a Labgrid coordinator. Not written in `devices:`: the `labgrid:` section
    /// finds the places and makes their devices.
    #[serde(skip)]
    Labgrid(Box<LabgridPlaceConfig>),
}

impl DriverConfig {
    /// The driver's name, as advertised.
    pub fn kind(&self) -> &'static str {
        match self {
            DriverConfig::Shell(_) => "shell",
            DriverConfig::Serial(_) => "serial",
            DriverConfig::Labgrid(_) => "labgrid",
        }
    }
}

/// The serial driver: the agent is the dispatcher. Power commands use the vocabulary of
/// LAVA's device dictionaries; every command is an argument list (no shell) whose arguments
/// may be placeholders, each replaced by one whole value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Where the console is.
    pub console: ConsoleConfig,
    /// Run before powering on (e.g. to switch a USB hub port). Optional.
    #[serde(default)]
    pub pre_power_command: Option<Vec<String>>,
    /// Powers the board on.
    pub power_on_command: Vec<String>,
    /// Powers the board off. Always run at the end of a job, whatever happened.
    pub power_off_command: Vec<String>,
    /// Power-cycles the board. Optional; when set, a job starts with it instead of
    /// `power_on_command`, so a board that was left on still boots afresh.
    #[serde(default)]
    pub hard_reset_command: Option<Vec<String>>,
    /// Run after the artifacts are downloaded and before power-on (e.g. copy them to a TFTP
    /// folder). Optional.
    #[serde(default)]
    pub deploy_command: Option<Vec<String>>,
    /// Environment of the power and deploy commands.
    #[serde(default)]
    pub command_env: BTreeMap<String, String>,
    /// How the board boots.
    #[serde(default)]
    pub boot: BootConfig,
    /// How to log in and recognise the shell.
    #[serde(default)]
    pub login: LoginConfig,
    /// Largest artifact the agent downloads for this board. Default 2 GiB.
    #[serde(default = "default_max_download")]
    pub max_download_bytes: u64,
    /// How long a power or deploy command may take. Default `60s`.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
}

/// A console: exactly one of `tty`, `tcp`, `telnet` or `command`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum ConsoleConfig {
    /// A serial port or pty, opened with tokio-serial.
    Tty {
        /// The device path (`/dev/ttyUSB0`, a pty or a symlink to one).
        path: PathBuf,
        /// The speed. Default 115200.
        #[serde(default = "default_baud")]
        baud: u32,
    },
    /// A TCP port that carries the console (ser2net, a console server).
    Tcp {
        /// `host:port`.
        address: String,
    },
    /// A telnet port that carries the console (ser2net in `telnet` mode, RFC 2217 ports as
    /// Labgrid's exporter publishes them): the agent answers the telnet negotiation itself.
    Telnet {
        /// `host:port`.
        address: String,
    },
    /// A program whose standard input and output are the console (`telnet host port`,
    /// `conmux-console board`). An argument list; no shell.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
    },
}

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
    /// Placeholders `{artifacts.NAME}` (the file's name), `{job.id}` and `{device.NAME}` are
    /// replaced; job parameters are not allowed here.
    #[serde(default)]
    pub commands: Vec<String>,
}

impl Default for UBootConfig {
    fn default() -> Self {
        UBootConfig {
            interrupt_prompt: default_uboot_interrupt(),
            interrupt_char: default_uboot_char(),
            prompt: default_uboot_prompt(),
            commands: Vec::new(),
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

/// A secret from the config; it prints as `MASKED`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MASKED")
    }
}

fn default_max_download() -> u64 {
    2 << 30
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_baud() -> u32 {
    115_200
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

/// The shell driver: runs `command` on the lab host; its output is the job's log, its exit
/// code the job's result.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// The program and its arguments; no shell is involved unless you name one. An argument
    /// that is exactly `{params.NAME}`, `{device.NAME}`, `{job.id}` or `{job.dir}` is
    /// replaced by that value, whole. Job parameters are also in the environment as
    /// `LABWIRE_PARAM_<NAME>`.
    pub command: Vec<String>,
    /// Working directory. Default: the job's own folder.
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How many jobs may run at once on this device. Default 1.
    #[serde(default = "one")]
    pub max_jobs: usize,
}

fn one() -> usize {
    1
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/labwire-agent")
}
fn default_job_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_poll_wait() -> Duration {
    Duration::from_secs(20)
}

/// The placeholders an argument may be, apart from `{params.NAME}` and `{device.NAME}`.
pub const JOB_PLACEHOLDERS: &[&str] = &["{job.id}", "{job.dir}", "{job.attempt}"];

const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ash", "ksh", "busybox"];

/// Whether `arg` is a placeholder, and which.
pub fn placeholder(arg: &str) -> Option<(&str, &str)> {
    let inner = arg.strip_prefix('{')?.strip_suffix('}')?;
    let (ns, name) = inner.split_once('.')?;
    Some((ns, name))
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if size > MAX_CONFIG_BYTES {
            bail!(
                "{}: {size} bytes is too big for a config file (at most {MAX_CONFIG_BYTES})",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and validates config text (device types are checked against the library).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: AgentConfig = yaml_serde::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The device-type library this config uses.
    pub fn library(&self) -> anyhow::Result<Library> {
        Library::load(&self.device_type_dirs)
    }

    /// Checks what parsing cannot; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.lab.is_empty() {
            bail!("lab: must not be empty");
        }
        self.coordinator.validate()?;
        if self.limits.max_jobs == Some(0) {
            bail!("limits.max_jobs: must be at least 1");
        }
        if self.limits.poll_wait < Duration::from_secs(1)
            || self.limits.poll_wait > Duration::from_secs(60)
        {
            bail!("limits.poll_wait: expected between 1s and 60s");
        }
        let lib = self.library()?;
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let key = format!("devices[{i}] ({})", d.name);
            if d.name.is_empty() {
                bail!("devices[{i}].name: must not be empty");
            }
            if !seen.insert(d.name.clone()) {
                bail!("{key}.name: `{}` is used by two devices", d.name);
            }
            if lib.get(&d.device_type).is_none() {
                bail!(
                    "{key}.device_type: `{}` is not in the device-type library (known: {})",
                    d.device_type,
                    lib.names().join(", ")
                );
            }
            match &d.driver {
                DriverConfig::Shell(s) => {
                    validate_command(&format!("{key}.driver.command"), &s.command, d)?
                }
                DriverConfig::Serial(s) => validate_serial(&format!("{key}.driver"), s, d)?,
                DriverConfig::Labgrid(_) => {
                    bail!("{key}.driver: labgrid places are listed in the `labgrid:` section")
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, lg) in self.labgrid.iter().enumerate() {
            lg.validate(&format!("labgrid[{i}]"), &lib)?;
            if !names.insert(lg.name.clone()) {
                bail!("labgrid[{i}].name: `{}` is used twice", lg.name);
            }
        }
        crate::lava::config::validate(&self.lava)?;
        Ok(())
    }
}

/// One Labgrid coordinator and the places of it that the agent may use. The agent talks to
/// it with `labgrid-client` (read the places, acquire, power, find the console, release);
/// each matching place that is free becomes a device of the lab.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabgridConfig {
    /// A name for this coordinator in logs (`labgrid:NAME`), unique in the file.
    pub name: String,
    /// The coordinator's address, `HOST:PORT` (`labgrid-client -x`).
    pub coordinator: String,
    /// The client program and any leading arguments. Default `[labgrid-client]`.
    #[serde(default = "default_labgrid_client")]
    pub client: Vec<String>,
    /// Extra environment for the client (e.g. `LG_PROXY`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The Labgrid user the agent acquires places as (`LG_USERNAME`). Default `labwire-LAB`.
    /// Places held by this user and host when the agent starts are released then.
    #[serde(default)]
    pub user: Option<String>,
    /// The Labgrid host name the agent acquires places as (`LG_HOSTNAME`). Default: this
    /// host's name.
    #[serde(default)]
    pub host: Option<String>,
    /// How often the places are read. Default `10s`.
    #[serde(default = "default_labgrid_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a job waits for a place that someone else holds before it fails with
    /// `place_unavailable`. Default `2m`.
    #[serde(default = "default_labgrid_acquire", with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// How long one `labgrid-client` call may take. Default `30s`.
    #[serde(default = "default_labgrid_command", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Which places to use, each with what it offers.
    pub places: Vec<LabgridPlaceConfig>,
}

/// Places of a Labgrid coordinator: one by name, or every place whose Labgrid tags include
/// `match_tags`; with the device type they offer and how their boards boot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabgridPlaceConfig {
    /// A place by its name. Exactly one of `name` and `match_tags`.
    #[serde(default)]
    pub name: Option<String>,
    /// Every place whose Labgrid tags (`labgrid-client set-tags`) include all of these.
    #[serde(default)]
    pub match_tags: BTreeMap<String, String>,
    /// The device type of the board(s), from the device-type library.
    pub device_type: String,
    /// labwire tags that jobs can require.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Settings for placeholders (`{device.NAME}`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Where the console is. Default: the place's serial port as Labgrid's exporter
    /// publishes it (`NetworkSerialPort`, a telnet/RFC 2217 port).
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    /// Power-cycle at the start of a job (`labgrid-client power cycle`) instead of
    /// `power on`, for a board that may have been left on. Default false.
    #[serde(default)]
    pub power_cycle: bool,
    /// Run after the artifacts are downloaded and the place is acquired, before power-on.
    #[serde(default)]
    pub deploy_command: Option<Vec<String>>,
    /// Environment of the deploy command.
    #[serde(default)]
    pub command_env: BTreeMap<String, String>,
    /// How long the deploy command may take. Default `60s`.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How the board boots (as for the serial driver).
    #[serde(default)]
    pub boot: BootConfig,
    /// How to log in (as for the serial driver).
    #[serde(default)]
    pub login: LoginConfig,
    /// Largest artifact the agent downloads for these boards. Default 2 GiB.
    #[serde(default = "default_max_download")]
    pub max_download_bytes: u64,
}

impl LabgridPlaceConfig {
    /// Whether a place with this name and these Labgrid tags is one of these.
    pub fn matches(&self, place: &str, tags: &BTreeMap<String, String>) -> bool {
        match &self.name {
            Some(n) => n == place,
            None => self.match_tags.iter().all(|(k, v)| tags.get(k) == Some(v)),
        }
    }

    /// The device entry of a place (for placeholders and the device list).
    pub fn device(&self, place: &str) -> DeviceConfig {
        DeviceConfig {
            name: place.to_string(),
            device_type: self.device_type.clone(),
            tags: self.tags.clone(),
            settings: self.settings.clone(),
            driver: DriverConfig::Labgrid(Box::new(self.clone())),
        }
    }
}

impl LabgridConfig {
    fn validate(&self, key: &str, lib: &Library) -> anyhow::Result<()> {
        if self.name.is_empty() {
            bail!("{key}.name: must not be empty");
        }
        let (host, port) = self.coordinator.rsplit_once(':').unwrap_or(("", ""));
        if host.is_empty() || port.parse::<u16>().is_err() {
            bail!(
                "{key}.coordinator `{}`: expected HOST:PORT (e.g. 127.0.0.1:20408)",
                self.coordinator
            );
        }
        if self.client.is_empty() || self.client[0].is_empty() {
            bail!("{key}.client: must name a program (e.g. [labgrid-client])");
        }
        for (what, v) in [("user", &self.user), ("host", &self.host)] {
            if let Some(v) = v
                && (v.is_empty() || v.contains('/') || v.contains(char::is_whitespace))
            {
                bail!("{key}.{what} `{v}`: expected a name without `/` or spaces");
            }
        }
        if self.poll_interval < Duration::from_secs(1) {
            bail!("{key}.poll_interval: expected at least 1s");
        }
        if self.command_timeout < Duration::from_secs(1) {
            bail!("{key}.command_timeout: expected at least 1s");
        }
        if self.places.is_empty() {
            bail!("{key}.places: name at least one place (by `name` or `match_tags`)");
        }
        for (i, p) in self.places.iter().enumerate() {
            let pkey = format!("{key}.places[{i}]");
            match (&p.name, p.match_tags.is_empty()) {
                (Some(n), true) if !n.is_empty() => {}
                (None, false) => {}
                _ => bail!("{pkey}: expected exactly one of `name` and `match_tags`"),
            }
            if lib.get(&p.device_type).is_none() {
                bail!(
                    "{pkey}.device_type: `{}` is not in the device-type library (known: {})",
                    p.device_type,
                    lib.names().join(", ")
                );
            }
            let d = p.device(p.name.as_deref().unwrap_or("place"));
            if let Some(c) = &p.console {
                validate_console(&format!("{pkey}.console"), c, &d)?;
            }
            if let Some(c) = &p.deploy_command {
                validate_command(&format!("{pkey}.deploy_command"), c, &d)?;
            }
            validate_boot_login(&pkey, &p.boot, &p.login, &d)?;
        }
        Ok(())
    }
}

fn default_labgrid_client() -> Vec<String> {
    vec!["labgrid-client".into()]
}
fn default_labgrid_poll() -> Duration {
    Duration::from_secs(10)
}
fn default_labgrid_acquire() -> Duration {
    Duration::from_secs(120)
}
fn default_labgrid_command() -> Duration {
    Duration::from_secs(30)
}

/// Checks a command line: not empty, placeholders only as whole arguments and known, and no
/// placeholder as the script of a shell's `-c` (that would put a job parameter into a shell
/// unquoted).
pub fn validate_command(key: &str, argv: &[String], device: &DeviceConfig) -> anyhow::Result<()> {
    if argv.is_empty() || argv[0].is_empty() {
        bail!("{key}: must name a program");
    }
    for (i, arg) in argv.iter().enumerate() {
        if let Some((ns, name)) = placeholder(arg) {
            let name = name.strip_suffix('?').unwrap_or(name);
            match ns {
                "params" | "artifacts" if !name.is_empty() => {}
                "device" if device.settings.contains_key(name) || name == "name" => {}
                "device" => bail!(
                    "{key}[{i}]: `{arg}` names no setting of this device (settings: {})",
                    device
                        .settings
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "job" if JOB_PLACEHOLDERS.contains(&arg.as_str()) => {}
                _ => bail!(
                    "{key}[{i}]: `{arg}` is not a placeholder (expected {{params.NAME}}, {{params.NAME?}}, {{artifacts.NAME}}, {{device.NAME}}, {})",
                    JOB_PLACEHOLDERS.join(", ")
                ),
            }
        } else if arg.contains("{params.") {
            bail!(
                "{key}[{i}]: `{arg}`: placeholders must be whole arguments, so that a job parameter is never split or re-parsed"
            );
        }
    }
    let prog = Path::new(&argv[0])
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    if SHELLS.contains(&prog)
        && let Some(c) = argv.iter().position(|a| a == "-c")
        && let Some(script) = argv.get(c + 1)
        && placeholder(script).is_some()
    {
        bail!(
            "{key}: the script of `{prog} -c` must not be a placeholder; pass parameters as positional arguments (`sh -c 'cmd \"$1\"' sh {{params.x}}`) or read LABWIRE_PARAM_* variables"
        );
    }
    Ok(())
}

fn validate_regex(key: &str, re: &str) -> anyhow::Result<()> {
    if re.is_empty() {
        bail!("{key}: must not be empty");
    }
    regex::bytes::Regex::new(re)
        .map_err(|e| anyhow::anyhow!("{key}: `{re}` is not a valid regular expression: {e}"))?;
    Ok(())
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

fn validate_console(key: &str, c: &ConsoleConfig, d: &DeviceConfig) -> anyhow::Result<()> {
    match c {
        ConsoleConfig::Tty { path, baud } => {
            if path.as_os_str().is_empty() {
                bail!("{key}.tty.path: must not be empty");
            }
            if *baud == 0 {
                bail!("{key}.tty.baud: must be a speed such as 115200");
            }
        }
        ConsoleConfig::Tcp { address } => {
            if !address.contains(':') {
                bail!("{key}.tcp.address `{address}`: expected HOST:PORT");
            }
        }
        ConsoleConfig::Telnet { address } => {
            if !address.contains(':') {
                bail!("{key}.telnet.address `{address}`: expected HOST:PORT");
            }
        }
        ConsoleConfig::Command { argv } => {
            validate_command(&format!("{key}.command.argv"), argv, d)?
        }
    }
    Ok(())
}

fn validate_serial(key: &str, s: &SerialConfig, d: &DeviceConfig) -> anyhow::Result<()> {
    validate_console(&format!("{key}.console"), &s.console, d)?;
    validate_command(&format!("{key}.power_on_command"), &s.power_on_command, d)?;
    validate_command(&format!("{key}.power_off_command"), &s.power_off_command, d)?;
    for (name, cmd) in [
        ("pre_power_command", &s.pre_power_command),
        ("hard_reset_command", &s.hard_reset_command),
        ("deploy_command", &s.deploy_command),
    ] {
        if let Some(c) = cmd {
            validate_command(&format!("{key}.{name}"), c, d)?;
        }
    }
    validate_boot_login(key, &s.boot, &s.login, d)
}

/// Checks the boot and login settings of a board (serial and labgrid drivers).
fn validate_boot_login(
    key: &str,
    boot: &BootConfig,
    login: &LoginConfig,
    d: &DeviceConfig,
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
            if boot.u_boot.commands.is_empty() {
                bail!(
                    "{key}.boot.u_boot.commands: the u-boot preset needs the commands that boot the kernel"
                );
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "lab: lab-a\ncoordinator: {url: 'https://127.0.0.1:7443', ca: ca.pem, cert: a.pem, key: a.key}\n";

    #[test]
    fn good_config() {
        let cfg = AgentConfig::parse(&format!(
            "{BASE}devices:\n  - name: host\n    device_type: lab-host\n    driver: {{type: shell, command: [sh, -c, 'echo \"$1\"', sh, '{{params.msg}}']}}\n"
        ))
        .unwrap();
        assert_eq!(cfg.devices[0].driver.kind(), "shell");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("bogus: 1\n", "unknown field `bogus`"),
            (
                "devices:\n  - {name: h, device_type: nope, driver: {type: shell, command: ['true']}}\n",
                "devices[0] (h).device_type: `nope`",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: telnet}}\n",
                "unknown variant `telnet`",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: ['true'], colour: red}}\n",
                "unknown field `colour`",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: [echo, 'x{params.a}']}}\n",
                "whole arguments",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: [sh, -c, '{params.a}']}}\n",
                "must not be a placeholder",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: [echo, '{device.port}']}}\n",
                "names no setting",
            ),
            ("limits: {job_timeout: forever}\n", "limits.job_timeout"),
            (
                "lava:\n  - {name: l, url: 'ftp://x/', token: t}\n",
                "lava[0] (l).url `ftp://x/`",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/'}\n",
                "lava[0] (l): `token` or `token_file` is required",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, token_file: /t}\n",
                "not both",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, device_types: some}\n",
                "expected `all` or a list",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, colour: red}\n",
                "unknown field `colour`",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t}\n  - {name: l, url: 'http://y/', token: t}\n",
                "lava[1] (l).name: `l` is used by two",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, poll: 10s, poll_max: 1s}\n",
                "lava[0] (l).poll/poll_max",
            ),
        ];
        for (extra, want) in cases {
            let e = AgentConfig::parse(&format!("{BASE}{extra}")).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(want), "{extra:?}: {msg}");
        }
    }

    fn with_coordinator(link: &str) -> anyhow::Result<AgentConfig> {
        AgentConfig::parse(&format!(
            "lab: lab-a\ncoordinator: {{{link}ca: ca.pem, cert: a.pem, key: a.key}}\n"
        ))
    }

    #[test]
    fn one_coordinator_url_or_a_list_of_replicas() {
        let one = with_coordinator("url: 'https://c.example:7443', ").unwrap();
        assert_eq!(
            one.coordinator.addresses(),
            vec![("coordinator.url".to_string(), "https://c.example:7443")]
        );
        let two = with_coordinator("urls: ['https://a.example:7443', 'https://10.0.0.2:7443'], ")
            .unwrap();
        assert_eq!(
            two.coordinator.addresses(),
            vec![
                ("coordinator.urls[0]".to_string(), "https://a.example:7443"),
                ("coordinator.urls[1]".to_string(), "https://10.0.0.2:7443"),
            ]
        );
        let cases = [
            (
                "url: 'https://a:1', urls: ['https://b:1'], ",
                "coordinator: give either `url` (one coordinator) or `urls` (its replicas), not both",
            ),
            ("", "coordinator: `url` (https://HOST:PORT) or `urls`"),
            ("urls: [], ", "coordinator.urls: list at least one"),
            (
                "urls: ['https://a:1', 'http://b:1'], ",
                "coordinator.urls[1] `http://b:1`: expected https://HOST:PORT",
            ),
            (
                "urls: ['https://a:1', 'https://'], ",
                "coordinator.urls[1] `https://`: expected https://HOST:PORT",
            ),
            (
                "urls: ['https://a:1', 'https://a:1'], ",
                "coordinator.urls[1] `https://a:1`: listed twice",
            ),
            ("urls: 'https://a:1', ", "coordinator.urls"),
            (
                "url: 'ftp://a:1', ",
                "coordinator.url `ftp://a:1`: expected https://HOST:PORT",
            ),
        ];
        let same = |a: &str, b: &str| {
            let (a, b) = (with_coordinator(a).unwrap(), with_coordinator(b).unwrap());
            a.coordinator.same_link(&b.coordinator)
        };
        assert!(same("url: 'https://a:1', ", "urls: ['https://a:1'], "));
        assert!(!same(
            "url: 'https://a:1', ",
            "urls: ['https://a:1', 'https://b:1'], "
        ));
        assert!(!same(
            "urls: ['https://b:1', 'https://a:1'], ",
            "urls: ['https://a:1', 'https://b:1'], "
        ));
        for (link, want) in cases {
            let e = with_coordinator(link).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(want), "{link:?}: {msg}");
        }
    }
}

#[cfg(test)]
mod labgrid_tests {
    use super::*;

    const BASE: &str = "lab: lab-a\ncoordinator: {url: 'https://127.0.0.1:7443', ca: ca.pem, cert: a.pem, key: a.key}\n";

    fn lg(extra: &str) -> String {
        format!("{BASE}labgrid:\n  - name: main\n    coordinator: 127.0.0.1:20408\n{extra}")
    }

    #[test]
    fn places_by_name_and_by_tags() {
        let cfg = AgentConfig::parse(&lg("    places:\n      - {name: b1, device_type: qemu-x86_64}\n      - {match_tags: {board: bbb}, device_type: beaglebone-black, tags: [x]}\n")).unwrap();
        let l = &cfg.labgrid[0];
        assert_eq!(l.client, ["labgrid-client"]);
        assert_eq!(l.acquire_timeout, Duration::from_secs(120));
        let tags: BTreeMap<String, String> = [("board".to_string(), "bbb".to_string())].into();
        assert!(l.places[0].matches("b1", &BTreeMap::new()));
        assert!(!l.places[0].matches("b10", &BTreeMap::new()));
        assert!(l.places[1].matches("anything", &tags));
        assert!(!l.places[1].matches("anything", &BTreeMap::new()));
        assert_eq!(l.places[1].device("p").driver.kind(), "labgrid");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "    places: []\n",
                "labgrid[0].places: name at least one place",
            ),
            (
                "    places:\n      - {device_type: qemu-x86_64}\n",
                "labgrid[0].places[0]: expected exactly one of `name` and `match_tags`",
            ),
            (
                "    places:\n      - {name: a, match_tags: {b: c}, device_type: qemu-x86_64}\n",
                "exactly one of",
            ),
            (
                "    places:\n      - {name: a, device_type: nope}\n",
                "labgrid[0].places[0].device_type: `nope`",
            ),
            (
                "    places:\n      - {name: a, device_type: qemu-x86_64, login: {shell_prompt: '('}}\n",
                "labgrid[0].places[0].login.shell_prompt",
            ),
            (
                "    places:\n      - {name: a, device_type: qemu-x86_64, deploy_command: [sh, -c, '{params.x}']}\n",
                "must not be a placeholder",
            ),
            (
                "    user: 'a/b'\n    places:\n      - {name: a, device_type: qemu-x86_64}\n",
                "labgrid[0].user `a/b`",
            ),
            (
                "    places:\n      - {name: a, device_type: qemu-x86_64, colour: red}\n",
                "unknown field `colour`",
            ),
        ];
        for (extra, want) in cases {
            let e = AgentConfig::parse(&lg(extra)).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(want), "{extra:?}: {msg}");
        }
        let e = AgentConfig::parse(&format!(
            "{BASE}labgrid:\n  - {{name: m, coordinator: nohost, places: [{{name: a, device_type: qemu-x86_64}}]}}\n"
        ))
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("labgrid[0].coordinator `nohost`"),
            "{e:#}"
        );
        // A labgrid driver cannot be written in devices: (the section makes those).
        let e = AgentConfig::parse(&format!(
            "{BASE}devices:\n  - {{name: h, device_type: lab-host, driver: {{type: labgrid}}}}\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("labgrid"), "{e:#}");
    }

    /// The commented-out `labgrid:` example of config/agent.yaml is a valid config.
    #[test]
    fn the_shipped_labgrid_example_loads() {
        let text = include_str!("../../config/agent.yaml");
        let start = text.find("\n# labgrid:\n").expect("a labgrid example") + 1;
        let block: String = text[start..]
            .lines()
            .map(|l| {
                let l = l
                    .strip_prefix("# ")
                    .or_else(|| l.strip_prefix('#'))
                    .unwrap_or(l);
                format!("{l}\n")
            })
            .collect();
        let cfg = AgentConfig::parse(&format!("{BASE}{block}")).unwrap();
        assert_eq!(cfg.labgrid[0].places.len(), 2);
        assert!(cfg.labgrid[0].places[1].power_cycle);
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_shipped_example_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.yaml");
        let cfg = super::AgentConfig::load(std::path::Path::new(path)).unwrap();
        assert_eq!(cfg.devices.len(), 2);
        assert_eq!(cfg.devices[1].driver.kind(), "serial");
    }

    /// The commented-out `urls:` example, in place of `url:`, loads too.
    #[test]
    fn the_urls_example_loads_uncommented() {
        let text = include_str!("../../config/agent.yaml");
        let url = "  url: https://coordinator.example.org:7443\n";
        let urls =
            "  # urls: [https://coord-a.example.org:7443, https://coord-b.example.org:7443]\n";
        assert!(text.contains(url) && text.contains(urls));
        let swapped = text
            .replace(url, "")
            .replace(urls, &urls.replacen("# ", "", 1));
        let cfg = super::AgentConfig::parse(&swapped).unwrap();
        let got: Vec<&str> = cfg
            .coordinator
            .addresses()
            .into_iter()
            .map(|(_, u)| u)
            .collect();
        assert_eq!(
            got,
            [
                "https://coord-a.example.org:7443",
                "https://coord-b.example.org:7443"
            ]
        );
    }

    /// The commented-out `lava:` example, uncommented, loads too (its templates_dir left
    /// out: the folder does not exist here).
    #[test]
    fn the_lava_example_loads_uncommented() {
        let text = include_str!("../../config/agent.yaml");
        let start = text.find("# lava:").expect("lava example");
        // The example runs up to the next blank line.
        let lava: String = text[start..]
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.contains("templates_dir:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let rest = &text[start..];
        let after = rest.find("\n\n").map_or("", |i| &rest[i..]);
        let cfg = super::AgentConfig::parse(&format!("{}{lava}{after}", &text[..start])).unwrap();
        assert_eq!(cfg.lava.len(), 1);
        let l = &cfg.lava[0];
        assert_eq!(l.name, "lab-lava");
        assert_eq!(l.boot_methods["my-board"], "u-boot");
        assert!(l.device_types.offers("qemu") && !l.device_types.offers("x15"));
    }
}

#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = include_str!("../../config/agent.yaml");

    #[test]
    fn deep_nesting_and_huge_files_are_refused_not_fatal() {
        let deep = format!("lab: {}x{}\n", "[".repeat(5_000), "]".repeat(5_000));
        let e = AgentConfig::parse(&deep).unwrap_err();
        assert!(!format!("{e:#}").is_empty());
        let deep_map = format!("lab: x\nsettings:{}\n", " {a:".repeat(5_000));
        assert!(AgentConfig::parse(&deep_map).is_err());
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("agent.yaml");
        std::fs::write(&big, "#".repeat(MAX_CONFIG_BYTES as usize + 1)).unwrap();
        let e = AgentConfig::load(&big).unwrap_err();
        assert!(format!("{e:#}").contains("too big"), "{e:#}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Random bytes never make the loader panic.
        #[test]
        fn random_text_never_panics(s in "\\PC{0,400}") {
            let _ = AgentConfig::parse(&s);
        }

        /// The shipped example, cut anywhere or with a line removed or a byte changed, is
        /// either still valid or refused with an error; never a panic.
        #[test]
        fn damaged_example_never_panics(cut in 0usize..GOOD.len(), drop_line in 0usize..200, byte in 0usize..GOOD.len(), b in any::<u8>()) {
            let _ = AgentConfig::parse(&GOOD[..GOOD.floor_char_boundary(cut)]);
            let without: String = GOOD.lines().enumerate().filter(|(i, _)| *i != drop_line).map(|(_, l)| format!("{l}\n")).collect();
            let _ = AgentConfig::parse(&without);
            let mut bytes = GOOD.as_bytes().to_vec();
            bytes[byte] = b;
            let _ = AgentConfig::parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
