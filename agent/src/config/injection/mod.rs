//! The injection check of configured commands: where in an argument list a job value
//! (`{params.NAME}`, `{artifacts.NAME}`) would become code on the lab host.
//!
//! A command is an argument list run without a shell, and each placeholder is replaced by one
//! whole argument, so a job value is data, unless the program makes it code. This check reads
//! an argument list the way the programs would:
//! - **wrappers** are looked through to the program they start (`env` with its options and
//!   `VAR=value`, `sudo`, `doas`, `nice`, `timeout`, `setsid`, `stdbuf`, `nohup`, `ionice`,
//!   `chrt`, `taskset`, `time`, `xargs`, `chroot`, `busybox APPLET`), and their own ways of
//!   running a shell are refused with a job value (`su -c`, `flock -c`, `script -c`,
//!   `env -S`, `sudo -s`/`-i`, `watch`, `ssh`, whose command words are one shell line);
//! - **shells** (`sh`, `bash`, `dash`, `ash`, `zsh`, `ksh`, `mksh`, `fish`, ..., by any path):
//!   option clusters are read (`-ec`, `-xc`, `+e`, `-o NAME`); the script of `-c` or the script
//!   file must not be a job value, nor any argument where an option may stand; the arguments
//!   after the script are positional parameters (`"$1"`) and may be;
//! - **interpreters** (`python*`, `perl`, `ruby`, `node`, `php`, `lua`, `tclsh`, `expect`,
//!   `awk`/`gawk`/`mawk`/`nawk`, `sed`): the program text (`-c`, `-e`, `-r`, `--eval`, the
//!   first operand of awk and sed) and the script or module they load (`-m`, `-M`, `-r`,
//!   `-f`, the first operand) must not be a job value; `perl -n`/`-p` also refuse job values
//!   among their file operands, which perl opens with the two-argument `open` (`cmd |` runs).
//!
//! The check errs on the side of refusing: a job value where an option could stand is refused
//! even when the program would take it as data, because a value starting with `-` changes
//! what the program does. Positional slots after `--` are data.

mod programs;
#[cfg(test)]
mod tests;

use super::placeholder;
use programs::{INTERPRETERS, Interpreter, SHELLS, WRAPPERS, Wrapper};
use std::path::Path;

/// Where a job value would become code: the argument's index and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// The index of the argument in the command.
    pub index: usize,
    /// Why it is refused.
    pub why: String,
}

fn found(index: usize, why: impl Into<String>) -> Result<(), Finding> {
    Err(Finding {
        index,
        why: why.into(),
    })
}

/// Whether an argument is a placeholder whose value the job chooses.
pub(crate) fn is_job_value(arg: &str) -> bool {
    matches!(placeholder(arg), Some(("params" | "artifacts", _)))
}

/// A program's name without its folder and without a version suffix (`python3.11` is
/// `python`, `/usr/bin/bash5` is `bash`).
fn program_name(prog: &str) -> String {
    let base = Path::new(prog)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or(prog);
    base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-')
        .to_string()
}

/// Checks a command; `Err` names the first argument where a job value would become code.
pub(crate) fn check(argv: &[String]) -> Result<(), Finding> {
    let mut i = 0;
    loop {
        let Some(prog) = argv.get(i) else {
            return Ok(());
        };
        if is_job_value(prog) {
            return found(i, "a job value must not choose the program to run");
        }
        let name = program_name(prog);
        if let Some(w) = WRAPPERS.iter().find(|w| w.names.contains(&name.as_str())) {
            match wrapper(w, &name, argv, i)? {
                Some(next) => i = next,
                None => return Ok(()),
            }
        } else if SHELLS.contains(&name.as_str()) {
            return shell(&name, argv, i);
        } else if let Some(p) = INTERPRETERS
            .iter()
            .find(|p| p.names.contains(&name.as_str()))
        {
            return interpreter(p, &name, argv, i);
        } else {
            return Ok(());
        }
    }
}

/// A long option's name and its `=value`, if any.
fn long_option(a: &str) -> (&str, Option<&str>) {
    match a.split_once('=') {
        Some((o, v)) => (o, Some(v)),
        None => (a, None),
    }
}

/// Reads a wrapper's own arguments from `argv[i + 1]`; returns the index of the program it
/// runs (`None`: it runs none, or its command was checked here).
fn wrapper(w: &Wrapper, name: &str, argv: &[String], i: usize) -> Result<Option<usize>, Finding> {
    let mut j = i + 1;
    let mut positionals = w.positionals;
    let mut shell_line = false;
    let own = |j: usize| -> Result<(), Finding> {
        found(
            j,
            format!(
                "a job value among `{name}`'s own arguments could be read as one of its options or as the program it runs"
            ),
        )
    };
    // The value of an option at `j` (`rest` attached, else the next argument); returns the
    // index after it, with the index of a job value if the value is one.
    let value = |j: usize, attached: bool| -> (usize, Option<usize>) {
        if attached {
            (j + 1, None)
        } else {
            let job = argv.get(j + 1).filter(|a| is_job_value(a)).map(|_| j + 1);
            (j + 2, job)
        }
    };
    while let Some(a) = argv.get(j) {
        if a == "--" {
            j += 1;
            // After `--` the positional slots are data, then comes the program.
            while positionals > 0 && j < argv.len() {
                positionals -= 1;
                j += 1;
            }
            break;
        }
        if is_job_value(a) {
            if shell_line {
                return found(j, shell_line_why(name)).map(|_| None);
            }
            return own(j).map(|_| None);
        }
        if a == "-" && name == "env" {
            // `env -` is `env -i`.
            j += 1;
            continue;
        }
        if a.len() > 2 && a.starts_with("--") {
            let (opt, attached) = long_option(a);
            if w.long_script.contains(&opt) || w.long_split.contains(&opt) {
                let (next, job) = value(j, attached.is_some());
                if let Some(k) = job {
                    return found(
                        k,
                        format!("the value of `{name} {opt}` is run as a shell command or split into one"),
                    )
                    .map(|_| None);
                }
                if w.long_split.contains(&opt) {
                    return split_command(argv, j, attached, name);
                }
                j = next;
                continue;
            }
            if w.long_shell.contains(&opt) {
                shell_line = true;
                j += 1;
                continue;
            }
            if w.long_value.contains(&opt) {
                let (next, job) = value(j, attached.is_some());
                if let (Some(k), true) = (job, w.strict_values) {
                    return found(k, format!("`{name} {opt}` must not take a job value"))
                        .map(|_| None);
                }
                j = next;
                continue;
            }
            j += 1;
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            let cluster = &a[1..];
            let mut next = j + 1;
            for (k, c) in cluster.char_indices() {
                let attached = k + c.len_utf8() < cluster.len();
                if w.short_script.contains(c) || w.short_split.contains(c) {
                    let (n, job) = value(j, attached);
                    if let Some(k) = job {
                        return found(
                            k,
                            format!("the value of `{name} -{c}` is run as a shell command or split into one"),
                        )
                        .map(|_| None);
                    }
                    if w.short_split.contains(c) {
                        let text = attached.then(|| &cluster[k + c.len_utf8()..]);
                        return split_command(argv, j, text, name);
                    }
                    next = n;
                    break;
                }
                if w.short_shell.contains(c) {
                    shell_line = true;
                    continue;
                }
                if w.short_value.contains(c) {
                    let (n, job) = value(j, attached);
                    if let (Some(k), true) = (job, w.strict_values) {
                        return found(k, format!("`{name} -{c}` must not take a job value"))
                            .map(|_| None);
                    }
                    next = n;
                    break;
                }
            }
            j = next;
            continue;
        }
        if w.assignments && is_assignment(a) {
            j += 1;
            continue;
        }
        if positionals > 0 {
            positionals -= 1;
            j += 1;
            continue;
        }
        break;
    }
    if shell_line || w.joins {
        if let Some(k) = (j..argv.len()).find(|&k| is_job_value(&argv[k])) {
            return found(k, shell_line_why(name)).map(|_| None);
        }
        return Ok(None);
    }
    Ok((j < argv.len()).then_some(j))
}

fn shell_line_why(name: &str) -> String {
    format!(
        "`{name}` hands its command to a shell as one line, where a job value would be parsed as shell code"
    )
}

/// `env -S TEXT` (or `--split-string=TEXT`): TEXT is split into words that start the
/// command; the words and the arguments after them are checked as a command.
fn split_command(
    argv: &[String],
    j: usize,
    attached: Option<&str>,
    name: &str,
) -> Result<Option<usize>, Finding> {
    let (text, rest) = match attached {
        Some(t) => (t.to_string(), j + 1),
        None => match argv.get(j + 1) {
            Some(t) => (t.clone(), j + 2),
            None => return Ok(None),
        },
    };
    let words: Vec<String> = text.split_whitespace().map(String::from).collect();
    let n = words.len();
    let mut cmd = words;
    cmd.extend(argv[rest.min(argv.len())..].iter().cloned());
    check(&cmd).map_err(|f| Finding {
        index: if f.index < n { j } else { rest + f.index - n },
        why: format!("in the command `{name}` splits: {}", f.why),
    })?;
    Ok(None)
}

fn is_assignment(a: &str) -> bool {
    a.split_once('=').is_some_and(|(n, _)| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// A shell: its options (clusters of `-` and `+` letters, `-o NAME`, long options), then the
/// script of `-c` or the script file, then positional parameters.
fn shell(name: &str, argv: &[String], i: usize) -> Result<(), Finding> {
    let mut j = i + 1;
    let mut command = false;
    while let Some(a) = argv.get(j) {
        if is_job_value(a) {
            let why = if command {
                format!("`{name} -c` runs this argument as its script")
            } else {
                format!(
                    "`{name}` reads this argument as one of its options or as the script file it runs"
                )
            };
            return found(j, why);
        }
        if a == "-" {
            return Ok(());
        }
        if a == "--" {
            j += 1;
            break;
        }
        if let Some(long) = a.strip_prefix("--").filter(|l| !l.is_empty()) {
            let (opt, attached) = long_option(long);
            // Options whose value is shell code or a file of it: fish's `--command` and
            // `--init-command`, bash's `--rcfile` and `--init-file`.
            match opt {
                "command" | "init-command" | "rcfile" | "init-file" => {
                    if attached.is_none() {
                        if argv.get(j + 1).is_some_and(|n| is_job_value(n)) {
                            return found(
                                j + 1,
                                format!("the value of `{name} --{opt}` is shell code"),
                            );
                        }
                        j += 1;
                    }
                    if opt == "command" {
                        return Ok(());
                    }
                }
                _ => {}
            }
            j += 1;
            continue;
        }
        if a.len() > 1 && (a.starts_with('-') || a.starts_with('+')) {
            let mut takes = 0;
            for c in a[1..].chars() {
                match c {
                    'c' => command = true,
                    'o' | 'O' => takes += 1,
                    'C' if name == "fish" => takes += 1,
                    _ => {}
                }
            }
            for k in 1..=takes {
                if argv.get(j + k).is_some_and(|n| is_job_value(n)) {
                    return found(
                        j + k,
                        format!("the value of an option of `{name}` must not be a job value"),
                    );
                }
            }
            j += 1 + takes;
            continue;
        }
        // The script (with -c) or the script file; what follows are positional parameters.
        return Ok(());
    }
    match argv.get(j) {
        Some(a) if is_job_value(a) => found(
            j,
            if command {
                format!("`{name} -c` runs this argument as its script")
            } else {
                format!("`{name}` runs this argument as its script file")
            },
        ),
        _ => Ok(()),
    }
}

/// An interpreter: program text and code to load must not be job values.
fn interpreter(p: &Interpreter, name: &str, argv: &[String], i: usize) -> Result<(), Finding> {
    let mut j = i + 1;
    // Whether the program was given by an option (so operands are data).
    let mut has_program = false;
    let mut magic_open = false;
    let code_value = |k: usize, what: &str| -> Result<(), Finding> {
        if argv.get(k).is_some_and(|n| is_job_value(n)) {
            return found(
                k,
                format!("`{name} {what}` runs or loads this argument as code"),
            );
        }
        Ok(())
    };
    'options: while let Some(a) = argv.get(j) {
        if a == "--" {
            j += 1;
            if !has_program {
                code_value(j, "--")?;
                j += 1;
            }
            break;
        }
        if is_job_value(a) {
            if has_program {
                break;
            }
            return found(
                j,
                format!(
                    "`{name}` reads this argument as one of its options, as its program text or as the script it runs"
                ),
            );
        }
        if a.len() > 2 && a.starts_with("--") {
            let (opt, attached) = long_option(a);
            let code = p.long_code.contains(&opt);
            if code || p.long_load.contains(&opt) {
                if attached.is_none() {
                    code_value(j + 1, opt)?;
                    j += 1;
                }
                j += 1;
                if code || p.long_program_load.contains(&opt) {
                    has_program = true;
                    if p.code_ends_options {
                        break;
                    }
                }
                continue;
            }
            j += 1;
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            let cluster = &a[1..];
            for (k, c) in cluster.char_indices() {
                let rest = &cluster[k + c.len_utf8()..];
                // `node -pe CODE`: code letters in a row take the next argument together.
                let attached = !rest.is_empty() && !rest.chars().all(|r| p.short_code.contains(r));
                let code = p.short_code.contains(c);
                if code || p.short_load.contains(c) {
                    if !attached {
                        code_value(j + 1, &format!("-{c}"))?;
                        j += 1;
                    }
                    j += 1;
                    if code || p.program_load.contains(c) {
                        has_program = true;
                        if p.code_ends_options {
                            break 'options;
                        }
                    }
                    continue 'options;
                }
                if p.short_value.contains(c) {
                    j += if attached { 1 } else { 2 };
                    continue 'options;
                }
                if name == "perl" && matches!(c, 'n' | 'p') {
                    magic_open = true;
                }
                // Perl options that take the rest of the cluster as their value.
                if name == "perl" && "0CdDFilx".contains(c) {
                    break;
                }
            }
            j += 1;
            continue;
        }
        if !has_program {
            // The program text or the script file; operands follow.
            j += 1;
        }
        break;
    }
    if magic_open && let Some(k) = (j..argv.len()).find(|&k| is_job_value(&argv[k])) {
        return found(
            k,
            "`perl -n`/`-p` opens its file arguments with two-argument open, where `cmd |` runs a command",
        );
    }
    Ok(())
}
