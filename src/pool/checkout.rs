use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tracing::{debug, warn};

use super::{CheckoutKind, Pool, Pooled};
use crate::error::UserFacing;
use crate::ops::metrics;
use crate::protocol::StartupParams;
use crate::protocol::messages::{ErrorFields, Severity};
use crate::protocol::sqlstate;
use crate::upstream::{ConnectError, ServerConnection};

/// The statement that returns a used connection to a fresh session's state: it closes
/// cursors, drops prepared statements and temp tables, resets settings and roles, unlistens
/// and releases advisory locks.
const RESET_QUERY: &str = "DISCARD ALL";
/// A reset that takes longer than this means something is wrong with the connection.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between login attempts while an upstream is unreachable or starting up.
const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Share of `max_lifetime` by which deadlines are jittered downwards.
const LIFETIME_JITTER: f64 = 0.1;

/// Why a client got no upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// The pool stayed full for the whole wait.
    #[error("no upstream connection for {key} became free within {}s (all {max_size} are busy)", .waited.as_secs())]
    Exhausted {
        /// Pool identity, `role@database`.
        key: String,
        /// Pool size limit.
        max_size: usize,
        /// How long the client waited.
        waited: Duration,
    },
    /// Opening a new connection failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl UserFacing for CheckoutError {
    fn to_client(&self) -> ErrorFields {
        match self {
            CheckoutError::Exhausted { .. } => {
                ErrorFields::new(Severity::Fatal, sqlstate::TOO_MANY_CONNECTIONS, format!("lakebase-proxy: {self}"))
                    .with_hint("Raise --max-pool-size or --checkout-timeout, or hold connections for less time.")
            }
            CheckoutError::Connect(error) => error.to_client(),
        }
    }
}

/// An upstream connection lent to one client. Dropping it closes the connection; give it
/// back with [`Lease::release`].
pub struct Lease {
    connection: Option<ServerConnection>,
    deadline: Instant,
    pool: Arc<Pool>,
}

impl Lease {
    /// The leased connection.
    pub fn connection(&mut self) -> &mut ServerConnection {
        self.connection.as_mut().expect("a lease holds its connection until released")
    }

    /// Returns the connection: when `reusable`, it is reset in the background and goes back
    /// to the pool; otherwise it is closed. `used` says whether the client sent anything
    /// (an untouched connection needs no reset).
    pub fn release(mut self, reusable: bool, used: bool) {
        let mut connection = self.connection.take().expect("released once");
        let pool = self.pool.clone();
        let deadline = self.deadline;
        if !reusable || Instant::now() >= deadline {
            debug!(connection = connection.id(), reusable, "closing upstream connection at release");
            metrics::upstream_retired(&pool.upstream.label, if reusable { "lifetime" } else { "dirty" });
            pool.forget_one();
            return;
        }
        tokio::spawn(async move {
            if used {
                let restore = settings_to_restore(&connection);
                let statements: Vec<&str> = [Some(RESET_QUERY), restore.as_deref()].into_iter().flatten().collect();
                match tokio::time::timeout(RESET_TIMEOUT, connection.simple_queries(&statements)).await {
                    Ok(Ok(outcomes)) if outcomes[0].is_ok() => {
                        if let Some(Err(error)) = outcomes.get(1) {
                            debug!(connection = connection.id(), %error, "could not restore settings after the reset");
                            let startup = connection.startup_params().clone();
                            connection.set_settings(startup);
                        }
                    }
                    outcome => {
                        warn!(connection = connection.id(), ?outcome, "reset failed; closing the connection");
                        metrics::upstream_retired(&pool.upstream.label, "dirty");
                        pool.forget_one();
                        return;
                    }
                }
            }
            pool.put_idle(Pooled { connection, deadline, idle_since: Instant::now() });
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.connection.take().is_some() {
            self.pool.forget_one();
        }
    }
}

/// What the pool has for a client right now.
enum Take {
    /// An idle connection opened with these very parameters.
    Exact(Pooled),
    /// An idle connection that needs some SETs first.
    Adjust(Pooled),
    /// A free slot: open a new connection.
    Open,
    /// Nothing until someone releases.
    Wait,
}

impl Pool {
    /// Lends a connection for a client asking for `params` (its startup parameters besides
    /// user and database), waiting up to the checkout timeout when the pool is full.
    pub async fn checkout(self: &Arc<Self>, params: &StartupParams) -> Result<Lease, CheckoutError> {
        let started = Instant::now();
        let wait_until = tokio::time::Instant::now() + self.settings().checkout_timeout;
        loop {
            // Register interest before looking, so a release between the look and the wait
            // is not missed.
            let mut notified = pin!(self.available.notified());
            notified.as_mut().enable();
            let mut taken = self.take(params);
            if let Take::Exact(pooled) | Take::Adjust(pooled) = &mut taken
                && !pooled.usable()
            {
                debug!(connection = pooled.connection.id(), "dropping a dead or expired idle connection");
                metrics::upstream_retired(&self.upstream.label, "dead");
                self.forget_one();
                continue;
            }
            let pooled = match taken {
                Take::Exact(pooled) | Take::Adjust(pooled) if false => {
                    debug!(connection = pooled.connection.id(), "dropping a dead or expired idle connection");
                    metrics::upstream_retired(&self.upstream.label, "dead");
                    self.forget_one();
                    continue;
                }
                Take::Exact(pooled) => {
                    self.count_checkout(CheckoutKind::Exact);
                    return Ok(self.lease(pooled));
                }
                Take::Adjust(mut pooled) => {
                    match apply_params(&mut pooled.connection, params).await {
                        Ok(round_trip) => {
                            self.count_checkout(if round_trip { CheckoutKind::Adjusted } else { CheckoutKind::Exact });
                            return Ok(self.lease(pooled));
                        }
                        Err(reason) => {
                            // Let a fresh login with the client's own parameters give the real
                            // answer (a direct connection would have failed at login just so).
                            debug!(%reason, "could not apply client settings; opening a dedicated connection");
                            drop(pooled);
                            self.open(params).await?
                        }
                    }
                }
                Take::Open => self.open(params).await?,
                Take::Wait => {
                    if tokio::time::timeout_at(wait_until, notified).await.is_err() {
                        return Err(CheckoutError::Exhausted {
                            key: self.key.to_string(),
                            max_size: self.upstream.max_pool_size(),
                            waited: started.elapsed(),
                        });
                    }
                    continue;
                }
            };
            self.count_checkout(CheckoutKind::Opened);
            return Ok(self.lease(pooled));
        }
    }

    fn lease(self: &Arc<Self>, pooled: Pooled) -> Lease {
        Lease { connection: Some(pooled.connection), deadline: pooled.deadline, pool: self.clone() }
    }

    /// Picks an idle connection (exact parameter match first, most recently used first) or
    /// reserves a slot. When the pool is full of connections opened for other parameters,
    /// one of them is closed to make room.
    fn take(&self, params: &StartupParams) -> Take {
        let mut state = self.state.lock().unwrap();
        let exact = state.idle.iter().rposition(|p| same_params(p.connection.settings(), params));
        if let Some(index) = exact {
            return Take::Exact(state.idle.remove(index));
        }
        let adjustable = state.idle.iter().rposition(|p| is_subset(p.connection.startup_params(), params));
        if let Some(index) = adjustable {
            return Take::Adjust(state.idle.remove(index));
        }
        if state.open < self.upstream.max_pool_size() {
            state.open += 1;
            return Take::Open;
        }
        if !state.idle.is_empty() {
            // The slot passes from the closed connection to the one about to be opened.
            let victim = state.idle.remove(0);
            debug!(connection = victim.connection.id(), "closing an idle connection opened for other settings");
            return Take::Open;
        }
        Take::Wait
    }

    /// Opens a connection in a slot already reserved; frees the slot if that fails.
    pub(super) async fn open(&self, params: &StartupParams) -> Result<Pooled, CheckoutError> {
        match self.login(params).await {
            Ok(mut connection) => {
                metrics::upstream_login(&self.upstream.label, None);
                self.upstream.learn_capacity(&mut connection).await;
                *self.greeting.lock().unwrap() = Some(connection.server_params().into());
                let lifetime =
                    self.settings().lifetime_cap().mul_f64(1.0 - rand::rng().random_range(0.0..LIFETIME_JITTER));
                let deadline = connection.opened_at() + lifetime;
                Ok(Pooled { connection, deadline, idle_since: Instant::now() })
            }
            Err(error) => {
                metrics::upstream_login(&self.upstream.label, Some(error.class()));
                self.forget_one();
                if matches!(
                    error,
                    ConnectError::Unreachable { .. } | ConnectError::Timeout { .. } | ConnectError::Tls { .. }
                ) {
                    self.upstream.re_resolve_soon();
                }
                Err(error.into())
            }
        }
    }

    /// Logs in, retrying connection-class failures (a compute waking from scale-to-zero
    /// refuses connections or answers 57P03 for a while) with backoff until the connect
    /// timeout. Refusals (bad credentials, permissions) fail at once.
    async fn login(&self, params: &StartupParams) -> Result<ServerConnection, ConnectError> {
        let endpoint = &self.upstream.endpoint;
        let give_up_at = Instant::now() + endpoint.connect_timeout();
        let mut backoff = RETRY_START;
        loop {
            let password = match &self.upstream.credentials {
                Some(cache) => Some(cache.get().await?),
                None => None,
            };
            let error = match endpoint.login(&self.key.user, &self.key.database, params, password.as_ref()).await {
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

    pub(super) fn put_idle(&self, pooled: Pooled) {
        self.state.lock().unwrap().idle.push(pooled);
        self.available.notify_one();
    }
}

impl Pooled {
    /// Not past its deadline and, as far as a non-blocking look can tell, still connected.
    fn usable(&mut self) -> bool {
        Instant::now() < self.deadline && self.connection.looks_alive()
    }
}

fn same_params(carried: &StartupParams, wanted: &StartupParams) -> bool {
    carried.iter().count() == wanted.iter().count() && is_subset(carried, wanted)
}

fn is_subset(opened_with: &StartupParams, wanted: &StartupParams) -> bool {
    opened_with.iter().all(|(name, value)| wanted.get(name) == Some(value))
}

/// Brings a connection opened with a subset of `wanted` to the client's settings with one
/// round trip: SET what differs, RESET what an earlier client set and this one did not ask
/// for. Values the server already reports as wanted are skipped. Says whether that took a
/// round trip.
async fn apply_params(connection: &mut ServerConnection, wanted: &StartupParams) -> Result<bool, String> {
    let mut sql = String::new();
    for (name, value) in wanted.iter() {
        let already = connection.settings().get(name) == Some(value)
            || connection.server_params().iter().any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value);
        if !already {
            sql.push_str(&format!("SET {} TO {};", quote_identifier(name), quote_literal(value)));
        }
    }
    for (name, _) in connection.settings().iter().filter(|(name, _)| wanted.get(name).is_none()) {
        sql.push_str(&format!("RESET {};", quote_identifier(name)));
    }
    let round_trip = !sql.is_empty();
    if round_trip {
        match connection.simple_query(&sql).await {
            Ok(Ok(_)) => {}
            Ok(Err(fields)) => return Err(fields.to_string()),
            Err(error) => return Err(error.to_string()),
        }
    }
    connection.set_settings(wanted.clone());
    Ok(round_trip)
}

/// The SETs that give a session just reset to its startup parameters the settings it carried
/// before, so the next client of the same application finds an exact match (one round trip
/// with the reset instead of one more at its checkout).
fn settings_to_restore(connection: &ServerConnection) -> Option<String> {
    let sql: String = connection
        .settings()
        .iter()
        .filter(|(name, value)| connection.startup_params().get(name) != Some(value))
        .map(|(name, value)| format!("SET {} TO {};", quote_identifier(name), quote_literal(value)))
        .collect();
    (!sql.is_empty()).then_some(sql)
}

/// Quotes a setting name as an SQL identifier.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a value as an SQL literal that means the same whatever `standard_conforming_strings`
/// says, as PostgreSQL's own `quote_literal` does.
fn quote_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    if value.contains('\\') { format!("E'{}'", doubled.replace('\\', "\\\\")) } else { format!("'{doubled}'") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_injection_safe() {
        assert_eq!(quote_identifier("Date\"Style"), "\"Date\"\"Style\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }

    #[test]
    fn parameter_matching() {
        let opened: StartupParams = [("application_name", "psql")].into_iter().collect();
        let wanted: StartupParams = [("application_name", "psql"), ("client_encoding", "UTF8")].into_iter().collect();
        assert!(is_subset(&opened, &wanted));
        assert!(!same_params(&opened, &wanted));
        assert!(same_params(&wanted, &wanted));
        assert!(is_subset(&StartupParams::default(), &wanted));
        assert!(!is_subset(&wanted, &opened));
    }
}
