//! The programs the injection check knows: wrappers, shells and interpreters, with how
//! each reads its options.

/// How a wrapper reads its own arguments before the program it runs.
#[derive(Default)]
pub(super) struct Wrapper {
    pub(super) names: &'static [&'static str],
    /// Short options that take a value (`-u USER`, `-uUSER`).
    pub(super) short_value: &'static str,
    /// Long options that take a value (`--user USER`, `--user=USER`).
    pub(super) long_value: &'static [&'static str],
    /// Option values that must not be job values (a program, an ssh option).
    pub(super) strict_values: bool,
    /// Short options whose value is a shell script (`su -c`).
    pub(super) short_script: &'static str,
    /// Long options whose value is a shell script.
    pub(super) long_script: &'static [&'static str],
    /// Short options whose value is split into the command (`env -S`).
    pub(super) short_split: &'static str,
    /// Long options whose value is split into the command.
    pub(super) long_split: &'static [&'static str],
    /// Short options that make the command one line for a shell (`sudo -s`).
    pub(super) short_shell: &'static str,
    /// Long options that make the command one line for a shell.
    pub(super) long_shell: &'static [&'static str],
    /// Positional arguments before the program (`timeout DURATION`).
    pub(super) positionals: usize,
    /// `NAME=value` arguments before the program.
    pub(super) assignments: bool,
    /// The program and its arguments are joined into one shell line (`watch`, `ssh`, `su`).
    pub(super) joins: bool,
}

pub(super) const WRAPPERS: &[Wrapper] = &[
    Wrapper {
        names: &["env"],
        short_value: "uCP",
        long_value: &["--unset", "--chdir"],
        short_split: "S",
        long_split: &["--split-string"],
        assignments: true,
        ..W
    },
    Wrapper {
        names: &["sudo"],
        short_value: "ugpCDrtUTRh",
        long_value: &[
            "--user",
            "--group",
            "--host",
            "--prompt",
            "--role",
            "--type",
            "--other-user",
            "--close-from",
            "--chdir",
            "--chroot",
            "--command-timeout",
        ],
        short_shell: "si",
        long_shell: &["--shell", "--login"],
        assignments: true,
        ..W
    },
    Wrapper {
        names: &["doas"],
        short_value: "uC",
        short_shell: "s",
        ..W
    },
    Wrapper {
        names: &["nice"],
        short_value: "n",
        long_value: &["--adjustment"],
        ..W
    },
    Wrapper {
        names: &["timeout"],
        short_value: "ks",
        long_value: &["--kill-after", "--signal"],
        positionals: 1,
        ..W
    },
    Wrapper {
        names: &["setsid", "nohup"],
        ..W
    },
    Wrapper {
        names: &["stdbuf"],
        short_value: "ioe",
        long_value: &["--input", "--output", "--error"],
        ..W
    },
    Wrapper {
        names: &["ionice"],
        short_value: "cnpPu",
        long_value: &["--class", "--classdata", "--pid", "--pgid", "--uid"],
        ..W
    },
    Wrapper {
        names: &["chrt"],
        short_value: "TPD",
        long_value: &["--sched-runtime", "--sched-period", "--sched-deadline"],
        positionals: 1,
        ..W
    },
    Wrapper {
        names: &["taskset"],
        positionals: 1,
        ..W
    },
    Wrapper {
        names: &["time"],
        short_value: "fo",
        long_value: &["--format", "--output"],
        ..W
    },
    Wrapper {
        names: &["xargs"],
        short_value: "adEILnPs",
        long_value: &[
            "--arg-file",
            "--delimiter",
            "--eof",
            "--replace",
            "--max-lines",
            "--max-args",
            "--max-procs",
            "--max-chars",
            "--process-slot-var",
        ],
        ..W
    },
    Wrapper {
        names: &["chroot"],
        long_value: &["--userspec", "--groups"],
        positionals: 1,
        ..W
    },
    Wrapper {
        names: &["busybox"],
        ..W
    },
    Wrapper {
        names: &["flock"],
        short_value: "wE",
        long_value: &["--timeout", "--wait", "--conflict-exit-code"],
        short_script: "c",
        long_script: &["--command"],
        positionals: 1,
        ..W
    },
    Wrapper {
        names: &["script"],
        short_value: "EIOTB",
        long_value: &[
            "--echo",
            "--log-in",
            "--log-out",
            "--log-timing",
            "--log-io",
        ],
        short_script: "c",
        long_script: &["--command"],
        ..W
    },
    Wrapper {
        names: &["su", "runuser"],
        short_value: "gGsw",
        long_value: &[
            "--group",
            "--supp-group",
            "--shell",
            "--whitelist-environment",
        ],
        strict_values: true,
        short_script: "c",
        long_script: &["--command", "--session-command"],
        joins: true,
        ..W
    },
    Wrapper {
        names: &["watch"],
        short_value: "nq",
        long_value: &["--interval", "--equexit"],
        joins: true,
        ..W
    },
    Wrapper {
        names: &["ssh"],
        short_value: "BbcDEeFIiJLlmOoPpQRSWw",
        strict_values: true,
        positionals: 1,
        joins: true,
        ..W
    },
];

const W: Wrapper = Wrapper {
    names: &[],
    short_value: "",
    long_value: &[],
    strict_values: false,
    short_script: "",
    long_script: &[],
    short_split: "",
    long_split: &[],
    short_shell: "",
    long_shell: &[],
    positionals: 0,
    assignments: false,
    joins: false,
};

pub(super) const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "ash", "hush", "zsh", "ksh", "mksh", "pdksh", "oksh", "lksh", "yash",
    "posh", "rbash", "csh", "tcsh", "fish",
];

/// How an interpreter reads its options.
pub(super) struct Interpreter {
    pub(super) names: &'static [&'static str],
    /// Short options whose value is program text (`-c`, `-e`).
    pub(super) short_code: &'static str,
    /// Long options whose value is program text (`--eval`).
    pub(super) long_code: &'static [&'static str],
    /// Short options whose value is code to load: a script, a module, an ini file (`-m`).
    pub(super) short_load: &'static str,
    /// Long options whose value is code to load (`--require`).
    pub(super) long_load: &'static [&'static str],
    /// Of the load options, those whose value is the program itself (`python -m`,
    /// `awk -f`), so that the first operand is not.
    pub(super) program_load: &'static str,
    /// Long load options whose value is the program itself (`awk --file`).
    pub(super) long_program_load: &'static [&'static str],
    /// Short options with another value (`-W arg`).
    pub(super) short_value: &'static str,
    /// Program text or a code option ends the options (python, node).
    pub(super) code_ends_options: bool,
}

pub(super) const INTERPRETERS: &[Interpreter] = &[
    Interpreter {
        names: &["python", "pypy", "jython"],
        short_code: "c",
        long_code: &[],
        short_load: "m",
        long_load: &[],
        program_load: "m",
        long_program_load: &[],
        short_value: "WX",
        code_ends_options: true,
    },
    Interpreter {
        names: &["perl"],
        short_code: "eE",
        long_code: &[],
        short_load: "Mm",
        long_load: &[],
        program_load: "",
        long_program_load: &[],
        short_value: "I",
        code_ends_options: false,
    },
    Interpreter {
        names: &["ruby", "jruby"],
        short_code: "e",
        long_code: &[],
        short_load: "r",
        long_load: &["--require"],
        program_load: "",
        long_program_load: &[],
        short_value: "ICEFKTW",
        code_ends_options: false,
    },
    Interpreter {
        names: &["node", "nodejs", "deno", "bun"],
        short_code: "ep",
        long_code: &["--eval", "--print"],
        short_load: "r",
        long_load: &["--require", "--import", "--loader", "--experimental-loader"],
        program_load: "",
        long_program_load: &[],
        short_value: "",
        code_ends_options: true,
    },
    Interpreter {
        names: &["php", "php-cli"],
        short_code: "rBRE",
        long_code: &[],
        short_load: "fdcz",
        long_load: &[],
        program_load: "f",
        long_program_load: &[],
        short_value: "",
        code_ends_options: false,
    },
    Interpreter {
        names: &["lua", "luajit"],
        short_code: "e",
        long_code: &[],
        short_load: "l",
        long_load: &[],
        program_load: "",
        long_program_load: &[],
        short_value: "",
        code_ends_options: false,
    },
    Interpreter {
        names: &["tclsh", "wish", "jimsh"],
        short_code: "",
        long_code: &[],
        short_load: "",
        long_load: &[],
        program_load: "",
        long_program_load: &[],
        short_value: "",
        code_ends_options: false,
    },
    Interpreter {
        names: &["expect"],
        short_code: "c",
        long_code: &[],
        short_load: "fb",
        long_load: &[],
        program_load: "fb",
        long_program_load: &[],
        short_value: "D",
        code_ends_options: false,
    },
    Interpreter {
        names: &["awk", "gawk", "mawk", "nawk", "original-awk"],
        short_code: "e",
        long_code: &["--source"],
        short_load: "fiEl",
        long_load: &["--file", "--include", "--exec", "--load"],
        program_load: "fE",
        long_program_load: &["--file", "--exec"],
        short_value: "Fv",
        code_ends_options: false,
    },
    Interpreter {
        names: &["sed", "gsed"],
        short_code: "e",
        long_code: &["--expression"],
        short_load: "f",
        long_load: &["--file"],
        program_load: "f",
        long_program_load: &["--file"],
        short_value: "l",
        code_ends_options: false,
    },
];
