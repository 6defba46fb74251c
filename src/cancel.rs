//! Cancel requests: which upstream session a client's cancel key belongs to.
//!
//! A client's CancelRequest arrives on a new connection with only a key. While a client is
//! attached to an upstream connection, its key (the upstream's own in the default mode, a
//! proxy-issued one with `--lazy-attach`) maps to that connection's real key and endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::{debug, warn};

use crate::protocol::CancelKey;
use crate::upstream::Connect;

/// Where to send a cancel for one attached session.
#[derive(Clone)]
pub struct CancelRoute {
    /// Reaches the upstream that owns the session.
    pub connector: Arc<dyn Connect>,
    /// The upstream's own key for it.
    pub key: CancelKey,
}

/// The live mapping from client-visible cancel keys to upstream sessions.
#[derive(Default)]
pub struct CancelRegistry {
    routes: Mutex<HashMap<CancelKey, CancelRoute>>,
}

impl CancelRegistry {
    /// Routes `client_key` to `route` until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, client_key: CancelKey, route: CancelRoute) -> CancelGuard {
        self.routes.lock().unwrap().insert(client_key, route);
        CancelGuard { registry: self.clone(), key: client_key }
    }

    /// Forwards a cancel for `client_key` if it belongs to an attached session. Unknown keys
    /// are ignored silently, as PostgreSQL does, so keys cannot be probed.
    pub async fn cancel(&self, client_key: CancelKey) {
        let route = self.routes.lock().unwrap().get(&client_key).cloned();
        let Some(route) = route else {
            debug!(pid = client_key.pid, "cancel request for an unknown key ignored");
            return;
        };
        match route.connector.cancel(route.key).await {
            Ok(()) => debug!(pid = route.key.pid, "cancel request forwarded"),
            Err(error) => warn!(pid = route.key.pid, %error, "could not forward a cancel request"),
        }
    }
}

/// Removes a route when the session detaches.
pub struct CancelGuard {
    registry: Arc<CancelRegistry>,
    key: CancelKey,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry.routes.lock().unwrap().remove(&self.key);
    }
}
