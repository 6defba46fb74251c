//! Checkout: a client gets a connection that carries its settings, waiting in line when the
//! pool is full.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tracing::debug;

use super::lease::{Lease, quote_identifier, quote_literal};
use super::slot::{Admission, Slot, is_subset, same_params};
use super::{CheckoutKind, Idle, Pool};
use crate::error::UserFacing;
use crate::metrics;
use crate::protocol::messages::{ErrorFields, Severity};
use crate::protocol::{StartupParams, sqlstate};
use crate::upstream::{ConnectError, ServerConnection};

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

impl Pool {
    /// Lends a connection for a client asking for `params` (its startup parameters besides
    /// user and database), waiting up to the checkout timeout when the pool is full. Dropping
    /// the future at any point gives back whatever it held.
    pub async fn checkout(self: &Arc<Self>, params: &StartupParams) -> Result<Lease, CheckoutError> {
        let (slot, mut candidate) = self.reserve(params).await?;
        while let Some(mut idle) = candidate.take() {
            if !idle.usable() {
                debug!(connection = idle.connection.id(), "dropping a dead or expired idle connection");
                metrics::upstream_retired(&self.upstream.label, "dead");
                candidate = self.take_idle(params);
                continue;
            }
            if same_params(idle.connection.settings(), params) {
                self.count_checkout(CheckoutKind::Exact);
                return Ok(Lease::new(idle, slot));
            }
            if !is_subset(idle.connection.startup_params(), params) {
                // Handed over by a client that left, but opened for other settings.
                debug!(connection = idle.connection.id(), "closing an idle connection opened for other settings");
                break;
            }
            match apply_params(&mut idle.connection, params).await {
                Ok(round_trip) => {
                    self.count_checkout(if round_trip { CheckoutKind::Adjusted } else { CheckoutKind::Exact });
                    return Ok(Lease::new(idle, slot));
                }
                // Let a fresh login with the client's own parameters give the real answer (a
                // direct connection would have failed at login just so).
                Err(reason) => debug!(%reason, "could not apply client settings; opening a dedicated connection"),
            }
        }
        let idle = self.open(params).await?;
        self.count_checkout(CheckoutKind::Opened);
        Ok(Lease::new(idle, slot))
    }

    /// A place in the pool, now or after waiting in line, with the idle connection that came
    /// with it if any.
    async fn reserve(self: &Arc<Self>, params: &StartupParams) -> Result<(Slot, Option<Idle>), CheckoutError> {
        let started = Instant::now();
        let mut queued = match self.admit(params) {
            Admission::Now(slot, idle) => return Ok((slot, idle)),
            Admission::Queued(queued) => queued,
        };
        let waited = tokio::time::timeout(self.settings().checkout_timeout, &mut queued.handoff).await;
        match waited {
            Ok(Ok(grant)) => Ok((grant.slot, grant.connection)),
            // The sender is dropped unsent only with the pool itself; treat it as a timeout.
            Ok(Err(_)) | Err(_) => Err(CheckoutError::Exhausted {
                key: self.key.to_string(),
                max_size: self.upstream.max_pool_size(),
                waited: started.elapsed(),
            }),
        }
    }

    /// Opens a connection for a place already held.
    pub(super) async fn open(&self, params: &StartupParams) -> Result<Idle, ConnectError> {
        let connection = self.upstream.connector.connect(&self.key.user, &self.key.database, params).await?;
        *self.greeting.lock().unwrap() = Some(connection.server_params().into());
        let lifetime = self.settings().lifetime_cap().mul_f64(1.0 - rand::rng().random_range(0.0..LIFETIME_JITTER));
        let deadline = connection.opened_at() + lifetime;
        Ok(Idle { connection: Box::new(connection), deadline, idle_since: Instant::now() })
    }
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
