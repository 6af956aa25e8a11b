//! Standard output of the `labwire` commands. A reader may go away before a command is done
//! (`labwire jobs | head -1`): then the command stops quietly and exits 0, like the other
//! tools of a pipeline, instead of panicking ("failed printing to stdout") as `println!`
//! does. [`outln!`] and [`out!`] return an error that [`crate::commands::run`] recognises
//! ([`OutputClosed`]); only writes to standard output produce it, so a broken connection to
//! the coordinator is never mistaken for it. [`say!`] is for progress messages (the demo):
//! it drops what cannot be written and carries on.

use std::fmt;
use std::io::Write;

/// Standard output was closed by its reader.
#[derive(Debug)]
pub(crate) struct OutputClosed;

impl fmt::Display for OutputClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for OutputClosed {}

/// Writes `bytes` to standard output: a closed pipe becomes [`OutputClosed`].
pub(crate) fn write_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(OutputClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
    }
}

/// Writes formatted text to standard output (see [`write_bytes`]).
pub(crate) fn write_fmt(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    match args.as_str() {
        Some(s) => write_bytes(s.as_bytes()),
        None => write_bytes(args.to_string().as_bytes()),
    }
}

/// Whether `e` means that standard output was closed.
pub(crate) fn closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<OutputClosed>())
}

/// `print!` that returns an error instead of panicking (use with `?`).
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_fmt(format_args!($($arg)*)) };
}

/// `println!` that returns an error instead of panicking (use with `?`).
macro_rules! outln {
    () => { $crate::output::write_bytes(b"\n") };
    ($($arg:tt)*) => { $crate::output::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `println!` for progress messages: what cannot be written is dropped.
macro_rules! say {
    ($($arg:tt)*) => { let _ = $crate::output::write_fmt(format_args!("{}\n", format_args!($($arg)*))); };
}

pub(crate) use {out, outln, say};
