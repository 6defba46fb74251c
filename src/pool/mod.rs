//! The session pool: warm, logged-in upstream connections, kept per [`PoolKey`] and handed
//! to one client at a time.
//!
//! Opening connections is the upstream side's business, asked for through
//! [`Connect`](crate::upstream::Connect); the pool decides who gets which connection and when:
//! checkout with exact or adjusted settings, waiting in arrival order when the pool is full
//! (`slot.rs`), eviction, warm fill and lifetimes (`maintenance.rs`). A connection goes back to
//! the pool only when the relay saw it idle outside any transaction; it is then reset with
//! `DISCARD ALL` off the client's path, and the settings its client was given
//! (`application_name`, ...) are SET again in the same round trip, so the next client of the
//! same application takes it as it is (`lease.rs`). Connections past their (jittered)
//! lifetime, idle too long, or found dead are closed.

mod checkout;
mod lease;
mod maintenance;
mod slot;
mod statements;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use checkout::CheckoutError;
pub use lease::Lease;
pub use statements::{Statement, StatementRegistry};

use crate::config::PoolSettings;
use crate::metrics;
use crate::upstream::{Connect, ServerConnection};

/// What makes upstream connections interchangeable: the same database, role and `options`
/// (which can hold settings a session cannot change later). Other startup parameters
/// (application_name, client_encoding, DateStyle, ...) are applied per client with SET.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Upstream database.
    pub database: String,
    /// Upstream role.
    pub user: String,
    /// The `options` startup parameter, if any.
    pub options: Option<String>,
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user, self.database)
    }
}

/// ParameterStatus values as (name, value) pairs, shared cheaply.
pub type ServerParams = Arc<[(String, String)]>;

/// An idle connection with the time it must be closed by.
struct Idle {
    /// Boxed: it moves between the pool, its lease and a client's session future at every
    /// checkout, and a session holding it inline would cost an idle client its size.
    connection: Box<ServerConnection>,
    deadline: Instant,
    idle_since: Instant,
}

impl Idle {
    /// Not past its deadline and, as far as a non-blocking look can tell, still connected.
    fn usable(&mut self) -> bool {
        Instant::now() < self.deadline && self.connection.looks_alive()
    }
}

/// How a checkout found its connection (in the order of `metrics::CHECKOUT_KINDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutKind {
    /// An idle connection that already carries the client's settings (or whose server already
    /// reports them): no round trip.
    Exact,
    /// An idle connection brought to the client's settings with one round trip.
    Adjusted,
    /// A new login.
    Opened,
}

/// What every pool of one target shares: how to connect, and the limits.
pub struct Upstream {
    /// The target, as metrics and logs name it.
    pub label: String,
    /// Opens connections (and forwards cancel requests) for this target.
    pub connector: Arc<dyn Connect>,
    /// Limits for every pool of this target; a reload may change them for new connections.
    settings: RwLock<PoolSettings>,
    /// What its checkouts record.
    pub checkout_metrics: metrics::CheckoutMetrics,
    /// What its transaction-mode clients' statement use records.
    pub statement_metrics: metrics::StatementCache,
}

impl Upstream {
    /// An upstream reached through `connector`, with pool limits `settings`.
    pub fn new(label: String, connector: Arc<dyn Connect>, settings: PoolSettings) -> Upstream {
        let checkout_metrics = metrics::CheckoutMetrics::new(&label);
        let statement_metrics = metrics::StatementCache::new(&label);
        Upstream { label, connector, settings: RwLock::new(settings), checkout_metrics, statement_metrics }
    }

    /// The current pool settings.
    pub fn settings(&self) -> PoolSettings {
        *self.settings.read().unwrap()
    }

    fn set_settings(&self, settings: PoolSettings) {
        *self.settings.write().unwrap() = settings;
    }

    /// Most connections one pool may open: `--max-pool-size`, but at most 90% of what the
    /// server allows (Lakebase's max_connections depends on the compute size), leaving room
    /// for other clients and the pool's other keys.
    pub fn max_pool_size(&self) -> usize {
        let max_size = self.settings().max_size;
        match self.connector.capacity() {
            Some(capacity) => max_size.min((capacity * 9 / 10).max(1)),
            None => max_size,
        }
    }
}

/// The connections of one [`PoolKey`].
pub struct Pool {
    key: PoolKey,
    upstream: Arc<Upstream>,
    state: Mutex<slot::PoolState>,
    /// ParameterStatus values of the last login, to greet clients before attaching.
    greeting: Mutex<Option<ServerParams>>,
    /// Checkouts so far, by [`CheckoutKind`].
    checkouts: [AtomicU64; 3],
    /// The statements its clients prepared, in transaction mode.
    statements: StatementRegistry,
}

impl Pool {
    fn new(key: PoolKey, upstream: Arc<Upstream>) -> Pool {
        Pool {
            key,
            upstream,
            state: Mutex::default(),
            greeting: Mutex::new(None),
            checkouts: Default::default(),
            statements: StatementRegistry::default(),
        }
    }

    /// How many checkouts of this pool went `kind`'s way.
    pub fn checkouts(&self, kind: CheckoutKind) -> u64 {
        self.checkouts[kind as usize].load(Ordering::Relaxed)
    }

    fn count_checkout(&self, kind: CheckoutKind) {
        self.checkouts[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.upstream.checkout_metrics.checkout(kind as usize);
    }

    /// The upstream this pool connects to.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The statements its clients prepared (transaction mode).
    pub fn statements(&self) -> &StatementRegistry {
        &self.statements
    }

    /// The key this pool serves.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// Parameters to greet a client with before any connection is attached, if known.
    pub fn greeting(&self) -> Option<ServerParams> {
        self.greeting.lock().unwrap().clone()
    }

    /// (backend pid, age, idle time) of each idle connection, for the admin console.
    pub fn idle_connections(&self) -> Vec<(i32, Duration, Duration)> {
        let now = Instant::now();
        let state = self.state.lock().unwrap();
        state
            .idle
            .iter()
            .map(|p| (p.connection.key().pid, now - p.connection.opened_at(), now - p.idle_since))
            .collect()
    }

    /// (idle, open) connection counts; open counts idle, lent, resetting and opening ones.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.idle.len(), state.idle.len() + state.busy)
    }

    /// Whether a checkout now would have to wait: no idle connection, no room for another,
    /// or others waiting already.
    pub fn would_wait(&self) -> bool {
        let state = self.state.lock().unwrap();
        !state.waiters.is_empty() || (state.idle.is_empty() && state.busy >= self.upstream.max_pool_size())
    }

    /// Clients waiting for a connection.
    pub fn waiting(&self) -> usize {
        self.state.lock().unwrap().waiters.len()
    }

    fn settings(&self) -> PoolSettings {
        self.upstream.settings()
    }
}

/// All pools of one target, created on first use.
pub struct Pools {
    upstream: Arc<Upstream>,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// The pool kept warm with `min_idle` connections.
    warm: Option<PoolKey>,
}

impl Pools {
    /// Pools for `upstream`; `warm` names the pool to keep `min_idle` connections in.
    pub fn new(upstream: Upstream, warm: Option<PoolKey>) -> Arc<Pools> {
        Arc::new(Pools { upstream: Arc::new(upstream), pools: Mutex::default(), warm })
    }

    /// The pool for `key`.
    pub fn get(&self, key: &PoolKey) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap();
        if let Some(pool) = pools.get(key) {
            return pool.clone();
        }
        let pool = Arc::new(Pool::new(key.clone(), self.upstream.clone()));
        pools.insert(key.clone(), pool.clone());
        pool
    }

    /// Every pool, for maintenance and status.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.lock().unwrap().values().cloned().collect()
    }

    /// The upstream these pools connect to.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Applies new settings (a reload); existing connections keep the deadlines they have.
    /// Clients already waiting get any room a larger pool now has, oldest first.
    pub fn set_settings(&self, settings: PoolSettings) {
        self.upstream.set_settings(settings);
        for pool in self.all() {
            pool.serve_waiters();
        }
    }
}
