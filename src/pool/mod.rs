//! The session pool: warm, logged-in upstream connections, kept per [`PoolKey`] and handed
//! to one client at a time.
//!
//! A connection goes back to the pool only when the relay saw it idle outside any
//! transaction; it is then reset with `DISCARD ALL` off the client's path, and the settings
//! its client was given (`application_name`, ...) are SET again in the same round trip, so
//! the next client of the same application takes it as it is. Connections past their
//! (jittered) lifetime, idle too long, or found dead are closed.

mod checkout;
mod maintenance;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

pub use checkout::{CheckoutError, Lease};

use crate::credentials::{BoxFuture, CredentialCache};
use crate::ops::metrics;
use crate::upstream::{Endpoint, ServerConnection};

/// Pool limits and lifetimes, shared by all pools of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections opened ahead of demand for the target's default database and role.
    pub min_idle: usize,
    /// Most connections (busy and idle) per pool.
    pub max_size: usize,
    /// Idle connections beyond `min_idle` are closed after this long unused.
    pub idle_timeout: Duration,
    /// Upper bound on a connection's age; each gets a deadline jittered below it so
    /// connections opened together do not all expire together.
    pub max_lifetime: Duration,
    /// Longest a client waits for a connection when the pool is at `max_size`.
    pub checkout_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            min_idle: 0,
            max_size: 20,
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(45 * 60),
            checkout_timeout: Duration::from_secs(30),
        }
    }
}

/// Lakebase closes a connection idle this long…
pub const SERVER_IDLE_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// …and may close any connection this old.
pub const SERVER_AGE_LIMIT: Duration = Duration::from_secs(3 * 24 * 3600);
/// Connections are retired this long before those limits, so the server never gets to act.
const SERVER_LIMIT_MARGIN: Duration = Duration::from_secs(600);

impl PoolSettings {
    /// Longest a connection may live: `max_lifetime`, but never near the server's age limit.
    pub fn lifetime_cap(&self) -> Duration {
        self.max_lifetime.min(SERVER_AGE_LIMIT - SERVER_LIMIT_MARGIN)
    }

    /// Longest any connection may sit idle, warm ones included: near the server's idle limit
    /// even a `min_idle` connection is replaced.
    pub fn idle_cap(&self) -> Duration {
        SERVER_IDLE_LIMIT - SERVER_LIMIT_MARGIN
    }
}

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
struct Pooled {
    connection: ServerConnection,
    deadline: Instant,
    idle_since: Instant,
}

#[derive(Default)]
struct PoolState {
    /// Idle connections, most recently used last.
    idle: Vec<Pooled>,
    /// Connections that exist or are being opened: idle, leased, or being reset.
    open: usize,
}

/// The connections of one [`PoolKey`].
pub struct Pool {
    key: PoolKey,
    upstream: Arc<Upstream>,
    state: Mutex<PoolState>,
    /// Signalled when a connection goes idle or a slot frees up.
    available: Notify,
    /// ParameterStatus values of the last login, to greet clients before attaching.
    greeting: Mutex<Option<ServerParams>>,
    /// Checkouts so far, by [`CheckoutKind`].
    checkouts: [AtomicU64; 3],
}

/// How a checkout found its connection.
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

impl CheckoutKind {
    fn label(self) -> &'static str {
        match self {
            CheckoutKind::Exact => "exact",
            CheckoutKind::Adjusted => "adjusted",
            CheckoutKind::Opened => "opened",
        }
    }
}

/// Everything needed to open connections to one target.
pub struct Upstream {
    /// The target, as metrics and logs name it.
    pub label: String,
    /// Where to connect.
    pub endpoint: Endpoint,
    /// The password source, if the upstream wants one.
    pub credentials: Option<Arc<CredentialCache>>,
    /// Limits for every pool of this target; a reload may change them for new connections.
    settings: RwLock<PoolSettings>,
    /// Looks the host up again after connection failures (Lakebase names).
    resolver: Option<HostResolver>,
    last_resolution: Mutex<Option<Instant>>,
    /// Connection slots the server offers ordinary roles, learnt at the first login.
    capacity: OnceLock<usize>,
}

/// Looks a target's host up again; errors are reported as text.
pub type HostResolver = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Re-resolutions are spaced at least this far apart, however many connections fail.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

impl Upstream {
    /// An upstream; `resolver` is for targets whose host can move (Lakebase names).
    pub fn new(
        label: String,
        endpoint: Endpoint,
        credentials: Option<Arc<CredentialCache>>,
        settings: PoolSettings,
        resolver: Option<HostResolver>,
    ) -> Upstream {
        Upstream {
            label,
            endpoint,
            credentials,
            settings: RwLock::new(settings),
            resolver,
            last_resolution: Mutex::new(None),
            capacity: OnceLock::new(),
        }
    }

    /// The current pool settings.
    pub fn settings(&self) -> PoolSettings {
        *self.settings.read().unwrap()
    }

    /// Applies new settings (a reload); existing connections keep the deadlines they have.
    pub fn set_settings(&self, settings: PoolSettings) {
        *self.settings.write().unwrap() = settings;
    }

    /// Most connections one pool may open: `--max-pool-size`, but at most 90% of what the
    /// server allows (Lakebase's max_connections depends on the compute size), leaving room
    /// for other clients and the pool's other keys.
    pub fn max_pool_size(&self) -> usize {
        match self.capacity.get() {
            Some(&capacity) => self.settings().max_size.min((capacity * 9 / 10).max(1)),
            None => self.settings().max_size,
        }
    }

    /// Learns the server's connection capacity from a fresh connection, once per target.
    async fn learn_capacity(&self, connection: &mut ServerConnection) {
        if self.capacity.get().is_some() {
            return;
        }
        let sql =
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int";
        if let Ok(Ok(Some(value))) = connection.simple_query(sql).await
            && let Ok(capacity) = value.trim().parse::<usize>()
            && self.capacity.set(capacity).is_ok()
            && self.max_pool_size() < self.settings().max_size
        {
            tracing::warn!(
                capacity,
                max_pool_size = self.max_pool_size(),
                "--max-pool-size is more than the server allows; each pool is capped at 90% of its connections"
            );
        }
    }

    /// After a connection-class failure, looks the host up again in the background (at most
    /// every 30 s): a Lakebase endpoint's host can change.
    fn re_resolve_soon(self: &Arc<Self>) {
        let Some(resolver) = self.resolver.clone() else { return };
        {
            let mut last = self.last_resolution.lock().unwrap();
            if last.is_some_and(|at| at.elapsed() < RESOLVE_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let upstream = self.clone();
        tokio::spawn(async move {
            match resolver().await {
                Ok(host) => match upstream.endpoint.set_host(&host) {
                    Ok(true) => tracing::info!(%host, "the endpoint moved; new connections go to the new host"),
                    Ok(false) => tracing::debug!(%host, "re-resolved; the host is unchanged"),
                    Err(error) => tracing::warn!(%error, "re-resolved to an unusable host"),
                },
                Err(error) => tracing::warn!(%error, "could not re-resolve the endpoint"),
            }
        });
    }
}

impl Pool {
    fn new(key: PoolKey, upstream: Arc<Upstream>) -> Pool {
        Pool {
            key,
            upstream,
            state: Mutex::default(),
            available: Notify::new(),
            greeting: Mutex::new(None),
            checkouts: Default::default(),
        }
    }

    /// How many checkouts of this pool went `kind`'s way.
    pub fn checkouts(&self, kind: CheckoutKind) -> u64 {
        self.checkouts[kind as usize].load(Ordering::Relaxed)
    }

    fn count_checkout(&self, kind: CheckoutKind) {
        self.checkouts[kind as usize].fetch_add(1, Ordering::Relaxed);
        metrics::checkout(&self.upstream.label, kind.label());
    }

    /// The upstream this pool connects to.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
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

    /// (idle, open) connection counts.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.idle.len(), state.open)
    }

    fn settings(&self) -> PoolSettings {
        self.upstream.settings()
    }

    /// Gives back a slot whose connection was closed or never opened.
    fn forget_one(&self) {
        self.state.lock().unwrap().open -= 1;
        self.available.notify_one();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_stay_clear_of_the_servers_limits() {
        let settings = PoolSettings { max_lifetime: Duration::from_secs(7 * 24 * 3600), ..PoolSettings::default() };
        assert!(settings.lifetime_cap() < SERVER_AGE_LIMIT);
        assert!(settings.idle_cap() < SERVER_IDLE_LIMIT);
        assert_eq!(PoolSettings::default().lifetime_cap(), Duration::from_secs(45 * 60));
    }
}
