//! End-to-end tests: tokio-postgres clients -> lakebase-proxy (in process) -> a real
//! PostgreSQL with TLS and SCRAM/MD5/cleartext roles, started by the harness.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use lakebase_proxy::config::{Config, PasswordSource};
use lakebase_proxy::pool::{CheckoutKind, PoolKey};
use lakebase_proxy::proxy::RunningProxy;
use support::{APP_DB, CLEAR_USER, MD5_USER, PASSWORD, PgServer, SCRAM_USER};
use test_support::{wait, wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A proxy for `user` on the shared server, with `adjust` applied to the defaults.
async fn proxy_for(user: &str, adjust: impl FnOnce(&mut Config)) -> RunningProxy {
    let mut config = support::proxy_config(user);
    adjust(&mut config);
    RunningProxy::start(config).await.expect("proxy starts")
}

fn client_config(proxy: &RunningProxy) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    // The client's own user and database are whatever the tool defaults to; the target decides.
    config.host("127.0.0.1").port(proxy.tcp_address(0).port()).user("someone").dbname("someone");
    config
}

/// Connects through the proxy; the connection is driven in a task that ends with it.
async fn connect(proxy: &RunningProxy) -> Client {
    let (client, connection) = client_config(proxy).connect(NoTls).await.expect("connect through the proxy");
    tokio::spawn(connection);
    client
}

async fn connect_error(proxy: &RunningProxy) -> tokio_postgres::Error {
    match client_config(proxy).connect(NoTls).await {
        Ok(_) => panic!("connection unexpectedly succeeded"),
        Err(error) => error,
    }
}

fn sqlstate(error: &tokio_postgres::Error) -> &str {
    error.code().map(|c| c.code()).unwrap_or("none")
}

fn pool_key(user: &str) -> PoolKey {
    PoolKey { database: APP_DB.into(), user: user.into(), options: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_password_method_logs_in_over_verified_tls() {
    for user in [SCRAM_USER, MD5_USER, CLEAR_USER] {
        let proxy = proxy_for(user, |_| {}).await;
        let client = connect(&proxy).await;
        let row = client
            .query_one("SELECT current_user::text, current_database()::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        assert_eq!(row.get::<_, String>(1), APP_DB);
        assert!(row.get::<_, bool>(2), "upstream connection of {user} must use TLS");
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_reports_the_servers_words() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("pw");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let proxy = proxy_for(SCRAM_USER, |c| c.password = PasswordSource::File(wrong.clone())).await;
    let error = connect_error(&proxy).await;
    let db_error = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(db_error.code().code(), "28P01");
    assert!(db_error.message().contains("password authentication failed"), "{db_error:?}");
    assert!(!format!("{db_error:?}").contains("not-the-password"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_is_refused() {
    let pg = PgServer::shared();
    let target = format!(
        "postgresql://{SCRAM_USER}@db.wrong.example/{APP_DB}?sslrootcert={}&connect-to=127.0.0.1:{}",
        pg.ca_path().display(),
        pg.port()
    );
    let mut config = Config::new(vec![target.parse().unwrap()]);
    config.port = 0;
    config.password = PasswordSource::File(pg.password_file());
    let proxy = RunningProxy::start(config).await.unwrap();
    let error = connect_error(&proxy).await;
    let db_error = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(db_error.code().code(), "08001");
    assert!(
        db_error.message().contains("not valid for") && db_error.message().contains("db.wrong.example"),
        "{}",
        db_error.message()
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_reported() {
    let pg = PgServer::shared();
    // Free a moment ago, and nobody listens there now.
    let closed_port = test_support::net::free_port();
    let target =
        format!("postgresql://{SCRAM_USER}@localhost:{closed_port}/{APP_DB}?sslrootcert={}", pg.ca_path().display());
    let mut config = Config::new(vec![target.parse().unwrap()]);
    config.port = 0;
    // Refused connections are retried (a waking compute refuses them) until this limit.
    config.connect_timeout = Duration::from_secs(2);
    let proxy = RunningProxy::start(config).await.unwrap();
    let started = Instant::now();
    let error = connect_error(&proxy).await;
    assert!(started.elapsed() >= Duration::from_millis(900), "retried for most of the connect timeout");
    assert_eq!(sqlstate(&error), "08001");
    assert!(error.as_db_error().unwrap().message().contains("cannot reach upstream"), "{error}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_an_idle_client_with_the_real_sender_pid() {
    let proxy = proxy_for(SCRAM_USER, |_| {}).await;
    let (listener, mut connection) = client_config(&proxy).connect(NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            let _ = tx.send(message);
        }
    });
    listener.batch_execute("LISTEN proxy_test").await.unwrap();

    let sender = connect(&proxy).await;
    let sender_pid: i32 = sender.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    sender.batch_execute("NOTIFY proxy_test, 'hello'").await.unwrap();

    let notification = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(AsyncMessage::Notification(n)) = rx.recv().await {
                return n;
            }
        }
    })
    .await
    .expect("notification arrives while the listener is idle");
    assert_eq!((notification.channel(), notification.payload()), ("proxy_test", "hello"));
    assert_eq!(notification.process_id(), sender_pid, "the sender pid is the upstream backend's");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_query_quickly() {
    for lazy in [false, true] {
        let proxy = proxy_for(SCRAM_USER, |c| c.lazy_attach = lazy).await;
        // In lazy mode the first client teaches the pool its greeting; the second is lazy.
        let _first = connect(&proxy).await;
        let client = connect(&proxy).await;
        let token = client.cancel_token();
        let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        token.cancel_query(NoTls).await.unwrap();
        let error = query.await.unwrap().expect_err("the query is cancelled");
        assert_eq!(sqlstate(&error), "57014", "lazy={lazy}: {error}");
        assert!(started.elapsed() < Duration::from_secs(1), "lazy={lazy}: took {:?}", started.elapsed());
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_100k_rows_in_and_out() {
    let proxy = proxy_for(SCRAM_USER, |_| {}).await;
    let client = connect(&proxy).await;
    client.batch_execute("CREATE TEMP TABLE copied (id int, label text)").await.unwrap();
    let sink = client.copy_in("COPY copied FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut chunk = String::new();
    for id in 0..100_000 {
        chunk.push_str(&format!("{id}\trow-{id}-ünïcødé\n"));
        if chunk.len() > 64 * 1024 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut chunk))).await.unwrap();
        }
    }
    sink.send(bytes::Bytes::from(chunk)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 100_000);

    let stream = client.copy_out("COPY copied TO STDOUT").await.unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: Vec<u8> = chunks.concat();
    let lines = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!(lines, 100_000);
    assert!(String::from_utf8(text).unwrap().contains("99999\trow-99999-ünïcødé\n"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_pipelining_binary_and_large_messages() {
    let proxy = proxy_for(SCRAM_USER, |_| {}).await;
    let client = connect(&proxy).await;
    let statement = client.prepare("SELECT $1::int8 * 2, $2::text || '!'").await.unwrap();
    for n in 0..20i64 {
        let row = client.query_one(&statement, &[&n, &"ok"]).await.unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, String>(1)), (n * 2, "ok!".to_owned()));
    }
    // Pipelined: all sent before any answer is read.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT 1::int4", &[]),
        client.query_one("SELECT 'two'::text", &[]),
        client.query_one("SELECT 3.5::float8", &[])
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap().get::<_, String>(0), "two");
    assert_eq!(c.unwrap().get::<_, f64>(0), 3.5);
    // 24 MB each way, binary format.
    let blob: Vec<u8> = (0..24 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let row = client.query_one("SELECT $1::bytea, length($1::bytea)", &[&blob]).await.unwrap();
    assert_eq!(row.get::<_, i32>(1) as usize, blob.len());
    assert!(row.get::<_, Vec<u8>>(0) == blob, "bytea round trip");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_ones_own_backend_ends_only_that_session() {
    let proxy = proxy_for(SCRAM_USER, |_| {}).await;
    let bystander = connect(&proxy).await;
    let victim = connect(&proxy).await;
    let pool = proxy.pools(0).get(&pool_key(SCRAM_USER));
    assert_eq!(pool.counts().1, 2);
    let error =
        victim.simple_query("SELECT pg_terminate_backend(pg_backend_pid())").await.expect_err("the session ends");
    assert_eq!(sqlstate(&error), "57P01", "{error}");
    assert!(victim.simple_query("SELECT 1").await.is_err(), "the victim's session is over");
    assert_eq!(bystander.query_one("SELECT 41 + 1", &[]).await.unwrap().get::<_, i32>(0), 42);
    wait_until(|| pool.counts() == (0, 1)).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_transaction_leaves_no_trace() {
    let proxy = proxy_for(SCRAM_USER, |c| c.pool.max_size = 1).await;
    let pool = proxy.pools(0).get(&pool_key(SCRAM_USER));

    // A clean session's leftovers are reset and the connection is reused.
    let first = connect(&proxy).await;
    let first_pid: i32 = first.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    first
        .batch_execute("SET work_mem = '77MB'; CREATE TEMP TABLE leftover (x int); PREPARE p AS SELECT 1")
        .await
        .unwrap();
    drop(first);
    wait_until(|| pool.counts() == (1, 1)).await;
    let second = connect(&proxy).await;
    assert_clean(&second).await;
    let second_pid: i32 = second.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(second_pid, first_pid, "a clean connection is reused");

    // A session killed inside a transaction: rolled back and reset before anyone reuses it.
    second
        .batch_execute("CREATE TABLE IF NOT EXISTS killed_mid_transaction (x int); TRUNCATE killed_mid_transaction")
        .await
        .unwrap();
    second
        .batch_execute(
            "BEGIN; SET LOCAL work_mem = '99MB'; CREATE TEMP TABLE inside (x int); INSERT INTO killed_mid_transaction VALUES (1)",
        )
        .await
        .unwrap();
    drop(second); // closes the socket without Terminate, mid-transaction
    wait_until(|| pool.counts() == (1, 1)).await;
    let third = connect(&proxy).await;
    assert_clean(&third).await;
    let third_pid: i32 = third.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(third_pid, first_pid, "the connection was rolled back and reused");
    let rows: i64 = third.query_one("SELECT count(*) FROM killed_mid_transaction", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "the vanished client's insert was rolled back");
    proxy.stop().await;
}

async fn assert_clean(client: &Client) {
    let row = client
        .query_one(
            "SELECT current_setting('work_mem'), to_regclass('pg_temp.leftover') IS NULL, to_regclass('pg_temp.inside') IS NULL, \
             (SELECT count(*) FROM pg_prepared_statements), txid_current_if_assigned() IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "4MB");
    assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2), "no temp tables survive");
    assert_eq!(row.get::<_, i64>(3), 1, "only tokio-postgres's own statement");
    assert!(row.get::<_, bool>(4), "no open transaction");
}

/// Waits for a condition the proxy reaches in the background, failing after 10 s.
async fn wait_until(condition: impl FnMut() -> bool) {
    wait::until_async(Duration::from_secs(10), condition, || "condition not reached in time".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_ten_connections() {
    let proxy = proxy_for(MD5_USER, |c| {
        c.pool.max_size = 10;
        c.pool.checkout_timeout = Duration::from_secs(60);
    })
    .await;
    let pool = proxy.pools(0).get(&pool_key(MD5_USER));
    let config = client_config(&proxy);
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let config = config.clone();
            tokio::spawn(async move {
                let (client, connection) = config.connect(NoTls).await.unwrap();
                tokio::spawn(connection);
                let row = client.query_one("SELECT $1::int4 + 0 FROM pg_sleep(0.02)", &[&i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i);
            })
        })
        .collect();
    let mut most_open = 0;
    for client in clients {
        most_open = most_open.max(pool.counts().1);
        client.await.unwrap();
    }
    assert!(most_open <= 10, "pool grew to {most_open}");
    let backends: i64 = PgServer::shared()
        .superuser_sql(&format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{MD5_USER}'"))
        .parse()
        .unwrap();
    assert!(backends <= 10, "{backends} upstream backends");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_answers_53300_after_the_wait() {
    let proxy = proxy_for(SCRAM_USER, |c| {
        c.pool.max_size = 1;
        c.pool.checkout_timeout = Duration::from_millis(300);
    })
    .await;
    let holder = connect(&proxy).await;
    holder.batch_execute("SELECT 1").await.unwrap();
    let started = Instant::now();
    let error = connect_error(&proxy).await;
    assert_eq!(sqlstate(&error), "53300", "{error}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(error.as_db_error().unwrap().message().contains("became free"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_settings_are_applied_and_reported_canonically() {
    let proxy = proxy_for(SCRAM_USER, |c| c.pool.max_size = 1).await;
    for (app, datestyle) in [("first-app", "ISO, DMY"), ("second app's", "sql, mdy")] {
        let mut config = client_config(&proxy);
        config.application_name(app).options("").ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(&format!("SET datestyle = '{datestyle}'")).await.unwrap();
        let row = client
            .query_one("SELECT current_setting('application_name'), current_setting('client_encoding')", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), app);
        assert_eq!(row.get::<_, String>(1), "UTF8");
        drop(client);
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_clients_cost_no_upstream_connection_until_they_speak() {
    let proxy = proxy_for(SCRAM_USER, |c| c.lazy_attach = true).await;
    let pool = proxy.pools(0).get(&pool_key(SCRAM_USER));
    let first = connect(&proxy).await;
    first.batch_execute("SELECT 1").await.unwrap();
    drop(first);
    wait_until(|| pool.counts() == (1, 1)).await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(connect(&proxy).await);
    }
    assert_eq!(pool.counts(), (1, 1), "50 idle lazy clients hold no upstream connection");
    let row = idle[7].query_one("SELECT current_setting('application_name'), 2 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(1), 4);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connections_are_opened_at_start() {
    let proxy = proxy_for(CLEAR_USER, |c| c.pool.min_idle = 3).await;
    let pool = proxy.pools(0).get(&pool_key(CLEAR_USER));
    wait_until(|| pool.counts() == (3, 3)).await;
    // Warm connections are opened with no client settings; the client's are SET on attach.
    let mut config = client_config(&proxy);
    config.application_name("warm-app");
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    let app: String = client.query_one("SELECT current_setting('application_name')", &[]).await.unwrap().get(0);
    assert_eq!(app, "warm-app");
    assert_eq!(pool.counts(), (2, 3), "the client took a warm connection");
    drop(client);
    // After the reset the setting is gone again.
    wait_until(|| pool.counts() == (3, 3)).await;
    let plain = connect(&proxy).await;
    let app: String = plain.query_one("SELECT current_setting('application_name')", &[]).await.unwrap().get(0);
    assert_eq!(app, "");
    proxy.stop().await;
}

/// A returning application (same settings) finds its connection as it left it: the reset
/// re-applies the settings, so its checkout needs no round trip. A client without them gets
/// them RESET rather than inherited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_application_gets_its_settings_without_a_round_trip() {
    let proxy = proxy_for(CLEAR_USER, |c| {
        c.pool.min_idle = 1;
        c.pool.max_size = 1;
    })
    .await;
    let pool = proxy.pools(0).get(&pool_key(CLEAR_USER));
    wait_until(|| pool.counts() == (1, 1)).await;
    for _ in 0..3 {
        let mut config = client_config(&proxy);
        config.application_name("returning-app");
        let (client, connection) = config.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute("CREATE TEMP TABLE scratch (x int)").await.unwrap();
        let app: String = client.query_one("SELECT current_setting('application_name')", &[]).await.unwrap().get(0);
        assert_eq!(app, "returning-app");
        drop(client);
        // Back in the pool once reset (the temp table would fail the next round otherwise).
        wait_until(|| pool.counts() == (1, 1)).await;
    }
    assert_eq!(pool.checkouts(CheckoutKind::Adjusted), 1, "only the first checkout needed SETs");
    assert_eq!(pool.checkouts(CheckoutKind::Exact), 2);
    let plain = connect(&proxy).await;
    let app: String = plain.query_one("SELECT current_setting('application_name')", &[]).await.unwrap().get(0);
    assert_eq!(app, "", "not inherited from the previous client");
    assert_eq!(pool.checkouts(CheckoutKind::Adjusted), 2);
    proxy.stop().await;
}

/// Reloads keep refreshing only the credentials of targets still served: removing a target
/// stops its password cache, and a reload that adds nothing starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_only_the_credentials_of_served_targets() {
    let pg = PgServer::shared();
    let config_for = |users: &[&str]| {
        let targets = users
            .iter()
            .map(|user| {
                format!("postgresql://{user}@localhost:{}/{APP_DB}?sslrootcert={}", pg.port(), pg.ca_path().display())
                    .parse()
                    .unwrap()
            })
            .collect();
        let mut config = Config::new(targets);
        config.port = 0;
        config.password = PasswordSource::File(pg.password_file());
        config
    };
    let mut proxy = RunningProxy::start(config_for(&[SCRAM_USER])).await.unwrap();
    assert_eq!(proxy.view().caches().len(), 1);
    proxy.reload(config_for(&[SCRAM_USER])).await.unwrap();
    assert_eq!(proxy.view().caches().len(), 1, "a reload that adds nothing starts nothing");
    proxy.reload(config_for(&[SCRAM_USER, MD5_USER])).await.unwrap();
    assert_eq!(proxy.view().caches().len(), 2, "the added target's password cache");
    proxy.reload(config_for(&[SCRAM_USER])).await.unwrap();
    assert_eq!(proxy.view().caches().len(), 1, "the removed target's cache is dropped");
    let client = connect(&proxy).await;
    assert_eq!(client.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    proxy.stop().await;
}

/// Reads one tagged message (panics on an I/O error).
async fn read_tag(stream: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    wire::read_message(stream).await.unwrap()
}

/// Raw protocol: what a hand-written client sees.
mod raw {
    use super::*;
    use tokio::net::TcpStream;

    async fn open(proxy: &RunningProxy) -> TcpStream {
        TcpStream::connect(proxy.tcp_address(0)).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn encryption_requests_are_declined_without_client_tls() {
        let proxy = proxy_for(SCRAM_USER, |_| {}).await;
        let mut stream = open(&proxy).await;
        stream.write_all(&wire::gssenc_request()).await.unwrap();
        assert_eq!(stream.read_u8().await.unwrap(), b'N');
        stream.write_all(&wire::ssl_request()).await.unwrap();
        assert_eq!(stream.read_u8().await.unwrap(), b'N');
        stream.write_all(&wire::startup_message(3 << 16, &[("user", "x")])).await.unwrap();
        assert_eq!(read_tag(&mut stream).await, (b'R', vec![0, 0, 0, 0]));
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn newer_protocol_minors_are_negotiated_down() {
        let proxy = proxy_for(SCRAM_USER, |_| {}).await;
        let mut stream = open(&proxy).await;
        stream
            .write_all(&wire::startup_message((3 << 16) | 2, &[("user", "x"), ("_pq_.extension", "on")]))
            .await
            .unwrap();
        let (tag, body) = read_tag(&mut stream).await;
        assert_eq!(tag, b'v');
        assert_eq!(&body[..8], &[0, 3, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&body[8..], b"_pq_.extension\0");
        assert_eq!(read_tag(&mut stream).await.0, b'R');
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_and_silence_get_an_error_or_a_closed_socket() {
        let proxy = proxy_for(SCRAM_USER, |c| c.startup_timeout = Duration::from_millis(300)).await;
        // An impossible length.
        let mut stream = open(&proxy).await;
        stream.write_all(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3, 4]).await.unwrap();
        let (tag, body) = read_tag(&mut stream).await;
        assert_eq!(tag, b'E');
        assert!(String::from_utf8_lossy(&body).contains("08P01"));
        assert_eq!(stream.read(&mut [0; 16]).await.unwrap(), 0, "then the socket closes");
        // Half a startup packet, then silence: closed after the startup timeout.
        let mut stream = open(&proxy).await;
        stream.write_all(&wire::startup_message(3 << 16, &[("user", "x")])[..9]).await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
        // Protocol 2.0 is refused.
        let mut stream = open(&proxy).await;
        stream.write_all(&wire::startup_message(2 << 16, &[("user", "x")])).await.unwrap();
        let (tag, body) = read_tag(&mut stream).await;
        assert_eq!(tag, b'E');
        assert!(String::from_utf8_lossy(&body).contains("0A000"));
        // Meanwhile real clients are unaffected.
        let client = connect(&proxy).await;
        assert_eq!(client.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
        proxy.stop().await;
    }

    /// Reads messages up to and including the next ReadyForQuery; returns their tags and the
    /// text of the first DataRow's first column.
    async fn read_to_ready(stream: &mut TcpStream) -> (Vec<u8>, Option<String>) {
        let (mut tags, mut first) = (Vec::new(), None);
        loop {
            let (tag, body) = read_tag(stream).await;
            tags.push(tag);
            if tag == b'D' && first.is_none() {
                first = wire::data_row_first(&body);
            }
            if tag == b'Z' {
                return (tags, first);
            }
        }
    }

    /// A client may send its first query right behind the StartupMessage, without waiting
    /// for the greeting (the proxy reads the handshake in large reads, so both arrive in one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_sent_with_the_startup_message_is_answered() {
        for lazy in [false, true] {
            let proxy = proxy_for(SCRAM_USER, |c| c.lazy_attach = lazy).await;
            // In lazy mode the first client teaches the pool its greeting; the second is greeted
            // from the cache and attaches at its (early) first message.
            for _ in 0..2 {
                let mut stream = open(&proxy).await;
                let mut bytes = wire::startup_message(3 << 16, &[("user", SCRAM_USER), ("database", APP_DB)]);
                bytes.extend_from_slice(&wire::query("SELECT 'early ' || 41 + 1"));
                stream.write_all(&bytes).await.unwrap();
                let (greeting, _) = read_to_ready(&mut stream).await;
                assert_eq!(greeting.first(), Some(&b'R'), "lazy={lazy}: {greeting:?}");
                let answer = tokio::time::timeout(Duration::from_secs(10), read_to_ready(&mut stream)).await;
                let (tags, value) = answer.unwrap_or_else(|_| panic!("lazy={lazy}: the early query was lost"));
                assert_eq!(value.as_deref(), Some("early 42"), "lazy={lazy}: {tags:?}");
                stream.write_all(&wire::terminate()).await.unwrap();
            }
            proxy.stop().await;
        }
    }

    /// Bytes behind an SSLRequest, before its answer, may be a man in the middle's: refused,
    /// as PostgreSQL refuses them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_after_an_encryption_request_is_refused() {
        let proxy = proxy_for(SCRAM_USER, |_| {}).await;
        let mut stream = open(&proxy).await;
        let mut bytes = wire::ssl_request();
        bytes.extend_from_slice(&wire::startup_message(3 << 16, &[("user", "x")]));
        stream.write_all(&bytes).await.unwrap();
        let (tag, body) = read_tag(&mut stream).await;
        assert_eq!(tag, b'E');
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("08P01") && text.contains("unencrypted data after an encryption request"), "{text}");
        assert_eq!(stream.read(&mut [0; 16]).await.unwrap(), 0, "then the socket closes");
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replication_connections_are_refused() {
        let proxy = proxy_for(SCRAM_USER, |_| {}).await;
        let mut stream = open(&proxy).await;
        stream.write_all(&wire::startup_message(3 << 16, &[("user", "x"), ("replication", "database")])).await.unwrap();
        let (tag, body) = read_tag(&mut stream).await;
        assert_eq!(tag, b'E');
        assert!(String::from_utf8_lossy(&body).contains("replication"));
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_never_in_errors() {
    // Sanity check for the harness password itself, used in every test above.
    let proxy = proxy_for(SCRAM_USER, |_| {}).await;
    let client = connect(&proxy).await;
    let error = client.simple_query("SELECT * FROM no_such_table").await.unwrap_err();
    assert!(!error.to_string().contains(PASSWORD));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_are_capped_below_the_servers_max_connections() {
    let proxy = proxy_for(SCRAM_USER, |c| c.pool.max_size = 1000).await;
    assert_eq!(proxy.pools(0).upstream().max_pool_size(), 1000, "unknown until the first login");
    connect(&proxy).await.batch_execute("SELECT 1").await.unwrap();
    let slots: usize = PgServer::shared()
        .superuser_sql(
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int",
        )
        .parse()
        .unwrap();
    assert_eq!(proxy.pools(0).upstream().max_pool_size(), slots * 9 / 10);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_clients_are_told_the_servers_own_parameter_values() {
    let proxy = proxy_for(SCRAM_USER, |c| c.lazy_attach = true).await;
    connect(&proxy).await.batch_execute("SELECT 1").await.unwrap();
    // A raw client asking for 'utf-8' and a DateStyle written its own way.
    let mut stream = tokio::net::TcpStream::connect(proxy.tcp_address(0)).await.unwrap();
    let pairs = [("user", "x"), ("client_encoding", "'utf-8'"), ("DateStyle", "iso, dmy")];
    stream.write_all(&wire::startup_message(3 << 16, &pairs)).await.unwrap();
    let mut reported = std::collections::HashMap::new();
    let read_until_ready = async |stream: &mut tokio::net::TcpStream,
                                  reported: &mut std::collections::HashMap<String, String>| loop {
        let (tag, body) = read_tag(stream).await;
        if tag == b'S' {
            let mut fields = body.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned());
            let (name, value) = (fields.next().unwrap(), fields.next().unwrap());
            reported.insert(name, value);
        }
        if tag == b'Z' {
            return;
        }
    };
    read_until_ready(&mut stream, &mut reported).await;
    assert_eq!(reported["client_encoding"], "UTF8", "canonical at the greeting");
    // The first query attaches an upstream; the server's own spelling follows.
    stream.write_all(&wire::query("SELECT 1")).await.unwrap();
    read_until_ready(&mut stream, &mut reported).await;
    assert_eq!(reported["DateStyle"], "ISO, DMY");
    assert_eq!(reported["client_encoding"], "UTF8");
    proxy.stop().await;
}
