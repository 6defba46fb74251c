//! Client compatibility matrix: real clients, feature by feature, through lakebase-proxy (in
//! process) to the harness's TLS PostgreSQL.
//!
//! psql, pgbench, psycopg 3, psycopg2, asyncpg, SQLAlchemy, node-postgres and pgjdbc run as
//! subprocesses (their programs are in tests/compat/) with PGHOST/PGPORT/PGUSER/PGDATABASE
//! pointing at the proxy; tokio-postgres and sqlx are checked here. Each program prints
//! `CHECK <name> ok|FAIL|n/a [detail]` per check (`MISSING <what>` when its runtime or a
//! package is not installed, `VERSION <text>` for the table's header). The test prints the
//! whole matrix, writes it to `target/compat-matrix.md`, and fails at the end listing every
//! failed cell, so one broken driver does not hide the others. Nothing is skipped silently: a
//! missing runtime or package, a crash or a check that never reported is a FAIL cell.

mod support;

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use lakebase_proxy::config::{Config, PasswordSource};
use lakebase_proxy::proxy::RunningProxy;
use support::{APP_DB, PgServer, SCRAM_USER};
use tokio::sync::Semaphore;

/// The checks every client reports, in the matrix's row order, and what each one proves.
const CHECKS: &[(&str, &str)] = &[
    ("simple", "simple query protocol (Query message), several statements in one"),
    ("params", "parameters through the extended protocol (Parse/Bind/Execute)"),
    ("prepared", "a named server-side prepared statement, reused (seen in pg_prepared_statements)"),
    ("commit", "a transaction committed"),
    ("rollback", "a transaction rolled back"),
    ("error_recovery", "an error in a transaction (22012), the next statement refused (25P02), ROLLBACK, go on"),
    ("copy_in", "COPY ... FROM STDIN"),
    ("copy_out", "COPY ... TO STDOUT"),
    ("listen_notify", "LISTEN on one session, NOTIFY from another, payload and sender pid as the server reports"),
    ("cancel", "cancel of pg_sleep(30) after 0.5 s: SQLSTATE 57014 within 5 s, session usable after"),
    ("bytea", "bytea with all 256 byte values, round trip"),
    ("unicode", "'ünïcødé ✓ 漢字' round trip, 12 characters server-side"),
    ("large_result", "100,000 rows; a 10 MiB value out (and in, where the client sends parameters)"),
    ("concurrent", "several sessions at once, through the client's own pool where it has one"),
];

/// Client-specific extra rows.
const EXTRA_CHECKS: &[(&str, &str)] = &[
    ("init", "pgbench -i (tables, COPY of 100,000 rows, VACUUM, primary keys)"),
    ("watch", "psql \\watch, stopped by the query failing on its 3rd run"),
    ("on_error_stop", "psql -v ON_ERROR_STOP=1 stops at the first error, exit status 3"),
];

/// What the cancel checks wait before cancelling, and the most a cancel may take.
const CANCEL_AFTER: Duration = Duration::from_millis(500);
const CANCEL_LIMIT: Duration = Duration::from_secs(5);
/// A client program that runs longer than this is killed; its unreported cells fail.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Client programs run at the same time (the machine has two cores; most of a client's time
/// is spent waiting on the proxy and the server).
const PARALLEL_CLIENTS: usize = 3;

const UNICODE: &str = "ünïcødé ✓ 漢字";
const UNICODE_CHARS: i32 = 12;
const LARGE_ROWS: i32 = 100_000;
const LARGE_VALUE: i32 = 10 * 1024 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Ok,
    Fail,
    NotApplicable,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fail => "**FAIL**",
            Status::NotApplicable => "n/a",
        }
    }
}

#[derive(Clone, Debug)]
struct Cell {
    status: Status,
    detail: String,
}

impl Cell {
    fn new(status: Status, detail: impl Into<String>) -> Cell {
        Cell { status, detail: detail.into() }
    }
}

/// What one client reported.
#[derive(Default)]
struct Report {
    version: String,
    cells: BTreeMap<String, Cell>,
    elapsed: Duration,
}

/// A client run as a subprocess.
struct External {
    name: &'static str,
    /// Executables it needs on PATH (`MISSING` cells name the first one absent).
    needs: &'static [&'static str],
    /// Files it needs, with the install hint.
    needs_files: &'static [(&'static str, &'static str)],
    /// The program and its arguments, relative to tests/compat/.
    command: &'static [&'static str],
    extra: &'static [&'static str],
}

const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

const EXTERNAL: &[External] = &[
    External {
        name: "psql",
        needs: &["bash", "psql"],
        needs_files: &[],
        command: &["bash", "psql.sh"],
        extra: &["watch", "on_error_stop"],
    },
    External {
        name: "pgbench",
        needs: &["bash", "pgbench", "psql"],
        needs_files: &[],
        command: &["bash", "pgbench.sh"],
        extra: &["init"],
    },
    External {
        name: "psycopg3",
        needs: &["python3"],
        needs_files: &[],
        command: &["python3", "python/check_psycopg3.py"],
        extra: &[],
    },
    External {
        name: "psycopg2",
        needs: &["python3"],
        needs_files: &[],
        command: &["python3", "python/check_psycopg2.py"],
        extra: &[],
    },
    External {
        name: "asyncpg",
        needs: &["python3"],
        needs_files: &[],
        command: &["python3", "python/check_asyncpg.py"],
        extra: &[],
    },
    External {
        name: "sqlalchemy",
        needs: &["python3"],
        needs_files: &[],
        command: &["python3", "python/check_sqlalchemy.py"],
        extra: &[],
    },
    External {
        name: "node-pg",
        needs: &["node"],
        needs_files: &[],
        command: &["node", "node/check_pg.js"],
        extra: &[],
    },
    External {
        name: "pgjdbc",
        needs: &["javac", "java"],
        needs_files: &[(JDBC_JAR, "apt-get install libpostgresql-jdbc-java")],
        // Compiled first, see `run_external`. Java 17 prints in the locale's charset unless told.
        command: &["java", "-Dfile.encoding=UTF-8", "-Dsun.stdout.encoding=UTF-8", "CheckJdbc"],
        extra: &[],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_compatibility_matrix() {
    let started = Instant::now();
    let pg = PgServer::shared();
    let target =
        format!("postgresql://{SCRAM_USER}@localhost:{}/{APP_DB}?sslrootcert={}", pg.port(), pg.ca_path().display());
    let mut config = Config::new(vec![target.parse().unwrap()]);
    config.port = 0;
    config.password = PasswordSource::File(pg.password_file());
    let proxy = RunningProxy::start(config).await.expect("proxy starts");
    let port = proxy.tcp_address(0).port();

    let slots = Arc::new(Semaphore::new(PARALLEL_CLIENTS));
    let mut runs: Vec<BoxFuture<'static, (&'static str, Report)>> = Vec::new();
    for client in EXTERNAL {
        let slots = slots.clone();
        runs.push(Box::pin(async move {
            let _slot = slots.acquire().await.unwrap();
            (client.name, run_external(client, port).await)
        }));
    }
    runs.push(Box::pin(async move { ("tokio-postgres", timed(tokio_postgres_checks(port)).await) }));
    runs.push(Box::pin(async move { ("sqlx", timed(sqlx_checks(port)).await) }));
    let reports: Vec<(&str, Report)> = futures_util::future::join_all(runs).await;
    proxy.stop().await;

    let matrix = render(&reports, started.elapsed());
    println!("{matrix}");
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").to_path_buf();
    let path = target_dir.join("compat-matrix.md");
    std::fs::write(&path, &matrix).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!("(written to {})", path.display());

    let failures: Vec<String> = reports
        .iter()
        .flat_map(|(client, report)| {
            let checks = CHECKS.iter().chain(EXTRA_CHECKS).map(|(check, _)| *check);
            let failed = checks.filter_map(|check| Some((check, report.cells.get(check)?)));
            let failed = failed.filter(|(_, cell)| cell.status == Status::Fail);
            failed.map(move |(check, cell)| format!("  {client} / {check}: {}", cell.detail))
        })
        .collect();
    assert!(failures.is_empty(), "{} failed cell(s):\n{}", failures.len(), failures.join("\n"));
}

fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat")
}

/// The checks a client must report: all of [`CHECKS`] and its own `extra` ones, in row order.
fn expected(extra: &[&'static str]) -> Vec<&'static str> {
    CHECKS.iter().map(|(name, _)| *name).chain(extra.iter().copied()).collect()
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

/// Runs one client program and turns its output into cells; everything that goes wrong
/// around it (a missing runtime, a crash, a timeout) becomes FAIL cells saying so.
async fn run_external(client: &External, port: u16) -> Report {
    let started = Instant::now();
    let fail_all = |reason: String| Report {
        version: String::new(),
        cells: expected(client.extra).into_iter().map(|c| (c.to_string(), Cell::new(Status::Fail, &reason))).collect(),
        elapsed: started.elapsed(),
    };
    if let Some(missing) = client.needs.iter().find(|program| !on_path(program)) {
        return fail_all(format!("missing: {missing} (not on PATH)"));
    }
    if let Some((file, hint)) = client.needs_files.iter().find(|(file, _)| !Path::new(file).exists()) {
        return fail_all(format!("missing: {file} ({hint})"));
    }

    let mut command = tokio::process::Command::new(client.command[0]);
    // Only the proxy's address: no password, no TLS settings, no service file from the
    // environment the tests happen to run in.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            command.env_remove(name);
        }
    }
    command
        .args(&client.command[1..])
        .current_dir(compat_dir())
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", "compat")
        .env("PGDATABASE", APP_DB)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);

    // pgjdbc: compiled into a temporary directory first, which `java` finds on CLASSPATH.
    let _classes = if client.name == "pgjdbc" {
        match compile_jdbc_checks().await {
            Ok(classes) => {
                command.env("CLASSPATH", format!("{JDBC_JAR}:{}", classes.path().display()));
                Some(classes)
            }
            Err(reason) => return fail_all(reason),
        }
    } else {
        None
    };

    let child = match command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) => return fail_all(format!("missing: {} ({e})", client.command[0])),
    };
    let output = match tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return fail_all(format!("waiting for {}: {e}", client.name)),
        Err(_) => return fail_all(format!("killed after {CLIENT_TIMEOUT:?}")),
    };
    let mut report = parse_report(&String::from_utf8_lossy(&output.stdout), client.extra);
    // Cells the program never reported: it crashed, or a check is missing from it.
    let why = format!("not reported ({}; stderr: {})", output.status, tail(&output.stderr));
    for check in expected(client.extra) {
        report.cells.entry(check.to_string()).or_insert_with(|| Cell::new(Status::Fail, &why));
    }
    report.elapsed = started.elapsed();
    report
}

async fn compile_jdbc_checks() -> Result<tempfile::TempDir, String> {
    let classes = tempfile::tempdir().map_err(|e| format!("temp dir for javac: {e}"))?;
    let javac = tokio::process::Command::new("javac")
        .args(["-encoding", "UTF-8", "-cp", JDBC_JAR, "-d"])
        .arg(classes.path())
        .arg(compat_dir().join("java/CheckJdbc.java"))
        .output()
        .await
        .map_err(|e| format!("javac: {e}"))?;
    if !javac.status.success() {
        return Err(format!("javac failed: {}", one_line(&javac.stderr)));
    }
    Ok(classes)
}

/// Reads `CHECK`, `MISSING` and `VERSION` lines.
fn parse_report(stdout: &str, extra: &[&'static str]) -> Report {
    let mut report = Report::default();
    for line in stdout.lines() {
        if let Some(what) = line.strip_prefix("MISSING ") {
            for check in expected(extra) {
                report.cells.insert(check.to_string(), Cell::new(Status::Fail, format!("missing: {what}")));
            }
        } else if let Some(version) = line.strip_prefix("VERSION ") {
            report.version = version.to_string();
        } else if let Some(rest) = line.strip_prefix("CHECK ") {
            let mut parts = rest.splitn(3, ' ');
            let (name, status, detail) =
                (parts.next().unwrap(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let cell = match status {
                "ok" => Cell::new(Status::Ok, detail),
                "n/a" => Cell::new(Status::NotApplicable, detail),
                "FAIL" => Cell::new(Status::Fail, detail),
                _ => Cell::new(Status::Fail, format!("unreadable report line: {line}")),
            };
            report.cells.insert(name.to_string(), cell);
        }
    }
    report
}

fn one_line(text: &[u8]) -> String {
    String::from_utf8_lossy(text).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The last lines of a program's stderr, on one line.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() { "empty".to_string() } else { tail }
}

// ---- the matrix ----

fn render(reports: &[(&str, Report)], total: Duration) -> String {
    let mut rows: Vec<(&str, &str)> = CHECKS.to_vec();
    rows.extend(EXTRA_CHECKS.iter().filter(|(name, _)| reports.iter().any(|(_, r)| r.cells.contains_key(*name))));
    let mut out = String::new();
    writeln!(out, "## Client compatibility matrix\n").unwrap();
    let header: Vec<String> = reports.iter().map(|(client, _)| client.to_string()).collect();
    writeln!(out, "| check | {} |", header.join(" | ")).unwrap();
    writeln!(out, "|---|{}", "---|".repeat(reports.len())).unwrap();
    for (check, _) in &rows {
        let cells: Vec<&str> =
            reports.iter().map(|(_, report)| report.cells.get(*check).map_or("", |c| c.status.label())).collect();
        writeln!(out, "| {check} | {} |", cells.join(" | ")).unwrap();
    }
    let times: Vec<String> = reports.iter().map(|(_, r)| format!("{:.1} s", r.elapsed.as_secs_f64())).collect();
    writeln!(out, "| *time* | {} |", times.join(" | ")).unwrap();

    writeln!(out, "\nVersions:").unwrap();
    for (client, report) in reports {
        writeln!(out, "- {client}: {}", if report.version.is_empty() { "?" } else { &report.version }).unwrap();
    }
    writeln!(out, "\nChecks:").unwrap();
    for (check, meaning) in &rows {
        writeln!(out, "- `{check}`: {meaning}").unwrap();
    }
    writeln!(out, "\nNotes (failures, n/a reasons, how a check was done):").unwrap();
    for (client, report) in reports {
        for (check, _) in &rows {
            if let Some(cell) = report.cells.get(*check).filter(|c| !c.detail.is_empty()) {
                writeln!(out, "- {client} / {check}: {}: {}", cell.status.label(), cell.detail).unwrap();
            }
        }
    }
    writeln!(out, "\nTotal {:.1} s, {PARALLEL_CLIENTS} client programs at a time.", total.as_secs_f64()).unwrap();
    out
}

// ---- the Rust clients, checked in process ----

type BoxError = Box<dyn Error + Send + Sync>;
type CheckResult = Result<Option<String>, BoxError>;
type CheckFuture = BoxFuture<'static, CheckResult>;

/// A Rust client's check: run it, or say why the client cannot do it.
enum Check {
    Run(CheckFuture),
    NotApplicable(&'static str),
}

fn run(check: impl Future<Output = CheckResult> + Send + 'static) -> Check {
    Check::Run(Box::pin(check))
}

fn ensure(condition: bool, message: impl Into<String>) -> Result<(), BoxError> {
    if condition { Ok(()) } else { Err(message.into().into()) }
}

fn equal<T: PartialEq + std::fmt::Debug>(got: T, want: T, what: &str) -> Result<(), BoxError> {
    let short = |v: &T| {
        let text = format!("{v:?}");
        if text.len() > 120 { format!("{}...", &text[..text.floor_char_boundary(117)]) } else { text }
    };
    ensure(got == want, format!("{what}: got {}, want {}", short(&got), short(&want)))
}

async fn timed(checks: impl Future<Output = Report>) -> Report {
    let started = Instant::now();
    let mut report = checks.await;
    report.elapsed = started.elapsed();
    report
}

/// Runs checks one at a time (each on its own connections), with a time limit each.
async fn run_checks(version: String, checks: Vec<(&str, Check)>) -> Report {
    let mut report = Report { version, ..Report::default() };
    for (name, check) in checks {
        let cell = match check {
            Check::NotApplicable(reason) => Cell::new(Status::NotApplicable, reason),
            Check::Run(check) => match tokio::time::timeout(Duration::from_secs(30), check).await {
                Ok(Ok(note)) => Cell::new(Status::Ok, note.unwrap_or_default()),
                Ok(Err(e)) => Cell::new(Status::Fail, one_line(e.to_string().as_bytes())),
                Err(_) => Cell::new(Status::Fail, "timed out after 30 s"),
            },
        };
        report.cells.insert(name.to_string(), cell);
    }
    report
}

/// The version of `package` that Cargo.lock resolved.
fn locked_version(package: &str) -> String {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")).unwrap_or_default();
    let marker = format!("name = \"{package}\"\nversion = \"");
    lock.split_once(&marker)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or_else(|| "?".to_string(), |(version, _)| format!("{package} {version}"))
}

/// 0x00..=0xff.
fn all_bytes() -> Vec<u8> {
    (0..=255).collect()
}

mod tokio_pg {
    //! tokio-postgres: its own protocol implementation, binary formats, explicit prepare.

    use super::*;
    use tokio_postgres::error::SqlState;
    use tokio_postgres::{AsyncMessage, Client, NoTls};

    pub fn config(port: u16) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port).user("compat").dbname(APP_DB);
        config
    }

    pub async fn connect(port: u16) -> Result<Client, BoxError> {
        let (client, connection) = config(port).connect(NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn sqlstate(error: &tokio_postgres::Error) -> String {
        error.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {error}"))
    }

    pub async fn simple(port: u16) -> CheckResult {
        let client = connect(port).await?;
        client.batch_execute("CREATE TEMP TABLE t (v int); INSERT INTO t VALUES (1), (2)").await?;
        let rows = client.simple_query("SELECT sum(v) FROM t").await?;
        let sum = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        });
        equal(sum.as_deref(), Some("3"), "sum")?;
        Ok(None)
    }

    pub async fn params(port: u16) -> CheckResult {
        let client = connect(port).await?;
        let row = client.query_one("SELECT $1::int + $2::int, $3::text || '!'", &[&40i32, &2i32, &"hi"]).await?;
        equal((row.get::<_, i32>(0), row.get::<_, String>(1)), (42, "hi!".to_string()), "row")?;
        Ok(None)
    }

    pub async fn prepared(port: u16) -> CheckResult {
        let client = connect(port).await?;
        let statement = client.prepare("SELECT $1::int * 2").await?;
        for i in 0..3i32 {
            equal(client.query_one(&statement, &[&i]).await?.get::<_, i32>(0), i * 2, "result")?;
        }
        let count: i64 = client.query_one("SELECT count(*) FROM pg_prepared_statements", &[]).await?.get(0);
        ensure(count >= 1, "no server-side prepared statement")?;
        Ok(None)
    }

    async fn transaction(port: u16, commit: bool) -> CheckResult {
        let mut client = connect(port).await?;
        client.batch_execute("CREATE TEMP TABLE t (v int)").await?;
        let tx = client.transaction().await?;
        tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
        if commit {
            tx.commit().await?
        } else {
            tx.rollback().await?
        }
        let count: i64 = client.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
        equal(count, i64::from(commit), "rows")?;
        Ok(None)
    }

    pub async fn commit(port: u16) -> CheckResult {
        transaction(port, true).await
    }

    pub async fn rollback(port: u16) -> CheckResult {
        transaction(port, false).await
    }

    pub async fn error_recovery(port: u16) -> CheckResult {
        let client = connect(port).await?;
        client.batch_execute("BEGIN").await?;
        let error = client.query_one("SELECT 1 / 0", &[]).await.err().ok_or("1/0 did not fail")?;
        equal(error.code(), Some(&SqlState::DIVISION_BY_ZERO), "sqlstate")?;
        let error = client.query_one("SELECT 1", &[]).await.err().ok_or("the failed transaction went on")?;
        equal(error.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION), "sqlstate")?;
        client.batch_execute("ROLLBACK").await?;
        equal(client.query_one("SELECT 'recovered'", &[]).await?.get::<_, String>(0), "recovered".into(), "after")?;
        Ok(None)
    }

    pub async fn copy_in(port: u16) -> CheckResult {
        let client = connect(port).await?;
        client.batch_execute("CREATE TEMP TABLE c (id int, name text)").await?;
        let sink = client.copy_in("COPY c FROM STDIN").await?;
        futures_util::pin_mut!(sink);
        let data: String = (0..1000).map(|i| format!("{i}\t{UNICODE} {i}\n")).collect();
        sink.send(Bytes::from(data)).await?;
        equal(sink.finish().await?, 1000, "rows copied")?;
        let max: String = client.query_one("SELECT max(name) FROM c", &[]).await?.get(0);
        equal(max, format!("{UNICODE} 999"), "max(name)")?;
        Ok(None)
    }

    pub async fn copy_out(port: u16) -> CheckResult {
        let client = connect(port).await?;
        let stream = client.copy_out("COPY (SELECT g, 'ü' || g FROM generate_series(1, 10000) g) TO STDOUT").await?;
        let chunks: Vec<Bytes> = stream.try_collect().await?;
        let text = String::from_utf8(chunks.concat())?;
        equal((text.lines().count(), text.lines().last()), (10000, Some("10000\tü10000")), "lines")?;
        Ok(None)
    }

    pub async fn listen_notify(port: u16) -> CheckResult {
        // Notifications arrive through the connection object, not the client.
        let (listener, mut connection) = config(port).connect(NoTls).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                let _ = tx.send(message);
            }
        });
        listener.batch_execute("LISTEN compat_tokio_postgres").await?;
        let sender = connect(port).await?;
        let sender_pid: i32 = sender.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        sender.execute("SELECT pg_notify('compat_tokio_postgres', $1)", &[&UNICODE]).await?;
        let note = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match rx.recv().await {
                    Some(AsyncMessage::Notification(n)) => return Some(n),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await
        .map_err(|_| "no notification within 5 s")?
        .ok_or("the listener's connection ended")?;
        equal((note.channel(), note.payload()), ("compat_tokio_postgres", UNICODE), "notification")?;
        equal(note.process_id(), sender_pid, "sender pid")?;
        Ok(None)
    }

    pub async fn cancel(port: u16) -> CheckResult {
        let client = Arc::new(connect(port).await?);
        let token = client.cancel_token();
        let started = Instant::now();
        let running = tokio::spawn({
            let client = client.clone();
            async move { client.simple_query("SELECT pg_sleep(30)").await }
        });
        tokio::time::sleep(CANCEL_AFTER).await;
        token.cancel_query(NoTls).await?;
        let error = running.await?.err().ok_or("pg_sleep(30) was not cancelled")?;
        let took = started.elapsed();
        equal(sqlstate(&error), "57014".to_string(), "sqlstate")?;
        ensure(took < CANCEL_LIMIT, format!("cancel took {took:?}"))?;
        equal(client.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1, "after the cancel")?;
        Ok(Some(format!("cancelled after {:.1}s", took.as_secs_f64())))
    }

    pub async fn bytea(port: u16) -> CheckResult {
        let client = connect(port).await?;
        let bytes = all_bytes();
        equal(client.query_one("SELECT $1::bytea", &[&bytes]).await?.get::<_, Vec<u8>>(0), bytes, "bytes")?;
        Ok(None)
    }

    pub async fn unicode(port: u16) -> CheckResult {
        let client = connect(port).await?;
        let row =
            client.query_one(&format!("SELECT $1::text, char_length($1::text), '{UNICODE}'"), &[&UNICODE]).await?;
        let got = (row.get::<_, String>(0), row.get::<_, i32>(1), row.get::<_, String>(2));
        equal(got, (UNICODE.to_string(), UNICODE_CHARS, UNICODE.to_string()), "row")?;
        Ok(None)
    }

    pub async fn large_result(port: u16) -> CheckResult {
        let client = connect(port).await?;
        let rows = client.query("SELECT g, repeat('x', 100) FROM generate_series(1, $1) g", &[&LARGE_ROWS]).await?;
        equal((rows.len(), rows.last().map(|r| r.get::<_, i32>(0))), (LARGE_ROWS as usize, Some(LARGE_ROWS)), "rows")?;
        let value: String = client.query_one("SELECT repeat('x', $1)", &[&LARGE_VALUE]).await?.get(0);
        equal(value.len(), LARGE_VALUE as usize, "value out")?;
        let big = vec![0u8; LARGE_VALUE as usize];
        equal(client.query_one("SELECT length($1::bytea)", &[&big]).await?.get::<_, i32>(0), LARGE_VALUE, "value in")?;
        Ok(None)
    }

    pub async fn concurrent(port: u16) -> CheckResult {
        // No pool in tokio-postgres (deadpool-postgres and bb8 are separate crates): 4 clients.
        let sessions = (0..4).map(|_| async move {
            let client = connect(port).await?;
            let pid: i32 = client.query_one("SELECT pg_backend_pid() FROM pg_sleep(0.2)", &[]).await?.get(0);
            Ok::<_, BoxError>(pid)
        });
        let mut pids = futures_util::future::try_join_all(sessions).await?;
        pids.sort();
        pids.dedup();
        equal(pids.len(), 4, "distinct sessions")?;
        Ok(Some("4 clients at once (no pool in the crate)".into()))
    }
}

async fn tokio_postgres_checks(port: u16) -> Report {
    use tokio_pg::*;
    let checks: Vec<(&str, Check)> = vec![
        ("simple", run(simple(port))),
        ("params", run(params(port))),
        ("prepared", run(prepared(port))),
        ("commit", run(commit(port))),
        ("rollback", run(rollback(port))),
        ("error_recovery", run(error_recovery(port))),
        ("copy_in", run(copy_in(port))),
        ("copy_out", run(copy_out(port))),
        ("listen_notify", run(listen_notify(port))),
        ("cancel", run(cancel(port))),
        ("bytea", run(bytea(port))),
        ("unicode", run(unicode(port))),
        ("large_result", run(large_result(port))),
        ("concurrent", run(concurrent(port))),
    ];
    run_checks(locked_version("tokio-postgres"), checks).await
}

mod sqlx_client {
    //! sqlx: statements are prepared and cached (named) by default; `raw_sql` is its simple
    //! query; COPY through `copy_in_raw`/`copy_out_raw`.

    use super::*;
    use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgSslMode};
    use sqlx::{Connection, Executor, PgConnection, Row};

    pub fn options(port: u16) -> PgConnectOptions {
        // Plaintext: the proxy on loopback has no TLS (and sqlx is built without it).
        PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(port)
            .username("compat")
            .database(APP_DB)
            .ssl_mode(PgSslMode::Disable)
    }

    pub async fn connect(port: u16) -> Result<PgConnection, BoxError> {
        Ok(PgConnection::connect_with(&options(port)).await?)
    }

    fn sqlstate(error: &sqlx::Error) -> String {
        match error.as_database_error().and_then(|e| e.code()) {
            Some(code) => code.to_string(),
            None => format!("no SQLSTATE: {error}"),
        }
    }

    pub async fn simple(port: u16) -> CheckResult {
        let mut conn = connect(port).await?;
        conn.execute(sqlx::raw_sql("CREATE TEMP TABLE t (v int); INSERT INTO t VALUES (1), (2)")).await?;
        let rows = conn.fetch_all(sqlx::raw_sql("SELECT sum(v) FROM t")).await?;
        equal(rows.first().map(|r| r.try_get::<i64, _>(0)).transpose()?, Some(3), "sum")?;
        Ok(Some("raw_sql".into()))
    }

    pub async fn params(port: u16) -> CheckResult {
        let mut conn = connect(port).await?;
        let row = sqlx::query("SELECT $1::int + $2::int, $3::text || '!'")
            .bind(40i32)
            .bind(2i32)
            .bind("hi")
            .persistent(false) // the unnamed statement: plain parameters, no statement cache
            .fetch_one(&mut conn)
            .await?;
        equal((row.try_get::<i32, _>(0)?, row.try_get::<String, _>(1)?), (42, "hi!".to_string()), "row")?;
        Ok(None)
    }

    pub async fn prepared(port: u16) -> CheckResult {
        let mut conn = connect(port).await?;
        for i in 0..3i32 {
            let got: i32 = sqlx::query_scalar("SELECT $1::int * 2").bind(i).fetch_one(&mut conn).await?;
            equal(got, i * 2, "result")?;
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements").fetch_one(&mut conn).await?;
        ensure(count >= 1, "no server-side prepared statement")?;
        Ok(Some("sqlx's statement cache".into()))
    }

    async fn transaction(port: u16, commit: bool) -> CheckResult {
        let mut conn = connect(port).await?;
        conn.execute(sqlx::raw_sql("CREATE TEMP TABLE t (v int)")).await?;
        let mut tx = conn.begin().await?;
        sqlx::query("INSERT INTO t VALUES (1)").execute(&mut *tx).await?;
        if commit {
            tx.commit().await?
        } else {
            tx.rollback().await?
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut conn).await?;
        equal(count, i64::from(commit), "rows")?;
        Ok(None)
    }

    pub async fn commit(port: u16) -> CheckResult {
        transaction(port, true).await
    }

    pub async fn rollback(port: u16) -> CheckResult {
        transaction(port, false).await
    }

    pub async fn error_recovery(port: u16) -> CheckResult {
        let mut conn = connect(port).await?;
        let mut tx = conn.begin().await?;
        let error = sqlx::query("SELECT 1 / 0").execute(&mut *tx).await.err().ok_or("1/0 did not fail")?;
        equal(sqlstate(&error), "22012".to_string(), "sqlstate")?;
        let error = sqlx::query("SELECT 1").execute(&mut *tx).await.err().ok_or("the failed transaction went on")?;
        equal(sqlstate(&error), "25P02".to_string(), "sqlstate")?;
        tx.rollback().await?;
        let got: String = sqlx::query_scalar("SELECT 'recovered'").fetch_one(&mut conn).await?;
        equal(got.as_str(), "recovered", "after")?;
        Ok(None)
    }

    pub async fn copy_in(port: u16) -> CheckResult {
        let mut conn = connect(port).await?;
        conn.execute(sqlx::raw_sql("CREATE TEMP TABLE c (id int, name text)")).await?;
        let mut copy = conn.copy_in_raw("COPY c FROM STDIN").await?;
        let data: String = (0..1000).map(|i| format!("{i}\t{UNICODE} {i}\n")).collect();
        copy.send(data.as_bytes()).await?;
        equal(copy.finish().await?, 1000, "rows copied")?;
        let max: String = sqlx::query_scalar("SELECT max(name) FROM c").fetch_one(&mut conn).await?;
        equal(max, format!("{UNICODE} 999"), "max(name)")?;
        Ok(Some("copy_in_raw".into()))
    }

    pub async fn copy_out(port: u16) -> CheckResult {
        let mut conn = connect(port).await?;
        let query = "COPY (SELECT g, 'ü' || g FROM generate_series(1, 10000) g) TO STDOUT";
        let chunks: Vec<Bytes> = conn.copy_out_raw(query).await?.try_collect().await?;
        let text = String::from_utf8(chunks.concat())?;
        equal((text.lines().count(), text.lines().last()), (10000, Some("10000\tü10000")), "lines")?;
        Ok(Some("copy_out_raw".into()))
    }

    pub async fn listen_notify(port: u16) -> CheckResult {
        let pool = PgPoolOptions::new().max_connections(2).connect_with(options(port)).await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen("compat_sqlx").await?;
        let mut sender = connect(port).await?;
        let sender_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut sender).await?;
        sqlx::query("SELECT pg_notify('compat_sqlx', $1)").bind(UNICODE).execute(&mut sender).await?;
        let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .map_err(|_| "no notification within 5 s")??;
        equal((note.channel(), note.payload()), ("compat_sqlx", UNICODE), "notification")?;
        equal(note.process_id() as i32, sender_pid, "sender pid")?;
        Ok(Some("PgListener".into()))
    }

    pub async fn bytea(port: u16) -> CheckResult {
        let mut conn = connect(port).await?;
        let got: Vec<u8> = sqlx::query_scalar("SELECT $1::bytea").bind(all_bytes()).fetch_one(&mut conn).await?;
        equal(got, all_bytes(), "bytes")?;
        Ok(None)
    }

    pub async fn unicode(port: u16) -> CheckResult {
        let mut conn = connect(port).await?;
        let query = format!("SELECT $1::text, char_length($1::text), '{UNICODE}'");
        let row = sqlx::query(&query).bind(UNICODE).fetch_one(&mut conn).await?;
        let got = (row.try_get::<String, _>(0)?, row.try_get::<i32, _>(1)?, row.try_get::<String, _>(2)?);
        equal(got, (UNICODE.to_string(), UNICODE_CHARS, UNICODE.to_string()), "row")?;
        Ok(None)
    }

    pub async fn large_result(port: u16) -> CheckResult {
        let mut conn = connect(port).await?;
        let rows = sqlx::query("SELECT g, repeat('x', 100) FROM generate_series(1, $1) g")
            .bind(LARGE_ROWS)
            .fetch_all(&mut conn)
            .await?;
        let last = rows.last().map(|r| r.try_get::<i32, _>(0)).transpose()?;
        equal((rows.len(), last), (LARGE_ROWS as usize, Some(LARGE_ROWS)), "rows")?;
        let value: String = sqlx::query_scalar("SELECT repeat('x', $1)").bind(LARGE_VALUE).fetch_one(&mut conn).await?;
        equal(value.len(), LARGE_VALUE as usize, "value out")?;
        let big = vec![0u8; LARGE_VALUE as usize];
        let length: i32 = sqlx::query_scalar("SELECT length($1::bytea)").bind(big).fetch_one(&mut conn).await?;
        equal(length, LARGE_VALUE, "value in")?;
        Ok(None)
    }

    pub async fn concurrent(port: u16) -> CheckResult {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options(port))
            .await?;
        let queries =
            (0..8).map(|_| sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid() FROM pg_sleep(0.2)").fetch_one(&pool));
        let mut pids = futures_util::future::try_join_all(queries).await?;
        pool.close().await;
        pids.sort();
        pids.dedup();
        ensure(pids.len() >= 2, format!("only {} session(s) used", pids.len()))?;
        Ok(Some(format!("PgPool, {} sessions", pids.len())))
    }
}

async fn sqlx_checks(port: u16) -> Report {
    use sqlx_client::*;
    let checks: Vec<(&str, Check)> = vec![
        ("simple", run(simple(port))),
        ("params", run(params(port))),
        ("prepared", run(prepared(port))),
        ("commit", run(commit(port))),
        ("rollback", run(rollback(port))),
        ("error_recovery", run(error_recovery(port))),
        ("copy_in", run(copy_in(port))),
        ("copy_out", run(copy_out(port))),
        ("listen_notify", run(listen_notify(port))),
        // sqlx 0.8 keeps the BackendKeyData but has no API to send a CancelRequest; dropping
        // the future leaves the query running until the connection is used again.
        (
            "cancel",
            Check::NotApplicable("sqlx 0.8 has no query-cancel API (it stores the cancel key but never uses it)"),
        ),
        ("bytea", run(bytea(port))),
        ("unicode", run(unicode(port))),
        ("large_result", run(large_result(port))),
        ("concurrent", run(concurrent(port))),
    ];
    run_checks(locked_version("sqlx"), checks).await
}
