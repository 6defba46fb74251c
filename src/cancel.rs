//! Cancel requests: which upstream session a client's cancel key belongs to.
//!
//! A client's CancelRequest arrives on a new connection with only a key. While a client is
//! attached to an upstream connection, its key (the upstream's own in the default mode, a
//! proxy-issued one otherwise) maps to that connection's real key and endpoint. While a
//! transaction-mode client waits for a connection with a request queued, its key maps to the
//! wait, which the cancel ends (the request is then answered as cancelled, never run). Between
//! transactions a cancel finds nothing, as PostgreSQL finds nothing to cancel in an idle
//! session, and is dropped: it never reaches another client's query.
//!
//! PostgreSQL signals a backend for a cancel after the cancel's connection is accepted, so a
//! cancel that reached a server connection must be done before that connection serves anyone
//! else: each forward holds the connection's [`CancelGate`] open, and a connection goes back
//! to the pool only once its gate can be closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedRwLockReadGuard, RwLock};
use tracing::{debug, warn};

use crate::protocol::CancelKey;
use crate::upstream::Connect;

/// Held by every cancel on its way to a server connection; see the module docs.
pub type CancelGate = Arc<RwLock<()>>;

/// Where to send a cancel for one attached session.
#[derive(Clone)]
pub struct CancelRoute {
    /// Reaches the upstream that owns the session.
    pub connector: Arc<dyn Connect>,
    /// The upstream's own key for it.
    pub key: CancelKey,
    /// The connection's gate.
    pub gate: CancelGate,
}

/// What a client key leads to.
enum Target {
    Attached(CancelRoute),
    Waiting(Arc<Notify>),
}

/// The live mapping from client-visible cancel keys to upstream sessions.
#[derive(Default)]
pub struct CancelRegistry {
    routes: Mutex<HashMap<CancelKey, Target>>,
}

impl CancelRegistry {
    /// Routes `client_key` to `route` until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, client_key: CancelKey, route: CancelRoute) -> CancelGuard {
        self.routes.lock().unwrap().insert(client_key, Target::Attached(route));
        CancelGuard { registry: self.clone(), key: client_key }
    }

    /// Notes that the client with `client_key` waits for a connection with a request queued,
    /// until the returned wait is dropped; a cancel ends the wait.
    pub fn waiting(self: &Arc<Self>, client_key: CancelKey) -> CancelWait {
        let notify = Arc::new(Notify::new());
        self.routes.lock().unwrap().insert(client_key, Target::Waiting(notify.clone()));
        CancelWait { notify, _guard: CancelGuard { registry: self.clone(), key: client_key } }
    }

    /// Forwards a cancel for `client_key` if it belongs to an attached session, or ends its
    /// wait. Unknown keys are ignored silently, as PostgreSQL does, so keys cannot be probed.
    pub async fn cancel(&self, client_key: CancelKey) {
        let forward = {
            let routes = self.routes.lock().unwrap();
            match routes.get(&client_key) {
                // The gate is taken while the route is known to be current: once the session
                // has let go of it, its connection may already be someone else's.
                Some(Target::Attached(route)) => {
                    route.gate.clone().try_read_owned().ok().map(|gate| (route.clone(), gate))
                }
                Some(Target::Waiting(notify)) => {
                    notify.notify_one();
                    debug!(pid = client_key.pid, "cancel request for a client waiting for a connection");
                    None
                }
                None => {
                    debug!(pid = client_key.pid, "cancel request for an unknown or idle key ignored");
                    None
                }
            }
        };
        if let Some((route, gate)) = forward {
            forward_cancel(route, gate).await;
        }
    }
}

async fn forward_cancel(route: CancelRoute, _gate: OwnedRwLockReadGuard<()>) {
    match route.connector.cancel(route.key).await {
        Ok(()) => debug!(pid = route.key.pid, "cancel request forwarded"),
        Err(error) => warn!(pid = route.key.pid, %error, "could not forward a cancel request"),
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

/// A client's wait for a connection, which a cancel ends.
pub struct CancelWait {
    notify: Arc<Notify>,
    _guard: CancelGuard,
}

impl CancelWait {
    /// Completes when a cancel for the client arrives.
    pub async fn cancelled(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::BoxFuture;
    use crate::protocol::StartupParams;
    use crate::upstream::{ConnectError, ServerConnection};

    /// Forwards cancels only when the test lets one through, and counts them.
    #[derive(Default)]
    struct Gatekeeper {
        release: Notify,
        forwarded: Mutex<Vec<CancelKey>>,
    }

    impl Connect for Gatekeeper {
        fn connect<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a StartupParams,
        ) -> BoxFuture<'a, Result<ServerConnection, ConnectError>> {
            unreachable!("cancels only")
        }

        fn cancel(&self, key: CancelKey) -> BoxFuture<'_, Result<(), ConnectError>> {
            Box::pin(async move {
                self.release.notified().await;
                self.forwarded.lock().unwrap().push(key);
                Ok(())
            })
        }

        fn capacity(&self) -> Option<usize> {
            None
        }
    }

    const CLIENT: CancelKey = CancelKey { pid: 1, secret: 1 };
    const SERVER: CancelKey = CancelKey { pid: 99, secret: 9 };

    #[tokio::test]
    async fn a_connection_with_a_cancel_on_its_way_is_not_free_until_it_arrives() {
        let registry = Arc::new(CancelRegistry::default());
        let connector = Arc::new(Gatekeeper::default());
        let gate = CancelGate::default();
        let route = CancelRoute { connector: connector.clone(), key: SERVER, gate: gate.clone() };
        let attached = registry.register(CLIENT, route);
        let cancel = tokio::spawn({
            let registry = registry.clone();
            async move { registry.cancel(CLIENT).await }
        });
        // The client detaches while its cancel is on the way: the gate stays held.
        while gate.try_write().is_ok() {
            tokio::task::yield_now().await;
        }
        drop(attached);
        assert!(gate.try_write().is_err(), "the connection waits for the cancel");
        connector.release.notify_one();
        cancel.await.unwrap();
        assert!(gate.try_write().is_ok());
        assert_eq!(connector.forwarded.lock().unwrap().as_slice(), [SERVER]);
        // Detached, the key leads nowhere: a late cancel is dropped.
        registry.cancel(CLIENT).await;
        assert_eq!(connector.forwarded.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_cancel_ends_a_wait_for_a_connection() {
        let registry = Arc::new(CancelRegistry::default());
        let wait = registry.waiting(CLIENT);
        registry.cancel(CLIENT).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), wait.cancelled()).await.expect("the wait ends");
        drop(wait);
        // No longer waiting: nothing to end, nothing stored for a later wait.
        registry.cancel(CLIENT).await;
        let wait = registry.waiting(CLIENT);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), wait.cancelled()).await.is_err());
    }
}
