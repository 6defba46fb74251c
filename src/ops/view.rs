//! A read-only view of a running proxy, for the probes, the metrics and the admin console.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::Semaphore;

use crate::credentials::CredentialCache;
use crate::metrics;
use crate::pool::Pools;

/// What the ops surfaces look at. Targets, caches and settings change on a reload.
pub struct ProxyView {
    targets: RwLock<Vec<TargetView>>,
    caches: RwLock<Vec<Arc<CredentialCache>>>,
    settings: RwLock<Vec<(String, String)>>,
    /// The client-connection limit.
    pub client_slots: Arc<Semaphore>,
    /// Connected clients.
    pub clients: Arc<ClientRegistry>,
}

impl ProxyView {
    /// A view with no targets yet.
    pub fn new(client_slots: Arc<Semaphore>, clients: Arc<ClientRegistry>) -> ProxyView {
        ProxyView {
            targets: RwLock::default(),
            caches: RwLock::default(),
            settings: RwLock::default(),
            client_slots,
            clients,
        }
    }

    /// Every target, in configuration order.
    pub fn targets(&self) -> Vec<TargetView> {
        self.targets.read().unwrap().clone()
    }

    /// Every credential cache (database passwords and workspace tokens).
    pub fn caches(&self) -> Vec<Arc<CredentialCache>> {
        self.caches.read().unwrap().clone()
    }

    /// Effective settings, secrets masked.
    pub fn settings(&self) -> Vec<(String, String)> {
        self.settings.read().unwrap().clone()
    }

    /// Renders every metric, after refreshing the gauges that are read rather than recorded:
    /// connections per pool state and credential ages.
    pub fn render_metrics(&self) -> String {
        for target in &self.targets() {
            let (mut idle, mut open) = (0, 0);
            for pool in target.pools.all() {
                let (pool_idle, pool_open) = pool.counts();
                idle += pool_idle;
                open += pool_open;
            }
            metrics::upstream_connections(&target.label, idle, open);
        }
        let now = SystemTime::now();
        for cache in &self.caches() {
            let status = cache.status();
            let age = status.fetched_at.map(|at| now.duration_since(at).unwrap_or_default().as_secs_f64());
            let left = status.expires_at.map(|at| match at.duration_since(now) {
                Ok(left) => left.as_secs_f64(),
                Err(past) => -past.duration().as_secs_f64(),
            });
            metrics::credential_times(&cache.describe(), age, left);
        }
        metrics::install().render()
    }

    /// Replaces what the view shows (at start and after a reload).
    pub fn update(&self, targets: Vec<TargetView>, caches: Vec<Arc<CredentialCache>>, settings: Vec<(String, String)>) {
        *self.targets.write().unwrap() = targets;
        *self.caches.write().unwrap() = caches;
        *self.settings.write().unwrap() = settings;
    }
}

/// One target as the ops surfaces show it.
#[derive(Clone)]
pub struct TargetView {
    /// How logs and metrics name it.
    pub label: String,
    /// What it was resolved from (a Lakebase name, or the URL).
    pub origin: String,
    /// Where it listens.
    pub listen: String,
    /// Its pools.
    pub pools: Arc<Pools>,
}

/// What is known about one connected client.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Where it connected from.
    pub peer: String,
    /// The target it connected to.
    pub target: String,
    /// Upstream role, once known.
    pub user: String,
    /// Upstream database, once known.
    pub database: String,
    /// `startup`, `waiting`, `active`, `idle` (lazy, unattached), `console`.
    pub state: &'static str,
    /// Backend pid of the attached upstream connection.
    pub upstream_pid: Option<i32>,
    /// In transaction mode, why the client keeps its server connection, once it must.
    pub pinned: Option<&'static str>,
    /// When it connected.
    pub connected_at: SystemTime,
}

/// The connected clients, by session id.
#[derive(Default)]
pub struct ClientRegistry {
    clients: Mutex<BTreeMap<u64, ClientInfo>>,
}

impl ClientRegistry {
    /// Adds a client until the returned entry is dropped.
    pub fn register(self: &Arc<Self>, id: u64, info: ClientInfo) -> ClientEntry {
        self.clients.lock().unwrap().insert(id, info);
        ClientEntry { registry: self.clone(), id }
    }

    /// A snapshot, by session id.
    pub fn snapshot(&self) -> Vec<(u64, ClientInfo)> {
        self.clients.lock().unwrap().iter().map(|(id, info)| (*id, info.clone())).collect()
    }
}

/// One client's place in the registry.
pub struct ClientEntry {
    registry: Arc<ClientRegistry>,
    id: u64,
}

impl ClientEntry {
    /// Changes what is recorded about the client.
    pub fn update(&self, change: impl FnOnce(&mut ClientInfo)) {
        self.handle().update(change);
    }

    /// A handle that updates the entry from elsewhere (and does not remove it when dropped).
    pub fn handle(&self) -> ClientHandle {
        ClientHandle { registry: self.registry.clone(), id: self.id }
    }
}

/// Updates one client's entry while it exists; see [`ClientEntry::handle`].
#[derive(Clone)]
pub struct ClientHandle {
    registry: Arc<ClientRegistry>,
    id: u64,
}

impl ClientHandle {
    /// Changes what is recorded about the client, if it is still connected.
    pub fn update(&self, change: impl FnOnce(&mut ClientInfo)) {
        if let Some(info) = self.registry.clients.lock().unwrap().get_mut(&self.id) {
            change(info);
        }
    }
}

impl Drop for ClientEntry {
    fn drop(&mut self) {
        self.registry.clients.lock().unwrap().remove(&self.id);
    }
}
