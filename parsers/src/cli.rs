//! The `parse` command: stream a log file (or standard input) through the parser and print
//! its results in one of four shapes: the whole report as JSON, one JSON line per test as
//! it is found (constant memory), JUnit XML, or a short summary. Output is buffered; a
//! reader that goes away (`| head`) ends the command quietly (the error it returns is
//! recognised by [`labwire_common::stdout::closed`]).

use crate::jsonl::TestLines;
use crate::{Completed, Format, LogParser, ParseReport, ParserOptions, PatternSpec};
use anyhow::Context;
use labwire_common::NodeResult;
use labwire_common::stdout::WriteError;
use serde::Serialize;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

/// Size of the reads from the input.
pub const READ_SIZE: usize = 64 * 1024;

/// Size of the output buffer.
const WRITE_SIZE: usize = 64 * 1024;

/// What `parse` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// One JSON document: result, counts, the tree of tests, errors (built in memory).
    #[default]
    Json,
    /// One JSON object per line: each test as soon as its result is known
    /// (`"type": "test"`), then one `"type": "summary"` line. Constant memory.
    Jsonl,
    /// JUnit XML (GitLab, Jenkins): a testsuite per top-level test (built in memory).
    Junit,
    /// A few lines of text: the result, the counts, the parser's issues. Constant memory.
    Summary,
}

/// Arguments of `labwire-agent parse`.
#[derive(Debug, Clone, clap::Args)]
pub struct ParseArgs {
    /// What to look for: `auto` finds KTAP/TAP, LAVA signals and kernel messages together.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// What to print: the report as JSON, JSON lines as tests are found, JUnit XML, or a
    /// summary.
    #[arg(long, short, value_enum, default_value_t = Output::Json)]
    pub output: Output,
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
    /// The parser options these arguments ask for: the tree is kept only for the outputs
    /// that print it, and completed results are queued only for `jsonl`.
    pub fn options(&self) -> ParserOptions {
        ParserOptions {
            format: self.format,
            pattern: self.pattern.as_ref().map(|re| PatternSpec {
                regex: re.clone(),
                result_map: self.result_map.clone(),
            }),
            keep_tree: matches!(self.output, Output::Json | Output::Junit),
            progress: self.output == Output::Jsonl,
        }
    }
}

/// Runs the command, printing on standard output through a buffer.
pub fn run(args: &ParseArgs) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(WRITE_SIZE, stdout.lock());
    run_to(args, &mut out)
}

/// An error writing the output: a closed pipe stays recognisable.
fn write_err(e: io::Error) -> anyhow::Error {
    anyhow::Error::new(WriteError::from(e)).context("cannot write the output")
}

/// Runs the command, writing to `out`. Fails (naming the file) when the input cannot be
/// read, and on a bad or missing `--pattern`; whatever the tests' results, a parsed log is
/// a success.
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
    let jsonl = args.output == Output::Jsonl;
    let mut batch: Vec<Completed> = Vec::new();
    let mut lines = TestLines::default();
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {name}")),
        };
        parser.feed(&buf[..n]);
        if jsonl {
            parser.drain_completed_into(&mut batch);
            lines.write(out, &batch).map_err(write_err)?;
            batch.clear();
        }
    }
    let (report, rest) = parser.finish_with_completed();
    match args.output {
        Output::Json => serde_json::to_writer_pretty(&mut *out, &report).map_err(io::Error::from),
        Output::Jsonl => lines
            .write(out, &rest)
            .and_then(|()| write_summary_line(out, &report)),
        Output::Junit => crate::junit::write(&mut *out, &name_of(args), &report.tests),
        Output::Summary => write_summary(out, &report),
    }
    .and_then(|()| {
        if args.output == Output::Json {
            out.write_all(b"\n")?;
        }
        out.flush()
    })
    .map_err(write_err)
}

/// The name of the JUnit document: the log file's name, or `log` for standard input.
fn name_of(args: &ParseArgs) -> String {
    if args.file.as_os_str() == "-" {
        return "log".to_string();
    }
    args.file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "log".to_string())
}

/// The last `jsonl` line: result, counts and issues.
fn write_summary_line(out: &mut impl Write, r: &ParseReport) -> io::Result<()> {
    #[derive(Serialize)]
    struct SummaryLine<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        result: NodeResult,
        counts: &'a crate::Counts,
        errors: &'a [crate::ParseIssue],
    }
    let line = SummaryLine {
        kind: "summary",
        result: r.result,
        counts: &r.counts,
        errors: &r.errors,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// The `summary` output: result, counts, issues.
fn write_summary(out: &mut impl Write, r: &ParseReport) -> io::Result<()> {
    let c = &r.counts;
    writeln!(out, "result: {}", r.result.as_str())?;
    writeln!(
        out,
        "tests: {} (pass {}, fail {}, skip {}, incomplete {})",
        c.total(),
        c.pass,
        c.fail,
        c.skip,
        c.incomplete
    )?;
    if !r.errors.is_empty() {
        writeln!(out, "issues: {}", r.errors.len())?;
        for e in &r.errors {
            writeln!(out, "  line {}: {}", e.line, e.message)?;
        }
    }
    Ok(())
}
