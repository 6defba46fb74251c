//! Smoke tests for the integration-test harness: `tests/support` and the test-support crate
//! under it.

mod support;

use std::process::{Command, Output};

use support::{APP_DB, CLEAR_USER, MD5_USER, PASSWORD, PgServer, SCRAM_USER};
use test_support::pki::TestPki;
use test_support::postgres::pg_bin;
use test_support::tls;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const USERS: [&str; 3] = [SCRAM_USER, MD5_USER, CLEAR_USER];

/// Runs `psql` over TCP as `user` (not as the superuser).
fn psql(server: &PgServer, conn: &str, password: &str, sql: &str) -> Output {
    let conn = format!(
        "port={} dbname={APP_DB} sslrootcert={} connect_timeout=10 {conn}",
        server.port(),
        server.ca_path().display()
    );
    Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", &conn, "-c", sql])
        .env("PGPASSWORD", password)
        .output()
        .expect("spawn psql")
}

fn stdout_ok(out: &Output) -> String {
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr_err(out: &Output) -> String {
    assert!(!out.status.success(), "psql unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const WHOAMI: &str = "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[test]
fn every_password_method_logs_in_over_verified_tls() {
    let pg = PgServer::shared();
    for user in USERS {
        for host in ["localhost", "127.0.0.1"] {
            let conn = format!("host={host} user={user} sslmode=verify-full");
            let out = psql(pg, &conn, PASSWORD, WHOAMI);
            assert_eq!(stdout_ok(&out), format!("{user}|t"), "{user}@{host}");
        }
        // PG15 no longer lets everyone create in `public`: the harness grants it.
        let conn = format!("host=localhost user={user} sslmode=verify-full");
        let sql = format!(
            "CREATE TABLE t_{user} (x int); CREATE TEMP TABLE tmp (x int); \
             INSERT INTO tmp VALUES (1); SELECT count(*) FROM tmp"
        );
        assert_eq!(stdout_ok(&psql(pg, &conn, PASSWORD, &sql)), "1");
    }
}

#[test]
fn plaintext_is_rejected() {
    let pg = PgServer::shared();
    for user in USERS {
        let conn = format!("host=127.0.0.1 user={user} sslmode=disable");
        let err = stderr_err(&psql(pg, &conn, PASSWORD, "SELECT 1"));
        assert!(err.contains("pg_hba.conf rejects connection"), "{err}");
    }
}

#[test]
fn wrong_password_is_rejected() {
    let pg = PgServer::shared();
    for user in USERS {
        let conn = format!("host=localhost user={user} sslmode=verify-full");
        let err = stderr_err(&psql(pg, &conn, "wrong", "SELECT 1"));
        assert!(err.contains("password authentication failed"), "{err}");
    }
}

#[test]
fn roles_store_the_expected_password_kinds() {
    let pg = PgServer::shared();
    let rows = pg.superuser_sql(
        "SELECT rolname || '=' || split_part(rolpassword, '$', 1) FROM pg_authid \
         WHERE rolname LIKE '%\\_user' ORDER BY rolname",
    );
    let md5_row = rows.lines().find(|l| l.starts_with("md5_user=")).unwrap();
    assert!(md5_row.starts_with("md5_user=md5"), "{rows}");
    assert!(rows.contains("clear_user=SCRAM-SHA-256"), "{rows}");
    assert!(rows.contains("scram_user=SCRAM-SHA-256"), "{rows}");
    let owner = pg.superuser_sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'");
    assert_eq!(owner, SCRAM_USER);
    let pw = std::fs::read_to_string(pg.password_file()).unwrap();
    assert_eq!(pw, format!("{PASSWORD}\n"));
}

/// Sends SSLRequest and attempts a rustls handshake, as the proxy will.
async fn rustls_handshake(port: u16, ca: &std::path::Path, name: &str) -> std::io::Result<()> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    assert_eq!(tls::ssl_request(&mut tcp).await?, b'S');
    let mut tls = tls::handshake(tcp, name, ca, &[]).await?;
    tls.shutdown().await.ok();
    Ok(())
}

#[tokio::test]
async fn rustls_accepts_the_server_chain_and_rejects_other_cas() {
    let pg = PgServer::shared();
    for name in ["localhost", "127.0.0.1"] {
        rustls_handshake(pg.port(), pg.ca_path(), name)
            .await
            .unwrap_or_else(|e| panic!("rustls handshake for {name}: {e}"));
    }
    let other = TestPki::new();
    let err =
        rustls_handshake(pg.port(), other.ca_path(), "localhost").await.expect_err("a foreign CA must not verify");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let wrong_name = rustls_handshake(pg.port(), pg.ca_path(), "example.com").await;
    assert!(wrong_name.is_err());
    // Leaves from a standalone PKI are usable files.
    let (cert, key) = other.leaf(&["proxy.test", "::1"]);
    assert!(std::fs::read_to_string(cert).unwrap().contains("BEGIN CERTIFICATE"));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn private_server_restarts_and_stops() {
    let pg = PgServer::start();
    let conn = format!("host=localhost user={SCRAM_USER} sslmode=verify-full");
    let started = "SELECT pg_postmaster_start_time()";
    let before = stdout_ok(&psql(&pg, &conn, PASSWORD, started));
    pg.restart();
    let after = stdout_ok(&psql(&pg, &conn, PASSWORD, started));
    assert_ne!(before, after, "postmaster was not restarted");
    assert_eq!(stdout_ok(&psql(&pg, &conn, PASSWORD, WHOAMI)), format!("{SCRAM_USER}|t"));
    pg.stop();
    stderr_err(&psql(&pg, &conn, PASSWORD, "SELECT 1"));
}
