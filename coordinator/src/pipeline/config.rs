//! The config sections of the HTTP side and the pipeline services (`http:`, `timeouts:`,
//! `trigger:`, `reports:` in coordinator.yaml), each with defaults and a validation pass
//! whose errors name the key.

use anyhow::bail;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The HTTP/JSON side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP port; no HTTP side when absent.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Serve HTTPS with the coordinator's server certificate (default). `false` serves plain
    /// HTTP, for a reverse proxy on the same host; bearer tokens then cross the wire in clear.
    #[serde(default = "yes")]
    pub tls: bool,
    /// The web dashboard under `/ui/`.
    #[serde(default)]
    pub ui: UiConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            tls: true,
            ui: UiConfig::default(),
        }
    }
}

/// The web dashboard.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// Show the dashboard (and its event stream) to anyone who can reach the port, without a
    /// token. Default `false`: a browser signs in with a `read` token, kept in a cookie. Only
    /// for trusted networks.
    #[serde(default)]
    pub anonymous_read: bool,
}

/// The timeout service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    /// How often timeouts, holdoffs and closing nodes are checked. Default `10s`.
    #[serde(default = "default_timeout_interval", with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            interval: default_timeout_interval(),
        }
    }
}

/// One git tree the trigger watches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeConfig {
    /// The tree's short name (`mainline`, `next`), KernelCI's `tree`.
    pub name: String,
    /// The repository URL handed to `git ls-remote`.
    pub url: String,
    /// Branches to watch.
    pub branches: Vec<String>,
}

/// The trigger: new commits on watched branches become `checkout` nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// Trees and branches to watch; the trigger is off when empty.
    #[serde(default)]
    pub trees: Vec<TreeConfig>,
    /// Time between two polls of a tree. Default `5m`.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub interval: Duration,
    /// Up to this much random time is added to every wait, so trees are not polled in
    /// lockstep. Default `30s`.
    #[serde(default = "default_jitter", with = "humantime_serde")]
    pub jitter: Duration,
    /// A new checkout's `timeout`: how long after creation it is ended. Default `6h`.
    #[serde(default = "default_checkout_timeout", with = "humantime_serde")]
    pub checkout_timeout: Duration,
    /// A new checkout's `holdoff`: how long it takes new children. Default `10m`.
    #[serde(default = "default_holdoff", with = "humantime_serde")]
    pub holdoff: Duration,
    /// The git program. Default `git`.
    #[serde(default = "default_git")]
    pub git: PathBuf,
    /// How long one `git ls-remote` may take. Default `60s`.
    #[serde(default = "default_git_timeout", with = "humantime_serde")]
    pub git_timeout: Duration,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            trees: Vec::new(),
            interval: default_poll(),
            jitter: default_jitter(),
            checkout_timeout: default_checkout_timeout(),
            holdoff: default_holdoff(),
            git: default_git(),
            git_timeout: default_git_timeout(),
        }
    }
}

/// How reports are sent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Mail a checkout's report when it is done; off when absent.
    #[serde(default)]
    pub email: Option<EmailConfig>,
}

/// Report e-mails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server's host name.
    pub smtp_host: String,
    /// Its port. Default 587.
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// `starttls` (default), `tls` (implicit TLS, usually port 465) or `none` (plain SMTP, only
    /// for a relay on the same host).
    #[serde(default)]
    pub security: SmtpSecurity,
    /// SMTP user name, if the server wants a login.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the SMTP password (never the password itself in this file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The sender address.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// `text` (default) or `markdown`.
    #[serde(default)]
    pub format: crate::report::Format,
}

/// Health alerts (`alerts:`): mails to a lab's contacts (`alerts.labs.LAB.contacts`) and to
/// `alerts.contacts` when a device goes bad or a lab is unreachable, sent through the SMTP
/// server and sender of `reports.email`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Mail when a lab's agent has not called for this long. Default `15m`.
    #[serde(default = "default_unreachable", with = "humantime_serde")]
    pub lab_unreachable_after: Duration,
    /// At most one alert per device (and per lab) within this long, so that a device that
    /// flaps is mailed once, not at every flap. Default `1h`.
    #[serde(default = "default_repeat_after", with = "humantime_serde")]
    pub repeat_after: Duration,
    /// How often the devices and labs are looked at. Default `30s`.
    #[serde(default = "default_alert_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Addresses that get the alerts of every lab (the coordinator's admins).
    #[serde(default)]
    pub contacts: Vec<String>,
    /// Each lab's own contacts, by lab name.
    #[serde(default)]
    pub labs: std::collections::BTreeMap<String, LabSettings>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            lab_unreachable_after: default_unreachable(),
            repeat_after: default_repeat_after(),
            interval: default_alert_interval(),
            contacts: Vec::new(),
            labs: Default::default(),
        }
    }
}

/// One lab's alert settings (`alerts.labs.LAB`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSettings {
    /// Who gets the lab's health alerts.
    #[serde(default)]
    pub contacts: Vec<String>,
}

/// Checks `alerts:`; errors name the key.
pub fn validate_alerts(alerts: &AlertConfig, reports: &ReportConfig) -> anyhow::Result<()> {
    let labs = &alerts.labs;
    if alerts.interval < Duration::from_millis(50) {
        bail!("alerts.interval must be at least 50ms");
    }
    if alerts.lab_unreachable_after < Duration::from_secs(1) {
        bail!("alerts.lab_unreachable_after must be at least 1s");
    }
    let mut any = false;
    let all = alerts
        .contacts
        .iter()
        .map(|c| ("alerts.contacts".to_string(), c));
    let per_lab = labs.iter().flat_map(|(lab, s)| {
        s.contacts
            .iter()
            .map(move |c| (format!("alerts.labs.{lab}.contacts"), c))
    });
    for (key, addr) in all.chain(per_lab) {
        any = true;
        if addr.parse::<lettre::message::Mailbox>().is_err() {
            bail!("{key}: `{addr}` is not an e-mail address");
        }
    }
    for lab in labs.keys() {
        if labwire_common::names::check(lab).is_err() {
            bail!("alerts.labs: `{lab}` is not a lab name");
        }
    }
    if any && reports.email.is_none() {
        bail!(
            "alerts are mailed through the SMTP server of reports.email: set reports.email, \
             or remove alerts.contacts and alerts.labs"
        );
    }
    Ok(())
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// STARTTLS after connecting.
    #[default]
    Starttls,
    /// TLS from the first byte.
    Tls,
    /// No TLS.
    None,
}

fn yes() -> bool {
    true
}
fn default_timeout_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_poll() -> Duration {
    Duration::from_secs(300)
}
fn default_jitter() -> Duration {
    Duration::from_secs(30)
}
fn default_checkout_timeout() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_holdoff() -> Duration {
    Duration::from_secs(600)
}
fn default_git() -> PathBuf {
    PathBuf::from("git")
}
fn default_git_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_unreachable() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_repeat_after() -> Duration {
    Duration::from_secs(3600)
}
fn default_alert_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_smtp_port() -> u16 {
    587
}

/// Checks the pipeline sections; errors name the key.
pub fn validate(
    timeouts: &TimeoutConfig,
    trigger: &TriggerConfig,
    reports: &ReportConfig,
) -> anyhow::Result<()> {
    if timeouts.interval < Duration::from_millis(50) {
        bail!("timeouts.interval must be at least 50ms");
    }
    if trigger.interval < Duration::from_millis(50) {
        bail!("trigger.interval must be at least 50ms");
    }
    let mut names = std::collections::HashSet::new();
    for (i, t) in trigger.trees.iter().enumerate() {
        let valid_name = !t.name.is_empty()
            && t.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            bail!(
                "trigger.trees[{i}].name `{}` must be letters, digits, `-`, `_` or `.`",
                t.name
            );
        }
        if !names.insert(&t.name) {
            bail!("trigger.trees[{i}].name `{}` is used twice", t.name);
        }
        if t.url.is_empty() || t.url.starts_with('-') {
            bail!(
                "trigger.trees[{i}].url `{}` must be a repository URL",
                t.url
            );
        }
        if t.branches.is_empty() {
            bail!("trigger.trees[{i}].branches must name at least one branch");
        }
        for b in &t.branches {
            if b.is_empty() || b.starts_with('-') || b.contains("..") || b.contains(' ') {
                bail!("trigger.trees[{i}].branches: `{b}` is not a branch name");
            }
        }
    }
    if let Some(e) = &reports.email {
        if e.smtp_host.is_empty() {
            bail!("reports.email.smtp_host must not be empty");
        }
        if e.to.is_empty() {
            bail!("reports.email.to must name at least one recipient");
        }
        for (key, addr) in std::iter::once(("from", &e.from)).chain(e.to.iter().map(|t| ("to", t)))
        {
            if addr.parse::<lettre::message::Mailbox>().is_err() {
                bail!("reports.email.{key}: `{addr}` is not an e-mail address");
            }
        }
        if e.username.is_some() != e.password_file.is_some() {
            bail!("reports.email.username and reports.email.password_file go together");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::CoordinatorConfig;

    fn err(yaml: &str) -> String {
        format!("{:#}", CoordinatorConfig::parse(yaml).unwrap_err())
    }

    #[test]
    fn pipeline_sections_parse_and_refuse_bad_values() {
        let c = CoordinatorConfig::parse(
            "http: {listen: 127.0.0.1:0, tls: false}\ntimeouts: {interval: 1s}\n\
             trigger:\n  interval: 1m\n  jitter: 0s\n  trees:\n    \
             - {name: mainline, url: 'https://git.example/linux.git', branches: [master]}\n\
             reports:\n  email: {smtp_host: mail, from: 'ci@example.org', to: ['a@example.org'], \
             format: markdown}\n",
        )
        .unwrap();
        assert!(!c.http.tls);
        assert_eq!(c.trigger.trees[0].branches, vec!["master"]);
        assert_eq!(c.trigger.holdoff, std::time::Duration::from_secs(600));
        let e = c.reports.email.unwrap();
        assert_eq!(e.smtp_port, 587);
        assert_eq!(e.security, super::SmtpSecurity::Starttls);
        assert_eq!(e.format, crate::report::Format::Markdown);

        assert!(err("http: {port: 1}\n").contains("unknown field `port`"));
        assert!(err("timeouts: {interval: 1ms}\n").contains("timeouts.interval"));
        let tree = |t: &str| format!("trigger:\n  trees:\n    - {t}\n");
        assert!(
            err(&tree("{name: 'a b', url: u, branches: [m]}")).contains("trigger.trees[0].name")
        );
        assert!(err(&tree("{name: a, url: '--upload-pack=x', branches: [m]}")).contains(".url"));
        assert!(err(&tree("{name: a, url: u, branches: []}")).contains("branches"));
        assert!(err(&tree("{name: a, url: u, branches: ['-x']}")).contains("`-x`"));
        assert!(
            err("reports:\n  email: {smtp_host: m, from: nobody, to: [a@example.org]}\n")
                .contains("reports.email.from")
        );
        assert!(
            err("reports:\n  email: {smtp_host: m, from: a@example.org, to: []}\n")
                .contains("reports.email.to")
        );
        assert!(
            err("reports:\n  email: {smtp_host: m, from: a@example.org, to: [b@example.org], security: ssl}\n")
                .contains("security")
        );
    }

    #[test]
    fn alert_settings_parse_and_refuse_bad_values() {
        let mail = "reports:\n  email: {smtp_host: m, from: a@example.org, to: [b@example.org]}\n";
        let c = CoordinatorConfig::parse(&format!(
            "{mail}alerts:\n  lab_unreachable_after: 5m\n  contacts: [farm@example.org]\n  \
             labs: {{lab-1: {{contacts: ['Lab One <one@example.org>']}}}}\n"
        ))
        .unwrap();
        assert_eq!(c.alerts.lab_unreachable_after.as_secs(), 300);
        assert_eq!(c.alerts.repeat_after.as_secs(), 3600);
        assert_eq!(c.alerts.labs["lab-1"].contacts.len(), 1);
        let d = CoordinatorConfig::parse("").unwrap();
        assert_eq!(d.alerts.lab_unreachable_after.as_secs(), 900);
        assert!(
            err("alerts: {labs: {lab-1: {contacts: [x@example.org]}}}\n").contains("reports.email")
        );
        assert!(
            err(&format!(
                "{mail}alerts: {{labs: {{lab-1: {{contacts: [nobody]}}}}}}\n"
            ))
            .contains("alerts.labs.lab-1.contacts: `nobody`")
        );
        assert!(err(&format!("{mail}alerts: {{contacts: ['a b']}}\n")).contains("alerts.contacts"));
        assert!(err("alerts: {lab_unreachable_after: 10ms}\n").contains("lab_unreachable_after"));
        assert!(err("alerts: {labs: {lab-1: {phone: 1}}}\n").contains("unknown field `phone`"));
    }
}
