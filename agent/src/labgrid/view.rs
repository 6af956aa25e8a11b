//! What the agent knows of a Labgrid coordinator at one moment: its places (who holds them,
//! which resources they match) and the resources its exporters publish now, as the
//! coordinator's update stream ([`super::link`]) says. A place's resources are those whose
//! `exporter/group/class/name` path matches one of its match patterns (shell globs, as
//! Labgrid's `ResourceMatch` does), so a place whose exporter is gone has none.

use crate::serial::config::ConsoleConfig;
use std::collections::BTreeMap;
use tokio::time::Instant;

/// A place of the coordinator.
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
    /// How many resources it holds while acquired.
    pub held_resources: usize,
}

/// One resource an exporter publishes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Resource {
    /// Exporter, group, class and name.
    pub path: [String; 4],
    /// Whether the exporter says it is available.
    pub avail: bool,
    /// `host` of its parameters, if any.
    pub host: Option<String>,
    /// `port` of its parameters, if any.
    pub port: Option<u16>,
    /// `protocol` of its parameters (a `NetworkSerialPort`'s `raw` or `rfc2217`), if given.
    pub protocol: Option<String>,
}

impl Resource {
    /// The resource's class (`NetworkSerialPort`).
    pub(crate) fn class(&self) -> &str {
        &self.path[2]
    }

    /// Whether `labgrid-client power` can switch the board with it.
    pub(crate) fn is_power(&self) -> bool {
        POWER_CLASSES.contains(&self.class())
    }
}

/// The exported resource classes Labgrid's `power` command drives.
pub(crate) const POWER_CLASSES: &[&str] = &[
    "NetworkPowerPort",
    "PDUDaemonPort",
    "NetworkUSBPowerPort",
    "NetworkSiSPMPowerPort",
    "NetworkYKUSHPowerPort",
    "TasmotaPowerPort",
    "NetworkHIDRelay",
];

/// The places and resources as the coordinator said at `at`.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// When the coordinator's last change was applied.
    pub at: Instant,
    /// Every place.
    pub places: Vec<Place>,
    /// Every resource (available or not).
    pub resources: Vec<Resource>,
}

impl Snapshot {
    /// The place of this name.
    pub(crate) fn place(&self, name: &str) -> Option<&Place> {
        self.places.iter().find(|p| p.name == name)
    }

    /// The available resources a place matches.
    pub(crate) fn resources_of<'a>(&'a self, p: &'a Place) -> impl Iterator<Item = &'a Resource> {
        self.resources
            .iter()
            .filter(move |r| r.avail && p.matches.iter().any(|m| path_matches(m, &r.path)))
    }

    /// The serial port a place's exporter publishes (its first `NetworkSerialPort`).
    pub(crate) fn serial_of<'a>(&'a self, p: &'a Place) -> Option<&'a Resource> {
        self.resources_of(p)
            .find(|r| r.class() == "NetworkSerialPort")
    }

    /// Whether a place has a resource Labgrid can power it with.
    pub(crate) fn has_power(&self, p: &Place) -> bool {
        self.resources_of(p).any(Resource::is_power)
    }
}

/// The console config for a serial port as its exporter publishes it.
pub(crate) fn console_of(port: &Resource) -> Result<ConsoleConfig, String> {
    let (Some(host), Some(p)) = (&port.host, port.port) else {
        return Err("its NetworkSerialPort has no host and port".into());
    };
    let address = format!("{host}:{p}");
    match port.protocol.as_deref() {
        None | Some("rfc2217") => Ok(ConsoleConfig::Telnet { address }),
        Some("raw") => Ok(ConsoleConfig::Tcp { address }),
        Some(other) => Err(format!(
            "its NetworkSerialPort speaks `{other}`, which the agent does not know (raw, rfc2217); give the place a `console:`"
        )),
    }
}

/// Whether a match pattern (`exporter/group/class[/name]`, maybe followed by ` -> rename`)
/// matches a resource path.
pub(crate) fn path_matches(pattern: &str, path: &[String; 4]) -> bool {
    let pattern = pattern.split(" -> ").next().unwrap_or(pattern).trim();
    let parts: Vec<&str> = pattern.split('/').collect();
    if !(3..=4).contains(&parts.len()) {
        return false;
    }
    parts
        .iter()
        .zip(path.iter())
        .all(|(p, v)| glob(p.as_bytes(), v.as_bytes()))
}

/// Shell-style matching of `*`, `?` and `[...]` (as Python's `fnmatchcase`).
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((b'[', rest)) => {
            let Some(end) = rest.iter().skip(1).position(|&c| c == b']').map(|i| i + 1) else {
                return s.first() == Some(&b'[') && glob(rest, &s[1..]);
            };
            let Some((&c, tail)) = s.split_first() else {
                return false;
            };
            let (neg, set) = match rest[..end].split_first() {
                Some((b'!', set)) => (true, set),
                _ => (false, &rest[..end]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != neg && glob(&rest[end + 1..], tail)
        }
        Some((&c, rest)) => s.first() == Some(&c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: [&str; 4], avail: bool, port: Option<u16>) -> Resource {
        Resource {
            path: path.map(str::to_string),
            avail,
            host: port.map(|_| "127.0.0.1".to_string()),
            port,
            protocol: None,
        }
    }

    #[test]
    fn resources_are_matched_to_places() {
        let r = vec![
            res(
                ["exp", "board-1", "NetworkPowerPort", "NetworkPowerPort"],
                true,
                None,
            ),
            res(
                ["exp", "board-1", "NetworkSerialPort", "NetworkSerialPort"],
                true,
                Some(40123),
            ),
            res(
                ["exp", "board-2", "NetworkSerialPort", "serial"],
                false,
                Some(7001),
            ),
        ];
        assert!(r[0].is_power() && !r[1].is_power());
        let place = |m: &str| Place {
            name: "p".into(),
            matches: vec![m.into()],
            ..Default::default()
        };
        let s = Snapshot {
            at: Instant::now(),
            places: vec![],
            resources: r,
        };
        let p1 = place("exp/board-1/*");
        assert_eq!(s.resources_of(&p1).count(), 2);
        assert!(s.has_power(&p1));
        assert_eq!(s.serial_of(&p1).and_then(|r| r.port), Some(40123));
        // Unavailable resources are not the place's; nor are other groups'.
        let p2 = place("exp/board-2/*");
        assert!(s.serial_of(&p2).is_none());
        assert_eq!(
            s.resources_of(&place("exp/board-?/NetworkPowerPort -> power"))
                .count(),
            1
        );
        assert_eq!(
            s.resources_of(&place("*/board-[12]/*/NetworkSerialPort"))
                .count(),
            1
        );
        assert_eq!(s.resources_of(&place("other/board-1/*")).count(), 0);
        assert_eq!(s.resources_of(&place("bad")).count(), 0);
    }

    #[test]
    fn globs_match_as_fnmatchcase_does() {
        for (p, s, want) in [
            ("*", "", true),
            ("a*c", "abbc", true),
            ("a?c", "ac", false),
            ("[!a]x", "bx", true),
            ("[!a]x", "ax", false),
            ("[a-c]", "b", true),
            ("[a-c]", "B", false),
            ("[", "[", true),
        ] {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), want, "{p} {s}");
        }
    }

    #[test]
    fn the_console_follows_the_exported_protocol() {
        let port = |protocol: Option<&str>| Resource {
            host: Some("10.0.0.1".into()),
            port: Some(7001),
            protocol: protocol.map(str::to_string),
            ..Default::default()
        };
        let addr = "10.0.0.1:7001".to_string();
        assert!(
            matches!(console_of(&port(None)), Ok(ConsoleConfig::Telnet { address }) if address == addr)
        );
        assert!(matches!(
            console_of(&port(Some("rfc2217"))),
            Ok(ConsoleConfig::Telnet { .. })
        ));
        assert!(
            matches!(console_of(&port(Some("raw"))), Ok(ConsoleConfig::Tcp { address }) if address == addr)
        );
        let e = console_of(&port(Some("ssh"))).unwrap_err();
        assert!(e.contains("`ssh`"), "{e}");
        assert!(console_of(&Resource::default()).is_err());
    }
}
