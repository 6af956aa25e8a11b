//! The `lava:` list of agent.yaml: the LAVA servers this agent submits to, what it offers of
//! each, and the limits of its requests. Every key is documented in `config/agent.yaml`.

use anyhow::bail;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::secrets::Secret;

/// Which of a LAVA server's device types the lab offers through labwire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceTypes {
    /// Every device type the server has.
    All,
    /// Only these.
    Only(Vec<String>),
}

impl<'de> Deserialize<'de> for DeviceTypes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "all" => Ok(DeviceTypes::All),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected `all` or a list of device types, got `{w}`"
            ))),
            Raw::List(l) => Ok(DeviceTypes::Only(l)),
        }
    }
}

impl DeviceTypes {
    /// Whether the lab offers this device type.
    pub fn offers(&self, name: &str) -> bool {
        match self {
            DeviceTypes::All => true,
            DeviceTypes::Only(l) => l.iter().any(|n| n == name),
        }
    }
}

/// How the boards of one LAVA device type boot and log in, for the job definitions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeSettings {
    /// The shell prompts LAVA waits for after login (LAVA regular expressions), unless the
    /// job's `prompt` parameter names the prompt of the root file system it brings.
    #[serde(default)]
    pub prompts: Vec<String>,
    /// The kernel command line (`qemu` template: QEMU's `-append`); the job's `kernel_args`
    /// parameter is added after it. Default: the serial console of the type's architecture.
    #[serde(default)]
    pub kernel_args: Option<String>,
    /// The boards' login (LAVA's `auto_login`); none when the board gives a shell at once.
    #[serde(default)]
    pub login: Option<Login>,
}

/// A board's login, as LAVA's `auto_login` types it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The user name.
    pub username: String,
    /// The password, if the board asks for one. LAVA can only take it in the job
    /// definition, which every user who may see the job can read: set `visibility:
    /// personal` when it matters. It is masked in labwire's copy of the log.
    #[serde(default)]
    pub password: Option<Secret>,
    /// What the board prints to ask for the user. Default `login:`.
    #[serde(default = "default_login_prompt")]
    pub login_prompt: String,
    /// What it prints to ask for the password. Default `Password:`.
    #[serde(default = "default_password_prompt")]
    pub password_prompt: String,
}

fn default_login_prompt() -> String {
    "login:".into()
}
fn default_password_prompt() -> String {
    "Password:".into()
}

/// LAVA's notification callbacks to the agent: each job definition asks LAVA to call the
/// agent back when the job finishes, so the agent reads the results at once instead of at
/// its next look (`poll` up to `poll_max`). The call only wakes the agent up: what it
/// reports still comes from LAVA's API, so a forged call changes nothing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where the agent listens for the calls (`ADDRESS:PORT`); the LAVA server must reach it.
    pub listen: SocketAddr,
    /// The base URL LAVA calls, when the server must use another address than `listen`
    /// (a host name, a proxy). Default `http://LISTEN/`.
    #[serde(default)]
    pub url: Option<String>,
}

impl NotifyConfig {
    /// The base URL LAVA calls, ending in `/`.
    pub fn base_url(&self, bound: SocketAddr) -> String {
        match &self.url {
            Some(u) if u.ends_with('/') => u.clone(),
            Some(u) => format!("{u}/"),
            None => format!("http://{bound}/"),
        }
    }
}

/// One LAVA server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LavaConfig {
    /// The instance's name, unique among the `lava:` entries; its devices are advertised as
    /// `lava-NAME-DEVICETYPE`.
    pub name: String,
    /// The server's base URL (`https://lava.example.org/`); the REST API is under
    /// `api/v0.2/` of it.
    pub url: String,
    /// The API token of the LAVA user that submits (or use `token_file`).
    #[serde(default)]
    pub token: Option<Secret>,
    /// A file holding the token (its surrounding white space is ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Device types offered through labwire: `all` (the default) or a list.
    #[serde(default = "all_types")]
    pub device_types: DeviceTypes,
    /// Labels added to every device type of this instance (jobs can require them).
    #[serde(default)]
    pub tags: Vec<String>,
    /// How many labwire jobs may wait in LAVA's queue per device type, on top of one per
    /// usable device. Default 0: labwire never queues more jobs than there are devices.
    #[serde(default)]
    pub queue_depth: usize,
    /// At most this many requests to the server at once. Default 4.
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
    /// Time limit of one request. Default `30s`.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How many times a request that failed in transport or with a 5xx status is tried
    /// again (with back-off). Default 5.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// How often the device list is read again. Default `30s`.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// First interval between two looks at a running job; it grows while nothing changes,
    /// up to `poll_max`. Default `2s`.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll: Duration,
    /// Longest interval between two looks at a running job. Default `30s`.
    #[serde(default = "default_poll_max", with = "humantime_serde")]
    pub poll_max: Duration,
    /// How long a job may wait in LAVA's queue before it starts, on top of its own time
    /// limit. Default `1h`.
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// A folder of job templates that override or add to the built-in ones
    /// (`config/templates/lava/`). Optional.
    #[serde(default)]
    pub templates_dir: Option<PathBuf>,
    /// The template (boot method) per LAVA device type, where the device-type library does
    /// not say (`qemu`, `u-boot`, `depthcharge`, `grub`, `fastboot` or one of your own).
    #[serde(default)]
    pub boot_methods: BTreeMap<String, String>,
    /// Boot and login settings per LAVA device type (prompts, kernel command line, login).
    #[serde(default)]
    pub device_type_settings: BTreeMap<String, TypeSettings>,
    /// LAVA's callbacks when a job finishes (off by default: the agent then follows jobs by
    /// looking at them, `poll` up to `poll_max`).
    #[serde(default)]
    pub notify: Option<NotifyConfig>,
    /// LAVA priority (0-100) of jobs that do not set one. Default 50.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// LAVA job visibility. Default `public`.
    #[serde(default = "default_visibility")]
    pub visibility: String,
}

impl LavaConfig {
    /// The token: from `token` or read from `token_file`.
    pub fn load_token(&self) -> anyhow::Result<Secret> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let Some(path) = &self.token_file else {
            bail!(
                "lava ({}): neither `token` nor `token_file` is set",
                self.name
            );
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "lava ({}).token_file: cannot read {}: {e}",
                self.name,
                path.display()
            )
        })?;
        let t = text.trim();
        if t.is_empty() {
            bail!(
                "lava ({}).token_file: {} is empty",
                self.name,
                path.display()
            );
        }
        Ok(Secret(t.to_string()))
    }
}

fn all_types() -> DeviceTypes {
    DeviceTypes::All
}
fn default_max_requests() -> usize {
    4
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retries() -> u32 {
    5
}
fn default_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_poll() -> Duration {
    Duration::from_secs(2)
}
fn default_poll_max() -> Duration {
    Duration::from_secs(30)
}
fn default_queue_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_priority() -> u8 {
    50
}
fn default_visibility() -> String {
    "public".into()
}

/// Checks the `lava:` entries; errors name the key.
pub fn validate(list: &[LavaConfig]) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut listening = std::collections::HashMap::new();
    for (i, l) in list.iter().enumerate() {
        let key = format!("lava[{i}] ({})", l.name);
        if l.name.is_empty()
            || !l
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "lava[{i}].name `{}`: expected letters, digits, `-` or `_`",
                l.name
            );
        }
        if !seen.insert(l.name.clone()) {
            bail!("{key}.name: `{}` is used by two LAVA instances", l.name);
        }
        match url::Url::parse(&l.url) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {}
            _ => bail!(
                "{key}.url `{}`: expected http(s)://HOST[:PORT]/[PATH]",
                l.url
            ),
        }
        match (&l.token, &l.token_file) {
            (Some(_), Some(_)) => bail!("{key}: set `token` or `token_file`, not both"),
            (None, None) => bail!("{key}: `token` or `token_file` is required"),
            (Some(t), None) if t.0.trim().is_empty() => bail!("{key}.token: must not be empty"),
            _ => {}
        }
        if let DeviceTypes::Only(v) = &l.device_types
            && v.is_empty()
        {
            bail!("{key}.device_types: an empty list offers nothing; use `all` or name some");
        }
        if l.max_requests == 0 {
            bail!("{key}.max_requests: must be at least 1");
        }
        if l.request_timeout < Duration::from_millis(100) {
            bail!("{key}.request_timeout: expected at least 100ms");
        }
        if l.poll.is_zero() || l.poll_max < l.poll {
            bail!("{key}.poll/poll_max: expected 0 < poll <= poll_max");
        }
        if l.refresh < Duration::from_secs(1) {
            bail!("{key}.refresh: expected at least 1s");
        }
        if l.priority > 100 {
            bail!("{key}.priority: expected 0 to 100");
        }
        if !["public", "personal"].contains(&l.visibility.as_str()) {
            bail!(
                "{key}.visibility `{}`: expected public or personal",
                l.visibility
            );
        }
        for (dt, t) in &l.device_type_settings {
            if let Some(k) = &t.kernel_args {
                super::templates::check_kernel_args(k).map_err(|e| {
                    anyhow::anyhow!("{key}.device_type_settings.{dt}.kernel_args: {e}")
                })?;
            }
            if let Some(login) = &t.login
                && login.username.trim().is_empty()
            {
                bail!("{key}.device_type_settings.{dt}.login.username: must not be empty");
            }
            if t.prompts.iter().any(|p| p.is_empty()) {
                bail!("{key}.device_type_settings.{dt}.prompts: a prompt must not be empty");
            }
        }
        if let Some(n) = &l.notify
            && n.listen.port() != 0
            && let Some(other) = listening.insert(n.listen, l.name.clone())
        {
            bail!(
                "{key}.notify.listen: {} is already lava ({other})'s; give each its own port",
                n.listen
            );
        }
        if let Some(n) = &l.notify
            && let Some(u) = &n.url
        {
            match url::Url::parse(u) {
                Ok(p) if (p.scheme() == "http" || p.scheme() == "https") && p.host().is_some() => {}
                _ => bail!("{key}.notify.url `{u}`: expected http(s)://HOST[:PORT]/[PATH]"),
            }
        }
        if let Some(dir) = &l.templates_dir
            && !dir.is_dir()
        {
            bail!("{key}.templates_dir: {} is not a folder", dir.display());
        }
        super::templates::Templates::load(l.templates_dir.as_deref())
            .map_err(|e| anyhow::anyhow!("{key}.templates_dir: {e}"))?;
    }
    Ok(())
}
