//! A throwaway PostgreSQL for the gateway tests (trimmed from the main crate's
//! tests/support): unix socket only, `local all all trust`, and the roles and
//! database a Lakebase project has. Stopped and deleted when the test process
//! exits, however it exits.
#![allow(dead_code)]

pub mod http;
pub mod pgwire;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A user role that exists in the server (as Lakebase creates for identities).
pub const ALICE: &str = "alice@example.com";
/// A second user role, for tokens presented under the wrong role.
pub const BOB: &str = "bob@example.com";

fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let out = Command::new("id").arg("-u").output().expect("run `id -u`");
        String::from_utf8_lossy(&out.stdout).trim() == "0"
    })
}

/// Path of a PostgreSQL binary (`psql`, `pg_isready`, ...) matching the server.
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

/// A command for a PostgreSQL binary, run as `postgres` when we are root
/// because the server (and initdb) refuse to run as root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

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

// The wrapper ties postgres' lifetime to our stdin pipe: when the test process
// exits (even by SIGKILL) the pipe closes, `read` returns, postgres gets a fast
// shutdown and the server's dir `$4` is removed. The bounded poll avoids
// hanging on a zombie in init-less containers.
const WRAPPER: &str = r#"exec 3<&0 </dev/null
"$1" -D "$2" -p "$3" 3<&- & pid=$!
{
  read _ <&3
  kill -INT "$pid" 2>/dev/null
  i=0
  while [ $i -lt 300 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; i=$((i+1)); done
  rm -rf "$4"
} &
wait "$pid""#;

const SETUP_SQL: &str = r#"
CREATE ROLE "alice@example.com" LOGIN;
CREATE ROLE "bob@example.com" LOGIN;
CREATE DATABASE databricks_postgres;
"#;

/// A PostgreSQL server listening only on its unix socket, trusting local logins.
pub struct PgServer {
    base: PathBuf,
    port: u16,
    socket_dir: PathBuf,
    // Never waited on: the process-wide server lives until the process exits,
    // and the wrapper notices that through its stdin.
    _child: Child,
}

impl PgServer {
    /// The server shared by all tests of this process, started on first use.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(PgServer::launch)
    }

    fn launch() -> PgServer {
        let tmp = tempfile::Builder::new()
            .prefix("fake-lakebase-pg-")
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir_in("/tmp")
            .expect("create server temp dir");
        // Only the wrapper deletes it (TempDir's cleanup never runs for a static).
        let base = tmp.keep();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).expect("chmod base");
        let socket_dir = base.join("sock");
        fs::create_dir(&socket_dir).expect("create socket dir");
        if is_root() {
            let mut c = Command::new("chown");
            c.args(["-R", "postgres:postgres"]).arg(&base);
            run_checked(c, "chown");
        }
        let data = base.join("data");
        let mut initdb = as_postgres(&pg_bindir().join("initdb"));
        let args = "-U postgres -A trust -E UTF8 --locale=C --no-sync -D";
        initdb.args(args.split(' ')).arg(&data);
        run_checked(initdb, "initdb");

        // No TCP at all: the gateway (like every client here) uses the socket,
        // so no port can collide; the port only names the socket file.
        let conf = format!(
            "\nlisten_addresses = ''\nunix_socket_directories = '{}'\nmax_connections = 100\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             shared_buffers = 32MB\nlog_min_messages = warning\n",
            socket_dir.display(),
        );
        let f = OpenOptions::new().append(true).open(data.join("postgresql.conf"));
        f.and_then(|mut f| f.write_all(conf.as_bytes())).expect("append postgresql.conf");
        fs::write(data.join("pg_hba.conf"), "local all all trust\n").expect("write pg_hba.conf");

        let port = 5432;
        let log =
            OpenOptions::new().create(true).append(true).open(base.join("postgres.log")).expect("open server log");
        let mut cmd = as_postgres(Path::new("sh"));
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(pg_bindir().join("postgres"))
            .arg(&data)
            .arg(port.to_string())
            .arg(&base)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn postgres wrapper");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(pg_bin("pg_isready"))
                .args("-q -U postgres -d postgres -p".split(' '))
                .arg(port.to_string())
                .arg("-h")
                .arg(&socket_dir)
                .status()
                .expect("run pg_isready");
            if ready.success() {
                break;
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let log = fs::read_to_string(base.join("postgres.log")).unwrap_or_default();
                panic!("postgres did not start; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let server = PgServer { base, port, socket_dir, _child: child };
        server.superuser_sql(SETUP_SQL);
        server
    }

    /// The port naming the socket file.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's `unix_socket_directories`.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Runs `sql` as the `postgres` superuser over the unix socket; panics
    /// with stderr on failure and returns the trimmed, tuples-only stdout.
    pub fn superuser_sql(&self, sql: &str) -> String {
        let mut cmd = as_postgres(&pg_bindir().join("psql"));
        let args = "-X -A -t -q -v ON_ERROR_STOP=1 -U postgres -d postgres -f - -p";
        cmd.args(args.split(' '))
            .arg(self.port.to_string())
            .arg("-h")
            .arg(&self.socket_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn psql");
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
}
