//! `labwire completions SHELL` and `labwire man DIR`: shell completions and man pages of
//! the three binaries, generated from their clap definitions (clap_complete, clap_mangen), so
//! they always match the options.

use anyhow::Context;
use clap::{CommandFactory, ValueEnum};
use std::path::Path;

/// The binaries whose completions and man pages are generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Binary {
    /// The command-line client.
    Labwire,
    /// The lab daemon.
    LabwireAgent,
    /// The central daemon.
    LabwireCoordinator,
}

impl Binary {
    const ALL: [Binary; 3] = [
        Binary::Labwire,
        Binary::LabwireAgent,
        Binary::LabwireCoordinator,
    ];

    /// The binary's command with its name and version.
    fn command(self) -> clap::Command {
        let c = match self {
            Binary::Labwire => super::Cli::command(),
            Binary::LabwireAgent => labwire_agent::cli::Cli::command(),
            Binary::LabwireCoordinator => labwire_coordinator::cli::Cli::command(),
        };
        c.version(crate::VERSION)
    }
}

/// `labwire completions SHELL [--bin BIN]`: the completion script on standard output.
pub(super) fn completions(shell: clap_complete::Shell, bin: Binary) -> anyhow::Result<()> {
    let mut cmd = bin.command();
    let name = cmd.get_name().to_string();
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut text);
    crate::output::write_bytes(&text)
}

/// `labwire man DIR`: one page per binary and per subcommand (`labwire-submit.1`, ...)
/// into `dir`; prints the files written.
pub(super) fn man(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for b in Binary::ALL {
        let cmd = b.command();
        // Subcommand pages are named `parent-sub.1`, as git's are.
        clap_mangen::generate_to(cmd, dir)
            .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    }
    let mut files: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.ends_with(".1"))
        .collect();
    files.sort();
    for f in files {
        crate::output::outln!("{f}")?;
    }
    Ok(())
}
