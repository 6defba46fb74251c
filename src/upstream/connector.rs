//! Opening server connections for one target, behind the small [`Connect`] trait the pool
//! calls: a login with the current password, retries of connection-class failures with
//! backoff until the connect timeout (a compute waking from scale-to-zero refuses connections
//! or answers 57P03 for a while), looking a Lakebase host up again when connections fail, and
//! learning how many connections the server allows. The pool knows none of this, so its own
//! logic is tested with a stand-in connector.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use tracing::{debug, info, warn};

use super::{ConnectError, Endpoint, ServerConnection};
use crate::credentials::{BoxFuture, CredentialCache};
use crate::metrics;
use crate::protocol::{CancelKey, StartupParams};

/// What the pool needs from the upstream side.
pub trait Connect: Send + Sync {
    /// Opens a connection logged in as `user` to `database` with a client's startup `params`
    /// (besides user and database), retrying what may pass by itself.
    fn connect<'a>(
        &'a self,
        user: &'a str,
        database: &'a str,
        params: &'a StartupParams,
    ) -> BoxFuture<'a, Result<ServerConnection, ConnectError>>;

    /// Sends a CancelRequest for the server session with `key`.
    fn cancel(&self, key: CancelKey) -> BoxFuture<'_, Result<(), ConnectError>>;

    /// Connection slots the server offers ordinary roles, once learnt.
    fn capacity(&self) -> Option<usize>;
}

/// Looks a target's host up again; errors are reported as text.
pub type HostResolver = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Backoff between login attempts while an upstream is unreachable or starting up.
const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Re-resolutions are spaced at least this far apart, however many connections fail.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// What the server allows ordinary roles, asked once per target after the first login.
const CAPACITY_QUERY: &str =
    "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int";

/// The real connector: one target's endpoint, password source and host resolver.
pub struct Connector {
    /// The target, as metrics and logs name it.
    label: String,
    endpoint: Endpoint,
    credentials: Option<Arc<CredentialCache>>,
    /// Looks the host up again after connection failures (Lakebase names).
    resolver: Option<HostResolver>,
    last_resolution: Mutex<Option<Instant>>,
    capacity: OnceLock<usize>,
}

impl Connector {
    /// A connector; `resolver` is for targets whose host can move (Lakebase names).
    pub fn new(
        label: String,
        endpoint: Endpoint,
        credentials: Option<Arc<CredentialCache>>,
        resolver: Option<HostResolver>,
    ) -> Connector {
        Connector {
            label,
            endpoint,
            credentials,
            resolver,
            last_resolution: Mutex::new(None),
            capacity: OnceLock::new(),
        }
    }

    async fn connect_with_retries(
        &self,
        user: &str,
        database: &str,
        params: &StartupParams,
    ) -> Result<ServerConnection, ConnectError> {
        let outcome = self.login_with_retries(user, database, params).await;
        match outcome {
            Ok(mut connection) => {
                metrics::upstream_login(&self.label, None);
                self.learn_capacity(&mut connection).await;
                Ok(connection)
            }
            Err(error) => {
                metrics::upstream_login(&self.label, Some(error.class()));
                if matches!(
                    error,
                    ConnectError::Unreachable { .. } | ConnectError::Timeout { .. } | ConnectError::Tls { .. }
                ) {
                    self.re_resolve_soon();
                }
                Err(error)
            }
        }
    }

    /// Logs in, retrying connection-class failures with backoff until the connect timeout.
    /// Refusals (bad credentials, permissions) fail at once.
    async fn login_with_retries(
        &self,
        user: &str,
        database: &str,
        params: &StartupParams,
    ) -> Result<ServerConnection, ConnectError> {
        let give_up_at = Instant::now() + self.endpoint.connect_timeout();
        let mut backoff = RETRY_START;
        loop {
            let password = match &self.credentials {
                Some(cache) => Some(cache.get().await?),
                None => None,
            };
            let error = match self.endpoint.login(user, database, params, password.as_ref()).await {
                Ok(connection) => return Ok(connection),
                Err(error) => error,
            };
            let wait = backoff.mul_f64(rand::rng().random_range(0.8..1.2));
            if !error.is_transient() || Instant::now() + wait >= give_up_at {
                return Err(error);
            }
            debug!(%error, retry_in = ?wait, "upstream not ready; retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    /// Learns the server's connection capacity from a fresh connection, once per target.
    async fn learn_capacity(&self, connection: &mut ServerConnection) {
        if self.capacity.get().is_some() {
            return;
        }
        if let Ok(Ok(Some(value))) = connection.simple_query(CAPACITY_QUERY).await
            && let Ok(capacity) = value.trim().parse::<usize>()
            && self.capacity.set(capacity).is_ok()
        {
            info!(capacity, "the server allows this many connections; each pool stays under 90% of them");
        }
    }

    /// After a connection-class failure, looks the host up again in the background (at most
    /// every 30 s): a Lakebase endpoint's host can change.
    fn re_resolve_soon(&self) {
        let Some(resolver) = self.resolver.clone() else { return };
        {
            let mut last = self.last_resolution.lock().unwrap();
            if last.is_some_and(|at| at.elapsed() < RESOLVE_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let host = self.endpoint.host();
        tokio::spawn(async move {
            match resolver().await {
                Ok(name) => match host.set_host(&name) {
                    Ok(true) => info!(host = %name, "the endpoint moved; new connections go to the new host"),
                    Ok(false) => debug!(host = %name, "re-resolved; the host is unchanged"),
                    Err(error) => warn!(%error, "re-resolved to an unusable host"),
                },
                Err(error) => warn!(%error, "could not re-resolve the endpoint"),
            }
        });
    }
}

impl Connect for Connector {
    fn connect<'a>(
        &'a self,
        user: &'a str,
        database: &'a str,
        params: &'a StartupParams,
    ) -> BoxFuture<'a, Result<ServerConnection, ConnectError>> {
        Box::pin(self.connect_with_retries(user, database, params))
    }

    fn cancel(&self, key: CancelKey) -> BoxFuture<'_, Result<(), ConnectError>> {
        Box::pin(self.endpoint.cancel(key))
    }

    fn capacity(&self) -> Option<usize> {
        self.capacity.get().copied()
    }
}
