//! The real binary with real clients: psql and pgbench through lakebase-proxy to a TLS
//! PostgreSQL, over TCP, a unix socket and client-side TLS.

mod support;

use std::process::{Command, Output};

use support::binary::ProxyProcess;
use support::{APP_DB, PASSWORD, PgServer, SCRAM_USER};
use test_support::pki::TestPki;

impl ProxyProcess {
    /// The proxy for the shared server's scram_user with `extra` arguments.
    fn start(extra: &[&str]) -> ProxyProcess {
        let pg = PgServer::shared();
        let target = format!(
            "postgresql://{SCRAM_USER}@localhost:{}/{APP_DB}?sslrootcert={}",
            pg.port(),
            pg.ca_path().display()
        );
        let mut args = vec![target];
        args.extend(extra.iter().map(|a| a.to_string()));
        ProxyProcess::spawn(&args, &[])
    }
}

/// Runs psql with `connection` (a conninfo string) and `args`; returns the output.
fn psql(connection: &str, args: &[&str]) -> Output {
    Command::new("psql")
        .arg("-X")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-At")
        .arg("-d")
        .arg(connection)
        .args(args)
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "20")
        .output()
        .expect("run psql")
}

fn stdout_of(output: Output) -> String {
    assert!(output.status.success(), "psql failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn psql_with_no_flags_lands_in_the_target_database_over_a_unix_socket() {
    let pg = PgServer::shared();
    let sockets = tempfile::tempdir().unwrap();
    let command = format!("cat {}", pg.password_file().display());
    let proxy =
        ProxyProcess::start(&["--unix-socket", sockets.path().to_str().unwrap(), "--password-command", &command]);
    // Like `psql -h DIR`: no user, no database, no password.
    let output = psql(
        &format!("host={} port={}", sockets.path().display(), proxy.port),
        &["-c", "SELECT current_user || ' ' || current_database()"],
    );
    assert_eq!(stdout_of(output), format!("{SCRAM_USER} {APP_DB}"));
    let output = psql(&format!("host=127.0.0.1 port={}", proxy.port), &["-c", "SELECT 1"]);
    assert_eq!(stdout_of(output), "1");
}

#[test]
fn psql_copy_large_objects_and_errors() {
    let pg = PgServer::shared();
    let proxy = ProxyProcess::start(&["--password-file", pg.password_file().to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rows.tsv");
    let rows: String = (0..5000).map(|i| format!("{i}\tvalue {i}\n")).collect();
    std::fs::write(&data, &rows).unwrap();
    let blob = dir.path().join("blob.bin");
    std::fs::write(&blob, (0..200_000u32).map(|i| (i % 256) as u8).collect::<Vec<_>>()).unwrap();
    let exported = dir.path().join("exported.bin");
    let copied_out = dir.path().join("out.tsv");
    let script = format!(
        "CREATE TEMP TABLE t (id int, v text);\n\
         \\copy t FROM '{data}'\n\
         SELECT count(*) FROM t;\n\
         \\copy t TO '{out}'\n\
         BEGIN;\n\
         \\lo_import '{blob}'\n\
         \\lo_export :LASTOID '{exported}'\n\
         ROLLBACK;\n",
        data = data.display(),
        out = copied_out.display(),
        blob = blob.display(),
        exported = exported.display()
    );
    let script_path = dir.path().join("script.sql");
    std::fs::write(&script_path, script).unwrap();
    let output = psql(&format!("host=127.0.0.1 port={}", proxy.port), &["-f", script_path.to_str().unwrap()]);
    let text = stdout_of(output);
    assert!(text.lines().any(|l| l == "5000"), "{text}");
    assert_eq!(std::fs::read_to_string(&copied_out).unwrap(), rows, "\\copy out returns what went in");
    // \lo_import and \lo_export use the FunctionCall message.
    assert_eq!(std::fs::read(&exported).unwrap(), std::fs::read(&blob).unwrap());
    // An error is reported with its SQLSTATE and the session goes on.
    let output = psql(&format!("host=127.0.0.1 port={}", proxy.port), &["-v", "VERBOSITY=verbose", "-c", "SELECT 1/0"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("22012"), "{output:?}");
}

#[test]
fn pgbench_runs_through_the_proxy_without_failures() {
    let pg = PgServer::shared();
    let password_file = pg.password_file();
    // The default single event loop, then a multi-threaded runtime; with and without a new
    // connection per transaction.
    for (threads, mode) in [("1", "-M prepared"), ("3", "-M prepared"), ("3", "-C")] {
        // Session mode: each of pgbench's 8 clients holds an upstream connection throughout.
        let proxy = ProxyProcess::start(&[
            "--password-file",
            password_file.to_str().unwrap(),
            "--max-pool-size",
            "8",
            "--worker-threads",
            threads,
        ]);
        let connection = format!("host=127.0.0.1 port={} dbname={APP_DB}", proxy.port);
        if threads == "1" {
            let init = Command::new("pgbench").args(["-i", "-s", "1", "-q", &connection]).output().unwrap();
            assert!(init.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
        }
        let run = Command::new("pgbench")
            .args(["-c", "8", "-j", "2", "-t", "100"])
            .args(mode.split(' '))
            .arg(&connection)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&run.stdout);
        let context = format!("--worker-threads {threads}, {mode}: {report} {}", String::from_utf8_lossy(&run.stderr));
        assert!(run.status.success(), "{context}");
        assert!(report.contains("number of transactions actually processed: 800/800"), "{context}");
        assert!(report.contains("number of failed transactions: 0"), "{context}");
    }
}

#[test]
fn clients_can_use_tls_to_the_proxy() {
    let pg = PgServer::shared();
    let pki = TestPki::new();
    let (cert, key) = pki.leaf(&["localhost", "127.0.0.1"]);
    let proxy = ProxyProcess::start(&[
        "--password-file",
        pg.password_file().to_str().unwrap(),
        "--client-cert",
        cert.to_str().unwrap(),
        "--client-key",
        key.to_str().unwrap(),
    ]);
    let connection =
        format!("host=localhost port={} sslmode=verify-full sslrootcert={}", proxy.port, pki.ca_path().display());
    let output = psql(&connection, &["-c", "\\conninfo"]);
    let text = stdout_of(output);
    assert!(text.contains("SSL connection"), "{text}");
}

#[test]
fn sigterm_exits_cleanly_and_logs_hold_no_password() {
    let pg = PgServer::shared();
    let proxy = ProxyProcess::start(&["--password-file", pg.password_file().to_str().unwrap(), "--log-level", "trace"]);
    let output = psql(&format!("host=127.0.0.1 port={}", proxy.port), &["-c", "SELECT 1"]);
    assert_eq!(stdout_of(output), "1");
    let (status, log) = proxy.terminate();
    assert!(status.success(), "exit status {status}: {log}");
    assert!(log.contains("session ended"), "one line per session at info: {log}");
    assert!(!log.contains(PASSWORD), "the password leaked into the log");
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    // No upstream is contacted before a client arrives, so nothing needs to listen there.
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("pw");
    std::fs::write(&password, "unused\n").unwrap();
    let target = format!("postgresql://app@localhost:{}/app", test_support::net::free_port());
    let proxy = ProxyProcess::spawn(&[target, format!("--password-file={}", password.display())], &[]);
    let (status, log) = proxy.terminate();
    assert!(status.success(), "exit status {status}: {log}");
    assert!(log.contains("INFO") && log.contains("target ready"), "a levelled line was logged: {log}");
    assert!(!log.contains('\u{1b}'), "escape codes in a log written to a file: {log:?}");
}

#[test]
fn bad_arguments_fail_with_a_readable_message() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_lakebase-proxy")).args(["postgresql://user:hunter2@h/db"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--password-file") && !stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn the_connection_test_reports_what_it_used() {
    let pg = PgServer::shared();
    let target =
        format!("postgresql://{SCRAM_USER}@localhost:{}/{APP_DB}?sslrootcert={}", pg.port(), pg.ca_path().display());
    let output = Command::new(env!("CARGO_BIN_EXE_lakebase-proxy"))
        .args([target.as_str(), "--password-file", pg.password_file().to_str().unwrap(), "--run-connection-test"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report} {}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains(&format!("role      {SCRAM_USER}")) && report.contains("result    OK"), "{report}");
    assert!(!report.contains(PASSWORD));
    // A wrong password fails with the server's words and exit code 1.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("pw");
    std::fs::write(&wrong, "wrong\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lakebase-proxy"))
        .args([target.as_str(), "--password-file", wrong.to_str().unwrap(), "--run-connection-test"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("password authentication failed"));
}
