//! What the workspace's test harnesses (`tests/support` of lakebase-proxy and of
//! fake-lakebase) share for running a throwaway PostgreSQL: finding its binaries, running them
//! as `postgres` when the tests run as root, creating a cluster, starting it under a shell
//! wrapper that stops it when the test process goes away, waiting for it, and running
//! superuser SQL. Each harness keeps its own configuration, roles and lifecycle.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// Whether the tests run as root (PostgreSQL then runs as `postgres`).
pub fn is_root() -> bool {
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
pub fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Runs `cmd` and panics with its output unless it succeeds.
pub fn run_checked(mut cmd: Command, what: &str) {
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
pub fn init_cluster(base: &Path, conf: &str, hba: &str) -> PathBuf {
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
    data
}

/// Starts the cluster in `base/data` on `port` under [`POSTGRES_WRAPPER`] (which removes
/// `base` once the test process is gone), logging to `base/postgres.log`.
pub fn spawn_postgres(base: &Path, port: u16) -> Child {
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
pub fn pg_isready(port: u16, socket_dir: &Path) -> bool {
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
pub fn superuser_psql(port: u16, socket_dir: &Path, sql: &str) -> String {
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
pub const POSTGRES_WRAPPER: &str = r#"exec 3<&0 </dev/null
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
