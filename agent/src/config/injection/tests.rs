//! Table tests of the injection check.

use super::*;

fn argv(s: &[&str]) -> Vec<String> {
    s.iter().map(|a| a.to_string()).collect()
}

/// Each command with the index of the refused argument (`None`: accepted).
#[test]
fn table() {
    let x = "{params.x}";
    let cases: &[(&[&str], Option<usize>)] = &[
        // The cases of issue 17.
        (&["sh", "-ec", x], Some(2)),
        (&["env", "sh", "-c", x], Some(3)),
        (&["bash", "-xc", x], Some(2)),
        (&["python3", "-c", x], Some(2)),
        // Shells, their clusters and paths.
        (&["sh", "-c", x], Some(2)),
        (&["/bin/sh", "-c", x], Some(2)),
        (&["/usr/local/bin/bash5", "-e", "-c", x], Some(3)),
        (&["dash", "-c", "--", x], Some(3)),
        (&["zsh", "-c", x], Some(2)),
        (&["ksh", "+e", "-c", x], Some(3)),
        (&["mksh", "-c", x], Some(2)),
        (&["ash", "-c", x], Some(2)),
        (&["fish", "-c", x], Some(2)),
        (&["fish", "--command", x], Some(2)),
        (&["fish", "--command=echo hi", x], None),
        (&["bash", "-o", "pipefail", "-c", x], Some(4)),
        (&["bash", "-o", x, "-c", "true"], Some(2)),
        (&["bash", "--norc", "-c", x], Some(3)),
        (&["sh", x], Some(1)),
        (&["sh", "{artifacts.script}"], Some(1)),
        (&["sh", x, "-c", "true"], Some(1)),
        // Positional parameters after the script are data.
        (&["sh", "-c", "echo \"$1\"", "sh", x], None),
        (&["sh", "-ec", "echo \"$1\"", "sh", x, "{params.y}"], None),
        (&["bash", "script.sh", x], None),
        (&["sh", "-", x], None),
        (&["sh", "-c", "{device.script}"], None),
        (&["sh", "-c", "{job.dir}"], None),
        // Wrappers.
        (&["env", "-i", "A=1", "B=2", "sh", "-c", x], Some(6)),
        (
            &["env", "-u", "HOME", "--chdir=/tmp", "bash", "-xc", x],
            Some(6),
        ),
        (&["env", x], Some(1)),
        (&["env", "-S", x], Some(2)),
        (&["env", "-S", "sh -c", x], Some(3)),
        (&["env", "-Ssh -ec", x], Some(2)),
        (&["env", "--split-string=python3 -c", x], Some(2)),
        (&["env", "-S", "sh -c 'echo \"$1\"' sh", x], None),
        (&["sudo", "-u", "lab", "-E", "sh", "-c", x], Some(6)),
        (&["sudo", "-u", x, "true"], None),
        (&["sudo", "-s", "echo", x], Some(3)),
        (&["sudo", "-i", x], Some(2)),
        (&["sudo", "--login", "ls", x], Some(3)),
        (&["doas", "-s", x], Some(2)),
        (&["nice", "-n", "10", "sh", "-c", x], Some(5)),
        (&["nice", "-5", "python3", "-c", x], Some(4)),
        (&["timeout", "-k", "5", "60", "bash", "-c", x], Some(6)),
        (&["timeout", "60", "sh", "-c", "echo \"$1\"", "sh", x], None),
        (&["timeout", x, "true"], Some(1)),
        (&["timeout", "--", x, "true"], None),
        (&["setsid", "-w", "sh", "-c", x], Some(4)),
        (&["stdbuf", "-oL", "-e", "0", "sh", "-c", x], Some(6)),
        (&["busybox", "sh", "-c", x], Some(3)),
        (&["busybox", "ash", "-c", "echo \"$1\"", "ash", x], None),
        (&["busybox", "awk", x], Some(2)),
        (&["nohup", "sh", "-c", x], Some(3)),
        (&["ionice", "-c", "3", "sh", "-c", x], Some(5)),
        (&["ionice", "-c2", "-n7", "sh", "-c", x], Some(5)),
        (&["chrt", "-f", "50", "sh", "-c", x], Some(5)),
        (&["taskset", "-c", "0-3", "sh", "-c", x], Some(5)),
        (&["taskset", "0x3", "sh", "-c", x], Some(4)),
        (&["time", "-f", "%e", "sh", "-c", x], Some(5)),
        (&["xargs", "-0", "-n", "1", "sh", "-c", x], Some(6)),
        (&["chroot", "/srv/root", "sh", "-c", x], Some(4)),
        (&["flock", "/run/lock", "-c", x], Some(3)),
        (&["flock", "-w", "10", "/run/lock", "sh", "-c", x], Some(6)),
        (&["flock", "/run/lock", "cmd", x], None),
        (&["su", "-c", x, "lab"], Some(2)),
        (&["su", "lab", "-c", "echo", x], Some(4)),
        (&["su", "-s", x, "lab"], Some(2)),
        (&["runuser", "--command", x], Some(2)),
        (&["script", "-q", "-c", x, "/dev/null"], Some(3)),
        (&["watch", "-n", "1", "echo", x], Some(4)),
        (&["ssh", "host", "echo", x], Some(3)),
        (&["ssh", "-o", x, "host"], Some(2)),
        (&["ssh", x], Some(1)),
        (
            &["env", "timeout", "5", "nice", "busybox", "sh", "-c", x],
            Some(7),
        ),
        (&[x], Some(0)),
        (&["{artifacts.tool}", "--help"], Some(0)),
        (&["sudo", x], Some(1)),
        // Interpreters.
        (&["python3", "-Ic", x], Some(2)),
        (&["python3.11", "-u", "-c", x], Some(3)),
        (
            &["/usr/bin/python", "-c", "import sys; print(sys.argv[1])", x],
            None,
        ),
        (&["python3", "-m", x], Some(2)),
        (&["python3", "-m", "http.server", x], None),
        (&["python3", x], Some(1)),
        (&["python3", "run.py", x], None),
        (&["python3", "-W", "ignore", "-c", x], Some(4)),
        (&["pypy3", "-c", x], Some(2)),
        (&["perl", "-e", x], Some(2)),
        (&["perl", "-lne", x], Some(2)),
        (&["perl", "-E", x], Some(2)),
        (&["perl", "-M", x, "-e", "1"], Some(2)),
        (&["perl", "-e", "print @ARGV", x], None),
        (&["perl", "-ne", "print", x], Some(3)),
        (&["perl", "-pe", "s/a/b/", "--", x], Some(4)),
        (&["perl", "script.pl", x], None),
        (&["perl", x], Some(1)),
        (&["ruby", "-e", x], Some(2)),
        (&["ruby", "-r", x, "-e", "1"], Some(2)),
        (&["ruby", "-e", "puts ARGV[0]", x], None),
        (&["node", "-e", x], Some(2)),
        (&["node", "-pe", x], Some(2)),
        (&["node", "--eval", x], Some(2)),
        (&["node", "--eval=1", x], None),
        (&["node", "--require", x, "app.js"], Some(2)),
        (&["node", "app.js", x], None),
        (&["php", "-r", x], Some(2)),
        (&["php", "-d", x, "run.php"], Some(2)),
        (&["php", "-f", "run.php", "--", x], None),
        (&["lua", "-e", x], Some(2)),
        (&["lua", "-l", x], Some(2)),
        (&["lua", "run.lua", x], None),
        (&["tclsh", x], Some(1)),
        (&["tclsh", "run.tcl", x], None),
        (&["expect", "-c", x], Some(2)),
        (&["awk", x], Some(1)),
        (&["awk", "-F:", x], Some(2)),
        (&["gawk", "-v", "a=1", x, "file"], Some(3)),
        (&["mawk", "-f", x], Some(2)),
        (&["awk", "-e", x], Some(2)),
        (&["gawk", "--source", x], Some(2)),
        (&["gawk", "-l", x, "{print}"], Some(2)),
        (&["awk", "{print $1}", x], None),
        (&["awk", "-F", ":", "{print $1}", x], None),
        (&["awk", "-f", "prog.awk", x], None),
        (&["sed", x], Some(1)),
        (&["sed", "-n", "-e", x], Some(3)),
        (&["sed", "s/a/b/", x], None),
        // Programs the check does not know take job values as data.
        (&["echo", x], None),
        (&["/usr/local/bin/pdu", "on", "{device.port}", x], None),
        (&["qemu-system-x86_64", "-append", x], None),
    ];
    for (cmd, want) in cases {
        let got = check(&argv(cmd)).err().map(|f| f.index);
        assert_eq!(got, *want, "{cmd:?}: {:?}", check(&argv(cmd)));
    }
}

#[test]
fn findings_say_why() {
    let f = check(&argv(&["sh", "-ec", "{params.x}"])).unwrap_err();
    assert!(
        f.why.contains("`sh -c` runs this argument as its script"),
        "{f:?}"
    );
    let f = check(&argv(&["python3", "-c", "{params.x}"])).unwrap_err();
    assert!(f.why.contains("`python -c`"), "{f:?}");
    let f = check(&argv(&["sudo", "-s", "{params.x}"])).unwrap_err();
    assert!(f.why.contains("as one line"), "{f:?}");
    let f = check(&argv(&["perl", "-ne", "print", "{params.x}"])).unwrap_err();
    assert!(f.why.contains("two-argument open"), "{f:?}");
}

#[test]
fn names_lose_folders_and_versions() {
    assert_eq!(program_name("/usr/bin/python3.11"), "python");
    assert_eq!(program_name("bash5"), "bash");
    assert_eq!(program_name("sh"), "sh");
    assert_eq!(program_name("php-cli"), "php-cli");
}
