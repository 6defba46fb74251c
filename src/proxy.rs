//! Wires the parts together: resolved targets, and per target a TLS configuration, an
//! endpoint, its pools, and listeners; then the background refreshers and maintenance.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::cancel::CancelRegistry;
use crate::client::{Listener, TargetContext};
use crate::config::Config;
use crate::credentials::CredentialCache;
use crate::ops::view::{ClientRegistry, ProxyView, TargetView};
use crate::pool::{HostResolver, PoolKey, Pools, Upstream};
use crate::resolve::{ResolveTargetError, resolve_targets, roots};
use crate::shutdown::{self, ShutdownTrigger};
use crate::target::Target;
use crate::tls::{self, TlsSetupError};
use crate::upstream::{ConnectError, Endpoint};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A TLS file is missing or invalid.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// A target cannot be used.
    #[error(transparent)]
    Target(#[from] ConnectError),
    /// A target could not be resolved (workspace login, API, names).
    #[error(transparent)]
    Resolve(#[from] Box<ResolveTargetError>),
    /// A listening socket could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// What was being bound.
        address: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// A started proxy. Dropping it does not stop it; call [`RunningProxy::stop`].
pub struct RunningProxy {
    targets: Vec<RunningTarget>,
    trigger: ShutdownTrigger,
    sessions: TaskTracker,
    view: Arc<ProxyView>,
    listener_tasks: Vec<JoinHandle<()>>,
    background_tasks: Vec<JoinHandle<()>>,
}

struct RunningTarget {
    tcp_address: SocketAddr,
    unix_socket: Option<PathBuf>,
    pools: Arc<Pools>,
}

impl RunningProxy {
    /// Resolves the targets, binds every listener, starts the background work, and begins
    /// accepting clients. Nothing is started unless every target could be set up.
    pub async fn start(config: Config) -> Result<RunningProxy, StartError> {
        crate::ops::metrics::install();
        let resolved = resolve_targets(&config).await.map_err(Box::new)?;
        let client_tls = match &config.client_tls {
            Some(files) => Some(tls::client_facing_config(&files.cert, &files.key)?),
            None => None,
        };
        let cancels = Arc::new(CancelRegistry::default());
        let (trigger, shutdown) = shutdown::channel();
        let sessions = TaskTracker::new();
        let client_slots = Arc::new(Semaphore::new(config.max_client_connections));
        let clients = Arc::new(ClientRegistry::default());
        // Sessions of the admin console need the whole picture, which exists only after the loop.
        let view_cell: Arc<OnceLock<Arc<ProxyView>>> = Arc::default();
        let mut target_views = Vec::new();
        let mut targets = Vec::new();
        let mut listeners = Vec::new();
        for (index, resolved_target) in resolved.targets.into_iter().enumerate() {
            let target = resolved_target.target;
            let upstream = upstream(&config, &target, resolved_target.credentials, resolved_target.resolver)?;
            let pools = Pools::new(upstream, warm_pool_key(&target));
            let ctx = Arc::new(TargetContext {
                target: target.clone(),
                pools: pools.clone(),
                cancels: cancels.clone(),
                client_tls: client_tls.clone(),
                lazy_attach: config.lazy_attach,
                startup_timeout: config.startup_timeout,
                shutdown: shutdown.clone(),
                sessions: sessions.clone(),
                client_slots: client_slots.clone(),
                clients: clients.clone(),
                view: view_cell.clone(),
            });
            let address = SocketAddr::new(config.address, config.listen_port(index));
            let tcp = Listener::tcp(address)
                .await
                .map_err(|source| StartError::Bind { address: address.to_string(), source })?;
            let tcp_address = tcp.local_addr().expect("a TCP listener has an address");
            let mut unix_socket = None;
            if let Some(dir) = &config.unix_socket_dir {
                let unix = Listener::unix(dir, tcp_address.port())
                    .await
                    .map_err(|source| StartError::Bind { address: dir.display().to_string(), source })?;
                if let Listener::Unix(_, path) = &unix {
                    unix_socket = Some(path.clone());
                }
                listeners.push((unix, ctx.clone()));
            }
            listeners.push((tcp, ctx));
            info!(target = %resolved_target.origin, upstream = %target, listen = %tcp_address, "target ready");
            target_views.push(TargetView {
                label: pools.upstream().label.clone(),
                origin: resolved_target.origin.clone(),
                listen: tcp_address.to_string(),
                pools: pools.clone(),
            });
            targets.push(RunningTarget { tcp_address, unix_socket, pools });
        }

        let view = Arc::new(ProxyView {
            targets: target_views,
            caches: resolved.caches.clone(),
            client_slots,
            clients,
            settings: config.describe(),
        });
        let _ = view_cell.set(view.clone());
        let mut background_tasks: Vec<_> = targets.iter().map(|t| t.pools.spawn_maintenance()).collect();
        background_tasks.extend(resolved.caches.iter().map(|cache| cache.spawn_refresher()));
        let listener_tasks = listeners.into_iter().map(|(listener, ctx)| tokio::spawn(listener.run(ctx))).collect();
        Ok(RunningProxy { targets, trigger, sessions, listener_tasks, background_tasks, view })
    }

    /// The TCP address target number `index` listens on.
    pub fn tcp_address(&self, index: usize) -> SocketAddr {
        self.targets[index].tcp_address
    }

    /// The unix socket of target number `index`, if one was asked for.
    pub fn unix_socket(&self, index: usize) -> Option<&PathBuf> {
        self.targets[index].unix_socket.as_ref()
    }

    /// The pools of target number `index`.
    pub fn pools(&self, index: usize) -> &Arc<Pools> {
        &self.targets[index].pools
    }

    /// What the probes, metrics and admin console look at.
    pub fn view(&self) -> Arc<ProxyView> {
        self.view.clone()
    }

    /// Stops at once: no more clients, and sessions end at their next idle point.
    pub async fn stop(self) {
        self.shutdown(Duration::ZERO).await;
    }

    /// Stops accepting clients, lets sessions finish their transactions for up to `grace`
    /// (each then gets SQLSTATE 57P01 at its next idle point, or at the deadline), waits for
    /// them, and stops the background work.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.trigger.begin(deadline);
        for task in self.listener_tasks {
            let _ = task.await;
        }
        self.sessions.close();
        // Sessions stop at the deadline; the margin covers writing their last words.
        if tokio::time::timeout_at(deadline + SHUTDOWN_MARGIN, self.sessions.wait()).await.is_err() {
            warn!(remaining = self.sessions.len(), "sessions still open at the shutdown deadline");
        }
        for task in self.background_tasks {
            task.abort();
        }
    }
}

/// Time after the drain deadline for sessions to send their 57P01 and close.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// How to reach `target`: its TLS trust (`sslrootcert=`, else `--ca-file`, else the system
/// store), endpoint, password source and pool limits.
fn upstream(
    config: &Config,
    target: &Target,
    credentials: Option<Arc<CredentialCache>>,
    resolver: Option<HostResolver>,
) -> Result<Upstream, StartError> {
    let roots = roots(target.ca_file.as_ref().or(config.ca_file.as_ref()));
    let endpoint = Endpoint::new(target, tls::upstream_config(&roots)?, config.connect_timeout)?;
    Ok(Upstream::new(target.to_string(), endpoint, credentials, target.pool.apply(&config.pool), resolver))
}

/// The pool kept warm: only where the role and database are known up front.
fn warm_pool_key(target: &Target) -> Option<PoolKey> {
    target.user.as_ref().map(|user| PoolKey {
        database: target.database.clone().unwrap_or_else(|| user.clone()),
        user: user.clone(),
        options: None,
    })
}
