//! A typed wrapper around `labgrid-client`: every call is an argument list (no shell) with a
//! time limit, run with the agent's Labgrid identity (`LG_USERNAME`, `LG_HOSTNAME`), and its
//! failures become [`LabgridError`]s that say which command failed and what the client said.

use super::view::{Resource, Snapshot, fields, parse_resources};
use crate::config::LabgridConfig;
use crate::driver::board::run_program_without;
use std::collections::BTreeMap;
use std::time::Duration;

/// Why a `labgrid-client` call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LabgridError {
    /// The program could not be started, or did not finish in time.
    #[error("labgrid-client {args}: {msg}")]
    Run {
        /// The arguments after the program.
        args: String,
        /// What went wrong.
        msg: String,
    },
    /// The client ran and failed; `msg` is what it printed.
    #[error("labgrid-client {args} failed ({status}): {msg}")]
    Failed {
        /// The arguments after the program.
        args: String,
        /// The exit status.
        status: String,
        /// The client's message (its last lines).
        msg: String,
    },
    /// The client's output is not what this version of the agent understands.
    #[error("labgrid-client {args}: unexpected output: {msg}")]
    Output {
        /// The arguments after the program.
        args: String,
        /// What was wrong.
        msg: String,
    },
}

impl LabgridError {
    /// The client's message, for job errors.
    pub(crate) fn message(&self) -> String {
        self.to_string()
    }

    /// The client's message, whatever the kind of failure.
    fn text(&self) -> &str {
        match self {
            LabgridError::Run { msg, .. }
            | LabgridError::Failed { msg, .. }
            | LabgridError::Output { msg, .. } => msg,
        }
    }

    /// Whether the client said the place is held by someone else (or by us already).
    pub(crate) fn is_held(&self) -> bool {
        matches!(self, LabgridError::Failed { msg, .. } if msg.contains("already acquired"))
    }

    /// Whether the client said this agent holds the place already.
    pub(crate) fn is_held_by_us(&self) -> bool {
        self.text().contains("You have already acquired place")
    }

    /// Whether the client said the place does not exist.
    pub(crate) fn is_unknown_place(&self) -> bool {
        matches!(self, LabgridError::Failed { msg, .. } if msg.contains("matches nothing"))
    }

    /// Whether the Labgrid coordinator could not be reached (or the client not run): an
    /// infrastructure failure that waiting on this place does not cure.
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            LabgridError::Run { .. } => true,
            LabgridError::Failed { msg, .. } => {
                msg.contains("Could not connect to coordinator")
                    || msg.contains("coordinator is unavailable")
                    || msg.contains("coordinator became unavailable")
            }
            LabgridError::Output { .. } => false,
        }
    }

    /// Whether the client said the place's resources are missing (its exporter is gone).
    pub(crate) fn is_missing_resources(&self) -> bool {
        let m = self.text();
        m.contains("has no matching remote resource")
            || m.contains("Failed to acquire resources")
            || m.contains("orphaned resource")
    }
}

/// A place as `labgrid-client -v places` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Place {
    /// Its name.
    pub name: String,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// Who holds it (`host/user`), if anyone.
    pub acquired: Option<String>,
    /// Its resource match patterns (`exporter/group/class[/name]`).
    pub matches: Vec<String>,
}

/// How the agent calls `labgrid-client` for one coordinator.
#[derive(Debug, Clone)]
pub(crate) struct LabgridClient {
    program: Vec<String>,
    coordinator: String,
    env: BTreeMap<String, String>,
    user: String,
    host: String,
    timeout: Duration,
}

impl LabgridClient {
    /// The client of a `labgrid:` entry for lab `lab`.
    pub(crate) fn new(cfg: &LabgridConfig, lab: &str) -> Self {
        let host = cfg.host.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        });
        let mut env = cfg.env.clone();
        env.insert(
            "LG_USERNAME".into(),
            cfg.user.clone().unwrap_or_else(|| format!("labwire-{lab}")),
        );
        env.insert("LG_HOSTNAME".into(), host.clone());
        LabgridClient {
            program: cfg.client.clone(),
            coordinator: cfg.coordinator.clone(),
            user: env["LG_USERNAME"].clone(),
            env,
            host,
            timeout: cfg.command_timeout,
        }
    }

    /// The identity places are acquired as: `host/user`, as Labgrid shows it.
    pub(crate) fn identity(&self) -> String {
        format!("{}/{}", self.host, self.user)
    }

    /// Runs the client with `args` (after `-x COORDINATOR`); returns its standard output.
    async fn run(&self, args: &[&str]) -> Result<String, LabgridError> {
        let mut argv = self.program.clone();
        argv.push("-x".into());
        argv.push(self.coordinator.clone());
        argv.extend(args.iter().map(|a| a.to_string()));
        let shown = args.join(" ");
        // The place is always given with -p; a stray LG_PLACE, LG_ENV or LG_COORDINATOR in
        // the agent's environment must not redirect a call.
        let out = run_program_without(
            &argv,
            &self.env,
            &["LG_PLACE", "LG_ENV", "LG_COORDINATOR", "LG_TOKEN"],
            self.timeout,
        )
        .await
        .map_err(|msg| LabgridError::Run {
            args: shown.clone(),
            msg,
        })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        // The client prints its errors on stderr (`labgrid-client: error: ...`), some
        // explanations on stdout; keep the last few lines of both.
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let msg = lines[lines.len().saturating_sub(3)..].join(" | ");
        Err(LabgridError::Failed {
            args: shown,
            status: out.status.to_string(),
            msg: if msg.is_empty() {
                "no message".into()
            } else {
                msg
            },
        })
    }

    /// Every place with its tags and who holds it.
    pub(crate) async fn places(&self) -> Result<Vec<Place>, LabgridError> {
        let out = self.run(&["-v", "places"]).await?;
        parse_places(&out).map_err(|msg| LabgridError::Output {
            args: "-v places".into(),
            msg,
        })
    }

    /// Every resource the exporters publish now.
    pub(crate) async fn resources(&self) -> Result<Vec<Resource>, LabgridError> {
        let out = self.run(&["-v", "resources"]).await?;
        parse_resources(&out).map_err(|msg| LabgridError::Output {
            args: "-v resources".into(),
            msg,
        })
    }

    /// The places and resources now.
    pub(crate) async fn snapshot(&self) -> Result<Snapshot, LabgridError> {
        let at = tokio::time::Instant::now();
        let places = self.places().await?;
        let resources = self.resources().await?;
        Ok(Snapshot {
            at,
            places,
            resources,
        })
    }

    /// Acquires a place for this agent.
    pub(crate) async fn acquire(&self, place: &str) -> Result<(), LabgridError> {
        self.run(&["-p", place, "acquire"]).await.map(drop)
    }

    /// Releases a place if (and only if) this agent holds it; a place someone else holds
    /// is left alone.
    pub(crate) async fn release(&self, place: &str) -> Result<(), LabgridError> {
        let id = self.identity();
        self.run(&["-p", place, "release-from", &id])
            .await
            .map(drop)
    }

    /// Switches a place's power: `on`, `off` or `cycle`.
    pub(crate) async fn power(&self, place: &str, action: &str) -> Result<(), LabgridError> {
        self.run(&["-p", place, "power", action]).await.map(drop)
    }

    /// The serial port the place's exporter publishes (the place must be acquired).
    pub(crate) async fn serial_port(&self, place: &str) -> Result<Resource, LabgridError> {
        let out = self.run(&["-p", place, "show"]).await?;
        parse_serial_port(&out).map_err(|msg| LabgridError::Output {
            args: format!("-p {place} show"),
            msg,
        })
    }
}

/// Parses `labgrid-client -v places`: a `Place 'NAME':` line per place, then its fields
/// indented by two spaces (`tags: a=1, b=2`, `acquired: host/user` or `None`).
pub(crate) fn parse_places(out: &str) -> Result<Vec<Place>, String> {
    let mut places: Vec<Place> = Vec::new();
    let mut in_matches = false;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("Place '") {
            let name = rest
                .strip_suffix("':")
                .ok_or_else(|| format!("a place line without its end: `{line}`"))?;
            places.push(Place {
                name: name.to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(field) = line.strip_prefix("  ") else {
            continue;
        };
        if let Some(item) = field.strip_prefix("  ") {
            // A list item of the field above (matches, acquired resources).
            if in_matches && let Some(p) = places.last_mut() {
                p.matches.push(item.trim().to_string());
            }
            continue;
        }
        in_matches = field.trim_end() == "matches:";
        let Some(p) = places.last_mut() else {
            return Err(format!("a field before any place: `{line}`"));
        };
        if let Some(v) = field.strip_prefix("acquired: ") {
            let v = v.trim();
            p.acquired = (v != "None" && !v.is_empty()).then(|| v.to_string());
        } else if let Some(v) = field.strip_prefix("tags: ") {
            for kv in v.split(", ") {
                if let Some((k, v)) = kv.split_once('=') {
                    p.tags.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
        }
    }
    Ok(places)
}

/// Finds the first acquired `NetworkSerialPort` in `labgrid-client show`: its host, port
/// and protocol (printed as a Python dict: `'host': 'NAME'`, `'port': N`).
pub(crate) fn parse_serial_port(out: &str) -> Result<Resource, String> {
    let mut in_port = false;
    let mut r = Resource::default();
    for line in out.lines() {
        if line.starts_with("Acquired resource ") || line.starts_with("Matching resource ") {
            if in_port && r.host.is_some() && r.port.is_some() {
                break;
            }
            in_port = line.contains("/NetworkSerialPort/");
            continue;
        }
        if in_port {
            fields(line, &mut r.host, &mut r.port, &mut r.protocol);
        }
    }
    if r.host.is_none() || r.port.is_none() {
        return Err(
            "the place has no acquired NetworkSerialPort with a host and port (does its exporter export a serial port, and is ser2net running?)"
                .into(),
        );
    }
    r.avail = true;
    r.path[2] = "NetworkSerialPort".into();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_parsed() {
        let out = "Place 'board-1':\n  tags: board=scripted, rack=2\n  matches:\n    exp/board-1/*\n  acquired: None\n  acquired resources:\n  created: 2026-11-23 17:00:00\n  changed: 2026-11-23 17:00:00\nPlace 'board-2':\n  matches:\n    exp/board-2/*\n  acquired: lab-host/labwire-lab-a\n  acquired resources:\n    exp/board-2/NetworkSerialPort/NetworkSerialPort\n  allowed: lab-host/labwire-lab-a\n  created: 2026-11-23 17:00:00\n  changed: 2026-11-23 17:00:00\n";
        let p = parse_places(out).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "board-1");
        assert_eq!(p[0].tags["board"], "scripted");
        assert_eq!(p[0].tags["rack"], "2");
        assert_eq!(p[0].acquired, None);
        assert_eq!(p[1].acquired.as_deref(), Some("lab-host/labwire-lab-a"));
        assert!(p[1].tags.is_empty());
        assert_eq!(p[0].matches, ["exp/board-1/*"]);
        assert_eq!(p[1].matches, ["exp/board-2/*"]);
        assert!(parse_places("  acquired: x\n").is_err());
        assert!(parse_places("").unwrap().is_empty());
    }

    #[test]
    fn the_serial_port_is_found() {
        let out = "Place 'b':\n  acquired: h/u\nAcquired resource 'NetworkPowerPort' (exp/b/NetworkPowerPort/NetworkPowerPort):\n  {'avail': True,\n   'params': {'host': 'http://127.0.0.1:5/power/{index}/{value}', 'index': 0, 'model': 'simplerest'}}\nAcquired resource 'NetworkSerialPort' (exp/b/NetworkSerialPort/NetworkSerialPort):\n  {'avail': True,\n   'cls': 'NetworkSerialPort',\n   'params': {'extra': {'path': '/dev/pts/3'},\n              'host': '127.0.0.1',\n              'port': 40123,\n              'speed': 115200}}\n";
        let r = parse_serial_port(out).unwrap();
        assert_eq!(
            (r.host.as_deref(), r.port),
            (Some("127.0.0.1"), Some(40123))
        );
        assert_eq!(r.protocol, None);
        let e = parse_serial_port("Place 'b':\n  acquired: h/u\n").unwrap_err();
        assert!(e.contains("NetworkSerialPort"), "{e}");
    }
}
