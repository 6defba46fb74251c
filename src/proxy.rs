//! Wires the parts together: one credential cache, and per target a TLS configuration, an
//! endpoint, its pools, and listeners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::cancel::CancelRegistry;
use crate::client::{Listener, TargetContext};
use crate::config::{Config, PasswordSource};
use crate::credentials::{
    CommandSource, CredentialCache, CredentialSource, FileSource, RefreshPolicy,
};
use crate::pool::{PoolKey, Pools, Upstream};
use crate::tls::{self, TlsSetupError, TrustRoots};
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
    stop: watch::Sender<bool>,
    listener_tasks: Vec<JoinHandle<()>>,
    background_tasks: Vec<JoinHandle<()>>,
}

struct RunningTarget {
    tcp_address: SocketAddr,
    unix_socket: Option<PathBuf>,
    pools: Arc<Pools>,
}

impl RunningProxy {
    /// Binds every listener, starts the background work, and begins accepting clients.
    /// Nothing is started unless every target could be set up.
    pub async fn start(config: Config) -> Result<RunningProxy, StartError> {
        let credentials = credential_cache(&config);
        let client_tls = match &config.client_tls {
            Some(files) => Some(tls::client_facing_config(&files.cert, &files.key)?),
            None => None,
        };
        let cancels = Arc::new(CancelRegistry::default());
        let mut targets = Vec::new();
        let mut listeners = Vec::new();
        for (index, target) in config.targets.iter().enumerate() {
            let roots = match target.ca_file.as_ref().or(config.ca_file.as_ref()) {
                Some(path) => TrustRoots::CaFile(path.clone()),
                None => TrustRoots::System,
            };
            let endpoint = Endpoint::new(
                target,
                tls::upstream_config(&roots)?,
                config.connect_timeout,
            )?;
            // Warm connections only make sense where the role and database are known up front.
            let warm = target.user.as_ref().map(|user| PoolKey {
                database: target.database.clone().unwrap_or_else(|| user.clone()),
                user: user.clone(),
                options: None,
            });
            let upstream = Upstream {
                endpoint,
                credentials: credentials.clone(),
                settings: config.pool.clone(),
            };
            let pools = Pools::new(upstream, warm);
            let ctx = Arc::new(TargetContext {
                target: target.clone(),
                pools: pools.clone(),
                cancels: cancels.clone(),
                client_tls: client_tls.clone(),
                lazy_attach: config.lazy_attach,
                startup_timeout: config.startup_timeout,
            });
            let address = SocketAddr::new(config.address, config.listen_port(index));
            let tcp = Listener::tcp(address)
                .await
                .map_err(|source| StartError::Bind {
                    address: address.to_string(),
                    source,
                })?;
            let tcp_address = tcp.local_addr().expect("a TCP listener has an address");
            let mut unix_socket = None;
            if let Some(dir) = &config.unix_socket_dir {
                let unix = Listener::unix(dir, tcp_address.port())
                    .await
                    .map_err(|source| StartError::Bind {
                        address: dir.display().to_string(),
                        source,
                    })?;
                if let Listener::Unix(_, path) = &unix {
                    unix_socket = Some(path.clone());
                }
                listeners.push((unix, ctx.clone()));
            }
            listeners.push((tcp, ctx));
            info!(%target, listen = %tcp_address, "target ready");
            targets.push(RunningTarget {
                tcp_address,
                unix_socket,
                pools,
            });
        }

        let (stop, stopped) = watch::channel(false);
        let mut background_tasks: Vec<_> = targets
            .iter()
            .map(|t| t.pools.spawn_maintenance())
            .collect();
        background_tasks.extend(credentials.map(|cache| cache.spawn_refresher()));
        let listener_tasks = listeners
            .into_iter()
            .map(|(listener, ctx)| tokio::spawn(listener.run(ctx, stopped.clone())))
            .collect();
        Ok(RunningProxy {
            targets,
            stop,
            listener_tasks,
            background_tasks,
        })
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

    /// Stops accepting clients and stops background work. Sessions in progress are not
    /// interrupted.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.listener_tasks {
            let _ = task.await;
        }
        for task in self.background_tasks {
            task.abort();
        }
    }
}

fn credential_cache(config: &Config) -> Option<Arc<CredentialCache>> {
    let source: Box<dyn CredentialSource> = match &config.password {
        PasswordSource::None => return None,
        PasswordSource::File(path) => Box::new(FileSource::new(path.clone())),
        PasswordSource::Command(command) => Box::new(CommandSource::new(command.clone())),
    };
    let policy = RefreshPolicy {
        assumed_lifetime: config.password_ttl,
        ..RefreshPolicy::default()
    };
    Some(CredentialCache::new(source, policy))
}
