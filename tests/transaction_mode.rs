//! Transaction mode end to end with a real driver: tokio-postgres clients (which prepare every
//! statement by name) share one or two server connections of a real PostgreSQL.

mod support;

use lakebase_proxy::proxy::RunningProxy;
use lakebase_proxy::target::PoolMode;
use support::SCRAM_USER;
use tokio_postgres::{Client, NoTls};

async fn proxy(max_size: usize) -> RunningProxy {
    let mut config = support::proxy_config(SCRAM_USER);
    config.pool.mode = PoolMode::Transaction;
    config.pool.max_size = max_size;
    RunningProxy::start(config).await.expect("proxy starts")
}

async fn connect(proxy: &RunningProxy) -> Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.tcp_address(0).port())
        .user("someone")
        .connect(NoTls)
        .await
        .expect("connect through the proxy");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_one_server_connection_with_their_own_statements() {
    let proxy = proxy(1).await;
    let clients = futures_util::future::join_all((0..5).map(|_| connect(&proxy))).await;
    // Each client prepares the same name for its own text.
    let mut statements = Vec::new();
    for (n, client) in clients.iter().enumerate() {
        statements.push(client.prepare(&format!("SELECT {n}::int + $1::int")).await.unwrap());
    }
    for round in 0..3 {
        for (n, (client, statement)) in clients.iter().zip(&statements).enumerate() {
            let row = client.query_one(statement, &[&round]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), n as i32 + round);
        }
    }
    let pids: std::collections::HashSet<i32> = futures_util::future::join_all(
        clients.iter().map(|c| async { c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0) }),
    )
    .await
    .into_iter()
    .collect();
    assert_eq!(pids.len(), 1, "one server connection served them all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_prepared_again_on_another_server_connection() {
    let proxy = proxy(2).await;
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    let statement = a.prepare("SELECT $1::text || pg_backend_pid()::text").await.unwrap();
    let first = a.query_one(&statement, &[&"x"]).await.unwrap().get::<_, String>(0);
    // b holds the server a used inside a transaction, so a must take the other one.
    let transaction_pid: i32 = {
        b.batch_execute("BEGIN").await.unwrap();
        b.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
    };
    let second = a.query_one(&statement, &[&"x"]).await.unwrap().get::<_, String>(0);
    b.batch_execute("COMMIT").await.unwrap();
    assert!(first.starts_with('x') && second.starts_with('x'));
    assert_ne!(second, format!("x{transaction_pid}"), "a did not use the server b held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_keeps_its_server_and_others_wait() {
    let proxy = proxy(1).await;
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    a.batch_execute("CREATE TABLE IF NOT EXISTS txn_wait (n int)").await.unwrap();
    a.batch_execute("BEGIN; INSERT INTO txn_wait VALUES (1)").await.unwrap();
    let waiting =
        tokio::spawn(
            async move { b.query_one("SELECT count(*) FROM txn_wait", &[]).await.map(|r| r.get::<_, i64>(0)) },
        );
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), 0, "b saw nothing of a's rolled back insert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_client_is_pinned_and_others_use_another_server() {
    let proxy = proxy(2).await;
    let a = connect(&proxy).await;
    a.batch_execute("LISTEN pinned_channel").await.unwrap();
    let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let b = connect(&proxy).await;
    for _ in 0..3 {
        let other: i32 = b.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        assert_ne!(other, pid, "the pinned server serves nobody else");
    }
    assert_eq!(a.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get::<_, i32>(0), pid);
}

async fn show(client: &Client) -> String {
    client.query_one("SHOW statement_timeout", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_setting_follows_its_client_and_no_other() {
    let proxy = proxy(1).await;
    let a = connect(&proxy).await;
    let b = connect(&proxy).await;
    let default = show(&b).await;
    a.batch_execute("SET statement_timeout = '1234ms'").await.unwrap();
    // The only server connection goes back and forth between them.
    for _ in 0..3 {
        assert_eq!(show(&a).await, "1234ms");
        assert_eq!(show(&b).await, default);
    }
    a.batch_execute("RESET statement_timeout").await.unwrap();
    assert_eq!(show(&a).await, default);
    let pids: Vec<i32> = futures_util::future::join_all(
        [&a, &b].map(|c| async { c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0) }),
    )
    .await;
    assert_eq!(pids[0], pids[1], "still one server connection, so nobody was pinned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_waiting_for_a_connection_cancels_what_waits() {
    let proxy = proxy(1).await;
    let holder = connect(&proxy).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = connect(&proxy).await;
    let cancel = waiter.cancel_token();
    let waiting = tokio::spawn(async move {
        let result = waiter.query_one("SELECT pg_sleep(30)", &[]).await;
        (waiter, result)
    });
    let pool = proxy.pools(0).all().into_iter().next().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pool.waiting() == 0 {
        assert!(std::time::Instant::now() < deadline, "the second client never waited");
        tokio::task::yield_now().await;
    }
    cancel.cancel_query(NoTls).await.unwrap();
    let (waiter, result) = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
    let error = result.expect_err("the queued query was cancelled before it ran");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{error}");
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiter.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0), 7, "the session goes on");
}
