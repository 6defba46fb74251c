//! Rotation and resilience: token expiry, connection lifetimes, scale-to-zero, upstream and
//! API faults, hostile clients. The real binary, the fake Lakebase and a real PostgreSQL.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use fake_lakebase::WakeMode;
use support::PgServer;
use support::binary::ProxyProcess;
use support::lakebase::{ENDPOINT, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connects with tokio-postgres through the proxy on `port`.
async fn connect(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).user("anyone").connect_timeout(Duration::from_secs(60));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn select_one(port: u16) -> Result<i32, tokio_postgres::Error> {
    let client = connect(port).await?;
    Ok(client.query_one("SELECT 1", &[]).await?.get(0))
}

fn sqlstate(error: &tokio_postgres::Error) -> String {
    error.code().map(|c| c.code().to_owned()).unwrap_or_else(|| format!("none: {error}"))
}

#[test]
fn clients_wait_through_a_scale_to_zero_wake_up() {
    let world = World::new();
    let proxy = world.proxy(&world.via_gateway(ENDPOINT), &[], &world.pat_env());
    let port = proxy.port;
    for mode in [WakeMode::StartingUp, WakeMode::Refuse] {
        world.fake.suspend(Duration::from_secs(3), mode);
        let started = Instant::now();
        // psql shows the notice the proxy sends while it waits.
        let output = Command::new("psql")
            .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string(), "-c", "SELECT 'awake'"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "awake");
        assert!(started.elapsed() >= Duration::from_millis(2500), "the wait was real: {:?}", started.elapsed());
        assert!(stderr.contains("still connecting"), "the client was told why it waits: {stderr}");
    }
    assert_eq!(world.runtime.block_on(select_one(port)).unwrap(), 1);
}

#[test]
fn authentication_failures_are_not_retried() {
    let world = World::new();
    // The identity's token is for alice; asking for another role is refused by the gateway.
    let target = format!("{}&user=mallory@example.com", world.via_gateway(ENDPOINT));
    let proxy = world.proxy(&target, &[], &world.pat_env());
    world.fake.suspend(Duration::from_secs(2), WakeMode::StartingUp);
    let port = proxy.port;
    let before = world.fake.counters().gateway_logins_failed;
    let started = Instant::now();
    let error = world.runtime.block_on(select_one(port)).unwrap_err();
    // 57P03 answers come first while the compute "wakes"; then the 28P01 ends it at once.
    assert_eq!(sqlstate(&error), "28P01", "{error}");
    let failed_logins = world.fake.counters().gateway_logins_failed - before;
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
    let retried_during_wake = failed_logins - 1;
    assert!(retried_during_wake <= 20, "{failed_logins} failed logins: the refusal itself was not retried");
    let after = world.fake.counters().gateway_logins_failed;
    world.runtime.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    assert_eq!(world.fake.counters().gateway_logins_failed, after, "no retry loop after the refusal");
}

#[test]
fn tokens_and_connections_rotate_under_load_without_a_failed_transaction() {
    let world = World::new();
    // Tokens of 70 s (used until 30 s before expiry, so refreshed every ~30 s) and
    // connections retired after at most 15 s.
    world.fake.set_credential_ttl_cap(Duration::from_secs(70));
    let proxy =
        world.proxy(&world.via_gateway(ENDPOINT), &["--max-lifetime=15s", "--max-pool-size=8"], &world.pat_env());
    let port = proxy.port.to_string();
    let connection = format!("host=127.0.0.1 port={port}");
    let init = Command::new("pgbench").args(["-i", "-s", "1", "-q", &connection]).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let logins_before = world.fake.counters().gateway_logins_ok;
    let mints_before = world.fake.counters().credential_mints;
    let seconds = 75;
    // -C: a session per transaction, so connections are released and retired as they age;
    // in parallel a tokio-postgres loop holds long sessions that must not be disturbed.
    let bench = std::thread::spawn(move || {
        Command::new("pgbench")
            .args(["-C", "-c", "4", "-j", "2", "-T", &seconds.to_string(), "-n", &connection])
            .output()
            .unwrap()
    });
    let long_sessions = world.runtime.block_on(async {
        let client = connect(proxy.port).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut queries = 0u64;
        while Instant::now() < deadline {
            client
                .query_one("SELECT count(*) FROM pgbench_branches", &[])
                .await
                .expect("the long session is undisturbed");
            queries += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        queries
    });
    let output = bench.join().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report} {}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("number of failed transactions: 0"), "{report}");
    assert!(long_sessions > 100);
    let counters = world.fake.counters();
    let mints = counters.credential_mints - mints_before;
    let logins = counters.gateway_logins_ok - logins_before;
    assert!(mints >= 2, "tokens were refreshed: {mints}");
    // At most 9 connections (8 pooled + the long session), each living at least 13.5 s.
    let most_logins = 9 * (seconds / 13 + 1) + 9;
    assert!(
        (9..=most_logins).contains(&logins),
        "{logins} upstream logins in {seconds}s (at most {most_logins} expected)"
    );
    let (_, log) = proxy.terminate();
    eprintln!(
        "rotation: {mints} token refreshes, {logins} upstream logins, {long_sessions} queries in the long session"
    );
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn sessions_killed_upstream_end_cleanly_and_the_pool_recovers() {
    let world = World::new();
    let proxy = world.proxy(&world.via_gateway(ENDPOINT), &["--min-idle=3"], &world.pat_env());
    let port = proxy.port;
    world.runtime.block_on(async {
        let victim = connect(port).await.unwrap();
        victim.query_one("SELECT 1", &[]).await.unwrap();
        world.fake.kill_all_sessions();
        let error = victim.query_one("SELECT 1", &[]).await.unwrap_err();
        assert!(sqlstate(&error) == "08006" || error.is_closed(), "{error}");
        // The warm connections died too; none of them is handed out.
        for _ in 0..5 {
            assert_eq!(select_one(port).await.unwrap(), 1);
        }
    });
}

#[test]
fn the_api_down_for_a_long_time_only_matters_once_tokens_expire() {
    let world = World::new();
    world.fake.set_credential_ttl_cap(Duration::from_secs(40));
    let proxy = world.proxy(&world.via_gateway(ENDPOINT), &["--max-pool-size=200"], &world.pat_env());
    let port = proxy.port;
    world.runtime.block_on(async {
        let holder = connect(port).await.unwrap();
        world.fake.fail_next_api_calls(1_000_000, 500, None);
        // Still inside the token's usable life: new logins use the cached token.
        assert_eq!(select_one(port).await.unwrap(), 1);
        // Once it is unusable, clients that need a new upstream login learn why, naming the
        // API failure. (Each client is kept, so none can reuse another's pooled connection.)
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut kept = Vec::new();
        let error = loop {
            assert!(Instant::now() < deadline, "the expired token was still presented");
            match connect(port).await {
                Err(error) => break error,
                Ok(client) => kept.push(client),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(sqlstate(&error), "08001", "{error}: {:?}", error.as_db_error());
        drop(kept);
        let message = error.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(message.contains("HTTP 500") || message.contains("INTERNAL_ERROR"), "{error}: {message}");
        // The open session never noticed.
        holder.query_one("SELECT 1", &[]).await.expect("existing sessions are untouched");
        // Recovery is automatic.
        world.fake.fail_next_api_calls(0, 500, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while select_one(port).await.is_err() {
            assert!(Instant::now() < deadline, "no recovery");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

#[test]
fn a_postgres_restart_under_load_is_ridden_out() {
    let pg = PgServer::start();
    let target = format!("postgresql://scram_user@localhost:{}/app?sslrootcert={}", pg.port(), pg.ca_path().display());
    let proxy = ProxyProcess::spawn(&[target, format!("--password-file={}", pg.password_file().display())], &[]);
    let port = proxy.port;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        assert_eq!(select_one(port).await.unwrap(), 1);
        let restart = tokio::task::spawn_blocking(move || {
            pg.restart();
            pg
        });
        // Clients connecting during the restart wait for it and succeed.
        let mut attempts = Vec::new();
        for _ in 0..5 {
            attempts.push(tokio::spawn(select_one(port)));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pg = restart.await.unwrap();
        for attempt in attempts {
            assert_eq!(attempt.await.unwrap().expect("a client during the restart got through"), 1);
        }
        assert_eq!(select_one(port).await.unwrap(), 1);
        drop(pg);
    });
}

#[test]
fn hostile_clients_change_nothing_and_memory_returns_to_baseline() {
    let pg = PgServer::shared();
    let target = format!("postgresql://scram_user@localhost:{}/app?sslrootcert={}", pg.port(), pg.ca_path().display());
    let mut proxy = ProxyProcess::spawn(
        &[
            target,
            format!("--password-file={}", pg.password_file().display()),
            "--startup-timeout=2s".into(),
            "--lazy-attach".into(),
        ],
        &[],
    );
    let port = proxy.port;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        // Warm up so the baseline includes a normal session's allocations.
        for _ in 0..20 {
            select_one(port).await.unwrap();
        }
    });
    let baseline = proxy.rss_kib();
    runtime.block_on(async {
        let bystander = connect(port).await.unwrap();
        let mut hostile = Vec::new();
        for round in 0..2000u32 {
            hostile.push(tokio::spawn(async move {
                let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return };
                let _ = match round % 4 {
                    // Garbage.
                    0 => stream.write_all(b"\x16\x03\x01 GET / HTTP/1.1\r\n\r\n").await,
                    // A length of 2 GiB.
                    1 => stream.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).await,
                    // Half a startup packet, then silence.
                    2 => stream.write_all(&[0, 0, 0, 40, 0, 3, 0, 0, b'u']).await,
                    // A valid login that then sends a message claiming 1 GiB, and a little of it.
                    _ => {
                        let mut packet = vec![0, 0, 0, 17, 0, 3, 0, 0];
                        packet.extend_from_slice(b"user\0x\0\0");
                        stream.write_all(&packet).await.ok();
                        stream.write_all(&[b'Q', 0x40, 0, 0, 0, b'S', b'E']).await
                    }
                };
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
            }));
        }
        // Meanwhile real clients are served.
        for _ in 0..20 {
            bystander.query_one("SELECT 1", &[]).await.expect("a bystander is unaffected");
            assert_eq!(select_one(port).await.unwrap(), 1);
        }
        for task in hostile {
            task.await.unwrap();
        }
    });
    assert!(proxy.is_running(), "the proxy survived");
    runtime.block_on(async { assert_eq!(select_one(port).await.unwrap(), 1) });
    // Memory comes back down once the hostile connections are gone (allowing for allocator
    // slack and the pool's connections).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = proxy.rss_kib();
        if now <= baseline + 8 * 1024 {
            eprintln!("RSS: baseline {baseline} KiB, after the storm {now} KiB");
            break;
        }
        assert!(Instant::now() < deadline, "RSS stayed at {now} KiB (baseline {baseline} KiB)");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sigterm_lets_a_transaction_finish_then_ends_idle_sessions_with_57p01() {
    for mode in ["session", "transaction"] {
        let pg = PgServer::shared();
        let target =
            format!("postgresql://scram_user@localhost:{}/app?sslrootcert={}", pg.port(), pg.ca_path().display());
        let args = [
            target,
            format!("--password-file={}", pg.password_file().display()),
            "--max-sigterm-delay=10s".into(),
            format!("--pool-mode={mode}"),
        ];
        let proxy = ProxyProcess::spawn(&args, &[]);
        let port = proxy.port;
        let pid = proxy.pid();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (status, _) = runtime.block_on(async move {
            let idle = connect(port).await.unwrap();
            let busy = connect(port).await.unwrap();
            busy.batch_execute("BEGIN").await.unwrap();
            Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
            // The transaction in progress may finish.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let row = busy.query_one("SELECT 40 + 2", &[]).await.expect("the running transaction continues");
            assert_eq!(row.get::<_, i32>(0), 42, "{mode} mode");
            busy.batch_execute("COMMIT").await.expect("and commits");
            // After it, and for the idle one, the session ends with 57P01.
            assert!(busy.query_one("SELECT 1", &[]).await.is_err(), "{mode} mode");
            assert!(idle.query_one("SELECT 1", &[]).await.is_err(), "{mode} mode");
            assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "no new clients");
            tokio::task::spawn_blocking(move || proxy.terminate()).await.unwrap()
        });
        assert!(status.success(), "exit code 0 after a graceful stop in {mode} mode: {status}");
    }
}
