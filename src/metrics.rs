//! Metric names and the few functions that record them: a leaf that the modules owning the
//! events call. Everything is recorded per session or per event, never per relayed message,
//! so the relay's hot path stays free of it.

use std::sync::OnceLock;
use std::time::Instant;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0],
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (an embedding program's); then ours only
        // renders what it sees, which is nothing. That is the embedder's choice.
        let _ = metrics::set_global_recorder(recorder);
        // Histogram samples wait in a queue until the next render or upkeep; with nobody
        // scraping /metrics, a checkout per transaction would grow it without end.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
        handle
    })
}

/// How often queued histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A client connection was accepted.
pub fn client_accepted(target: &str) {
    counter!("lakebase_proxy_client_connections_total", "target" => target.to_owned()).increment(1);
}

/// A client was turned away (`limit`, `untrusted`, `protocol`, `startup_timeout`, ...).
pub fn client_refused(reason: &'static str) {
    counter!("lakebase_proxy_clients_refused_total", "reason" => reason).increment(1);
}

/// Counts a client as active (attached to the proxy) until dropped.
pub struct ActiveClient(String);

impl ActiveClient {
    /// Starts counting a client of `target`.
    pub fn new(target: &str) -> ActiveClient {
        gauge!("lakebase_proxy_clients_active", "target" => target.to_owned()).increment(1.0);
        ActiveClient(target.to_owned())
    }
}

impl Drop for ActiveClient {
    fn drop(&mut self) {
        gauge!("lakebase_proxy_clients_active", "target" => self.0.clone()).decrement(1.0);
    }
}

/// The metrics every checkout of a target records, with their handles made once per target:
/// in transaction mode a checkout happens for every transaction, and a handle costs an atomic
/// add where a lookup by name and labels would allocate.
pub struct CheckoutMetrics {
    waiting: metrics::Gauge,
    wait_seconds: metrics::Histogram,
    /// By kind, in the order of [`CHECKOUT_KINDS`].
    checkouts: [metrics::Counter; 3],
}

/// How a client got an upstream connection: `exact` (idle, no round trip needed), `adjusted`
/// (idle, after a round trip of SETs) or `opened` (a new login).
pub const CHECKOUT_KINDS: [&str; 3] = ["exact", "adjusted", "opened"];

impl CheckoutMetrics {
    /// The handles for checkouts of `target`.
    pub fn new(target: &str) -> CheckoutMetrics {
        let label = || target.to_owned();
        CheckoutMetrics {
            waiting: gauge!("lakebase_proxy_clients_waiting", "target" => label()),
            wait_seconds: histogram!("lakebase_proxy_checkout_wait_seconds", "target" => label()),
            checkouts: CHECKOUT_KINDS
                .map(|kind| counter!("lakebase_proxy_checkouts_total", "target" => label(), "kind" => kind)),
        }
    }

    /// Counts a client as waiting for an upstream connection until the result is dropped.
    pub fn waiting(&self) -> WaitingClient {
        self.waiting.increment(1.0);
        WaitingClient { waiting: self.waiting.clone(), wait_seconds: self.wait_seconds.clone(), since: Instant::now() }
    }

    /// A client got an upstream connection the way `CHECKOUT_KINDS[kind]` says.
    pub fn checkout(&self, kind: usize) {
        self.checkouts[kind].increment(1);
    }
}

/// A client waiting for an upstream connection, counted until dropped.
pub struct WaitingClient {
    waiting: metrics::Gauge,
    wait_seconds: metrics::Histogram,
    since: Instant,
}

impl Drop for WaitingClient {
    fn drop(&mut self) {
        self.waiting.decrement(1.0);
        self.wait_seconds.record(self.since.elapsed().as_secs_f64());
    }
}

/// An upstream login finished: `reason` is `None` on success, else a short failure class.
pub fn upstream_login(target: &str, failure: Option<&'static str>) {
    let (result, reason) = match failure {
        None => ("ok", ""),
        Some(reason) => ("error", reason),
    };
    counter!("lakebase_proxy_upstream_logins_total", "target" => target.to_owned(), "result" => result, "reason" => reason)
        .increment(1);
}

/// An upstream connection was retired (`lifetime`, `idle`, `dead`, `dirty`).
pub fn upstream_retired(target: &str, reason: &'static str) {
    counter!("lakebase_proxy_upstream_retired_total", "target" => target.to_owned(), "reason" => reason).increment(1);
}

/// A credential fetch finished.
pub fn credential_refresh(source: &str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter!("lakebase_proxy_credential_refreshes_total", "source" => source.to_owned(), "result" => result)
        .increment(1);
}

/// What a finished session moved.
pub fn session_traffic(target: &str, to_upstream: u64, to_client: u64, round_trips: u64) {
    let target = target.to_owned();
    counter!("lakebase_proxy_bytes_total", "target" => target.clone(), "direction" => "to_upstream")
        .increment(to_upstream);
    counter!("lakebase_proxy_bytes_total", "target" => target.clone(), "direction" => "to_client").increment(to_client);
    counter!("lakebase_proxy_query_round_trips_total", "target" => target).increment(round_trips);
}

/// Sets the gauges of connections per pool state for one target.
pub fn upstream_connections(target: &str, idle: usize, open: usize) {
    gauge!("lakebase_proxy_upstream_connections", "target" => target.to_owned(), "state" => "idle").set(idle as f64);
    gauge!("lakebase_proxy_upstream_connections", "target" => target.to_owned(), "state" => "active")
        .set(open.saturating_sub(idle) as f64);
}

/// Sets a credential source's age and time to expiry, in seconds (negative once expired).
pub fn credential_times(source: &str, age: Option<f64>, expires_in: Option<f64>) {
    if let Some(age) = age {
        gauge!("lakebase_proxy_credential_age_seconds", "source" => source.to_owned()).set(age);
    }
    if let Some(left) = expires_in {
        gauge!("lakebase_proxy_credential_expiry_seconds", "source" => source.to_owned()).set(left);
    }
}

/// Counters of a target's prepared-statement use in transaction mode, made once per target so
/// that counting a statement use on the message path costs an atomic add.
pub struct StatementCache {
    /// A statement the server had: no Parse sent.
    pub hit: metrics::Counter,
    /// A statement the server lacked: prepared first.
    pub miss: metrics::Counter,
    /// A statement closed to keep a server under `--max-prepared-statements`.
    pub eviction: metrics::Counter,
}

impl StatementCache {
    /// The counters for clients of `target`.
    pub fn new(target: &str) -> StatementCache {
        let counter = |result: &'static str| counter!("lakebase_proxy_prepared_statements_total", "target" => target.to_owned(), "result" => result);
        StatementCache { hit: counter("hit"), miss: counter("miss"), eviction: counter("eviction") }
    }
}

/// A transaction-mode client was pinned to its server connection, for `reason`.
pub fn client_pinned(target: &str, reason: &'static str) {
    counter!("lakebase_proxy_pinned_clients_total", "target" => target.to_owned(), "reason" => reason).increment(1);
}
