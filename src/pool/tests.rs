//! The pool's own logic against a stand-in connector: connections are in-memory pipes to a
//! stand-in server that answers every simple query, so no PostgreSQL is needed and time can be
//! paused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, DuplexStream, duplex};
use tokio::sync::{Mutex as AsyncMutex, Semaphore};

use super::*;
use crate::config::PoolSettings;
use crate::credentials::BoxFuture;
use crate::protocol::frame::read_message;
use crate::protocol::messages::{self, ErrorFields, Severity};
use crate::protocol::{CancelKey, StartupParams, TransactionStatus, frontend, sqlstate};
use crate::upstream::{ConnectError, ServerConnection};

/// Opens in-memory connections; logins can be held at a gate or made to fail.
#[derive(Default)]
struct StandIn {
    logins: AtomicUsize,
    /// When set, each login waits for a permit.
    gate: Option<Arc<Semaphore>>,
    refuse: AtomicBool,
    /// Every simple query each stand-in server received, in order.
    queries: Arc<AsyncMutex<Vec<String>>>,
    /// The server ends of the pipes, so a test can cut a connection.
    servers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Connect for StandIn {
    fn connect<'a>(
        &'a self,
        _user: &'a str,
        _database: &'a str,
        params: &'a StartupParams,
    ) -> BoxFuture<'a, Result<ServerConnection, ConnectError>> {
        Box::pin(async move {
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            if self.refuse.load(Ordering::SeqCst) {
                return Err(ConnectError::Unreachable {
                    address: "stand-in".into(),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                });
            }
            let id = self.logins.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            let (near, far) = duplex(64 * 1024);
            let server = tokio::spawn(serve(far, self.queries.clone()));
            self.servers.lock().unwrap().push(server);
            let key = CancelKey { pid: id as i32, secret: 0 };
            let server_params = vec![("application_name".to_owned(), String::new())];
            Ok(ServerConnection::in_memory(near, id, params.clone(), server_params, key))
        })
    }

    fn cancel(&self, _key: CancelKey) -> BoxFuture<'_, Result<(), ConnectError>> {
        Box::pin(async { Ok(()) })
    }

    fn capacity(&self) -> Option<usize> {
        None
    }
}

/// Answers each simple query with CommandComplete (or an error for one containing `fail`)
/// and ReadyForQuery, inside a transaction from `BEGIN` to `ROLLBACK`.
async fn serve(mut pipe: DuplexStream, queries: Arc<AsyncMutex<Vec<String>>>) {
    let mut inbound = BytesMut::new();
    let mut status = TransactionStatus::Idle;
    while let Ok(Some((tag, body))) = read_message(&mut pipe, &mut inbound, 1 << 20).await {
        if tag != frontend::QUERY {
            continue;
        }
        let sql = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(&body)).into_owned();
        let mut out = BytesMut::new();
        if sql.contains("fail") {
            ErrorFields::new(Severity::Error, sqlstate::INTERNAL_ERROR, "failed").write_error(&mut out);
        } else {
            for _ in sql.split(';').filter(|s| !s.trim().is_empty()) {
                messages::command_complete(&mut out, "OK");
            }
        }
        match sql.as_str() {
            "BEGIN" => status = TransactionStatus::InTransaction,
            "ROLLBACK" => status = TransactionStatus::Idle,
            _ => {}
        }
        messages::ready_for_query(&mut out, status);
        queries.lock().await.push(sql);
        if pipe.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn settings(max_size: usize) -> PoolSettings {
    PoolSettings { max_size, checkout_timeout: Duration::from_secs(5), ..PoolSettings::default() }
}

fn pool_with(connector: StandIn, settings: PoolSettings) -> (Arc<Pool>, Arc<StandIn>) {
    let (_, pool, connector) = pools_with(connector, settings);
    (pool, connector)
}

/// A target's pools, the one pool tests use, and the connector behind them.
fn pools_with(connector: StandIn, settings: PoolSettings) -> (Arc<Pools>, Arc<Pool>, Arc<StandIn>) {
    let connector = Arc::new(connector);
    let pools = Pools::new(Upstream::new("test".into(), connector.clone(), settings), None);
    let pool = pools.get(&PoolKey { database: "db".into(), user: "u".into(), options: None });
    (pools, pool, connector)
}

fn params(pairs: &[(&str, &str)]) -> StartupParams {
    pairs.iter().copied().collect()
}

/// A checkout running in its own task, which keeps the lease it gets until the test takes it.
fn spawn_checkout(pool: &Arc<Pool>) -> tokio::task::JoinHandle<Result<Lease, CheckoutError>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.checkout(&params(&[])).await })
}

/// Lets other tasks run until `condition` holds (a release resets in the background, a
/// checkout joins the queue in its own task).
async fn until(condition: impl Fn() -> bool) {
    // Real time, whether or not the test pauses tokio's clock: a condition that never comes
    // fails the test instead of spinning.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "the awaited condition did not come within 10 s");
        tokio::task::yield_now().await;
    }
}

/// Waits until the pool holds `idle` idle connections.
async fn idle_count_reaches(pool: &Pool, idle: usize) {
    until(|| pool.counts().0 == idle).await;
}

#[tokio::test]
async fn a_released_connection_is_reset_and_reused() {
    let (pool, connector) = pool_with(StandIn::default(), settings(2));
    let lease = pool.checkout(&params(&[])).await.unwrap();
    assert_eq!(pool.counts(), (0, 1));
    lease.release(true);
    idle_count_reaches(&pool, 1).await;
    let _again = pool.checkout(&params(&[])).await.unwrap();
    assert_eq!(connector.logins.load(Ordering::SeqCst), 1, "the idle connection was reused");
    assert_eq!(pool.checkouts(CheckoutKind::Exact), 1);
    assert_eq!(connector.queries.lock().await.as_slice(), ["DISCARD ALL"]);
}

#[tokio::test]
async fn a_dirty_release_closes_the_connection_and_frees_its_place() {
    let (pool, connector) = pool_with(StandIn::default(), settings(1));
    let mut lease = pool.checkout(&params(&[])).await.unwrap();
    // The relay lost track of the stream (a protocol violation, say).
    lease.connection().relay_parts().protocol.lost = true;
    lease.release(true);
    assert_eq!(pool.counts(), (0, 0));
    let _next = pool.checkout(&params(&[])).await.unwrap();
    assert_eq!(connector.logins.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_transaction_left_open_is_rolled_back_and_the_connection_reused() {
    let (pool, connector) = pool_with(StandIn::default(), settings(1));
    for reset in [true, false] {
        let mut lease = pool.checkout(&params(&[])).await.unwrap();
        lease.connection().simple_query("BEGIN").await.unwrap().unwrap();
        lease.release(reset);
        idle_count_reaches(&pool, 1).await;
    }
    assert_eq!(connector.logins.load(Ordering::SeqCst), 1);
    let queries = connector.queries.lock().await.clone();
    assert_eq!(queries, ["BEGIN", "ROLLBACK", "DISCARD ALL", "BEGIN", "ROLLBACK"], "without a reset: ROLLBACK only");
}

#[tokio::test(start_paused = true)]
async fn a_full_pool_makes_clients_wait_until_the_checkout_timeout() {
    let (pool, _) = pool_with(StandIn::default(), settings(1));
    let _held = pool.checkout(&params(&[])).await.unwrap();
    let started = tokio::time::Instant::now();
    let error = pool.checkout(&params(&[])).await.err().expect("the pool is full");
    assert!(matches!(error, CheckoutError::Exhausted { max_size: 1, .. }), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(pool.waiting(), 0, "a client that gave up leaves the queue");
}

#[tokio::test]
async fn waiters_are_served_in_arrival_order_and_newcomers_do_not_barge() {
    let (pool, _) = pool_with(StandIn::default(), settings(1));
    let held = pool.checkout(&params(&[])).await.unwrap();
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for name in ["first", "second"] {
        let (waiting_pool, served) = (pool.clone(), served.clone());
        waiters.push(tokio::spawn(async move {
            let lease = waiting_pool.checkout(&params(&[])).await.unwrap();
            served.lock().unwrap().push(name);
            lease.release(false);
        }));
        until(|| pool.waiting() == waiters.len()).await;
    }
    held.release(false);
    // A newcomer arriving now queues behind "second" rather than taking what "first" frees.
    let newcomer = pool.checkout(&params(&[])).await.unwrap();
    served.lock().unwrap().push("newcomer");
    for waiter in waiters {
        waiter.await.unwrap();
    }
    assert_eq!(*served.lock().unwrap(), ["first", "second", "newcomer"]);
    drop(newcomer);
    assert_eq!(pool.counts(), (0, 0));
}

#[tokio::test]
async fn room_from_a_reload_goes_to_the_clients_already_waiting() {
    let (pools, pool, _) = pools_with(StandIn::default(), settings(1));
    let _held = pool.checkout(&params(&[])).await.unwrap();
    let first = spawn_checkout(&pool);
    until(|| pool.waiting() >= 1).await;
    let second = spawn_checkout(&pool);
    until(|| pool.waiting() >= 2).await;
    pools.set_settings(settings(2));
    assert_eq!(pool.waiting(), 1, "the new place went to a waiting client at once");
    let newcomer = spawn_checkout(&pool);
    let _first = first.await.unwrap().expect("the oldest waiter got the new place");
    until(|| pool.waiting() >= 2).await;
    assert!(!second.is_finished() && !newcomer.is_finished(), "the newcomer queues behind the second");
    assert_eq!(pool.counts(), (0, 2));
}

#[tokio::test]
async fn a_checkout_dropped_while_logging_in_gives_its_place_back() {
    let gate = Arc::new(Semaphore::new(0));
    let (pool, connector) = pool_with(StandIn { gate: Some(gate.clone()), ..StandIn::default() }, settings(1));
    let pending = spawn_checkout(&pool);
    until(|| pool.counts().1 > 0).await;
    pending.abort();
    assert!(pending.await.is_err_and(|error| error.is_cancelled()));
    assert_eq!(pool.counts(), (0, 0), "the reserved place came back");
    gate.add_permits(1);
    let _lease = pool.checkout(&params(&[])).await.unwrap();
    assert_eq!(connector.logins.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_fill_dropped_half_way_gives_its_place_back() {
    let gate = Arc::new(Semaphore::new(1));
    let (pool, _) = pool_with(StandIn { gate: Some(gate.clone()), ..StandIn::default() }, settings(4));
    let fill = tokio::spawn({
        let pool = pool.clone();
        async move { pool.fill(3).await }
    });
    // The first warm connection opens; the second waits at the gate, holding a place.
    until(|| pool.counts() == (1, 2)).await;
    fill.abort();
    let _ = fill.await;
    assert_eq!(pool.counts(), (1, 1));
}

#[tokio::test]
async fn a_waiter_that_gives_up_does_not_swallow_the_next_free_connection() {
    let (pool, _) = pool_with(StandIn::default(), settings(1));
    let held = pool.checkout(&params(&[])).await.unwrap();
    let quitter = spawn_checkout(&pool);
    until(|| pool.waiting() >= 1).await;
    let patient = spawn_checkout(&pool);
    until(|| pool.waiting() >= 2).await;
    quitter.abort();
    let _ = quitter.await;
    let mut held = held;
    let pid = held.connection().key().pid;
    held.release(false);
    let mut lease = patient.await.unwrap().unwrap();
    assert_eq!(lease.connection().key().pid, pid, "the patient waiter got the released connection");
}

#[tokio::test]
async fn a_failed_login_frees_its_place() {
    let (pool, connector) = pool_with(StandIn::default(), settings(1));
    connector.refuse.store(true, Ordering::SeqCst);
    assert!(matches!(pool.checkout(&params(&[])).await, Err(CheckoutError::Connect(_))));
    assert_eq!(pool.counts(), (0, 0));
    connector.refuse.store(false, Ordering::SeqCst);
    assert!(pool.checkout(&params(&[])).await.is_ok());
}

#[tokio::test]
async fn a_dead_idle_connection_is_replaced_at_checkout() {
    let (pool, connector) = pool_with(StandIn::default(), settings(2));
    pool.checkout(&params(&[])).await.unwrap().release(false);
    idle_count_reaches(&pool, 1).await;
    let servers: Vec<_> = connector.servers.lock().unwrap().drain(..).collect();
    for server in servers {
        server.abort();
        assert!(server.await.unwrap_err().is_cancelled(), "the stand-in server hung up");
    }
    let mut lease = pool.checkout(&params(&[])).await.unwrap();
    assert_eq!(lease.connection().key().pid, 2, "a new login replaced the dead one");
    assert_eq!(pool.counts(), (0, 1));
}

#[tokio::test]
async fn settings_are_matched_exactly_or_adjusted_with_one_round_trip() {
    let (pool, connector) = pool_with(StandIn::default(), settings(2));
    let psql = params(&[("application_name", "psql")]);
    pool.checkout(&psql).await.unwrap().release(true);
    idle_count_reaches(&pool, 1).await;
    pool.checkout(&psql).await.unwrap().release(false);
    idle_count_reaches(&pool, 1).await;
    assert_eq!(pool.checkouts(CheckoutKind::Exact), 1, "same settings, no round trip");

    let more = params(&[("application_name", "psql"), ("DateStyle", "ISO")]);
    let _adjusted = pool.checkout(&more).await.unwrap();
    assert_eq!(pool.checkouts(CheckoutKind::Adjusted), 1);
    assert_eq!(connector.logins.load(Ordering::SeqCst), 1);
    let queries = connector.queries.lock().await;
    assert_eq!(queries.last().unwrap(), "SET \"DateStyle\" TO 'ISO';");
}

#[tokio::test]
async fn a_full_pool_of_other_settings_closes_one_to_make_room() {
    let (pool, connector) = pool_with(StandIn::default(), settings(1));
    pool.checkout(&params(&[("application_name", "a")])).await.unwrap().release(false);
    idle_count_reaches(&pool, 1).await;
    let _other = pool.checkout(&params(&[("application_name", "b")])).await.unwrap();
    assert_eq!(connector.logins.load(Ordering::SeqCst), 2);
    assert_eq!(pool.counts(), (0, 1));
}

#[tokio::test]
async fn a_connection_past_its_lifetime_is_closed_at_release() {
    let (pool, _) = pool_with(StandIn::default(), PoolSettings { max_lifetime: Duration::ZERO, ..settings(2) });
    pool.checkout(&params(&[])).await.unwrap().release(true);
    assert_eq!(pool.counts(), (0, 0), "closed, not pooled");
}

#[tokio::test]
async fn idle_connections_past_the_idle_timeout_are_pruned_down_to_the_warm_count() {
    let (pool, _) = pool_with(StandIn::default(), PoolSettings { idle_timeout: Duration::ZERO, ..settings(3) });
    let (first, second) = (pool.checkout(&params(&[])).await.unwrap(), pool.checkout(&params(&[])).await.unwrap());
    first.release(false);
    second.release(false);
    idle_count_reaches(&pool, 2).await;
    pool.prune(1);
    assert_eq!(pool.counts(), (1, 1), "one is kept warm");
    pool.prune(0);
    assert_eq!(pool.counts(), (0, 0));
}
