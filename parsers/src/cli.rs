//! The `parse` command: stream a log file (or standard input) through the parser and print
//! one JSON report.

use crate::{Format, LogParser, ParserOptions, PatternSpec};
use anyhow::Context;
use labwire_common::NodeResult;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Size of the reads from the input.
pub const READ_SIZE: usize = 64 * 1024;

/// Arguments of `labwire-agent parse`.
#[derive(Debug, Clone, clap::Args)]
pub struct ParseArgs {
    /// What to look for: `auto` finds KTAP/TAP, LAVA signals and kernel messages together.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// A regular expression with named groups `test_case_id` and `result` (optionally
    /// `measurement` and `units`), matched against each line. Needed by `--format pattern`;
    /// with `--format auto` it runs alongside the other detectors.
    #[arg(long, value_name = "REGEX")]
    pub pattern: Option<String>,
    /// What a result word found by --pattern means, as WORD=RESULT (RESULT is pass, fail,
    /// skip or incomplete); repeatable, tried before the defaults.
    #[arg(long = "result-map", value_name = "WORD=RESULT", value_parser = parse_result_map)]
    pub result_map: Vec<(String, NodeResult)>,
    /// The log to parse; `-` for standard input.
    #[arg(value_name = "FILE", default_value = "-")]
    pub file: PathBuf,
}

fn parse_result_map(s: &str) -> Result<(String, NodeResult), String> {
    let (word, result) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not WORD=RESULT"))?;
    if word.is_empty() {
        return Err(format!("`{s}`: the word is empty"));
    }
    let result = result.parse::<NodeResult>().map_err(|e| e.to_string())?;
    Ok((word.to_string(), result))
}

impl ParseArgs {
    /// The parser options these arguments ask for.
    pub fn options(&self) -> ParserOptions {
        ParserOptions {
            format: self.format,
            pattern: self.pattern.as_ref().map(|re| PatternSpec {
                regex: re.clone(),
                result_map: self.result_map.clone(),
            }),
            keep_tree: true,
            progress: false,
        }
    }
}

/// Runs the command, printing the report on standard output.
pub fn run(args: &ParseArgs) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut lock = stdout.lock();
    run_to(args, &mut lock)
}

/// Runs the command, writing the report to `out`. Fails (naming the file) when the input
/// cannot be read, and on a bad or missing `--pattern`; whatever the tests' results, a
/// parsed log is a success.
pub fn run_to(args: &ParseArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let mut parser = LogParser::new(args.options())?;
    let stdin = args.file.as_os_str() == "-";
    let name = if stdin {
        "standard input".to_string()
    } else {
        args.file.display().to_string()
    };
    let mut input: Box<dyn Read> = if stdin {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(&args.file).with_context(|| format!("cannot open {name}"))?)
    };
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {name}")),
        };
        parser.feed(&buf[..n]);
    }
    let report = parser.finish();
    serde_json::to_writer_pretty(&mut *out, &report).context("cannot write the report")?;
    out.write_all(b"\n").context("cannot write the report")?;
    out.flush().context("cannot write the report")?;
    Ok(())
}
