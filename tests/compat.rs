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
//!
//! The matrix is run twice: against a proxy in session mode, one copy of each client at a
//! time; then against one in transaction mode with two server connections, three copies of
//! every client at once, so that the clients really share those two connections
//! (`target/compat-matrix-transaction.md`). The programs learn the mode from `COMPAT_MODE`:
//! a few checks compare pids, and in transaction mode BackendKeyData carries the proxy's key
//! and a session's statements may run on either server connection, so those checks say which
//! pid they compare in each mode (see tests/compat/python/compat.py).

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
use lakebase_proxy::proxy::RunningProxy;
use lakebase_proxy::target::PoolMode;
use support::{APP_DB, SCRAM_USER};
use tokio::sync::Semaphore;

/// The checks every client reports, in the matrix's row order, and what each one proves.
const CHECKS: &[(&str, &str)] = &[
    ("simple", "simple query protocol (Query message), several statements in one"),
    ("params", "parameters through the extended protocol (Parse/Bind/Execute)"),
    (
        "prepared",
        "a named server-side prepared statement, reused: run 6 times, then twice more in a transaction that \
         finds it in pg_prepared_statements by its text (in transaction mode its server-side name is the \
         proxy's) and sees it executed there at least twice (SQL PREPARE: found by name, executions counted)",
    ),
    ("commit", "a transaction committed"),
    ("rollback", "a transaction rolled back"),
    ("error_recovery", "an error in a transaction (22012), the next statement refused (25P02), ROLLBACK, go on"),
    ("copy_in", "COPY ... FROM STDIN"),
    ("copy_out", "COPY ... TO STDOUT"),
    (
        "listen_notify",
        "LISTEN on one session, NOTIFY from another, payload and sender pid as the server reports: the pid of \
         the statement that sent it (pg_backend_pid() in the same statement), and in session mode the \
         sender's BackendKeyData too (in transaction mode that is the proxy's key)",
    ),
    ("cancel", "cancel of pg_sleep(30) after 0.5 s: SQLSTATE 57014 within 5 s, session usable after"),
    ("bytea", "bytea with all 256 byte values, round trip"),
    ("unicode", "'ünïcødé ✓ 漢字' round trip, 12 characters server-side"),
    ("large_result", "100,000 rows; a 10 MiB value out (and in, where the client sends parameters)"),
    (
        "concurrent",
        "several sessions at once, through the client's own pool where it has one; sessions counted by \
         server pid in session mode, by the pid in BackendKeyData in transaction mode (where they share the \
         pool's server connections)",
    ),
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
/// How long a check waits for `COMPAT_LOCK` (see [`Pass::lock`]).
const LOCK_WAIT: Duration = Duration::from_secs(60);

const UNICODE: &str = "ünïcødé ✓ 漢字";
const UNICODE_CHARS: i32 = 12;
const LARGE_ROWS: i32 = 100_000;
const LARGE_VALUE: i32 = 10 * 1024 * 1024;

/// One run of the whole matrix against one proxy.
struct Pass {
    mode: PoolMode,
    /// Copies of each client run at the same time; a cell is ok only if every copy says so.
    copies: usize,
    /// Client programs run at the same time, each with its copies (the machine has two
    /// cores; most of a client's time is spent waiting on the proxy and the server).
    programs_at_once: usize,
    /// Server connections per pool, when not the default.
    max_size: Option<usize>,
    /// In transaction mode a client that waits this long for a server connection is stuck
    /// behind connections that will not come back (say, every one pinned): it gets 53300 and
    /// its check fails, rather than the whole program at `CLIENT_TIMEOUT`.
    checkout_timeout: Option<Duration>,
    /// Checks that hold a server connection while they wait for another session (LISTEN
    /// waiting for a NOTIFY, psql's cancel waiting to see its query in pg_stat_activity) take
    /// a lock, a directory they create: with two server connections for every client, two of
    /// them at once could hold both and wait forever for the other session's turn.
    lock: bool,
    title: &'static str,
    file: &'static str,
}

const PASSES: &[Pass] = &[
    Pass {
        mode: PoolMode::Session,
        copies: 1,
        programs_at_once: 3,
        max_size: None,
        checkout_timeout: None,
        lock: false,
        title: "session mode (the default), one copy of each client",
        file: "compat-matrix.md",
    },
    Pass {
        mode: PoolMode::Transaction,
        copies: 3,
        programs_at_once: 2,
        max_size: Some(2),
        checkout_timeout: Some(Duration::from_secs(20)),
        lock: true,
        title: "transaction mode, 2 server connections, 3 copies of every client at once",
        file: "compat-matrix-transaction.md",
    },
];

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

    /// As a client program reports it, for notes.
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
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
    /// Its settings besides the connection's (documented at the top of the program).
    env: &'static [(&'static str, &'static str)],
    extra: &'static [&'static str],
}

const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";
/// Java 17 prints in the locale's charset unless told. The classes are compiled once, see
/// [`compile_jdbc_checks`].
const JAVA: &[&str] = &["java", "-Dfile.encoding=UTF-8", "-Dsun.stdout.encoding=UTF-8", "CheckJdbc"];

const EXTERNAL: &[External] = &[
    External {
        name: "psql",
        needs: &["bash", "psql"],
        needs_files: &[],
        command: &["bash", "psql.sh"],
        env: &[],
        extra: &["watch", "on_error_stop"],
    },
    External {
        name: "pgbench",
        needs: &["bash", "pgbench", "psql"],
        needs_files: &[],
        command: &["bash", "pgbench.sh"],
        env: &[],
        extra: &["init"],
    },
    External {
        name: "psycopg3",
        needs: &["python3"],
        needs_files: &[],
        command: &["python3", "python/check_psycopg3.py"],
        env: &[],
        extra: &[],
    },
    External {
        // Every statement prepared server-side under a name, at its first run.
        name: "psycopg3 (prepare_threshold=0)",
        needs: &["python3"],
        needs_files: &[],
        command: &["python3", "python/check_psycopg3.py"],
        env: &[("COMPAT_PREPARE_THRESHOLD", "0")],
        extra: &[],
    },
    External {
        name: "psycopg2",
        needs: &["python3"],
        needs_files: &[],
        command: &["python3", "python/check_psycopg2.py"],
        env: &[],
        extra: &[],
    },
    External {
        name: "asyncpg",
        needs: &["python3"],
        needs_files: &[],
        command: &["python3", "python/check_asyncpg.py"],
        env: &[],
        extra: &[],
    },
    External {
        name: "sqlalchemy",
        needs: &["python3"],
        needs_files: &[],
        command: &["python3", "python/check_sqlalchemy.py"],
        env: &[],
        extra: &[],
    },
    External {
        name: "node-pg",
        needs: &["node"],
        needs_files: &[],
        command: &["node", "node/check_pg.js"],
        env: &[],
        extra: &[],
    },
    External {
        name: "pgjdbc",
        needs: &["javac", "java"],
        needs_files: &[(JDBC_JAR, "apt-get install libpostgresql-jdbc-java")],
        command: JAVA,
        env: &[],
        extra: &[],
    },
    External {
        // Named server-side statements from the first run of each.
        name: "pgjdbc (prepareThreshold=1)",
        needs: &["javac", "java"],
        needs_files: &[(JDBC_JAR, "apt-get install libpostgresql-jdbc-java")],
        command: JAVA,
        env: &[("COMPAT_PREPARE_THRESHOLD", "1")],
        extra: &[],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_compatibility_matrix() {
    let jdbc = Arc::new(compile_jdbc_checks().await);
    let mut failures = Vec::new();
    for pass in PASSES {
        failures.extend(run_pass(pass, &jdbc).await);
    }
    assert!(failures.is_empty(), "{} failed cell(s):\n{}", failures.len(), failures.join("\n"));
}

/// Runs every client against a proxy set up for `pass`, writes the matrix, and returns the
/// failed cells.
async fn run_pass(pass: &'static Pass, jdbc: &Arc<Result<tempfile::TempDir, String>>) -> Vec<String> {
    let started = Instant::now();
    let mut config = support::proxy_config(SCRAM_USER);
    config.pool.mode = pass.mode;
    config.pool.max_size = pass.max_size.unwrap_or(config.pool.max_size);
    config.pool.checkout_timeout = pass.checkout_timeout.unwrap_or(config.pool.checkout_timeout);
    let proxy = RunningProxy::start(config).await.expect("proxy starts");
    let lock_dir = tempfile::tempdir().expect("a directory for COMPAT_LOCK");
    let ctx = Ctx {
        port: proxy.tcp_address(0).port(),
        transaction: pass.mode == PoolMode::Transaction,
        lock: pass.lock.then(|| Arc::new(lock_dir.path().join("lock"))),
        copy: 0,
    };

    let slots = Arc::new(Semaphore::new(pass.programs_at_once));
    let mut runs: Vec<BoxFuture<'static, (&'static str, Report)>> = Vec::new();
    for client in EXTERNAL {
        let (slots, ctx, jdbc) = (slots.clone(), ctx.clone(), jdbc.clone());
        runs.push(Box::pin(async move {
            let _slot = slots.acquire().await.unwrap();
            let copies = (1..=pass.copies).map(|copy| run_external(client, Ctx { copy, ..ctx.clone() }, &jdbc));
            (client.name, merge(futures_util::future::join_all(copies).await))
        }));
    }
    let copies = |ctx: &Ctx| (1..=pass.copies).map(|copy| Ctx { copy, ..ctx.clone() }).collect::<Vec<_>>();
    let tokio_copies = copies(&ctx);
    runs.push(Box::pin(async move {
        let reports = futures_util::future::join_all(tokio_copies.into_iter().map(|c| timed(tokio_postgres_checks(c))));
        ("tokio-postgres", merge(reports.await))
    }));
    let sqlx_copies = copies(&ctx);
    runs.push(Box::pin(async move {
        let reports = futures_util::future::join_all(sqlx_copies.into_iter().map(|c| timed(sqlx_checks(c))));
        ("sqlx", merge(reports.await))
    }));
    let reports: Vec<(&str, Report)> = futures_util::future::join_all(runs).await;
    proxy.stop().await;

    let matrix = render(pass, &reports, started.elapsed());
    println!("{matrix}");
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").to_path_buf();
    let path = target_dir.join(pass.file);
    std::fs::write(&path, &matrix).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!("(written to {})", path.display());

    reports
        .iter()
        .flat_map(|(client, report)| {
            let checks = CHECKS.iter().chain(EXTRA_CHECKS).map(|(check, _)| *check);
            let failed = checks.filter_map(|check| Some((check, report.cells.get(check)?)));
            let failed = failed.filter(|(_, cell)| cell.status == Status::Fail);
            let mode = pass.mode.name();
            failed.map(move |(check, cell)| format!("  {mode}: {client} / {check}: {}", cell.detail))
        })
        .collect()
}

/// What a client run needs to know of its pass: where the proxy is, whether it pools by
/// transaction, the lock (see [`Pass::lock`]), and which copy it is (1-based; 0 outside a
/// run).
#[derive(Clone)]
struct Ctx {
    port: u16,
    transaction: bool,
    lock: Option<Arc<PathBuf>>,
    copy: usize,
}

/// The copies' reports as one: a cell fails if any copy's does (saying which copies and
/// why), is n/a if every copy's is, and is ok if every copy's is.
fn merge(mut copies: Vec<Report>) -> Report {
    if copies.len() == 1 {
        return copies.pop().unwrap();
    }
    let mut merged = Report {
        version: copies.iter().map(|r| r.version.clone()).find(|v| !v.is_empty()).unwrap_or_default(),
        elapsed: copies.iter().map(|r| r.elapsed).max().unwrap_or_default(),
        ..Report::default()
    };
    let names: std::collections::BTreeSet<String> = copies.iter().flat_map(|r| r.cells.keys().cloned()).collect();
    for name in names {
        let missing = Cell::new(Status::Fail, "not reported");
        let cells: Vec<&Cell> = copies.iter().map(|r| r.cells.get(&name).unwrap_or(&missing)).collect();
        let all = |status| cells.iter().all(|c| c.status == status);
        let (status, shown): (Status, Vec<(usize, &Cell)>) = if all(Status::Ok) || all(Status::NotApplicable) {
            (cells[0].status, cells.iter().copied().enumerate().collect())
        } else if cells.iter().any(|c| c.status == Status::Fail) {
            (Status::Fail, cells.iter().copied().enumerate().filter(|(_, c)| c.status == Status::Fail).collect())
        } else {
            (Status::Fail, cells.iter().copied().enumerate().collect())
        };
        // One note when the copies agree, else each copy's.
        let detail = if status != Status::Fail && shown.iter().all(|(_, c)| c.detail == shown[0].1.detail) {
            shown[0].1.detail.clone()
        } else {
            let each = shown.iter().map(|(n, c)| format!("copy {}: {} {}", n + 1, c.status.word(), c.detail));
            each.collect::<Vec<_>>().join("; ")
        };
        merged.cells.insert(name, Cell::new(status, detail));
    }
    merged
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
async fn run_external(client: &External, ctx: Ctx, jdbc: &Result<tempfile::TempDir, String>) -> Report {
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
        let name_text = name.to_string_lossy();
        if name_text.starts_with("PG") || name_text.starts_with("COMPAT_") {
            command.env_remove(name);
        }
    }
    command
        .args(&client.command[1..])
        .current_dir(compat_dir())
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", ctx.port.to_string())
        .env("PGUSER", "compat")
        .env("PGDATABASE", APP_DB)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(client.env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if ctx.transaction {
        command.env("COMPAT_MODE", "transaction");
    }
    if let Some(lock) = &ctx.lock {
        command.env("COMPAT_LOCK", lock.as_os_str());
    }

    // pgjdbc: `java` finds the compiled checks on CLASSPATH.
    if client.command == JAVA {
        match jdbc {
            Ok(classes) => command.env("CLASSPATH", format!("{JDBC_JAR}:{}", classes.path().display())),
            Err(reason) => return fail_all(reason.clone()),
        };
    }

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

/// Compiles the pgjdbc checks once for every run of them, into a temporary directory.
async fn compile_jdbc_checks() -> Result<tempfile::TempDir, String> {
    if !on_path("javac") {
        return Err("missing: javac (not on PATH)".to_string());
    }
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

fn render(pass: &Pass, reports: &[(&str, Report)], total: Duration) -> String {
    let mut rows: Vec<(&str, &str)> = CHECKS.to_vec();
    rows.extend(EXTRA_CHECKS.iter().filter(|(name, _)| reports.iter().any(|(_, r)| r.cells.contains_key(*name))));
    let mut out = String::new();
    writeln!(out, "## Client compatibility matrix: {}\n", pass.title).unwrap();
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
    let copies = if pass.copies == 1 { String::new() } else { format!(", each {} times at once", pass.copies) };
    let programs = pass.programs_at_once;
    writeln!(out, "\nTotal {:.1} s, {programs} client programs at a time{copies}.", total.as_secs_f64()).unwrap();
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
                Ok(Err(e)) => Cell::new(Status::Fail, one_line(with_sources(&*e).as_bytes())),
                Err(_) => Cell::new(Status::Fail, "timed out after 30 s"),
            },
        };
        report.cells.insert(name.to_string(), cell);
    }
    report
}

/// An error and its causes: tokio-postgres says only "db error" until its source, the
/// server's (or the proxy's) ErrorResponse, is shown.
fn with_sources(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        write!(text, ": {cause}").unwrap();
        source = cause.source();
    }
    text
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

impl Ctx {
    /// Marks this copy's statements and channels among those of the copies running at the
    /// same time (the programs' `tag`).
    fn tag(&self, client: &str) -> String {
        format!("compat_{client}_{}_{}", std::process::id(), self.copy)
    }

    /// Takes the lock of [`Pass::lock`], when the pass has one, until the guard is dropped.
    async fn exclusive(&self) -> Result<Exclusive, BoxError> {
        let Some(path) = self.lock.clone() else { return Ok(Exclusive(None)) };
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match std::fs::create_dir(&*path) {
                Ok(()) => return Ok(Exclusive(Some(path))),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(format!("COMPAT_LOCK {}: {e}", path.display()).into()),
            }
        }
    }
}

/// The lock of [`Pass::lock`], given back when dropped.
struct Exclusive(Option<Arc<PathBuf>>);

impl Drop for Exclusive {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_dir(&**path);
        }
    }
}

/// The statements whose text holds `$1` (a tag) on the server connection that runs this: its
/// name, how often it was executed there, and whether SQL PREPARE made it.
const PREPARED_LOOKUP: &str = "SELECT name, (generic_plans + custom_plans)::int, from_sql FROM pg_prepared_statements \
                               WHERE strpos(statement, $1) > 0";

/// What [`PREPARED_LOOKUP`] found, run in the transaction of the statement's last `runs`
/// executions: exactly one protocol-level statement with this text on that server connection,
/// executed at least `runs` times there. In transaction mode its name is the proxy's (`_lbpN`),
/// so it is found by its text; the count shows the client's statement was reused, not parsed
/// again under another name.
fn check_prepared(rows: Vec<(String, i32, bool)>, runs: i32) -> Result<String, BoxError> {
    equal(rows.len(), 1, "server-side statements with this text")?;
    let (name, executions, from_sql) = &rows[0];
    ensure(!from_sql, format!("{name} was prepared by SQL PREPARE, not by the protocol"))?;
    ensure(*executions >= runs, format!("{name} executed {executions} time(s) on this server, want >= {runs}"))?;
    Ok(format!("{name}, executed {executions} times on the server"))
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

    pub async fn prepared(ctx: Ctx) -> CheckResult {
        let mut client = connect(ctx.port).await?;
        let tag = ctx.tag("tokio_postgres");
        let statement = client.prepare(&format!("SELECT $1::int * 2 /* {tag} */")).await?;
        // Outside a transaction block each run may take another server connection in
        // transaction mode.
        for i in 0..6i32 {
            equal(client.query_one(&statement, &[&i]).await?.get::<_, i32>(0), i * 2, "result")?;
        }
        // The last runs and the lookup in one transaction: one server connection.
        let tx = client.transaction().await?;
        for i in 0..2i32 {
            equal(tx.query_one(&statement, &[&i]).await?.get::<_, i32>(0), i * 2, "result")?;
        }
        let rows = tx.query(PREPARED_LOOKUP, &[&tag]).await?;
        tx.commit().await?;
        Ok(Some(check_prepared(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect(), 2)?))
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

    pub async fn listen_notify(ctx: Ctx) -> CheckResult {
        let (port, _lock, channel) = (ctx.port, ctx.exclusive().await?, ctx.tag("tokio_postgres"));
        // Notifications arrive through the connection object, not the client.
        let (listener, mut connection) = config(port).connect(NoTls).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                let _ = tx.send(message);
            }
        });
        listener.batch_execute(&format!("LISTEN {channel}")).await?;
        let sender = connect(port).await?;
        // The NOTIFY and pg_backend_pid() in one statement: the pid of the server process that
        // sent it, in transaction mode too.
        let query = "SELECT pg_backend_pid() FROM pg_notify($1, $2)";
        let sent_by: i32 = sender.query_one(query, &[&channel, &UNICODE]).await?.get(0);
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
        equal((note.channel(), note.payload()), (channel.as_str(), UNICODE), "notification")?;
        equal(note.process_id(), sent_by, "sender pid")?;
        if !ctx.transaction {
            // In session mode every statement of the sender's session runs in that process.
            let session_pid: i32 = sender.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
            equal(note.process_id(), session_pid, "the sender session's pid")?;
        }
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

    pub async fn concurrent(ctx: Ctx) -> CheckResult {
        let port = ctx.port;
        // No pool in tokio-postgres (deadpool-postgres and bb8 are separate crates): 4 clients.
        let sessions = (0..4).map(|_| async move {
            let client = connect(port).await?;
            let pid: i32 = client.query_one("SELECT pg_backend_pid() FROM pg_sleep(0.2)", &[]).await?.get(0);
            Ok::<_, BoxError>(pid)
        });
        let mut pids = futures_util::future::try_join_all(sessions).await?;
        pids.sort();
        pids.dedup();
        if ctx.transaction {
            // The 4 sessions share the pool's server connections, so their server pids do not
            // tell them apart, and tokio-postgres does not show the pid of BackendKeyData:
            // they are 4 connections by construction, all answered.
            return Ok(Some(format!(
                "4 clients at once (no pool in the crate), on {} server connection(s)",
                pids.len()
            )));
        }
        equal(pids.len(), 4, "distinct sessions")?;
        Ok(Some("4 clients at once (no pool in the crate)".into()))
    }
}

async fn tokio_postgres_checks(ctx: Ctx) -> Report {
    use tokio_pg::*;
    let port = ctx.port;
    let checks: Vec<(&str, Check)> = vec![
        ("simple", run(simple(port))),
        ("params", run(params(port))),
        ("prepared", run(prepared(ctx.clone()))),
        ("commit", run(commit(port))),
        ("rollback", run(rollback(port))),
        ("error_recovery", run(error_recovery(port))),
        ("copy_in", run(copy_in(port))),
        ("copy_out", run(copy_out(port))),
        ("listen_notify", run(listen_notify(ctx.clone()))),
        ("cancel", run(cancel(port))),
        ("bytea", run(bytea(port))),
        ("unicode", run(unicode(port))),
        ("large_result", run(large_result(port))),
        ("concurrent", run(concurrent(ctx.clone()))),
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

    pub async fn prepared(ctx: Ctx) -> CheckResult {
        let mut conn = connect(ctx.port).await?;
        let tag = ctx.tag("sqlx");
        let query = format!("SELECT $1::int * 2 /* {tag} */");
        // Outside a transaction block each run may take another server connection in
        // transaction mode.
        for i in 0..6i32 {
            let got: i32 = sqlx::query_scalar(&query).bind(i).fetch_one(&mut conn).await?;
            equal(got, i * 2, "result")?;
        }
        // The last runs and the lookup in one transaction: one server connection.
        let mut tx = conn.begin().await?;
        for i in 0..2i32 {
            let got: i32 = sqlx::query_scalar(&query).bind(i).fetch_one(&mut *tx).await?;
            equal(got, i * 2, "result")?;
        }
        let rows: Vec<(String, i32, bool)> = sqlx::query_as(PREPARED_LOOKUP).bind(&tag).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(format!("sqlx's statement cache: {}", check_prepared(rows, 2)?)))
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

    pub async fn listen_notify(ctx: Ctx) -> CheckResult {
        let (port, _lock, channel) = (ctx.port, ctx.exclusive().await?, ctx.tag("sqlx"));
        let pool = PgPoolOptions::new().max_connections(2).connect_with(options(port)).await?;
        let result = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            let mut sender = connect(port).await?;
            // The NOTIFY and pg_backend_pid() in one statement: the pid of the server process
            // that sent it, in transaction mode too.
            let sent_by: i32 = sqlx::query_scalar("SELECT pg_backend_pid() FROM pg_notify($1, $2)")
                .bind(&channel)
                .bind(UNICODE)
                .fetch_one(&mut sender)
                .await?;
            let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
                .await
                .map_err(|_| "no notification within 5 s")??;
            equal((note.channel(), note.payload()), (channel.as_str(), UNICODE), "notification")?;
            equal(note.process_id() as i32, sent_by, "sender pid")?;
            if !ctx.transaction {
                // In session mode every statement of the sender's session runs in that process.
                let session_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut sender).await?;
                equal(note.process_id() as i32, session_pid, "the sender session's pid")?;
            }
            Ok::<_, BoxError>(Some("PgListener".into()))
        }
        .await;
        // The listening session ends here, not whenever the pool's tasks get to it: in
        // transaction mode it holds one of the two server connections until it does.
        pool.close().await;
        result
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

    pub async fn concurrent(ctx: Ctx) -> CheckResult {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options(ctx.port))
            .await?;
        let queries =
            (0..8).map(|_| sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid() FROM pg_sleep(0.2)").fetch_one(&pool));
        let pids = futures_util::future::try_join_all(queries).await;
        let sessions = pool.size();
        pool.close().await;
        let mut pids = pids?;
        pids.sort();
        pids.dedup();
        if ctx.transaction {
            // The sessions share the pool's server connections, so their server pids do not
            // tell them apart, and sqlx does not show the pid of BackendKeyData: the pool's own
            // count of open connections counts them.
            ensure(sessions >= 2, format!("only {sessions} session(s) used"))?;
            return Ok(Some(format!("PgPool, {sessions} sessions on {} server connection(s)", pids.len())));
        }
        ensure(pids.len() >= 2, format!("only {} session(s) used", pids.len()))?;
        Ok(Some(format!("PgPool, {} sessions", pids.len())))
    }
}

async fn sqlx_checks(ctx: Ctx) -> Report {
    use sqlx_client::*;
    let port = ctx.port;
    let checks: Vec<(&str, Check)> = vec![
        ("simple", run(simple(port))),
        ("params", run(params(port))),
        ("prepared", run(prepared(ctx.clone()))),
        ("commit", run(commit(port))),
        ("rollback", run(rollback(port))),
        ("error_recovery", run(error_recovery(port))),
        ("copy_in", run(copy_in(port))),
        ("copy_out", run(copy_out(port))),
        ("listen_notify", run(listen_notify(ctx.clone()))),
        // sqlx 0.8 keeps the BackendKeyData but has no API to send a CancelRequest; dropping
        // the future leaves the query running until the connection is used again.
        (
            "cancel",
            Check::NotApplicable("sqlx 0.8 has no query-cancel API (it stores the cancel key but never uses it)"),
        ),
        ("bytea", run(bytea(port))),
        ("unicode", run(unicode(port))),
        ("large_result", run(large_result(port))),
        ("concurrent", run(concurrent(ctx.clone()))),
    ];
    run_checks(locked_version("sqlx"), checks).await
}
