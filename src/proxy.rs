//! Wires the parts together: resolved targets, and per target a TLS configuration, an
//! endpoint, its pools and listeners; the background refreshers and maintenance; and reloads
//! that add, remove or retune targets while sessions carry on.

use std::net::SocketAddr;
use std::sync::Arc;
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
use crate::pool::{PoolKey, Pools, Upstream};
use crate::resolve::{ResolveTargetError, ResolvedTarget, resolve_targets, roots};
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::target::{PoolOverrides, Target, TargetSpec};
use crate::tls::{self, TlsSetupError};
use crate::upstream::{ConnectError, Connector, Endpoint, HostResolver};

/// Why the proxy could not start (or a reload was refused).
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

/// A started proxy. Dropping it does not stop it; call [`RunningProxy::shutdown`].
pub struct RunningProxy {
    shared: Shared,
    targets: Vec<RunningTarget>,
    config: Config,
    credentials: Vec<CredentialGroup>,
}

/// Credential caches resolved together (at start, or for the targets one reload added) with
/// their background refreshers; stopped once none of those targets is served any more.
struct CredentialGroup {
    /// The targets that use them, by [`target_key`].
    targets: Vec<(TargetSpec, u16)>,
    caches: Vec<Arc<CredentialCache>>,
    refreshers: Vec<JoinHandle<()>>,
}

impl CredentialGroup {
    fn start(targets: Vec<(TargetSpec, u16)>, caches: Vec<Arc<CredentialCache>>) -> CredentialGroup {
        let refreshers = caches.iter().map(|cache| cache.spawn_refresher()).collect();
        CredentialGroup { targets, caches, refreshers }
    }

    fn stop(&self) {
        for refresher in &self.refreshers {
            refresher.abort();
        }
    }
}

/// What makes a target the same one across a reload: its upstream (pool settings aside) and
/// its local port.
fn target_key(spec: &TargetSpec, port: u16) -> (TargetSpec, u16) {
    (identity(spec), port)
}

/// What the sessions of every target share.
struct Shared {
    cancels: Arc<CancelRegistry>,
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
    sessions: TaskTracker,
    client_tls: Option<Arc<rustls::ServerConfig>>,
    view: Arc<ProxyView>,
}

/// What a target is, once its listeners are bound.
struct TargetInfo {
    spec: TargetSpec,
    listen_port: u16,
    tcp_address: SocketAddr,
    pools: Arc<Pools>,
    origin: String,
}

/// One served target.
struct RunningTarget {
    info: TargetInfo,
    /// Stops this target's listeners alone (a reload that removes it).
    stop: ShutdownTrigger,
    listener_tasks: Vec<JoinHandle<()>>,
    maintenance: JoinHandle<()>,
}

/// A target whose listeners are bound but not yet accepting.
struct PreparedTarget {
    info: TargetInfo,
    listeners: Vec<(Listener, Arc<TargetContext>)>,
    stop: (ShutdownTrigger, Shutdown),
}

impl RunningProxy {
    /// Resolves the targets, binds every listener, starts the background work, and begins
    /// accepting clients. Nothing is started unless every target could be set up.
    pub async fn start(config: Config) -> Result<RunningProxy, StartError> {
        crate::metrics::install();
        let resolved = resolve_targets(&config).await.map_err(Box::new)?;
        let client_tls = match &config.client_tls {
            Some(files) => Some(tls::client_facing_config(&files.cert, &files.key)?),
            None => None,
        };
        let (trigger, shutdown) = shutdown::channel();
        let client_slots = Arc::new(Semaphore::new(config.max_client_connections));
        let shared = Shared {
            cancels: Arc::default(),
            trigger,
            shutdown,
            sessions: TaskTracker::new(),
            client_tls,
            view: Arc::new(ProxyView::new(client_slots, Arc::new(ClientRegistry::default()))),
        };
        let mut prepared = Vec::new();
        for (index, (spec, target)) in config.targets.iter().zip(resolved.targets).enumerate() {
            prepared.push(shared.prepare(&config, spec.clone(), config.listen_port(index), target).await?);
        }
        let targets: Vec<RunningTarget> = prepared.into_iter().map(|target| shared.launch(target)).collect();
        let keys = targets.iter().map(|t| target_key(&t.info.spec, t.info.listen_port)).collect();
        let credentials = vec![CredentialGroup::start(keys, resolved.caches)];
        let proxy = RunningProxy { shared, targets, config, credentials };
        proxy.update_view();
        Ok(proxy)
    }

    /// Applies a changed configuration: new targets start listening, removed ones stop
    /// accepting (their sessions carry on until they end), and changed pool settings apply to
    /// new connections. Settings that need a restart are reported, not applied. On an error
    /// nothing changes.
    pub async fn reload(&mut self, config: Config) -> Result<Vec<String>, StartError> {
        let mut notes = restart_only_changes(&self.config, &config);
        // A target is the same one if it names the same upstream on the same port; its pool
        // settings may differ (they are applied in place).
        let wanted: Vec<((TargetSpec, u16), TargetSpec)> = config
            .targets
            .iter()
            .enumerate()
            .map(|(i, spec)| (target_key(spec, config.listen_port(i)), spec.clone()))
            .collect();
        let new_spec = |target: &RunningTarget| {
            let key = target_key(&target.info.spec, target.info.listen_port);
            wanted.iter().find(|(k, _)| *k == key).map(|(_, spec)| spec.clone())
        };
        let is_kept = |target: &RunningTarget| new_spec(target).is_some();
        let added: Vec<(TargetSpec, u16)> = wanted
            .iter()
            .filter(|(key, _)| !self.targets.iter().any(|t| target_key(&t.info.spec, t.info.listen_port) == *key))
            .map(|((_, port), spec)| (spec.clone(), *port))
            .collect();

        // Everything that can fail happens before anything changes.
        let mut only_added = config.clone();
        only_added.targets = added.iter().map(|(spec, _)| spec.clone()).collect();
        let resolved = resolve_targets(&only_added).await.map_err(Box::new)?;
        let added_keys: Vec<(TargetSpec, u16)> = added.iter().map(|(spec, port)| target_key(spec, *port)).collect();
        let mut prepared = Vec::new();
        for ((spec, port), target) in added.into_iter().zip(resolved.targets) {
            prepared.push(self.shared.prepare(&config, spec, port, target).await?);
        }

        for target in self.targets.iter().filter(|t| !is_kept(t)) {
            notes.push(format!(
                "removed {} (port {}): no new clients; open sessions carry on",
                target.info.origin, target.info.tcp_address
            ));
            target.stop.begin(Instant::now());
            target.maintenance.abort();
        }
        self.targets.retain(is_kept);
        for target in &mut self.targets {
            target.info.spec = new_spec(target).expect("kept targets are wanted");
            let settings = config.pool.overridden_by(pool_overrides(&target.info.spec));
            if settings != target.info.pools.upstream().settings() {
                notes.push(format!("{}: new pool settings apply to new connections", target.info.origin));
                target.info.pools.set_settings(settings);
            }
        }
        for target in prepared {
            notes.push(format!("added {} on {}", target.info.origin, target.info.tcp_address));
            self.targets.push(self.shared.launch(target));
        }
        // Credentials only removed targets used are no longer kept fresh (a session of a
        // removed target that still needs one fetches it on demand).
        let served: Vec<(TargetSpec, u16)> =
            self.targets.iter().map(|t| target_key(&t.info.spec, t.info.listen_port)).collect();
        self.credentials.retain(|group| {
            let in_use = group.targets.iter().any(|key| served.contains(key));
            if !in_use {
                group.stop();
            }
            in_use
        });
        // (A reload that adds nothing still resolves a password cache; it is never started.)
        if !added_keys.is_empty() {
            self.credentials.push(CredentialGroup::start(added_keys, resolved.caches));
        }
        self.config = config;
        self.update_view();
        Ok(notes)
    }

    fn update_view(&self) {
        let caches = self.credentials.iter().flat_map(|group| group.caches.iter().cloned()).collect();
        self.shared.view.update(self.target_views(), caches, self.config.describe());
    }

    fn target_views(&self) -> Vec<TargetView> {
        self.targets
            .iter()
            .map(|t| TargetView {
                label: t.info.pools.upstream().label.clone(),
                origin: t.info.origin.clone(),
                listen: t.info.tcp_address.to_string(),
                pools: t.info.pools.clone(),
            })
            .collect()
    }

    /// The TCP address target number `index` listens on.
    pub fn tcp_address(&self, index: usize) -> SocketAddr {
        self.targets[index].info.tcp_address
    }

    /// The pools of target number `index`.
    pub fn pools(&self, index: usize) -> &Arc<Pools> {
        &self.targets[index].info.pools
    }

    /// What the probes, metrics and admin console look at.
    pub fn view(&self) -> Arc<ProxyView> {
        self.shared.view.clone()
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
        self.shared.trigger.begin(deadline);
        for target in self.targets {
            for task in target.listener_tasks {
                let _ = task.await;
            }
            target.maintenance.abort();
        }
        let sessions = &self.shared.sessions;
        sessions.close();
        // Sessions stop at the deadline; the margin covers writing their last words.
        if tokio::time::timeout_at(deadline + SHUTDOWN_MARGIN, sessions.wait()).await.is_err() {
            warn!(remaining = sessions.len(), "sessions still open at the shutdown deadline");
        }
        for group in &self.credentials {
            group.stop();
        }
    }
}

impl Shared {
    /// Builds a target's upstream and pools and binds its listeners.
    async fn prepare(
        &self,
        config: &Config,
        spec: TargetSpec,
        port: u16,
        resolved: ResolvedTarget,
    ) -> Result<PreparedTarget, StartError> {
        let target = resolved.target;
        let upstream = upstream(config, &target, resolved.credentials, resolved.resolver)?;
        let pools = Pools::new(upstream, warm_pool_key(&target));
        let ctx = Arc::new(TargetContext {
            target: target.clone(),
            pools: pools.clone(),
            cancels: self.cancels.clone(),
            client_tls: self.client_tls.clone(),
            lazy_attach: config.lazy_attach,
            startup_timeout: config.startup_timeout,
            shutdown: self.shutdown.clone(),
            sessions: self.sessions.clone(),
            client_slots: self.view.client_slots.clone(),
            clients: self.view.clients.clone(),
            view: self.view.clone(),
        });
        let address = SocketAddr::new(config.address, port);
        let tcp =
            Listener::tcp(address).await.map_err(|source| StartError::Bind { address: address.to_string(), source })?;
        let tcp_address = tcp.local_addr().expect("a TCP listener has an address");
        let mut listeners = vec![(tcp, ctx.clone())];
        if let Some(dir) = &config.unix_socket_dir {
            let unix = Listener::unix(dir, tcp_address.port())
                .await
                .map_err(|source| StartError::Bind { address: dir.display().to_string(), source })?;
            listeners.push((unix, ctx));
        }
        info!(target = %resolved.origin, upstream = %target, listen = %tcp_address, "target ready");
        let info = TargetInfo { spec, listen_port: port, tcp_address, pools, origin: resolved.origin };
        Ok(PreparedTarget { info, listeners, stop: shutdown::channel() })
    }

    /// Starts a prepared target's listeners and pool maintenance.
    fn launch(&self, prepared: PreparedTarget) -> RunningTarget {
        let (stop, stopped) = prepared.stop;
        let listener_tasks = prepared
            .listeners
            .into_iter()
            .map(|(listener, ctx)| tokio::spawn(listener.run(ctx, stopped.clone())))
            .collect();
        RunningTarget {
            maintenance: prepared.info.pools.spawn_maintenance(),
            info: prepared.info,
            stop,
            listener_tasks,
        }
    }
}

/// Time after the drain deadline for sessions to send their 57P01 and close.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// Settings that only take effect at start, by their `describe` name.
const RELOADABLE: &[&str] = &["min_idle", "max_pool_size", "idle_timeout", "max_lifetime", "checkout_timeout"];

/// Notes for changed settings that a reload cannot apply.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let old_rows = old.describe();
    new.describe()
        .into_iter()
        .filter(|(key, _)| !key.starts_with("target.") && !RELOADABLE.contains(&key.as_str()))
        .filter(|row| !old_rows.contains(row))
        .map(|(key, value)| format!("{key} = {value} takes effect only after a restart"))
        .collect()
}

/// A target without its pool settings.
fn identity(spec: &TargetSpec) -> TargetSpec {
    let mut spec = spec.clone();
    match &mut spec {
        TargetSpec::Postgres(target) => target.pool = PoolOverrides::default(),
        TargetSpec::Lakebase(target) => target.pool = PoolOverrides::default(),
    }
    spec
}

fn pool_overrides(spec: &TargetSpec) -> &PoolOverrides {
    match spec {
        TargetSpec::Postgres(target) => &target.pool,
        TargetSpec::Lakebase(target) => &target.pool,
    }
}

/// How to reach `target`: its TLS trust (`sslrootcert=`, else `--ca-file`, else the system
/// store), endpoint, password source and pool limits.
fn upstream(
    config: &Config,
    target: &Target,
    credentials: Option<Arc<CredentialCache>>,
    resolver: Option<HostResolver>,
) -> Result<Upstream, StartError> {
    let roots = roots(target.ca_file.as_ref().or(config.ca_file.as_ref()));
    let tls = tls::upstream_config(&roots)?;
    let endpoint = Endpoint::new(&target.host, target.port, target.connect_to.clone(), tls, config.connect_timeout)?;
    let connector = Connector::new(target.to_string(), endpoint, credentials, resolver);
    Ok(Upstream::new(target.to_string(), Arc::new(connector), config.pool.overridden_by(&target.pool)))
}

/// The pool kept warm: only where the role and database are known up front.
fn warm_pool_key(target: &Target) -> Option<PoolKey> {
    target.user.as_ref().map(|user| PoolKey {
        database: target.database.clone().unwrap_or_else(|| user.clone()),
        user: user.clone(),
        options: None,
    })
}
