//! Standard output of the command-line tools (all three binaries). A reader may go away
//! before a command is done (`labwire jobs | head -1`): then the command stops quietly and
//! exits 0, like the other tools of a pipeline, instead of panicking ("failed printing to
//! stdout") as `println!` does. [`outln!`](crate::outln) and [`out!`](crate::out) return an
//! error that the binaries' `main` recognises ([`closed`]); only writes to standard output
//! produce it, so a broken connection to a peer is never mistaken for it.
//! [`say!`](crate::say) is for progress messages: it drops what cannot be written and
//! carries on.

use std::fmt;
use std::io::Write;

/// Standard output was closed by its reader.
#[derive(Debug)]
pub struct OutputClosed;

impl fmt::Display for OutputClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for OutputClosed {}

/// An error writing to standard output: [`OutputClosed`] when its reader went away.
#[derive(Debug)]
pub enum WriteError {
    /// The reader closed the pipe.
    Closed(OutputClosed),
    /// Any other failure (a full disk, ...).
    Io(std::io::Error),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Closed(c) => c.fmt(f),
            WriteError::Io(e) => write!(f, "cannot write to standard output: {e}"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Closed(c) => Some(c),
            WriteError::Io(e) => Some(e),
        }
    }
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            WriteError::Closed(OutputClosed)
        } else {
            WriteError::Io(e)
        }
    }
}

/// Writes `bytes` to standard output: a closed pipe becomes [`WriteError::Closed`].
pub fn write_bytes(bytes: &[u8]) -> Result<(), WriteError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

/// Writes formatted text to standard output (see [`write_bytes`]).
pub fn write_fmt(args: fmt::Arguments<'_>) -> Result<(), WriteError> {
    match args.as_str() {
        Some(s) => write_bytes(s.as_bytes()),
        None => write_bytes(args.to_string().as_bytes()),
    }
}

/// Whether `e` (or anything in its chain of sources) means that standard output was closed.
pub fn closed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<OutputClosed>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `print!` that returns an error instead of panicking (use with `?`).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::stdout::write_fmt(format_args!($($arg)*)) };
}

/// `println!` that returns an error instead of panicking (use with `?`).
#[macro_export]
macro_rules! outln {
    () => { $crate::stdout::write_bytes(b"\n") };
    ($($arg:tt)*) => { $crate::stdout::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `println!` for progress messages: what cannot be written is dropped.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { let _ = $crate::stdout::write_fmt(format_args!("{}\n", format_args!($($arg)*))); };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_recognised_through_anyhow_style_chains() {
        let e = WriteError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(closed(&e));
        let other = WriteError::from(std::io::Error::other("disk full"));
        assert!(!closed(&other));
        assert!(other.to_string().contains("disk full"));
    }
}
