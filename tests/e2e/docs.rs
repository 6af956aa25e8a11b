//! The documentation (README.md and the pages under docs/) is true to the code:
//!
//! - every file or folder of this repository that a page names (a link, or a path in
//!   backticks or in a shell example) exists, and every link to a page's section finds a
//!   heading of that name;
//! - every `labwire`, `labwire-coordinator` and `labwire-agent` command line in a shell
//!   example (also `cargo run -- ...`, which runs `labwire`) parses with the programs' real
//!   command-line definitions: subcommands, options and their values;
//! - every YAML example whose first line names its file (`# agent.yaml`, `# coordinator.yaml`,
//!   `# pipeline.yaml`, `# placement.yaml`) loads with that file's real parser, and a copy of
//!   a device-type file is the file.
//!
//! A command, link or example that drifts from the code fails here, naming the page and the
//! line. Commands of other programs (curl, systemctl, the benchmark) are not run here; for
//! ours this checks that they would be understood, not what they do (the end-to-end tests
//! do that).

use clap::Parser;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A Markdown page: its path and text.
struct Page {
    path: PathBuf,
    text: String,
}

impl Page {
    fn name(&self) -> String {
        self.path
            .strip_prefix(repo())
            .unwrap_or(&self.path)
            .display()
            .to_string()
    }
}

/// README.md and every `.md` file under docs/.
fn pages() -> Vec<Page> {
    let mut paths = vec![repo().join("README.md")];
    let mut stack = vec![repo().join("docs")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read docs/") {
            let p = e.expect("a docs/ entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                paths.push(p);
            }
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| Page {
            text: std::fs::read_to_string(&path).expect("read a page"),
            path,
        })
        .collect()
}

/// A fenced code block: its info string, the line of its first body line, its body.
struct Block {
    lang: String,
    line: usize,
    body: String,
}

/// The fenced code blocks of a page, and the page's text outside them (with the same line
/// numbers: block lines are blanked).
fn split_blocks(text: &str) -> (Vec<Block>, String) {
    let mut blocks = Vec::new();
    let mut prose = String::new();
    let mut open: Option<(String, String, usize, usize)> = None; // fence, lang, line, indent
    let mut body = String::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        let indent = raw.len() - trimmed.len();
        match &open {
            None if trimmed.starts_with("```") => {
                let fence: String = trimmed.chars().take_while(|c| *c == '`').collect();
                let lang = trimmed[fence.len()..].trim().to_string();
                open = Some((fence, lang, i + 2, indent));
                body.clear();
                prose.push('\n');
            }
            None => {
                prose.push_str(raw);
                prose.push('\n');
            }
            Some((fence, lang, line, ind)) => {
                if trimmed.starts_with(fence.as_str()) && trimmed.trim_end() == fence {
                    blocks.push(Block {
                        lang: lang.clone(),
                        line: *line,
                        body: std::mem::take(&mut body),
                    });
                    open = None;
                } else {
                    // Blocks inside list items are indented; take the indentation off.
                    let cut = raw.len().min(*ind);
                    body.push_str(if raw[..cut].trim().is_empty() {
                        &raw[cut..]
                    } else {
                        raw
                    });
                    body.push('\n');
                }
                prose.push('\n');
            }
        }
    }
    assert!(open.is_none(), "a code block is not closed");
    (blocks, prose)
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    let (_, prose) = split_blocks(text);
    prose
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// The top-level folders of the repository: a word that starts with one of them and a `/`
/// is taken for a path in the repository.
fn top_folders() -> BTreeSet<String> {
    std::fs::read_dir(repo())
        .expect("read the repository")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "target" && n != ".git")
        .collect()
}

/// Whether `word` looks like a path in this repository (`tests/board/`, `config/agent.yaml`).
fn repo_path(word: &str, top: &BTreeSet<String>) -> Option<String> {
    let w = word.trim_end_matches([',', '.', ':', ';', ')']);
    if !w
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
    {
        return None;
    }
    let (first, rest) = w.split_once('/')?;
    (top.contains(first) && !rest.starts_with('/')).then(|| w.trim_end_matches('/').to_string())
}

/// The line number of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

#[test]
fn files_links_and_anchors_exist() {
    let top = top_folders();
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let code = regex::Regex::new(r"`([^`\n]+)`").unwrap();
    let mut problems = Vec::new();
    let (mut links, mut paths) = (0, 0);
    for page in pages() {
        let dir = page.path.parent().expect("a page's folder");
        let (blocks, prose) = split_blocks(&page.text);
        for m in link.captures_iter(&prose) {
            let target = &m[1];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            links += 1;
            let line = line_of(&prose, m.get(0).unwrap().start());
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                page.path.clone()
            } else {
                dir.join(file)
            };
            if !path.exists() {
                problems.push(format!(
                    "{}:{line}: link to {target}: no such file",
                    page.name()
                ));
                continue;
            }
            if !anchor.is_empty() {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if !anchors(&text).contains(anchor) {
                    problems.push(format!(
                        "{}:{line}: link to {target}: no heading with that anchor",
                        page.name()
                    ));
                }
            }
        }
        let mut named: Vec<(usize, String)> = code
            .captures_iter(&prose)
            .filter_map(|m| {
                let at = m.get(0).unwrap().start();
                repo_path(&m[1], &top).map(|p| (line_of(&prose, at), p))
            })
            .collect();
        for b in blocks.iter().filter(|b| is_shell(&b.lang)) {
            for (i, l) in b.body.lines().enumerate() {
                named.extend(
                    l.split_whitespace()
                        .filter_map(|w| repo_path(w, &top))
                        .map(|p| (b.line + i, p)),
                );
            }
        }
        for (line, p) in named {
            paths += 1;
            if !repo().join(&p).exists() {
                problems.push(format!("{}:{line}: `{p}` does not exist", page.name()));
            }
        }
    }
    eprintln!("{links} links and {paths} repository paths checked");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The pages link to each other and name many files; finding few means this test broke.
    assert!(links >= 20, "only {links} links found");
    assert!(paths >= 30, "only {paths} repository paths found");
}

fn is_shell(lang: &str) -> bool {
    matches!(lang, "sh" | "bash" | "shell" | "console")
}

/// A shell word or an operator (`;`, `&&`, `||`, `|`, `<`, `>`, `&`).
#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Op(String),
}

/// Splits a shell line into words (quotes and backslashes as the shell reads them) and
/// operators; a `#` that starts a word starts a comment.
fn shell_tokens(line: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let flush = |out: &mut Vec<Token>, word: &mut String, in_word: &mut bool| {
        if *in_word {
            out.push(Token::Word(std::mem::take(word)));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => flush(&mut out, &mut word, &mut in_word),
            ';' | '|' | '&' | '<' | '>' => {
                flush(&mut out, &mut word, &mut in_word);
                let mut op = c.to_string();
                if let Some(&n) = chars.peek()
                    && (n == c && c != ';')
                {
                    op.push(n);
                    chars.next();
                }
                out.push(Token::Op(op));
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    flush(&mut out, &mut word, &mut in_word);
    out
}

/// The simple commands of a shell line: words split at `;`, `&&`, `||`, `|` and `&`, with
/// redirections and leading `NAME=value` assignments left out.
fn simple_commands(line: &str) -> Vec<Vec<String>> {
    let mut cmds = vec![Vec::new()];
    let mut skip_next = false;
    let assignment = regex::Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*=").unwrap();
    for t in shell_tokens(line) {
        match t {
            Token::Op(op) if op == "<" || op == ">" || op == ">>" => skip_next = true,
            Token::Op(_) => cmds.push(Vec::new()),
            Token::Word(_) if skip_next => skip_next = false,
            Token::Word(w) => {
                let cmd = cmds.last_mut().expect("one command at least");
                if cmd.is_empty() && assignment.is_match(&w) {
                    continue;
                }
                cmd.push(w);
            }
        }
    }
    cmds.retain(|c| !c.is_empty());
    cmds
}

/// The logical lines of a shell block: a trailing `\` joins the next line.
fn logical_lines(body: &str, first: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = first;
    for (i, l) in body.lines().enumerate() {
        if cur.is_empty() {
            start = first + i;
        }
        match l.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(l);
                out.push((start, std::mem::take(&mut cur)));
            }
        }
    }
    if !cur.is_empty() {
        out.push((start, cur));
    }
    out
}

/// Parses a command line with the program's real definition. `None`: not one of ours.
fn parse_ours(words: &[String]) -> Option<Result<(), String>> {
    let program = Path::new(&words[0])
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (program, args): (&str, Vec<String>) = match program.as_str() {
        "labwire" | "labwire-coordinator" | "labwire-agent" => {
            (program.as_str(), words[1..].to_vec())
        }
        // `cargo run -- ARGS` runs the root package's default binary, `labwire`.
        "cargo" if words.get(1).map(String::as_str) == Some("run") => {
            let sep = words.iter().position(|w| w == "--")?;
            let opts = &words[2..sep];
            if opts.iter().any(|o| o == "-p" || o.starts_with("--package")) {
                return None;
            }
            ("labwire", words[sep + 1..].to_vec())
        }
        _ => return None,
    };
    let argv = std::iter::once(program.to_string()).chain(args);
    let res = match program {
        "labwire" => labwire::commands::Cli::try_parse_from(argv).map(drop),
        "labwire-coordinator" => labwire_coordinator::cli::Cli::try_parse_from(argv).map(drop),
        _ => labwire_agent::cli::Cli::try_parse_from(argv).map(drop),
    };
    Some(match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(()),
        Err(e) => Err(e.to_string()),
    })
}

#[test]
fn every_command_line_parses() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let (blocks, _) = split_blocks(&page.text);
        for b in blocks.iter().filter(|b| is_shell(&b.lang)) {
            for (line, text) in logical_lines(&b.body, b.line) {
                for words in simple_commands(&text) {
                    match parse_ours(&words) {
                        None => {}
                        Some(Ok(())) => checked += 1,
                        Some(Err(e)) => problems.push(format!(
                            "{}:{line}: `{}` does not parse:\n{e}",
                            page.name(),
                            words.join(" ")
                        )),
                    }
                }
            }
        }
    }
    eprintln!("{checked} command lines parsed");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 30, "only {checked} command lines found");
}

/// The coordinator settings an agent.yaml fragment is completed with (a fragment shows one
/// section; the file needs `lab` and `coordinator` too).
const AGENT_BASE: &str = "lab: docs-lab\n\
coordinator: {url: 'https://coordinator.example.org:7443', ca: /etc/labwire/ca.pem, \
cert: /etc/labwire/agent.pem, key: /etc/labwire/agent.key}\n";

/// Loads a YAML example with the parser of the file its first line names.
fn load_example(file: &str, body: &str) -> Result<(), String> {
    let err = |e: anyhow::Error| format!("{e:#}");
    match file {
        "coordinator.yaml" => labwire_coordinator::config::CoordinatorConfig::parse(body)
            .map(drop)
            .map_err(err),
        "pipeline.yaml" => labwire_coordinator::pipeline_config::PipelineConfig::parse(body)
            .map(drop)
            .map_err(err),
        "placement.yaml" => labwire_coordinator::placement::Placement::parse(body)
            .map(drop)
            .map_err(err),
        "agent.yaml" => {
            let mut doc: serde_json::Map<String, serde_json::Value> =
                yaml_serde::from_str(body).map_err(|e| e.to_string())?;
            let base: serde_json::Map<String, serde_json::Value> =
                yaml_serde::from_str(AGENT_BASE).expect("the base agent.yaml");
            for (k, v) in base {
                doc.entry(k).or_insert(v);
            }
            let text = serde_json::to_string(&doc).expect("JSON");
            labwire_agent::config::AgentConfig::parse(&text)
                .map(drop)
                .map_err(err)
        }
        f if f.starts_with("device-types/") => {
            let file = std::fs::read_to_string(repo().join(f)).map_err(|e| format!("{f}: {e}"))?;
            let strip = |t: &str| -> Vec<String> {
                t.lines()
                    .filter(|l| !l.trim_start().starts_with('#'))
                    .map(str::to_string)
                    .collect()
            };
            if strip(&file) == strip(body) {
                Ok(())
            } else {
                Err(format!("differs from {f}"))
            }
        }
        other => Err(format!("`# {other}`: no parser known for this file")),
    }
}

#[test]
fn yaml_examples_load() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let (blocks, _) = split_blocks(&page.text);
        for b in blocks.iter().filter(|b| b.lang == "yaml") {
            let Some(first) = b.body.lines().next() else {
                continue;
            };
            let Some(file) = first.strip_prefix("# ") else {
                continue;
            };
            let file = file
                .split([' ', ':'])
                .next()
                .unwrap_or_default()
                .to_string();
            checked += 1;
            if let Err(e) = load_example(&file, &b.body) {
                problems.push(format!("{}:{}: {file} example: {e}", page.name(), b.line));
            }
        }
    }
    eprintln!("{checked} YAML examples loaded");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 6, "only {checked} YAML examples found");
}

#[test]
fn the_shell_reader_reads_as_a_shell_does() {
    assert_eq!(
        simple_commands(
            r#"A=1 labwire-agent parse --pattern '(?P<x>\S+): (?P<r>A|B)' - < in.log | head ; x "a b" # note"#
        ),
        vec![
            vec![
                "labwire-agent".to_string(),
                "parse".into(),
                "--pattern".into(),
                r"(?P<x>\S+): (?P<r>A|B)".into(),
                "-".into()
            ],
            vec!["head".into()],
            vec!["x".into(), "a b".into()],
        ]
    );
    assert_eq!(slug("The `labwire` client"), "the-labwire-client");
    assert_eq!(slug("Limits of replicas"), "limits-of-replicas");
    // A command that is not ours is not parsed; a wrong one of ours is refused.
    let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    assert!(parse_ours(&words("curl -s x")).is_none());
    assert!(parse_ours(&words("labwire nodes --kind job")) == Some(Ok(())));
    assert!(matches!(
        parse_ours(&words("labwire nodes --no-such-option")),
        Some(Err(_))
    ));
    assert!(matches!(
        parse_ours(&words("labwire-coordinator ca issue")),
        Some(Err(_))
    ));
}
