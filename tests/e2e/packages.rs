//! The Debian packages of `scripts/package.sh`, installed on this machine with apt as a lab
//! admin would: built from the binaries cargo built for the tests (dev profile), installed
//! and checked (files, users, modes, conffiles, the installed example configs and units),
//! purged; then the onboarding of docs/install.md, timed: install the agent's package, put
//! the lab's bundle from a test coordinator in place, describe a shell device, enable the
//! unit and start the agent the way the unit does (systemd is not PID 1 here) until the
//! first job has passed; then upgraded over itself and to a newer version whose example
//! config changed, keeping the admin's config; then purged, leaving nothing behind.
//!
//! It installs system packages, so it needs root (CI runs as root) and is skipped with a
//! message otherwise. Runs on one machine take turns (a lock file), packages left by a run
//! that was killed are purged first, and a guard purges whatever happens. The packages carry
//! the version `X~pkgtest1`, so that a labwire installed for real is never touched: the test
//! refuses to run next to one.

use crate::common;

use common::*;
use labwire_proto::v1;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PACKAGES: [&str; 3] = ["labwire-agent", "labwire-coordinator", "labwire-client"];
/// The version suffix that marks this test's packages.
const MARK: &str = "~pkgtest";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `argv` and returns its standard output; panics with both outputs on failure.
fn run(argv: &[&str]) -> String {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_ok(&mut cmd)
}

/// `apt-get ARGS` with the flags of an unattended run; waits for another apt or dpkg to end.
fn apt(args: &[&str]) -> String {
    let mut argv = vec!["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=600"];
    argv.extend_from_slice(args);
    run(&argv)
}

/// The installed version of `pkg` (None when not installed, config files included).
fn installed_version(pkg: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status} ${Version}", pkg])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, version) = text.split_once(' ')?;
    (out.status.success() && status != "not-installed").then(|| version.to_string())
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn group_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["group", name])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The uid or gid of a user or group name.
fn id_of(db: &str, name: &str) -> u32 {
    let line = run(&["getent", db, name]);
    line.split(':').nth(2).and_then(|s| s.parse().ok()).unwrap()
}

/// Purges this test's packages, whatever state they are in. Used before and after the test.
fn purge_all() {
    let ours: Vec<&str> = PACKAGES
        .into_iter()
        .filter(|p| installed_version(p).is_some())
        .collect();
    if !ours.is_empty() {
        let mut args = vec!["purge"];
        args.extend(ours);
        let _ = Command::new("apt-get")
            .args(["-y", "-q", "-o", "DPkg::Lock::Timeout=600"])
            .args(&args)
            .stdin(Stdio::null())
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
}

/// Purges the packages when dropped (also when the test panics), after the processes
/// declared later have been dropped.
struct PurgeGuard;

impl Drop for PurgeGuard {
    fn drop(&mut self) {
        purge_all();
    }
}

/// The settings of an installed unit's [Service] section that starting it by hand needs.
#[derive(Debug, Default)]
struct Unit {
    exec_start: Vec<String>,
    user: String,
    group: String,
    supplementary: Vec<String>,
    environment: Vec<(String, String)>,
    umask: String,
    nofile: Option<u64>,
}

impl Unit {
    fn load(path: &Path) -> Unit {
        let text = std::fs::read_to_string(path).unwrap();
        let mut u = Unit::default();
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if !in_service {
                continue;
            }
            match key {
                "ExecStart" => u.exec_start = value.split_whitespace().map(String::from).collect(),
                "User" => u.user = value.to_string(),
                "Group" => u.group = value.to_string(),
                "SupplementaryGroups" => {
                    u.supplementary = value.split_whitespace().map(String::from).collect()
                }
                "Environment" => {
                    let (k, v) = value.split_once('=').unwrap();
                    u.environment.push((k.to_string(), v.to_string()));
                }
                "UMask" => u.umask = value.to_string(),
                "LimitNOFILE" => u.nofile = Some(value.parse().unwrap()),
                _ => {}
            }
        }
        assert!(
            !u.exec_start.is_empty() && !u.user.is_empty(),
            "{}: {u:?}",
            path.display()
        );
        u
    }

    /// The unit's ExecStart as systemd would run it: as its user and groups, with its
    /// environment, umask and limit on open files, and the variables systemd sets. A limit
    /// above this machine's hard limit (a container may cap it; systemd as PID 1 could raise
    /// it) is lowered to that, with a note.
    fn command(&self) -> Command {
        let mut cmd = Command::new("prlimit");
        let hard: u64 = run(&["prlimit", "--nofile", "--output", "HARD", "--noheadings"])
            .trim()
            .parse()
            .unwrap_or(u64::MAX);
        let mut nofile = self.nofile.expect("the unit sets LimitNOFILE");
        if nofile > hard {
            eprintln!(
                "note: LimitNOFILE={nofile} of {} is above this machine's hard limit; \
                 running with {hard}",
                self.user
            );
            nofile = hard;
        }
        cmd.arg(format!("--nofile={nofile}:{nofile}")).args([
            "--",
            "setpriv",
            "--reuid",
            &self.user,
            "--regid",
            &self.group,
        ]);
        if !self.supplementary.is_empty() {
            cmd.args(["--groups", &self.supplementary.join(",")]);
        } else {
            cmd.arg("--clear-groups");
        }
        cmd.args(["--no-new-privs", "--", "/bin/sh", "-c"])
            .arg(format!("umask {} && exec \"$@\"", self.umask))
            .arg("sh")
            .args(&self.exec_start)
            .current_dir("/")
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("USER", &self.user)
            .env("LOGNAME", &self.user)
            .env("HOME", format!("/var/lib/{}", self.user))
            .env("SHELL", "/usr/sbin/nologin")
            .envs(self.environment.iter().cloned());
        cmd
    }
}

/// Starts the installed daemon `name` as its unit does, logging to the rig's folder.
fn start_installed(rig: &Rig, name: &str) -> Proc {
    let unit = Unit::load(Path::new(&format!(
        "/usr/lib/systemd/system/{name}.service"
    )));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(rig.path(&format!("{name}-installed.log")))
        .unwrap();
    let child = unit
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the installed daemon");
    Proc {
        child,
        name: format!("installed {name}"),
    }
}

/// The coordinator from its package, set up as docs/install.md says: a port and public URL
/// of the admin's choice in its config, the CA made as the service's user, the daemon
/// started as its unit does; the packaged client then reads from it with the admin token.
fn installed_coordinator_serves(rig: &Rig) {
    let port = free_port();
    let conf = std::fs::read_to_string("/etc/labwire/coordinator.yaml").unwrap();
    let (listen, public) = (
        "\nlisten: 0.0.0.0:7443\n",
        "\npublic_url: https://localhost:7443\n",
    );
    assert!(conf.contains(listen) && conf.contains(public), "{conf}");
    let conf = conf
        .replace(listen, &format!("\nlisten: 127.0.0.1:{port}\n"))
        .replace(public, &format!("\npublic_url: https://127.0.0.1:{port}\n"));
    std::fs::write("/etc/labwire/coordinator.yaml", conf).unwrap();
    let out = run(&[
        "runuser",
        "-u",
        "labwire-coordinator",
        "--",
        "labwire-coordinator",
        "ca",
        "init",
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
    ]);
    let token = out
        .lines()
        .find(|l| l.contains("admin token"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no admin token in: {out}"))
        .to_string();
    for f in ["ca.key", "server.key"] {
        let path = format!("/var/lib/labwire-coordinator/pki/{f}");
        let (mode, owner, _) = stat(&path);
        assert_eq!(owner, "labwire-coordinator", "{path}");
        assert_eq!(mode & 0o077, 0, "{path} is open to others");
    }
    let mut coord = start_installed(rig, "labwire-coordinator");
    wait_for(Duration::from_secs(30), "the installed coordinator", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // `run` fails unless the client connected, was let in and got an answer.
    run(&[
        "labwire",
        "--server",
        &format!("https://127.0.0.1:{port}"),
        "--ca",
        "/var/lib/labwire-coordinator/pki/ca.pem",
        "--token",
        &token,
        "labs",
    ]);
    let st = coord
        .terminate(Duration::from_secs(30))
        .expect("the coordinator exits");
    assert!(st.success(), "the coordinator ended {st:?}");
    // The database is the service user's; the state folder's mode (0700) keeps it private.
    let db = "/var/lib/labwire-coordinator/labwire.db";
    assert_eq!(stat(db).1, "labwire-coordinator", "{db}");
    assert_stat(
        "/var/lib/labwire-coordinator",
        0o700,
        "labwire-coordinator",
        "labwire-coordinator",
    );
}

/// The mode bits, owner and group (names) of a path.
fn stat(path: &str) -> (u32, String, String) {
    let out = run(&["stat", "-c", "%a %U %G", path]);
    let mut it = out.split_whitespace();
    let mode = u32::from_str_radix(it.next().unwrap(), 8).unwrap();
    (
        mode,
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    )
}

fn assert_stat(path: &str, mode: u32, owner: &str, group: &str) {
    assert_eq!(
        stat(path),
        (mode, owner.to_string(), group.to_string()),
        "mode, owner and group of {path}"
    );
}

/// Builds the packages with `scripts/package.sh` into `out`, version `version`.
fn build_packages(out: &Path, version: &str) -> BTreeMap<&'static str, PathBuf> {
    let bins = Path::new(AGENT).parent().unwrap();
    let listed = run(&[
        repo().join("scripts/package.sh").to_str().unwrap(),
        "--debug",
        "--bin-dir",
        bins.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        version,
    ]);
    let mut debs = BTreeMap::new();
    for p in PACKAGES {
        let deb = listed
            .lines()
            .map(PathBuf::from)
            .find(|f| {
                f.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{p}_")))
            })
            .unwrap_or_else(|| panic!("package.sh did not list {p}: {listed}"));
        assert!(deb.is_file(), "{}", deb.display());
        debs.insert(p, deb);
    }
    debs
}

/// A copy of `deb` as version `version`, with a line added to its example agent.yaml (the
/// conffile): what a newer release whose example changed looks like to dpkg.
fn newer_release(deb: &Path, version: &str, dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    run(&[
        "dpkg-deb",
        "-R",
        deb.to_str().unwrap(),
        tree.to_str().unwrap(),
    ]);
    let conf = tree.join("etc/labwire/agent.yaml");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("# (a newer release changed this example)\n");
    std::fs::write(&conf, text).unwrap();
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("Version: ") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&control, text).unwrap();
    let sums = run(&[
        "sh",
        "-c",
        "cd \"$1\" && find . -path ./DEBIAN -prune -o -type f -printf '%P\\0' | sort -z | xargs -0 md5sum",
        "sh",
        tree.to_str().unwrap(),
    ]);
    std::fs::write(tree.join("DEBIAN/md5sums"), sums).unwrap();
    let out = dir.join(format!("labwire-agent_{version}.deb"));
    run(&[
        "dpkg-deb",
        "--root-owner-group",
        "-Zgzip",
        "-z1",
        "--build",
        tree.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    out
}

/// What the packages and their use may leave on the system: none of it may be there.
fn assert_clean(package_files: &[String]) {
    for p in PACKAGES {
        assert_eq!(installed_version(p), None, "{p} is still known to dpkg");
    }
    for name in ["labwire-agent", "labwire-coordinator"] {
        assert!(!user_exists(name), "the user {name} is left");
        assert!(!group_exists(name), "the group {name} is left");
        assert!(
            !Path::new(&format!("/var/lib/{name}")).exists(),
            "/var/lib/{name} is left"
        );
        assert!(
            !Path::new(&format!(
                "/etc/systemd/system/multi-user.target.wants/{name}.service"
            ))
            .exists(),
            "the enablement link of {name}.service is left"
        );
    }
    assert!(!Path::new("/etc/labwire").exists(), "/etc/labwire is left");
    let overrides = run(&["dpkg-statoverride", "--list"]);
    assert!(
        !overrides.contains("/etc/labwire"),
        "stat overrides are left: {overrides}"
    );
    for f in package_files {
        // Shared folders such as /usr/bin stay; every file and folder of ours must be gone.
        let p = Path::new(f);
        assert!(
            !p.exists() || (p.is_dir() && !f.contains("labwire")),
            "{f} is left after the purge"
        );
    }
}

/// Every path the installed packages own (`dpkg -L`).
fn package_files() -> Vec<String> {
    let mut files = Vec::new();
    for p in PACKAGES {
        if installed_version(p).is_some() {
            files.extend(run(&["dpkg", "-L", p]).lines().map(String::from));
        }
    }
    files
}

/// Checks the three installed packages: files, users, modes, conffiles, the installed
/// example configs (as the service users read them) and units, nothing enabled or started.
fn check_installed() {
    for bin in ["labwire", "labwire-agent", "labwire-coordinator"] {
        let path = format!("/usr/bin/{bin}");
        assert_stat(&path, 0o755, "root", "root");
        let v = run(&[path.as_str(), "--version"]);
        assert!(v.starts_with(&format!("{bin} ")), "{v}");
    }
    for name in ["labwire-agent", "labwire-coordinator"] {
        // A system user with its own group, no login shell, its home the state folder.
        let pw = run(&["getent", "passwd", name]);
        let fields: Vec<&str> = pw.trim().split(':').collect();
        assert_eq!(fields[5], format!("/var/lib/{name}"), "{pw}");
        assert_eq!(fields[6], "/usr/sbin/nologin", "{pw}");
        assert!(id_of("passwd", name) < 1000, "not a system user: {pw}");
        assert_eq!(fields[3].parse::<u32>().unwrap(), id_of("group", name));
        assert_stat(&format!("/var/lib/{name}"), 0o700, name, name);

        let unit = format!("/usr/lib/systemd/system/{name}.service");
        assert_stat(&unit, 0o644, "root", "root");
        let u = Unit::load(Path::new(&unit));
        assert_eq!(u.user, name);
        assert_eq!(u.exec_start[0], format!("/usr/bin/{name}"));
        assert_eq!(
            std::fs::read_to_string(&unit).unwrap(),
            std::fs::read_to_string(repo().join(format!("systemd/{name}.service"))).unwrap()
        );
        // Installed, neither enabled nor started.
        let enabled = Command::new("systemctl")
            .args(["is-enabled", &format!("{name}.service")])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&enabled.stdout).trim(),
            "disabled",
            "{name}.service"
        );
        let verify = Command::new("systemd-analyze")
            .args(["verify", &unit])
            .output()
            .expect("systemd-analyze (package systemd, scripts/test.sh)");
        let stderr = String::from_utf8_lossy(&verify.stderr);
        assert!(
            verify.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {unit}:\n{stderr}"
        );
    }

    // The example configs: conffiles, readable by root and the service's group only, the
    // annotated examples of the sources byte for byte, and valid.
    for (pkg, conf, example) in [
        (
            "labwire-agent",
            "/etc/labwire/agent.yaml",
            "config/agent.yaml",
        ),
        (
            "labwire-coordinator",
            "/etc/labwire/coordinator.yaml",
            "config/coordinator.yaml",
        ),
    ] {
        assert_stat(conf, 0o640, "root", pkg);
        assert_eq!(
            std::fs::read(conf).unwrap(),
            std::fs::read(repo().join(example)).unwrap()
        );
        let conffiles = run(&["dpkg-query", "-W", "-f", "${Conffiles}", pkg]);
        let listed: Vec<&str> = conffiles
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(listed, vec![conf], "conffiles of {pkg}");
    }
    assert_stat("/etc/labwire", 0o755, "root", "root");
    let agent_check = run(&[
        "runuser",
        "-u",
        "labwire-agent",
        "--",
        "labwire-agent",
        "check-config",
        "--config",
        "/etc/labwire/agent.yaml",
    ]);
    assert!(
        agent_check.starts_with("/etc/labwire/agent.yaml: ok"),
        "{agent_check}"
    );
    let coord_check = run(&[
        "runuser",
        "-u",
        "labwire-coordinator",
        "--",
        "labwire-coordinator",
        "check-config",
        "/etc/labwire/coordinator.yaml",
    ]);
    assert!(coord_check.contains("ok"), "{coord_check}");

    // The device-type library and the LAVA templates, as in the sources (and so as built in).
    for (src, dest) in [
        ("device-types", "/usr/share/labwire/device-types"),
        ("config/templates/lava", "/usr/share/labwire/templates/lava"),
    ] {
        let mut n = 0;
        for entry in std::fs::read_dir(repo().join(src)).unwrap() {
            let entry = entry.unwrap();
            let installed = Path::new(dest).join(entry.file_name());
            assert_eq!(
                std::fs::read(entry.path()).unwrap(),
                std::fs::read(&installed).unwrap_or_default(),
                "{}",
                installed.display()
            );
            n += 1;
        }
        assert_eq!(std::fs::read_dir(dest).unwrap().count(), n, "{dest}");
    }
}

/// The shell device the lab admin describes in the onboarding: it says who runs it.
const DEVICE: &str = "devices:
  - name: lab-host-1
    device_type: lab-host
    tags: [packaged]
    driver:
      type: shell
      command: [sh, -c, 'echo \"hello from $(id -un), umask $(umask)\"']
";

/// Submits a job for the packaged agent's shell device and waits until it passed.
async fn job_passes(rig: &Rig, name: &str) -> String {
    let mut c = rig.client().await;
    let job = submit(&mut c, name, &["packaged"], &[]).await;
    let n = wait_node(&mut c, job, Duration::from_secs(120), is_done).await;
    assert_eq!(n.result, v1::NodeResult::Pass as i32, "{n:?}");
    assert_eq!(data(&n)["device"], "lab-host-1");
    read_log(&mut c, job).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_install_onboard_a_lab_upgrade_and_purge() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED packages_install_onboard_a_lab_upgrade_and_purge: installing Debian \
             packages needs root (CI runs as root)"
        );
        return;
    }
    // One run at a time on this machine: the packages, users and /etc/labwire are shared.
    let lock_dir = if Path::new("/run/lock").is_dir() {
        "/run/lock"
    } else {
        "/tmp"
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{lock_dir}/labwire-packages-test.lock"))
        .unwrap();
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock");
    for p in PACKAGES {
        if let Some(v) = installed_version(p) {
            assert!(
                v.contains(MARK),
                "{p} {v} is installed on this machine, not by this test: the test would \
                 remove it, so it refuses to run"
            );
        }
    }
    // Left by a run that was killed.
    purge_all();
    let _guard = PurgeGuard;

    let cargo_version = env!("CARGO_PKG_VERSION");
    let version = format!("{cargo_version}{MARK}1");
    let newer = format!("{cargo_version}{MARK}2");
    let work = tempfile::Builder::new()
        .prefix("labwire-packages-")
        .tempdir()
        .unwrap();
    let debs = build_packages(&work.path().join("debs"), &version);
    let rig = Rig::new("");
    let _keep = rig.keep_on_failure();

    // 1. All three packages: what they install, and a purge that leaves nothing.
    let mut args = vec!["install"];
    for d in debs.values() {
        args.push(d.to_str().unwrap());
    }
    apt(&args);
    check_installed();
    installed_coordinator_serves(&rig);
    let files = package_files();
    apt(&[
        "purge",
        "labwire-agent",
        "labwire-coordinator",
        "labwire-client",
    ]);
    assert_clean(&files);

    // 2. The onboarding of docs/install.md, timed from the package file to the first passing
    // job. The coordinator's side (its CA, the lab's bundle) is done before, on its host.
    let _coord = rig.start_coordinator();
    let bundle = rig.issue_lab("packaged-lab");
    let bundle_files: Vec<String> = ["agent.yaml", "agent.pem", "agent.key", "ca.pem"]
        .iter()
        .map(|f| bundle.join(f).to_str().unwrap().to_string())
        .collect();
    let started = Instant::now();
    let mut commands = 0;
    // (1) apt install ./labwire-agent_*.deb
    apt(&["install", debs["labwire-agent"].to_str().unwrap()]);
    commands += 1;
    // (2) the bundle in place, readable by the agent's group
    let mut install = vec!["install", "-m", "0640", "-g", "labwire-agent"];
    install.extend(bundle_files.iter().map(String::as_str));
    install.push("/etc/labwire/");
    run(&install);
    commands += 1;
    // (the devices, described in agent.yaml: not counted)
    let conf = std::fs::read_to_string("/etc/labwire/agent.yaml").unwrap();
    assert!(conf.contains("devices: []\n"), "{conf}");
    let conf = conf.replace("devices: []\n", DEVICE);
    std::fs::write("/etc/labwire/agent.yaml", &conf).unwrap();
    let checked = run(&["labwire-agent", "check-config"]);
    assert!(
        checked.contains("lab-host-1 (lab-host, shell)"),
        "{checked}"
    );
    // (3) systemctl enable --now labwire-agent: enable, and start it as the unit would.
    run(&["systemctl", "enable", "labwire-agent.service"]);
    let mut agent = start_installed(&rig, "labwire-agent");
    commands += 1;
    let log = job_passes(&rig, "first-packaged-job").await;
    let took = started.elapsed();
    println!(
        "onboarding figure: {commands} commands on the lab host besides describing the \
         devices, {:.1} s from the package file to the first passing job",
        took.as_secs_f64()
    );
    // The job ran as the service's user, with the unit's umask.
    assert!(
        log.contains("hello from labwire-agent, umask 0027"),
        "{log}"
    );
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/labwire-agent.service").is_symlink()
    );
    // The agent's state: private, its own.
    let agent_uid = id_of("passwd", "labwire-agent");
    assert_stat(
        "/var/lib/labwire-agent",
        0o700,
        "labwire-agent",
        "labwire-agent",
    );
    for entry in std::fs::read_dir("/var/lib/labwire-agent").unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        assert_eq!(meta.uid(), agent_uid, "{:?}", entry.path());
        assert_eq!(
            meta.permissions().mode() & 0o007,
            0,
            "{:?} is open to others",
            entry.path()
        );
    }
    assert_stat("/etc/labwire/agent.key", 0o640, "root", "labwire-agent");

    // 3. Upgrades keep the admin's config, the state and the user. First over itself...
    let st = agent
        .terminate(Duration::from_secs(60))
        .expect("agent exits");
    assert!(st.success(), "the agent's drain ended {st:?}");
    let marker = "/var/lib/labwire-agent/kept-across-upgrades";
    std::fs::write(marker, "x").unwrap();
    apt(&[
        "install",
        "--reinstall",
        debs["labwire-agent"].to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string("/etc/labwire/agent.yaml").unwrap(),
        conf
    );
    assert_stat("/etc/labwire/agent.yaml", 0o640, "root", "labwire-agent");
    // ...then to a newer release whose example changed: dpkg keeps the admin's file
    // (--force-confold answers its question) and puts the new example beside it.
    let newer_deb = newer_release(&debs["labwire-agent"], &newer, work.path());
    apt(&[
        "-o",
        "Dpkg::Options::=--force-confold",
        "install",
        newer_deb.to_str().unwrap(),
    ]);
    assert_eq!(installed_version("labwire-agent"), Some(newer.clone()));
    assert_eq!(
        std::fs::read_to_string("/etc/labwire/agent.yaml").unwrap(),
        conf
    );
    assert!(
        std::fs::read_to_string("/etc/labwire/agent.yaml.dpkg-dist")
            .unwrap()
            .contains("a newer release changed this example")
    );
    assert_stat("/etc/labwire/agent.yaml", 0o640, "root", "labwire-agent");
    assert!(Path::new(marker).exists(), "the state was lost on upgrade");
    assert_eq!(id_of("passwd", "labwire-agent"), agent_uid);
    // The upgraded agent runs the next job with the kept config.
    let mut agent = start_installed(&rig, "labwire-agent");
    job_passes(&rig, "after-upgrade").await;
    let st = agent
        .terminate(Duration::from_secs(60))
        .expect("agent exits");
    assert!(st.success(), "the agent's drain ended {st:?}");

    // 4. Remove keeps the config, the bundle, the state and the user; purge then leaves
    // nothing: not the lab's key, not the state, not the user.
    let files = package_files();
    apt(&["remove", "labwire-agent"]);
    assert!(!Path::new("/usr/bin/labwire-agent").exists());
    assert!(!Path::new("/usr/lib/systemd/system/labwire-agent.service").exists());
    assert_eq!(
        std::fs::read_to_string("/etc/labwire/agent.yaml").unwrap(),
        conf
    );
    assert!(Path::new("/etc/labwire/agent.key").exists());
    assert!(Path::new(marker).exists());
    assert!(user_exists("labwire-agent"));
    apt(&["purge", "labwire-agent"]);
    assert_clean(&files);
}
