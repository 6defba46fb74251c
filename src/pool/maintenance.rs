//! Background upkeep: closing idle connections past their time, and keeping the warm pool
//! filled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{Pool, Pools};
use crate::metrics;
use crate::protocol::StartupParams;

/// How often maintenance runs at most and at least.
const MIN_TICK: Duration = Duration::from_millis(500);
const MAX_TICK: Duration = Duration::from_secs(30);

impl Pools {
    /// Starts the background task that closes idle connections past their idle timeout or
    /// deadline and keeps the warm pool at `min_idle`. Runs until aborted.
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let pools = Arc::clone(self);
        let settings = pools.upstream.settings();
        let tick = (settings.idle_timeout.min(settings.max_lifetime) / 4).clamp(MIN_TICK, MAX_TICK);
        tokio::spawn(async move {
            loop {
                for pool in pools.all() {
                    let keep = if Some(pool.key()) == pools.warm.as_ref() { pool.settings().min_idle } else { 0 };
                    pool.prune(keep);
                }
                if let Some(key) = &pools.warm {
                    pools.get(key).fill(pools.upstream.settings().min_idle).await;
                }
                tokio::time::sleep(tick).await;
            }
        })
    }
}

impl Pool {
    /// Closes idle connections that are dead, past their deadline, idle longer than the idle
    /// timeout while more than `keep` are idle, or idle so long the server would close them.
    pub(super) fn prune(&self, keep: usize) {
        let now = Instant::now();
        let idle_timeout = self.settings().idle_timeout;
        let idle_cap = self.settings().idle_cap();
        let mut state = self.state.lock().unwrap();
        let before = state.idle.len();
        let mut idle_count = before;
        // Oldest first, so the most recently used survive.
        state.idle.retain_mut(|idle| {
            let idle_for = now.duration_since(idle.idle_since);
            let expired = now >= idle.deadline || idle_for >= idle_cap || !idle.connection.looks_alive();
            let stale = idle_count > keep && idle_for >= idle_timeout;
            if expired || stale {
                metrics::upstream_retired(&self.upstream.label, if stale { "idle" } else { "lifetime" });
                idle_count -= 1;
            }
            !(expired || stale)
        });
        let closed = before - state.idle.len();
        if closed > 0 {
            debug!(pool = %self.key, closed, "closed idle connections");
        }
    }

    /// Opens connections until `target` are idle or the pool is full, one at a time so a
    /// slow or failing upstream sees no burst.
    pub(super) async fn fill(self: &Arc<Self>, target: usize) {
        while let Some(slot) = self.reserve_for_fill(target) {
            match self.open(&StartupParams::default()).await {
                Ok(idle) => slot.into_idle(idle),
                Err(error) => {
                    warn!(pool = %self.key, %error, "could not open a warm connection");
                    return;
                }
            }
        }
    }
}
