//! The shared PostgreSQL server: its folder, the lock around starting it, initdb, start,
//! stop, and the `psql` calls everything else goes through.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Uid, User};

use crate::Error;

/// The set-up script that installs PostgreSQL; named in every error about missing programs.
pub const SETUP_SCRIPT: &str = "scripts/setup.d/15-postgres.sh";
/// Names another folder for the server (this crate's own tests start a private one).
pub const DIR_ENV: &str = "LABWIRE_TESTPG_DIR";
/// The database superuser that initdb creates; every test database belongs to it.
pub(crate) const DB_USER: &str = "postgres";
/// Every test database's name starts with this; leftovers are dropped when the server starts.
pub(crate) const DB_PREFIX: &str = "labwire_test_";
/// The server settings (besides port and socket folder), see the crate documentation.
const SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1",
    "max_connections=500",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
];

/// A running shared server, as a test process reaches it.
#[derive(Clone, Debug)]
pub(crate) struct Server {
    pub port: u16,
    pub psql: PathBuf,
}

/// The PostgreSQL programs this crate runs, from one `bin` folder.
struct PgBin {
    dir: PathBuf,
}

impl PgBin {
    /// `/usr/lib/postgresql/15/bin`, or else the newest `/usr/lib/postgresql/*/bin` that
    /// has the server programs (Debian's layout).
    fn find() -> Result<PgBin, Error> {
        Self::find_in(Path::new("/usr/lib/postgresql"))
    }

    fn find_in(root: &Path) -> Result<PgBin, Error> {
        let complete = |dir: &Path| {
            ["postgres", "initdb", "pg_ctl", "psql"]
                .iter()
                .all(|p| dir.join(p).is_file())
        };
        let preferred = root.join("15/bin");
        if complete(&preferred) {
            return Ok(PgBin { dir: preferred });
        }
        let mut found: Vec<(u32, PathBuf)> = fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let dir = e.path().join("bin");
                complete(&dir).then_some((version, dir))
            })
            .collect();
        found.sort();
        match found.pop() {
            Some((_, dir)) => Ok(PgBin { dir }),
            None => Err(Error(format!(
                "no PostgreSQL server programs (postgres, initdb, pg_ctl, psql) under \
                 {}/*/bin: run {SETUP_SCRIPT} to install Debian's postgresql package",
                root.display()
            ))),
        }
    }

    fn get(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }
}

/// Who runs the server programs: PostgreSQL refuses to run as root, so as root they run as
/// the `postgres` system user (through `runuser`), otherwise as the current user.
enum Runner {
    Me,
    Postgres(User),
}

impl Runner {
    fn detect() -> Result<Runner, Error> {
        if !Uid::effective().is_root() {
            return Ok(Runner::Me);
        }
        match User::from_name("postgres") {
            Ok(Some(user)) => Ok(Runner::Postgres(user)),
            Ok(None) => Err(Error(format!(
                "running as root, PostgreSQL must run as the `postgres` system user, which does \
                 not exist: run {SETUP_SCRIPT} (Debian's postgresql package creates it)"
            ))),
            Err(e) => Err(Error(format!("looking up the `postgres` user: {e}"))),
        }
    }

    fn command(&self, program: &Path) -> Command {
        match self {
            Runner::Me => Command::new(program),
            Runner::Postgres(_) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", "postgres", "--"]).arg(program);
                cmd
            }
        }
    }

    /// Makes `dir` belong to the user the server runs as, readable by it only.
    fn own(&self, dir: &Path) -> Result<(), Error> {
        if let Runner::Postgres(user) = self {
            std::os::unix::fs::chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(|e| Error(format!("chown {} to postgres: {e}", dir.display())))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error(format!("chmod 700 {}: {e}", dir.display())))
    }
}

/// The shared folder, `/tmp/labwire-testpg-<uid>/` (or `$LABWIRE_TESTPG_DIR`):
///
/// - `lock`: flock'ed while the server is checked, started or stopped;
/// - `port`: the TCP port of the running server;
/// - `ready`: written after a complete initdb (holds the `bin` folder it was made with);
/// - `pg/`: the server's own folder (as root: owned by `postgres`, mode 700), holding
///   `data/` (the cluster), the unix socket and `postgres.log`.
pub(crate) struct Layout {
    base: PathBuf,
}

impl Layout {
    pub fn new() -> Layout {
        let base = match std::env::var_os(DIR_ENV) {
            // Absolute, to compare with the data folder the server reports.
            Some(dir) if !dir.is_empty() => {
                std::path::absolute(&dir).unwrap_or_else(|_| PathBuf::from(dir))
            }
            _ => PathBuf::from(format!("/tmp/labwire-testpg-{}", Uid::effective())),
        };
        Layout { base }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    fn pg(&self) -> PathBuf {
        self.base.join("pg")
    }

    fn data(&self) -> PathBuf {
        self.pg().join("data")
    }

    fn log(&self) -> PathBuf {
        self.pg().join("postgres.log")
    }

    fn port_file(&self) -> PathBuf {
        self.base.join("port")
    }

    fn ready_file(&self) -> PathBuf {
        self.base.join("ready")
    }

    /// Creates the folder if needed and refuses one this user does not own alone (it is in
    /// `/tmp`, where anyone could have made it first).
    fn prepare(&self) -> Result<(), Error> {
        match fs::DirBuilder::new().mode(0o755).create(&self.base) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error(format!("creating {}: {e}", self.base.display()))),
        }
        self.check_owner()
    }

    fn check_owner(&self) -> Result<(), Error> {
        let meta = fs::symlink_metadata(&self.base)
            .map_err(|e| Error(format!("{}: {e}", self.base.display())))?;
        let me = Uid::effective().as_raw();
        if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
            return Err(Error(format!(
                "{} is not a folder owned by uid {me} and writable only by it; remove it",
                self.base.display()
            )));
        }
        Ok(())
    }

    /// Holds the folder's lock until the returned value is dropped.
    fn lock(&self) -> Result<Flock<File>, Error> {
        let path = self.base.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error(format!("opening {}: {e}", path.display())))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error(format!("locking {}: {e}", path.display())))
    }

    fn read_port(&self) -> Option<u16> {
        fs::read_to_string(self.port_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn write_file(&self, path: &Path, content: &str) -> Result<(), Error> {
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(content.as_bytes())?;
            fs::rename(&tmp, path)
        };
        write().map_err(|e| Error(format!("writing {}: {e}", path.display())))
    }

    fn remove_file(&self, path: &Path) -> Result<(), Error> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error(format!("removing {}: {e}", path.display()))),
        }
    }

    /// The last lines of the server log, for error messages.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Runs `cmd` with no input, in a folder every user can enter (the server user may not be
/// able to enter the test's working folder), and returns its output if it exits 0.
fn run(mut cmd: Command, dir: &Path, what: &str) -> Result<Output, Error> {
    let out = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )))
    }
}

/// Runs each of `sql` (one statement each, outside any transaction block) as the superuser
/// on database `db` over TCP, and returns psql's unaligned, tuples-only output.
pub(crate) fn psql(psql: &Path, port: u16, db: &str, sql: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(psql);
    cmd.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        DB_USER,
    ])
    .arg("-p")
    .arg(port.to_string())
    .arg("-d")
    .arg(db)
    // psql reads these from the environment; none of them may redirect the test.
    .env_remove("PGOPTIONS")
    .env_remove("PGSERVICE")
    .env_remove("PGSERVICEFILE")
    .env("PGCONNECT_TIMEOUT", "10")
    .env("PGSSLMODE", "disable")
    .env("PGAPPNAME", "labwire-testpg")
    .stdin(Stdio::null());
    for s in sql {
        cmd.arg("-c").arg(s);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", psql.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; the start is retried if it is taken).
fn free_port() -> Result<u16, Error> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error(format!("binding 127.0.0.1:0 to find a free port: {e}")))
}

/// Whether our server answers on `port` (the data folder it reports is ours).
fn answers(layout: &Layout, bin: &PgBin, port: u16) -> bool {
    match psql(&bin.get("psql"), port, "postgres", &["SHOW data_directory"]) {
        Ok(out) => out.trim() == layout.data().to_string_lossy(),
        Err(_) => false,
    }
}

/// Whether `pg_ctl status` finds a server running on the data folder.
fn pg_ctl_running(layout: &Layout, bin: &PgBin, runner: &Runner) -> bool {
    let mut cmd = runner.command(&bin.get("pg_ctl"));
    cmd.arg("status").arg("-D").arg(layout.data());
    run(cmd, layout.base(), "pg_ctl status").is_ok()
}

fn pg_ctl_stop(layout: &Layout, bin: &PgBin, runner: &Runner, mode: &str) -> Result<(), Error> {
    let mut cmd = runner.command(&bin.get("pg_ctl"));
    cmd.arg("stop")
        .arg("-D")
        .arg(layout.data())
        .args(["-m", mode, "-w", "-t", "60"]);
    run(cmd, layout.base(), "pg_ctl stop").map(|_| ())
}

/// A new cluster in `pg/data`, replacing whatever was in `pg/`.
fn initdb(layout: &Layout, bin: &PgBin, runner: &Runner) -> Result<(), Error> {
    layout.remove_file(&layout.ready_file())?;
    let pg = layout.pg();
    if pg.exists() {
        fs::remove_dir_all(&pg).map_err(|e| Error(format!("removing {}: {e}", pg.display())))?;
    }
    fs::create_dir(&pg).map_err(|e| Error(format!("creating {}: {e}", pg.display())))?;
    runner.own(&pg)?;
    let mut cmd = runner.command(&bin.get("initdb"));
    cmd.arg("-D").arg(layout.data()).args([
        "-U",
        DB_USER,
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]);
    run(cmd, layout.base(), "initdb")?;
    layout.write_file(&layout.ready_file(), &bin.dir.to_string_lossy())
}

/// The server's TLS certificate and key in `pg/` (for 127.0.0.1 and localhost, signed by a
/// test CA in `pg/tls-ca.pem`), made once. The key belongs to the server's user, mode 600,
/// as PostgreSQL requires.
fn tls_files(layout: &Layout, runner: &Runner) -> Result<(PathBuf, PathBuf), Error> {
    let (ca_path, cert_path, key_path) = (
        layout.pg().join("tls-ca.pem"),
        layout.pg().join("server.crt"),
        layout.pg().join("server.key"),
    );
    if ca_path.exists() && cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let err = |e: rcgen::Error| Error(format!("making the test TLS certificate: {e}"));
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "labwire-testpg CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut server = rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
    server
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )));
    let server_key = rcgen::KeyPair::generate().map_err(err)?;
    let server_cert = server.signed_by(&server_key, &issuer).map_err(err)?;
    for (path, text, mode) in [
        (&cert_path, server_cert.pem(), 0o644),
        (&key_path, server_key.serialize_pem(), 0o600),
        (&ca_path, ca_cert.pem(), 0o644),
    ] {
        fs::write(path, text).map_err(|e| Error(format!("writing {}: {e}", path.display())))?;
        if let Runner::Postgres(user) = runner {
            std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(|e| Error(format!("chown {}: {e}", path.display())))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| Error(format!("chmod {}: {e}", path.display())))?;
    }
    Ok((cert_path, key_path))
}

/// The CA that signed the shared server's TLS certificate.
pub(crate) fn tls_ca() -> PathBuf {
    Layout::new().pg().join("tls-ca.pem")
}

/// Starts the server on a free port (three tries, in case another process takes the port
/// between our choice and the server's bind) and returns the port.
fn start(layout: &Layout, bin: &PgBin, runner: &Runner) -> Result<u16, Error> {
    let (cert, key) = tls_files(layout, runner)?;
    let mut last = None;
    for _ in 0..3 {
        let port = free_port()?;
        let mut options = format!("-p {port} -k {}", layout.pg().display());
        for s in SETTINGS {
            options.push_str(" -c ");
            options.push_str(s);
        }
        // TLS on (and optional, so plain connections work too): tests of the coordinator's
        // TLS connections to PostgreSQL verify the server with `tls_ca()`.
        options.push_str(&format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        ));
        let mut cmd = runner.command(&bin.get("pg_ctl"));
        cmd.arg("start")
            .arg("-D")
            .arg(layout.data())
            .arg("-l")
            .arg(layout.log())
            .args(["-w", "-t", "60", "-o", &options])
            // Not in the test's process group: a signal to the test must not reach the
            // server the other tests use (pg_ctl also detaches it with setsid).
            .process_group(0);
        match run(cmd, layout.base(), "pg_ctl start") {
            Ok(_) if answers(layout, bin, port) => return Ok(port),
            Ok(_) => {
                last = Some(Error(format!(
                    "the server started but does not answer on 127.0.0.1:{port}"
                )));
                let _ = pg_ctl_stop(layout, bin, runner, "immediate");
            }
            Err(e) => last = Some(e),
        }
    }
    let e = last.unwrap_or_else(|| Error("pg_ctl start never ran".into()));
    Err(Error(format!(
        "{e}\nlast lines of {}:\n{}",
        layout.log().display(),
        layout.log_tail()
    )))
}

/// Drops every test database of earlier runs (the server just started, so nobody uses one).
fn drop_leftovers(bin: &PgBin, port: u16) -> Result<(), Error> {
    let psql_bin = bin.get("psql");
    let like = format!(
        "SELECT datname FROM pg_database WHERE datname LIKE '{}%'",
        DB_PREFIX.replace('_', "\\_")
    );
    let names = psql(&psql_bin, port, "postgres", &[&like])
        .map_err(|e| Error(format!("listing databases: {e}")))?;
    for name in names.lines().filter(|n| !n.is_empty()) {
        psql(
            &psql_bin,
            port,
            "postgres",
            &[&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")],
        )
        .map_err(|e| Error(format!("dropping leftover database {name}: {e}")))?;
    }
    Ok(())
}

/// The running shared server: reused if it answers, otherwise (with the lock held, so only
/// one process does it) initdb'ed if needed and started.
pub(crate) fn ensure() -> Result<Server, Error> {
    let bin = PgBin::find()?;
    let runner = Runner::detect()?;
    let layout = Layout::new();
    layout.prepare()?;
    let _lock = layout.lock()?;
    let server = |port| Server {
        port,
        psql: bin.get("psql"),
    };
    // A server without the TLS files was started by an older labwire-testpg, without TLS:
    // start it again.
    if let Some(port) = layout.read_port()
        && answers(&layout, &bin, port)
        && layout.pg().join("tls-ca.pem").exists()
    {
        return Ok(server(port));
    }
    layout.remove_file(&layout.port_file())?;
    let ready = fs::read_to_string(layout.ready_file()).is_ok_and(|d| Path::new(&d) == bin.dir)
        && layout.data().join("PG_VERSION").is_file();
    if ready {
        // Running but not answering (or its port file lost): stop it to start afresh.
        if pg_ctl_running(&layout, &bin, &runner) {
            pg_ctl_stop(&layout, &bin, &runner, "immediate")?;
        }
    } else {
        if layout.data().join("postmaster.pid").exists() {
            // A cluster of another PostgreSQL version, or a half-made one: best effort.
            let _ = pg_ctl_stop(&layout, &bin, &runner, "immediate");
        }
        initdb(&layout, &bin, &runner)?;
    }
    let port = start(&layout, &bin, &runner)?;
    layout.write_file(&layout.port_file(), &port.to_string())?;
    drop_leftovers(&bin, port)?;
    Ok(server(port))
}

/// Stops the shared server if it runs; `Ok(true)` if it did.
pub(crate) fn stop() -> Result<bool, Error> {
    let layout = Layout::new();
    if !layout.base().exists() {
        return Ok(false);
    }
    layout.check_owner()?;
    let bin = PgBin::find()?;
    let runner = Runner::detect()?;
    let _lock = layout.lock()?;
    let was_running = layout.data().is_dir() && pg_ctl_running(&layout, &bin, &runner);
    if was_running {
        pg_ctl_stop(&layout, &bin, &runner, "fast")?;
    }
    layout.remove_file(&layout.port_file())?;
    Ok(was_running)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programs(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        for p in ["postgres", "initdb", "pg_ctl", "psql"] {
            File::create(dir.join(p)).unwrap();
        }
    }

    #[test]
    fn missing_programs_name_the_setup_script() {
        let root = tempfile::tempdir().unwrap();
        // A bin folder without the server programs (only the client) does not count.
        fs::create_dir_all(root.path().join("15/bin")).unwrap();
        File::create(root.path().join("15/bin/psql")).unwrap();
        let err = PgBin::find_in(root.path())
            .err()
            .expect("no programs, yet found")
            .to_string();
        assert!(err.contains("scripts/setup.d/15-postgres.sh"), "{err}");
        assert!(err.contains(&root.path().display().to_string()), "{err}");
    }

    #[test]
    fn version_15_first_else_the_newest() {
        let root = tempfile::tempdir().unwrap();
        programs(&root.path().join("9/bin"));
        programs(&root.path().join("16/bin"));
        assert_eq!(
            PgBin::find_in(root.path()).unwrap().dir,
            root.path().join("16/bin")
        );
        programs(&root.path().join("15/bin"));
        assert_eq!(
            PgBin::find_in(root.path()).unwrap().dir,
            root.path().join("15/bin")
        );
    }
}
