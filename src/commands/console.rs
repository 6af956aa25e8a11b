//! `labwire console LAB/DEVICE` (console scope): a reserved board's console in this
//! terminal, relayed by the coordinator through the lab agent's own connection, and
//! `labwire power LAB/DEVICE on|off|reset`. On a terminal the console runs in raw mode
//! (every key goes to the board) and `~.` typed at the start of a line leaves, as in ssh
//! (`~~` sends one `~`). With standard input piped, its bytes are sent as they are (the same
//! escape applies) and standard output gets the board's bytes unchanged, for scripts.

use super::device::target;
use crate::client::Clients;
use anyhow::{Context, bail};
use labwire_proto::v1::{self, console_reply, console_request};
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use tokio::sync::mpsc;

/// `labwire console` arguments.
#[derive(Debug, clap::Args)]
pub(super) struct ConsoleArgs {
    /// LAB/DEVICE.
    target: String,
    /// Only watch, even if you may type.
    #[arg(long)]
    watch: bool,
}

/// The `~.` escape after a newline: what to send of each chunk of keystrokes, and whether
/// the user asked to leave.
#[derive(Debug)]
struct Escape {
    line_start: bool,
    tilde: bool,
}

impl Escape {
    fn new() -> Escape {
        Escape {
            line_start: true,
            tilde: false,
        }
    }

    /// The bytes of `input` to send; `true` as the second value when `~.` was typed.
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.tilde {
                self.tilde = false;
                match b {
                    b'.' => return (out, true),
                    b'~' => {
                        out.push(b'~');
                        self.line_start = false;
                        continue;
                    }
                    _ => out.push(b'~'),
                }
            } else if self.line_start && b == b'~' {
                self.tilde = true;
                continue;
            }
            out.push(b);
            self.line_start = b == b'\r' || b == b'\n';
        }
        (out, false)
    }
}

/// The terminal's settings, put back when dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("cannot set the terminal raw")?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

/// Tells the person at a terminal something, apart from the board's bytes (stderr).
fn say(tty: bool, what: &str) {
    if tty {
        eprint!("\r\n[labwire: {what}]\r\n");
    } else {
        eprintln!("labwire: {what}");
    }
}

/// Runs `labwire console`.
pub(super) async fn console(c: &mut Clients, a: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let (lab, device) = target(&a.target)?;
    let tty = std::io::stdin().is_terminal();
    let (out_tx, out_rx) = mpsc::channel::<v1::ConsoleRequest>(64);
    out_tx
        .send(v1::ConsoleRequest {
            kind: Some(console_request::Kind::Open(v1::ConsoleOpen {
                lab: lab.clone(),
                device: device.clone(),
                watch: a.watch,
            })),
        })
        .await
        .context("cannot queue the console request")?;
    let mut inbound = c
        .borrow
        .console(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    // Keystrokes: a blocking reader thread, the escape applied.
    let (keys_tx, mut keys_rx) = mpsc::channel::<Option<Vec<u8>>>(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        let mut esc = Escape::new();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = keys_tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    let (send, leave) = esc.feed(&buf[..n]);
                    if !send.is_empty() && keys_tx.blocking_send(Some(send)).is_err() {
                        return;
                    }
                    if leave {
                        let _ = keys_tx.blocking_send(None);
                        return;
                    }
                }
            }
        }
    });
    let mut raw = None;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            m = inbound.message() => match m? {
                Some(v1::ConsoleReply { kind: Some(console_reply::Kind::Opened(o)) }) => {
                    if tty {
                        raw = Some(RawMode::enter()?);
                    }
                    let until = o
                        .expires
                        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
                        .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
                    let mode = if o.typing { "typing" } else { "watching" };
                    say(tty, &format!(
                        "{lab}/{device}, {mode}; reserved by {} until {until}; `~.` after a newline leaves",
                        o.owner
                    ));
                }
                Some(v1::ConsoleReply { kind: Some(console_reply::Kind::Output(d)) }) => {
                    stdout.write_all(&d)?;
                    stdout.flush()?;
                }
                Some(v1::ConsoleReply { kind: Some(console_reply::Kind::Closed(why)) }) => {
                    drop(raw.take());
                    say(tty, &format!("console closed: {why}"));
                    return Ok(ExitCode::SUCCESS);
                }
                Some(_) => {}
                None => {
                    drop(raw.take());
                    say(tty, "the coordinator closed the console");
                    return Ok(ExitCode::SUCCESS);
                }
            },
            k = keys_rx.recv() => match k.flatten() {
                Some(bytes) => {
                    let _ = out_tx.send(v1::ConsoleRequest {
                        kind: Some(console_request::Kind::Input(bytes)),
                    }).await;
                }
                None => {
                    drop(raw.take());
                    say(tty, "left the console");
                    return Ok(ExitCode::SUCCESS);
                }
            },
        }
    }
}

/// Runs `labwire power LAB/DEVICE on|off|reset`.
pub(super) async fn power(c: &mut Clients, t: String, action: String) -> anyhow::Result<()> {
    let (lab, device) = target(&t)?;
    let a = match action.as_str() {
        "on" => v1::PowerAction::On,
        "off" => v1::PowerAction::Off,
        "reset" => v1::PowerAction::Reset,
        other => bail!("`{other}`: expected on, off or reset"),
    };
    c.borrow
        .power(v1::PowerRequest {
            lab: lab.clone(),
            device: device.clone(),
            action: a as i32,
        })
        .await?;
    crate::output::outln!("{lab}/{device}: power {action}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_dot_after_a_newline_leaves_and_tilde_tilde_sends_one() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"ls ~/x\r"), (b"ls ~/x\r".to_vec(), false));
        assert_eq!(e.feed(b"~~a"), (b"~a".to_vec(), false));
        assert_eq!(e.feed(b"\n~b"), (b"\n~b".to_vec(), false));
        let mut e = Escape::new();
        // Split across reads.
        assert_eq!(e.feed(b"echo\r~"), (b"echo\r".to_vec(), false));
        assert_eq!(e.feed(b"."), (Vec::new(), true));
        let mut e = Escape::new();
        assert_eq!(e.feed(b"~."), (Vec::new(), true));
    }
}
