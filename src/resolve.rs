//! Turns the TARGETs of the command line into upstreams to serve: URLs as they are, with the
//! shared password source; Lakebase names through the workspace API, each with its own
//! minted-credential cache.

use std::sync::Arc;

use tracing::{info, warn};

use crate::config::{Config, PasswordSource};
use crate::credentials::{CommandSource, CredentialCache, CredentialSource, FileSource, RefreshPolicy};
use crate::databricks::auth::AuthError;
use crate::databricks::config::ConfigError;
use crate::databricks::lakebase::ResolveError;
use crate::databricks::{ApiError, LakebaseSource, Workspace, WorkspaceConfig, client};
use crate::target::{DEFAULT_PORT, LAKEBASE_DEFAULT_DATABASE, LakebaseTarget, Target, TargetSpec};
use crate::tls::{self, TlsSetupError, TrustRoots};
use crate::upstream::HostResolver;

/// An upstream ready to be served.
pub struct ResolvedTarget {
    /// Where and as whom to connect.
    pub target: Target,
    /// Its password source, if it has one.
    pub credentials: Option<Arc<CredentialCache>>,
    /// What the target was resolved from, for logs and the connection test.
    pub origin: String,
    /// How to look its host up again (Lakebase names only).
    pub resolver: Option<HostResolver>,
}

/// Everything resolved, plus the caches whose refreshers must run.
pub struct Resolved {
    /// One per TARGET, in order.
    pub targets: Vec<ResolvedTarget>,
    /// Every credential cache to keep warm (database passwords and the workspace token).
    pub caches: Vec<Arc<CredentialCache>>,
}

/// Why targets could not be resolved; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ResolveTargetError {
    /// The Databricks config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No usable workspace login.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The workspace refused or failed.
    #[error("{error}{}", login_hint(.error))]
    Api {
        /// The API failure.
        #[from]
        error: ApiError,
    },
    /// A Lakebase name does not lead to one endpoint.
    #[error("{target}: {source}")]
    Resolve {
        /// The target.
        target: String,
        /// Why.
        source: ResolveError,
    },
    /// TLS setup for the API failed.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

fn login_hint(error: &ApiError) -> &'static str {
    match error.status() {
        Some(401) => {
            "; the workspace login was refused: check the token, or run `databricks auth login --host <workspace-url>`"
        }
        Some(403) => "; the identity lacks permission on this workspace or resource",
        _ => "",
    }
}

/// Resolves every target of `config`.
pub async fn resolve_targets(config: &Config) -> Result<Resolved, ResolveTargetError> {
    let mut caches = Vec::new();
    let shared_password = password_cache(config);
    caches.extend(shared_password.clone());
    let mut workspace: Option<(Workspace, String)> = None;
    let mut targets = Vec::new();
    for spec in &config.targets {
        let resolved = match spec {
            TargetSpec::Postgres(target) => ResolvedTarget {
                target: target.clone(),
                credentials: shared_password.clone(),
                origin: target.to_string(),
                resolver: None,
            },
            TargetSpec::Lakebase(lakebase) => {
                if workspace.is_none() {
                    let login = login(config).await?;
                    caches.push(login.0.token.clone());
                    workspace = Some(login);
                }
                let (workspace, role) = workspace.as_ref().expect("logged in above");
                let resolved = resolve_lakebase(config, workspace, role, lakebase).await?;
                caches.extend(resolved.credentials.clone());
                resolved
            }
        };
        targets.push(resolved);
    }
    Ok(Resolved { targets, caches })
}

/// Logs into the workspace and learns the Postgres role of the identity.
async fn login(config: &Config) -> Result<(Workspace, String), ResolveTargetError> {
    let settings = WorkspaceConfig::resolve(&config.databricks, &|name| std::env::var(name).ok())?;
    let http = client::http_client(tls::api_config(&roots(config.ca_file.as_ref()))?);
    let workspace = Workspace::new(&settings, http)?;
    let role = workspace.postgres_role().await?;
    info!(role = %role, "logged in to the Databricks workspace");
    Ok((workspace, role))
}

async fn resolve_lakebase(
    config: &Config,
    workspace: &Workspace,
    role: &str,
    lakebase: &LakebaseTarget,
) -> Result<ResolvedTarget, ResolveTargetError> {
    let resolved = workspace
        .api
        .resolve(&lakebase.resource, lakebase.read_only)
        .await
        .map_err(|source| ResolveTargetError::Resolve { target: lakebase.resource.to_string(), source })?;
    // IDLE is normal (the first connection wakes the compute); these are not.
    if let Some(state @ ("INIT" | "DEGRADED")) = resolved.state.as_deref() {
        warn!(target = %lakebase.resource, state, "the endpoint is not ready; connections may fail until it is");
    }
    let target = Target {
        host: resolved.host.clone(),
        port: DEFAULT_PORT,
        connect_to: lakebase.connect_to.clone(),
        user: Some(lakebase.user.clone().unwrap_or_else(|| role.to_owned())),
        database: Some(lakebase.database.clone().unwrap_or_else(|| LAKEBASE_DEFAULT_DATABASE.to_owned())),
        ca_file: None,
        listen_port: lakebase.listen_port,
        pool: lakebase.pool.clone(),
    };
    let source = LakebaseSource { api: workspace.api.clone(), scope: resolved.scope.clone(), ttl: config.token_ttl };
    let credentials = CredentialCache::new(Box::new(source), RefreshPolicy::default());
    let origin = format!("{} ({})", lakebase.resource, resolved.state.as_deref().unwrap_or("state unknown"));
    info!(target = %lakebase.resource, host = %resolved.host, state = ?resolved.state, "resolved");
    let (api, resource, read_only) = (workspace.api.clone(), lakebase.resource.clone(), lakebase.read_only);
    let resolver: HostResolver = Arc::new(move || {
        let (api, resource) = (api.clone(), resource.clone());
        Box::pin(async move { api.resolve(&resource, read_only).await.map(|r| r.host).map_err(|e| e.to_string()) })
    });
    Ok(ResolvedTarget { target, credentials: Some(credentials), origin, resolver: Some(resolver) })
}

/// Trust for upstream and API certificates: `--ca-file`, else the system store.
pub fn roots(ca_file: Option<&std::path::PathBuf>) -> TrustRoots {
    match ca_file {
        Some(path) => TrustRoots::CaFile(path.clone()),
        None => TrustRoots::System,
    }
}

fn password_cache(config: &Config) -> Option<Arc<CredentialCache>> {
    let source: Box<dyn CredentialSource> = match &config.password {
        PasswordSource::None => return None,
        PasswordSource::File(path) => Box::new(FileSource::new(path.clone())),
        PasswordSource::Command(command) => Box::new(CommandSource::new(command.clone())),
    };
    let policy = RefreshPolicy { assumed_lifetime: config.password_ttl, ..RefreshPolicy::default() };
    Some(CredentialCache::new(source, policy))
}
