//! Standard output of the `labwire` commands: the writers of [`labwire_common::stdout`],
//! which turn a pipe closed by its reader (`labwire jobs | head -1`) into an error that
//! [`crate::commands::run`] and the binaries' `main` recognise with [`closed`], so that the
//! command stops quietly and exits 0. The macros here return `anyhow::Result`.

pub(crate) use labwire_common::say;

/// Writes `bytes` to standard output (see [`labwire_common::stdout::write_bytes`]).
pub(crate) fn write_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    Ok(labwire_common::stdout::write_bytes(bytes)?)
}

/// Writes formatted text to standard output.
pub(crate) fn write_fmt(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    Ok(labwire_common::stdout::write_fmt(args)?)
}

/// Whether `e` means that standard output was closed.
pub fn closed(e: &anyhow::Error) -> bool {
    e.chain().any(labwire_common::stdout::closed)
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

pub(crate) use {out, outln};
