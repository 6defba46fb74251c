//! A connection lent to one client, and its return: reset off the client's path and back to
//! the pool, or closed.

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::Idle;
use super::slot::Slot;
use crate::metrics;
use crate::upstream::ServerConnection;

/// The statement that returns a used connection to a fresh session's state: it closes
/// cursors, drops prepared statements and temp tables, resets settings and roles, unlistens
/// and releases advisory locks.
const RESET_QUERY: &str = "DISCARD ALL";
/// A reset that takes longer than this means something is wrong with the connection.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);

/// An upstream connection lent to one client. Dropping it closes the connection and frees its
/// place; give it back with [`Lease::release`].
pub struct Lease {
    connection: Box<ServerConnection>,
    deadline: Instant,
    slot: Slot,
}

impl Lease {
    pub(super) fn new(idle: Idle, slot: Slot) -> Lease {
        Lease { connection: idle.connection, deadline: idle.deadline, slot }
    }

    /// The leased connection.
    pub fn connection(&mut self) -> &mut ServerConnection {
        &mut self.connection
    }

    /// Returns the connection: when it is reusable (idle outside a transaction, owing nothing;
    /// see [`ServerConnection::reusable`]) it goes back to the pool, after a ROLLBACK of a
    /// transaction its client left open, and, with `reset`, a reset of its session (for the
    /// next client in session mode; transaction mode keeps a shared connection's statements
    /// and settings); otherwise it is closed. A connection that a cancel is on its way to
    /// waits for the cancel first.
    pub fn release(self, reset: bool) {
        let Some((mut connection, deadline, slot, roll_back)) = self.retire_unless_reusable() else { return };
        if !reset && !roll_back && !connection.cancel_in_flight() {
            slot.into_idle(Idle { connection, deadline, idle_since: Instant::now() });
            return;
        }
        tokio::spawn(async move {
            connection.cancels_done().await;
            if (reset || roll_back) && !self::reset(&mut connection, roll_back, reset).await {
                metrics::upstream_retired(&slot.pool().upstream.label, "dirty");
                return;
            }
            slot.into_idle(Idle { connection, deadline, idle_since: Instant::now() });
        });
    }

    /// Closes the connection if it cannot serve anyone else (past its lifetime, or neither
    /// reusable nor left in a transaction that a ROLLBACK ends); otherwise hands back its parts
    /// and whether it needs that ROLLBACK.
    fn retire_unless_reusable(self) -> Option<(Box<ServerConnection>, Instant, Slot, bool)> {
        let Lease { connection, deadline, slot } = self;
        let reusable = connection.reusable();
        let roll_back = !reusable && connection.protocol().in_transaction_between_messages();
        if !(reusable || roll_back) || Instant::now() >= deadline {
            debug!(connection = connection.id(), reusable, "closing upstream connection at release");
            metrics::upstream_retired(&slot.pool().upstream.label, if reusable { "lifetime" } else { "dirty" });
            return None;
        }
        Some((connection, deadline, slot, roll_back))
    }
}

/// Ends the transaction a client left open (`roll_back`) and, for a `used` connection, resets
/// it and gives it its client's settings again, all in one round trip. False when the
/// connection cannot be trusted any more.
async fn reset(connection: &mut ServerConnection, roll_back: bool, used: bool) -> bool {
    let restore = used.then(|| settings_to_restore(connection)).flatten();
    let statements: Vec<&str> = [roll_back.then_some("ROLLBACK"), used.then_some(RESET_QUERY), restore.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    match tokio::time::timeout(RESET_TIMEOUT, connection.simple_queries(&statements)).await {
        Ok(Ok(outcomes)) if outcomes.iter().take(usize::from(roll_back) + usize::from(used)).all(Result::is_ok) => {
            if restore.is_some()
                && let Some(Err(error)) = outcomes.last()
            {
                debug!(connection = connection.id(), %error, "could not restore settings after the reset");
                let startup = connection.startup_params().clone();
                connection.set_settings(startup);
            }
            connection.reusable()
        }
        outcome => {
            warn!(connection = connection.id(), ?outcome, "reset failed; closing the connection");
            false
        }
    }
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
pub(super) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a value as an SQL literal that means the same whatever `standard_conforming_strings`
/// says, as PostgreSQL's own `quote_literal` does.
pub(super) fn quote_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    if value.contains('\\') { format!("E'{}'", doubled.replace('\\', "\\\\")) } else { format!("'{doubled}'") }
}
