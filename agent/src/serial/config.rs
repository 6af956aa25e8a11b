//! Where a board's console is (`console:` of a serial device or a Labgrid place): a tty, a
//! TCP or telnet port, or a program. Opened by [`crate::serial::open`].

use crate::config::{DeviceConfig, validate_command};
use anyhow::bail;
use serde::Deserialize;
use std::path::PathBuf;

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

/// Reads a console written as a map (`console: {tcp: {address: ...}}`, as documented) or
/// with a YAML tag (`console: !tcp {address: ...}`). The derived reader takes a map only
/// where serde buffers the value first (inside `driver:`), so every `console:` goes here.
pub(crate) fn console_map_or_tag<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<ConsoleConfig, D::Error> {
    use serde::de::Error;
    use yaml_serde::Value;
    use yaml_serde::value::{Tag, TaggedValue};
    const KINDS: &str = "one of tty, tcp, telnet, command";
    let v = match Value::deserialize(d)? {
        Value::Mapping(m) => {
            let mut it = m.into_iter();
            match (it.next(), it.next()) {
                (Some((Value::String(k), value)), None) if !k.is_empty() => {
                    Value::Tagged(Box::new(TaggedValue {
                        tag: Tag::new(k),
                        value,
                    }))
                }
                _ => return Err(D::Error::custom(format!("expected exactly {KINDS}"))),
            }
        }
        v => v,
    };
    ConsoleConfig::deserialize(v).map_err(D::Error::custom)
}

/// [`console_map_or_tag`] for an optional `console:`.
pub(crate) fn some_console<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<ConsoleConfig>, D::Error> {
    console_map_or_tag(d).map(Some)
}

fn default_baud() -> u32 {
    115_200
}

/// Checks a console's settings; errors name the key.
pub(crate) fn validate_console(
    key: &str,
    c: &ConsoleConfig,
    d: &DeviceConfig,
) -> anyhow::Result<()> {
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
