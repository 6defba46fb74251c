//! The session pool: warm, logged-in upstream connections, kept per [`PoolKey`] and handed
//! to one client at a time.
//!
//! A connection goes back to the pool only when the relay saw it idle outside any
//! transaction; it is then reset with `DISCARD ALL` off the client's path. Connections past
//! their (jittered) lifetime, idle too long, or found dead are closed.

mod checkout;
mod maintenance;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

pub use checkout::{CheckoutError, Lease};

use crate::credentials::{BoxFuture, CredentialCache};
use crate::upstream::{Endpoint, ServerConnection};

/// Pool limits and lifetimes, shared by all pools of a target.
#[derive(Debug, Clone)]
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
}

/// Everything needed to open connections to one target.
pub struct Upstream {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// The password source, if the upstream wants one.
    pub credentials: Option<Arc<CredentialCache>>,
    /// Limits for every pool of this target.
    pub settings: PoolSettings,
    /// Looks the host up again after connection failures (Lakebase names).
    resolver: Option<HostResolver>,
    last_resolution: Mutex<Option<Instant>>,
}

/// Looks a target's host up again; errors are reported as text.
pub type HostResolver = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Re-resolutions are spaced at least this far apart, however many connections fail.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

impl Upstream {
    /// An upstream; `resolver` is for targets whose host can move (Lakebase names).
    pub fn new(
        endpoint: Endpoint,
        credentials: Option<Arc<CredentialCache>>,
        settings: PoolSettings,
        resolver: Option<HostResolver>,
    ) -> Upstream {
        Upstream { endpoint, credentials, settings, resolver, last_resolution: Mutex::new(None) }
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
        Pool { key, upstream, state: Mutex::default(), available: Notify::new(), greeting: Mutex::new(None) }
    }

    /// The key this pool serves.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// Parameters to greet a client with before any connection is attached, if known.
    pub fn greeting(&self) -> Option<ServerParams> {
        self.greeting.lock().unwrap().clone()
    }

    /// (idle, open) connection counts.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.idle.len(), state.open)
    }

    fn settings(&self) -> &PoolSettings {
        &self.upstream.settings
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
