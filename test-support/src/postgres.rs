//! A throwaway PostgreSQL for tests: one implementation for every test binary of the
//! workspace, each choosing its listening, configuration, pg_hba.conf and roles through
//! [`PgOptions`].
//!
//! The server runs from a directory under /tmp under a shell wrapper (`POSTGRES_WRAPPER` below)
//! that stops it, and deletes that directory, once the test process is gone, however it ends:
//! a server shared by a whole test binary lives in a `static` and is never dropped, and a
//! killed test process runs no destructors. When the tests run as root, PostgreSQL (which
//! refuses root) runs as `postgres`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::net::free_port;
use crate::pki::TestPki;

/// Where a server listens besides its unix socket (which it always has).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// Nowhere: unix socket only, so no port can collide (the port only names the socket).
    UnixSocket,
    /// 127.0.0.1 as well, with TLS on: a certificate for `localhost` and `127.0.0.1` signed by
    /// a fresh [`TestPki`] in the server's directory ([`PgServer::ca_path`]).
    TcpWithTls,
}

/// How long a server lives and what stopping it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Until the test process exits (for a server in a `static`, shared by the whole test
    /// binary): only the wrapper deletes its directory, and [`PgServer::stop`] is final.
    Process,
    /// Until dropped, which stops it and deletes its directory; [`PgServer::stop`] keeps the
    /// data for a [`PgServer::restart`].
    Owned,
}

/// What a test binary wants of its server.
#[derive(Clone, Copy, Debug)]
pub struct PgOptions<'a> {
    /// Prefix of the server's directory name under /tmp (says whose it is).
    pub name: &'a str,
    /// Where it listens.
    pub listen: Listen,
    /// postgresql.conf lines appended after the harness's own (listening, socket directory,
    /// TLS files, no fsync, warnings only in the log).
    pub settings: &'a str,
    /// The whole pg_hba.conf.
    pub hba: &'a str,
    /// A psql script (may contain `\connect`) run as the superuser once, after the first start:
    /// roles, databases, grants.
    pub setup_sql: &'a str,
}

/// A running PostgreSQL cluster; see the module doc for its lifetime.
pub struct PgServer {
    base: PathBuf,
    // `None` for `Lifetime::Process`: only the wrapper deletes the dir.
    _tmp: Option<tempfile::TempDir>,
    port: u16,
    socket_dir: PathBuf,
    ca_path: Option<PathBuf>,
    lifetime: Lifetime,
    child: Mutex<Option<Child>>,
}

impl PgServer {
    /// Creates, configures and starts a cluster, waits until it accepts connections and runs
    /// `options.setup_sql`.
    pub fn start(options: &PgOptions<'_>, lifetime: Lifetime) -> PgServer {
        let tmp = tempfile::Builder::new()
            .prefix(options.name)
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir_in("/tmp")
            .expect("create server temp dir");
        let base = tmp.path().to_path_buf();
        // Explicitly, since the umask may have narrowed the mode: when root, postgres must
        // traverse it to reach files we create.
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).expect("chmod base");
        let socket_dir = base.join("sock");
        fs::create_dir(&socket_dir).expect("create socket dir");

        let mut conf = format!("\nunix_socket_directories = '{}'\n", socket_dir.display());
        let ca_path = match options.listen {
            Listen::UnixSocket => {
                conf.push_str("listen_addresses = ''\n");
                None
            }
            Listen::TcpWithTls => {
                let pki = TestPki::in_dir(&base.join("pki"));
                let (cert, key) = pki.leaf(&["localhost", "127.0.0.1"]);
                conf.push_str(&format!(
                    "listen_addresses = '127.0.0.1'\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                    cert.display(),
                    key.display()
                ));
                Some(pki.ca_path().to_path_buf())
            }
        };
        conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nlog_min_messages = warning\n");
        conf.push_str(options.settings);
        init_cluster(&base, &conf, options.hba);

        let tmp = match lifetime {
            Lifetime::Process => {
                let _ = tmp.keep();
                None
            }
            Lifetime::Owned => Some(tmp),
        };
        let mut server = PgServer { base, _tmp: tmp, port: 0, socket_dir, ca_path, lifetime, child: Mutex::new(None) };
        // A TCP port is released before postgres binds it, so another process may grab it in
        // between: retry with a new one.
        for attempt in 1.. {
            server.port = free_port();
            let child = spawn_postgres(&server.base, server.port);
            match server.wait_ready(child) {
                Ok(child) => {
                    *server.child.get_mut().unwrap() = Some(child);
                    break;
                }
                Err(log) if attempt < 5 => eprintln!("postgres start failed, retrying:\n{log}"),
                Err(log) => panic!("postgres failed to start 5 times:\n{log}"),
            }
        }
        server.superuser_sql(options.setup_sql);
        server
    }

    fn log_tail(&self) -> String {
        let log = fs::read(self.base.join("postgres.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Polls `pg_isready` (bounded); if postgres exits instead, returns the log tail.
    fn wait_ready(&self, mut child: Child) -> Result<Child, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if pg_isready(self.port, &self.socket_dir) {
                return Ok(child);
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                // The background reader only exits once its pipe is closed.
                shut_down(&mut child, true);
                let what = if exited { "exited" } else { "not ready after 30 s" };
                let msg = format!("postgres {what}; log tail:\n{}", self.log_tail());
                // An exit is most likely a port collision, which the caller retries.
                return if exited { Err(msg) } else { panic!("{msg}") };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's TCP port on 127.0.0.1 with [`Listen::TcpWithTls`]; in any case the port
    /// naming its socket file (`.s.PGSQL.<port>`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's `unix_socket_directories`.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// PEM file of the CA that signed the server certificate (`localhost`, `127.0.0.1`).
    ///
    /// # Panics
    ///
    /// Unless the server listens with [`Listen::TcpWithTls`].
    pub fn ca_path(&self) -> &Path {
        self.ca_path.as_deref().expect("a server without TLS has no CA")
    }

    /// The server's directory (data, socket, log, PKI), for a fixture's own files that should
    /// go when the server goes.
    pub fn dir(&self) -> &Path {
        &self.base
    }

    /// Runs `sql` (psql script, may contain `\connect`) as the `postgres` superuser over the
    /// unix socket; panics with stderr on failure and returns the trimmed, unaligned,
    /// tuples-only stdout.
    pub fn superuser_sql(&self, sql: &str) -> String {
        superuser_psql(self.port, &self.socket_dir, sql)
    }

    /// Fast-stops postgres and starts it again on the same data dir and port.
    pub fn restart(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            shut_down(&mut child, true);
        }
        let child = spawn_postgres(&self.base, self.port);
        *guard = Some(
            self.wait_ready(child)
                .unwrap_or_else(|log| panic!("postgres failed to restart on port {}:\n{log}", self.port)),
        );
    }

    /// Fast-stops postgres (idempotent); [`PgServer::restart`] starts it again. With
    /// [`Lifetime::Process`] this is final and deletes its files.
    pub fn stop(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            shut_down(&mut child, self.lifetime == Lifetime::Owned);
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // EOF: the wrapper deletes the dir too, racing TempDir harmlessly.
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = child.take() {
            shut_down(&mut child, false);
        }
    }
}

/// Stops the wrapper's postgres and waits for the wrapper. `keep`: write a line first so the
/// wrapper keeps the data dir; otherwise EOF alone, and the dir goes.
fn shut_down(child: &mut Child, keep: bool) {
    // Dropping stdin closes the pipe (EOF) right after the optional line.
    if let Some(mut stdin) = child.stdin.take()
        && keep
    {
        let _ = stdin.write_all(b"\n");
    }
    let _ = child.wait();
}

/// Whether the tests run as root (PostgreSQL then runs as `postgres`).
fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let out = Command::new("id").arg("-u").output().expect("run `id -u`");
        String::from_utf8_lossy(&out.stdout).trim() == "0"
    })
}

/// Path of a PostgreSQL binary (`postgres`, `initdb`, `psql`, `pg_isready`, ...) of the newest
/// installed server.
pub fn pg_bin(name: &str) -> PathBuf {
    pg_bindir().join(name)
}

fn pg_bindir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let find = || {
        let out = Command::new("pg_config").arg("--bindir").output().ok();
        let dir = out.map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        if let Some(dir) = dir.filter(|d| d.join("postgres").exists()) {
            return dir;
        }
        // pg_config may belong to a client-only package: take the newest server.
        let entries = fs::read_dir("/usr/lib/postgresql").into_iter().flatten();
        let version = |e: &fs::DirEntry| e.file_name().to_str()?.parse::<u32>().ok();
        let servers = entries.flatten().filter_map(|e| Some((version(&e)?, e.path().join("bin"))));
        let newest = servers.filter(|(_, p)| p.join("postgres").exists()).max();
        newest.expect("no PostgreSQL server binaries found").1
    };
    DIR.get_or_init(find).clone()
}

/// A command for a PostgreSQL binary, run as `postgres` when we are root because the server
/// (and initdb) refuse to run as root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Runs `cmd` and panics with its output unless it succeeds.
fn run_checked(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates a cluster in `base/data` (superuser `postgres`, trust, UTF8, C locale), appends
/// `conf` to its postgresql.conf and replaces its pg_hba.conf with `hba`. Everything under
/// `base` is handed to `postgres` first when we are root.
fn init_cluster(base: &Path, conf: &str, hba: &str) {
    if is_root() {
        let mut c = Command::new("chown");
        c.args(["-R", "postgres:postgres"]).arg(base);
        run_checked(c, "chown");
    }
    let data = base.join("data");
    let mut initdb = as_postgres(&pg_bin("initdb"));
    let args = "-U postgres -A trust -E UTF8 --locale=C --no-sync -D";
    initdb.args(args.split(' ')).arg(&data);
    run_checked(initdb, "initdb");
    let f = OpenOptions::new().append(true).open(data.join("postgresql.conf"));
    f.and_then(|mut f| f.write_all(conf.as_bytes())).expect("append postgresql.conf");
    fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
}

/// Starts the cluster in `base/data` on `port` under [`POSTGRES_WRAPPER`] (which removes
/// `base` once the test process is gone), logging to `base/postgres.log`.
fn spawn_postgres(base: &Path, port: u16) -> Child {
    let log = base.join("postgres.log");
    let log = OpenOptions::new().create(true).append(true).open(log).expect("open server log");
    let mut cmd = as_postgres(Path::new("sh"));
    cmd.arg("-c")
        .arg(POSTGRES_WRAPPER)
        .arg("sh")
        .arg(pg_bin("postgres"))
        .arg(base.join("data"))
        .arg(port.to_string())
        .arg(base)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
    cmd.spawn().expect("spawn postgres wrapper")
}

/// Whether the server on `port` accepts connections on its unix socket in `socket_dir`.
fn pg_isready(port: u16, socket_dir: &Path) -> bool {
    Command::new(pg_bin("pg_isready"))
        .args("-q -U postgres -d postgres -p".split(' '))
        .arg(port.to_string())
        .arg("-h")
        .arg(socket_dir)
        .status()
        .expect("run pg_isready")
        .success()
}

/// Runs `sql` (a psql script, may contain `\connect`) as the `postgres` superuser over the
/// server's unix socket; panics with stderr on failure and returns the trimmed, unaligned,
/// tuples-only stdout.
fn superuser_psql(port: u16, socket_dir: &Path, sql: &str) -> String {
    let mut cmd = as_postgres(&pg_bin("psql"));
    // -q drops command tags ("CREATE ROLE") so only query rows come back.
    let args = "-X -A -t -q -v ON_ERROR_STOP=1 -U postgres -d postgres -f - -p";
    cmd.args(args.split(' '))
        .arg(port.to_string())
        .arg("-h")
        .arg(socket_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn psql");
    // A write error means psql died early; its stderr below says why.
    let _ = child.stdin.take().unwrap().write_all(sql.as_bytes());
    let out = child.wait_with_output().expect("wait for psql");
    assert!(
        out.status.success(),
        "superuser SQL failed ({}):\n{sql}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `sh -c POSTGRES_WRAPPER sh POSTGRES DATADIR PORT DIR_TO_REMOVE`, with the test process
/// holding the wrapper's stdin as a pipe.
///
/// The wrapper ties postgres' lifetime to that pipe: when the test process exits (even by
/// SIGKILL) the pipe closes, `read` returns and postgres gets a fast shutdown. The reader runs
/// in the background (on a dup of stdin, since async lists get /dev/null) so the wrapper
/// itself exits as soon as postgres does, which lets `try_wait` notice a failed start. A line
/// on stdin means "stop, keep the data" (restart); EOF also removes the server's dir `$4`, as
/// a `TempDir`'s cleanup never runs for a server shared by the whole process (never dropped)
/// nor for any server when the test process is killed. The bounded poll avoids hanging on a
/// zombie in init-less containers.
const POSTGRES_WRAPPER: &str = r#"exec 3<&0 </dev/null
"$1" -D "$2" -p "$3" 3<&- & pid=$!
{
  if read _ <&3; then eof=; else eof=1; fi
  kill -INT "$pid" 2>/dev/null
  if [ -n "$eof" ]; then
    i=0
    while [ $i -lt 300 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; i=$((i+1)); done
    rm -rf "$4"
  fi
} &
wait "$pid""#;
