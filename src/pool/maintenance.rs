use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{Pool, Pools};
use crate::ops::metrics;
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
    fn prune(&self, keep: usize) {
        let now = Instant::now();
        let idle_timeout = self.settings().idle_timeout;
        let idle_cap = self.settings().idle_cap();
        let mut state = self.state.lock().unwrap();
        let before = state.idle.len();
        let mut idle_count = before;
        // Oldest first, so the most recently used survive.
        state.idle.retain_mut(|pooled| {
            let idle_for = now.duration_since(pooled.idle_since);
            let expired = now >= pooled.deadline || idle_for >= idle_cap || !pooled.connection.looks_alive();
            let stale = idle_count > keep && idle_for >= idle_timeout;
            let close = expired || stale;
            if close {
                metrics::upstream_retired(&self.upstream.label, if stale { "idle" } else { "lifetime" });
            }
            if close {
                idle_count -= 1;
            }
            !close
        });
        let closed = before - state.idle.len();
        if closed > 0 {
            state.open -= closed;
            drop(state);
            debug!(pool = %self.key, closed, "closed idle connections");
            self.available.notify_waiters();
        }
    }

    /// Opens connections until `target` are idle or the pool is full, one at a time so a
    /// slow or failing upstream sees no burst.
    async fn fill(self: &Arc<Self>, target: usize) {
        loop {
            {
                let mut state = self.state.lock().unwrap();
                if state.idle.len() >= target || state.open >= self.upstream.max_pool_size() {
                    return;
                }
                state.open += 1;
            }
            match self.open(&StartupParams::default()).await {
                Ok(pooled) => self.put_idle(pooled),
                Err(error) => {
                    warn!(pool = %self.key, %error, "could not open a warm connection");
                    return;
                }
            }
        }
    }
}
