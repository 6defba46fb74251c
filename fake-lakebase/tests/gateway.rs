//! The gateway in front of a real PostgreSQL 15, driven by psql (libpq) and
//! by a minimal wire client where SQLSTATEs or protocol details must be seen.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fake_lakebase::{FakeLakebase, FakeLakebaseConfig, WakeMode};
use support::http::{mint, mint_instance};
use support::pgwire::{self, PgError};
use support::{ALICE, BOB};
use test_support::postgres::pg_bin;
use test_support::{tls, wait, wire};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const ALICE_PAT: &str = "dapi-alice";
const BOB_PAT: &str = "dapi-bob";
const PRIMARY: &str = "projects/demo/branches/production/endpoints/primary";

struct World {
    fake: FakeLakebase,
    /// Host of [`PRIMARY`].
    host: String,
}

async fn world() -> World {
    // Blocking, but only once per process and before any I/O of this test.
    let pg = support::postgres();
    let cfg = FakeLakebaseConfig::new(pg.socket_dir().to_path_buf(), pg.port());
    let fake = FakeLakebase::start(cfg).await.expect("start fake");
    fake.add_user(ALICE, ALICE_PAT);
    fake.add_user(BOB, BOB_PAT);
    let host = fake.add_project("demo");
    World { fake, host }
}

impl World {
    /// libpq conninfo for `host` (resolved to 127.0.0.1), verifying the CA and name.
    fn conninfo(&self, host: &str, user: &str) -> String {
        format!(
            "host={host} hostaddr=127.0.0.1 port={} sslmode=verify-full sslrootcert={} user={user} dbname=databricks_postgres connect_timeout=10",
            self.fake.gateway_addr().port(),
            self.fake.ca_pem_path().display()
        )
    }

    async fn raw_login(&self, host: &str, user: &str, password: &str) -> Result<pgwire::Session<impl Stream>, PgError> {
        let tls =
            tls::connect(self.fake.gateway_addr(), host, self.fake.ca_pem_path(), false, &[b"postgresql"]).await?;
        pgwire::login(tls, user, password, Some("databricks_postgres")).await
    }

    /// Polls `cond` every 20 ms for up to 10 s.
    async fn wait_for(&self, what: &str, cond: impl Fn(&FakeLakebase) -> bool) {
        let why = || format!("timed out waiting for {what}");
        wait::until_async(Duration::from_secs(10), || cond(&self.fake), why).await;
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Stream for T {}

fn psql_command(conninfo: &str, password: &str) -> Command {
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-d", conninfo])
        .env("PGPASSWORD", password)
        .env("PGAPPNAME", "fake-lakebase-test");
    // Nothing from the caller's environment may redirect libpq.
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGSSLMODE",
        "PGOPTIONS",
        "PGSERVICE",
        "PGSSLROOTCERT",
    ] {
        cmd.env_remove(var);
    }
    cmd.kill_on_drop(true);
    cmd
}

/// One psql run of `sql`: `Ok(stdout)` or `Err(stderr)`.
async fn psql(conninfo: &str, password: &str, sql: &str) -> Result<String, String> {
    let out = psql_command(conninfo, password).args(["-c", sql]).stdin(Stdio::null()).output().await.expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A psql process kept open, fed statements on stdin.
struct PsqlSession {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PsqlSession {
    async fn open(conninfo: &str, password: &str) -> PsqlSession {
        let mut child = psql_command(conninfo, password)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut s = PsqlSession { child, stdin, stdout };
        assert_eq!(s.query("SELECT 'ready'").await.as_deref(), Some("ready"));
        s
    }

    /// Runs a one-row, one-column query; `None` if psql ended instead.
    async fn query(&mut self, sql: &str) -> Option<String> {
        let script = format!("{sql};\n");
        self.stdin.write_all(script.as_bytes()).await.ok()?;
        self.stdin.flush().await.ok()?;
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.stdout.read_line(&mut line))
            .await
            .expect("psql answered")
            .ok()?;
        (n > 0).then(|| line.trim().to_string())
    }

    /// Waits for psql to exit; returns its stderr.
    async fn finish(mut self) -> String {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.expect("psql exits");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        err
    }
}

fn ca(w: &World) -> &Path {
    w.fake.ca_pem_path()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_logs_in_with_a_minted_token() {
    let w = world().await;
    let token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    let out = psql(&w.conninfo(&w.host, ALICE), &token, "SELECT current_user || ' ' || current_database()").await;
    assert_eq!(out.unwrap(), "alice@example.com databricks_postgres");

    // The read-only host of the same endpoint routes to the same database.
    let ro = w.host.replacen('.', "-ro.", 1);
    assert_eq!(psql(&w.conninfo(&ro, ALICE), &token, "SELECT 1").await.unwrap(), "1");

    // No database named: Lakebase's default.
    let tls = tls::connect(w.fake.gateway_addr(), &w.host, ca(&w), false, &[]).await.unwrap();
    let mut s = pgwire::login(tls, ALICE, &token, None).await.unwrap();
    assert_eq!(s.query("SELECT current_database()").await.unwrap(), ["databricks_postgres"]);
    drop(s);
    let n = w.fake.counters();
    assert_eq!((n.gateway_logins_ok, n.gateway_logins_failed), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_and_unrouted_connections_are_refused() {
    let w = world().await;
    let token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    let port = w.fake.gateway_addr().port();

    let plain = format!("host=127.0.0.1 port={port} sslmode=disable user={ALICE} dbname=databricks_postgres");
    let err = psql(&plain, &token, "SELECT 1").await.unwrap_err();
    assert!(err.contains("connection is insecure (try using `sslmode=require`)"), "{err}");

    // An IP address as host: libpq sends no SNI.
    let no_sni = format!("host=127.0.0.1 port={port} sslmode=require user={ALICE} dbname=databricks_postgres");
    let err = psql(&no_sni, &token, "SELECT 1").await.unwrap_err();
    assert!(err.contains("Endpoint ID is not specified."), "{err}");
    assert!(err.contains("'?options=endpoint%3D<endpoint-id>'"), "{err}");
    // ... and the fallback that message suggests works.
    let uid = w.host.split('.').next().unwrap();
    let with_option = format!("{no_sni} options='endpoint={uid}'");
    assert_eq!(psql(&with_option, &token, "SELECT current_user").await.unwrap(), ALICE);

    let err = psql(&w.conninfo("ep-nope-nope-00000000.lakebase.test", ALICE), &token, "SELECT 1").await.unwrap_err();
    assert!(err.contains("endpoint could not be found"), "{err}");

    // SQLSTATEs, as a driver sees them.
    let mut tcp = TcpStream::connect(w.fake.gateway_addr()).await.unwrap();
    tcp.write_all(&wire::startup_message(wire::PROTOCOL_3_0, &[("user", ALICE)])).await.unwrap();
    let (ty, body) = wire::read_message(&mut tcp).await.unwrap();
    assert_eq!((ty, pgwire::parse_error(&body).code.as_str()), (b'E', "08P01"));
    // GSSAPI encryption is declined, then SSL goes ahead.
    let mut tcp = TcpStream::connect(w.fake.gateway_addr()).await.unwrap();
    tcp.write_all(&wire::gssenc_request()).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'N');
    let tls = tls::connect(w.fake.gateway_addr(), "ep-nope.lakebase.test", ca(&w), false, &[]).await.unwrap();
    let err = pgwire::login(tls, ALICE, &token, None).await.err().unwrap();
    assert_eq!(err.code, "XX000");
    assert_eq!(w.fake.counters().gateway_logins_failed, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_get_28p01() {
    let w = world().await;
    let alice = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    let bob = mint(&w.fake, BOB_PAT, PRIMARY).await;
    let other_host = w.fake.add_endpoint("demo", "production", "other", false);
    let other = mint(&w.fake, ALICE_PAT, "projects/demo/branches/production/endpoints/other").await;

    let err = psql(&w.conninfo(&w.host, ALICE), "not-a-token", "SELECT 1").await.unwrap_err();
    assert!(err.contains(r#"Failed to decode token for role "alice@example.com""#), "{err}");
    // The workspace PAT is not a DB password either.
    for (user, password, needle) in [
        (ALICE, ALICE_PAT, "Failed to decode token"),
        (ALICE, bob.as_str(), "another role"),
        (BOB, alice.as_str(), "another role"),
        (ALICE, other.as_str(), "not valid for this endpoint"),
    ] {
        let err = w.raw_login(&w.host, user, password).await.err().expect("refused");
        assert_eq!(err.code, "28P01", "{err:?}");
        assert!(err.message.contains(needle), "{err:?}");
    }
    // Each token works where it belongs.
    assert!(w.raw_login(&other_host, ALICE, &other).await.is_ok());
    assert!(w.raw_login(&w.host, BOB, &bob).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused_but_open_sessions_live_on() {
    let w = world().await;
    w.fake.set_credential_ttl_cap(Duration::from_secs(2));
    let token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    let mut session = PsqlSession::open(&w.conninfo(&w.host, ALICE), &token).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match w.raw_login(&w.host, ALICE, &token).await {
            Ok(_) => assert!(Instant::now() < deadline, "token never expired"),
            Err(e) => break e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(err.code, "28P01");
    assert!(err.message.contains("token expired"), "{err:?}");
    let err = psql(&w.conninfo(&w.host, ALICE), &token, "SELECT 1").await.unwrap_err();
    assert!(err.contains("token expired"), "{err}");

    assert_eq!(session.query("SELECT 40 + 2").await.as_deref(), Some("42"));
    session.finish().await;
}

/// `status.current_state` of [`PRIMARY`] as the API reports it.
async fn endpoint_state(w: &World) -> String {
    let c = support::http::client(&w.fake);
    let (_, ep) = support::http::get(&c, &w.fake, &format!("/api/2.0/postgres/{PRIMARY}"), Some(ALICE_PAT)).await;
    ep["status"]["current_state"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_compute_starting_up_then_wakes() {
    let w = world().await;
    let token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    let mut before = w.raw_login(&w.host, ALICE, &token).await.unwrap();

    w.fake.suspend(Duration::from_millis(700), WakeMode::StartingUp);
    // A suspend ends the sessions it finds, and the API reports the compute idle.
    assert!(before.query("SELECT 1").await.is_err());
    assert_eq!(endpoint_state(&w).await, "IDLE");
    let err = w.raw_login(&w.host, ALICE, &token).await.err().expect("starting up");
    assert_eq!((err.code.as_str(), err.message.as_str()), ("57P03", "the database system is starting up"));
    let err = psql(&w.conninfo(&w.host, ALICE), &token, "SELECT 1").await.unwrap_err();
    assert!(err.contains("the database system is starting up"), "{err}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match w.raw_login(&w.host, ALICE, &token).await {
            Ok(mut s) => {
                assert_eq!(s.query("SELECT 1").await.unwrap(), ["1"]);
                assert_eq!(endpoint_state(&w).await, "ACTIVE");
                break;
            }
            Err(e) => assert_eq!(e.code, "57P03"),
        }
        assert!(Instant::now() < deadline, "never woke up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_compute_refusing_closes_before_tls() {
    let w = world().await;
    let token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    w.fake.suspend(Duration::from_secs(60), WakeMode::Refuse);
    let mut tcp = TcpStream::connect(w.fake.gateway_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.expect("closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(psql(&w.conninfo(&w.host, ALICE), &token, "SELECT 1").await.is_err());
    // Awake again.
    w.fake.suspend(Duration::ZERO, WakeMode::Refuse);
    assert_eq!(psql(&w.conninfo(&w.host, ALICE), &token, "SELECT 1").await.unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_gives_53300() {
    let w = world().await;
    let token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    w.fake.set_max_connections(Some(1));
    let first = w.raw_login(&w.host, ALICE, &token).await.unwrap();
    let err = w.raw_login(&w.host, ALICE, &token).await.err().expect("over the limit");
    assert_eq!(err.code, "53300");
    let err = psql(&w.conninfo(&w.host, ALICE), &token, "SELECT 1").await.unwrap_err();
    assert!(err.contains("too many clients"), "{err}");
    drop(first);
    w.wait_for("the session to end", |f| f.counters().active_sessions == 0).await;
    assert!(w.raw_login(&w.host, ALICE, &token).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_sessions_closes_psql() {
    let w = world().await;
    let token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    let mut session = PsqlSession::open(&w.conninfo(&w.host, ALICE), &token).await;
    assert_eq!(w.fake.counters().active_sessions, 1);
    w.fake.kill_all_sessions();
    w.wait_for("sessions to close", |f| f.counters().active_sessions == 0).await;
    assert_eq!(session.query("SELECT 1").await, None);
    let err = session.finish().await;
    assert!(err.contains("server closed the connection") || err.contains("connection to server was lost"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_older_than_the_max_age_are_closed() {
    let w = world().await;
    let token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    let mut s = w.raw_login(&w.host, ALICE, &token).await.unwrap();
    w.fake.set_max_connection_age(Some(Duration::from_millis(200)));
    w.wait_for("the old session to close", |f| f.counters().active_sessions == 0).await;
    assert!(s.query("SELECT 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_alpn_and_cancel_inside_tls() {
    let w = world().await;
    let token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    let addr = w.fake.gateway_addr();
    let tls = tls::connect(addr, &w.host, ca(&w), true, &[b"postgresql"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    let mut s = pgwire::login(tls, ALICE, &token, None).await.unwrap();
    assert_eq!(s.query("SELECT current_user").await.unwrap(), [ALICE]);
    // A client offering only another protocol fails the handshake.
    assert!(tls::connect(addr, &w.host, ca(&w), true, &[b"http/1.1"]).await.is_err());

    // Cancel a long query through a second TLS connection carrying the key.
    let key = s.cancel_key.clone();
    let sleeper = tokio::spawn(async move { s.query("SELECT pg_sleep(30)").await.err() });
    let t = Instant::now();
    let deadline = t + Duration::from_secs(10);
    loop {
        let mut c = tls::connect(addr, &w.host, ca(&w), false, &[]).await.unwrap();
        c.write_all(&wire::cancel_request(&key)).await.unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
        if sleeper.is_finished() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = sleeper.await.unwrap().expect("query canceled");
    assert_eq!(err.code, "57014", "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_ctrl_c_cancels_through_the_gateway() {
    let w = world().await;
    let token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    let child = psql_command(&w.conninfo(&w.host, ALICE), &token)
        .args(["-c", "SELECT pg_sleep(30)"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Logged in is not enough: psql installs its SIGINT handler only after connecting, so an
    // early SIGINT would kill it rather than cancel. Wait for the query in the real server.
    let running = || {
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'";
        tokio::task::block_in_place(|| support::postgres().superuser_sql(sql)) == "1"
    };
    wait::until_async(Duration::from_secs(10), running, || "the query never started".into()).await;
    let pid = child.id().unwrap().to_string();
    // psql 15 sends the CancelRequest in plaintext, like libpq before 17.
    let t = Instant::now();
    let deadline = t + Duration::from_secs(10);
    let out = loop {
        let _ = std::process::Command::new("kill").args(["-INT", &pid]).status();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if w.fake.counters().active_sessions == 0 || Instant::now() > deadline {
            break child.wait_with_output().await.unwrap();
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("canceling statement due to user request"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_instance_and_the_real_servers_errors() {
    let w = world().await;
    let host = w.fake.add_instance("legacy");
    let token = mint_instance(&w.fake, ALICE_PAT, "legacy").await;
    assert_eq!(psql(&w.conninfo(&host, ALICE), &token, "SELECT current_user").await.unwrap(), ALICE);
    // An Autoscaling token is not valid on the instance, nor the reverse.
    let ep_token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    assert_eq!(w.raw_login(&host, ALICE, &ep_token).await.err().unwrap().code, "28P01");
    assert_eq!(w.raw_login(&w.host, ALICE, &token).await.err().unwrap().code, "28P01");

    // The real server's own refusal comes through untouched.
    let conninfo = w.conninfo(&w.host, ALICE).replace("dbname=databricks_postgres", "dbname=nope");
    let err = psql(&conninfo, &ep_token, "SELECT 1").await.unwrap_err();
    assert!(err.contains(r#"database "nope" does not exist"#), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_clients_get_an_error_or_a_closed_socket() {
    let w = world().await;
    let addr = w.fake.gateway_addr();
    let garbage: [Vec<u8>; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0, 0, 0, 3, 1, 2, 3, 4],
        vec![0xff; 64],
        // Data behind an SSLRequest, before its answer.
        [wire::ssl_request(), vec![1, 2, 3, 4, 5, 6, 7, 8]].concat(),
    ];
    for bytes in garbage {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(&bytes).await;
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "socket left open after {bytes:?}");
    }
    // Garbage inside TLS: a bogus startup length, then a non-password reply.
    let token = mint(&w.fake, ALICE_PAT, PRIMARY).await;
    let mut tls = tls::connect(addr, &w.host, ca(&w), false, &[]).await.unwrap();
    tls.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).await.unwrap();
    let (ty, body) = wire::read_message(&mut tls).await.unwrap();
    assert_eq!((ty, pgwire::parse_error(&body).code.as_str()), (b'E', "08P01"));
    let mut tls = tls::connect(addr, &w.host, ca(&w), false, &[]).await.unwrap();
    tls.write_all(&wire::startup_message(wire::PROTOCOL_3_0, &[("user", ALICE)])).await.unwrap();
    let (ty, _) = wire::read_message(&mut tls).await.unwrap();
    assert_eq!(ty, b'R');
    tls.write_all(&wire::query("SELECT 1")).await.unwrap();
    let (ty, body) = wire::read_message(&mut tls).await.unwrap();
    assert_eq!((ty, pgwire::parse_error(&body).code.as_str()), (b'E', "08P01"));
    // Protocol 2 is not spoken.
    let mut tls = tls::connect(addr, &w.host, ca(&w), false, &[]).await.unwrap();
    tls.write_all(&wire::startup_message::<&str, &str>(2 << 16, &[])).await.unwrap();
    let (_, body) = wire::read_message(&mut tls).await.unwrap();
    assert_eq!(pgwire::parse_error(&body).code, "0A000");

    // Still serving.
    assert_eq!(psql(&w.conninfo(&w.host, ALICE), &token, "SELECT 1").await.unwrap(), "1");
}
