//! A logged-in workspace: the chosen auth method behind a refreshing token cache, an API
//! client, and the Postgres role of whoever is logged in.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::auth::{AuthError, AuthMethod, CliSource, M2mSource, PatSource, choose_method};
use super::client::{ApiClient, ApiError};
use super::config::WorkspaceConfig;
use crate::credentials::{CredentialCache, CredentialSource, RefreshPolicy, Secret};

/// Default program for `databricks-cli` auth.
const DEFAULT_CLI: &str = "databricks";

/// A workspace login.
pub struct Workspace {
    /// The client, authenticated.
    pub api: ApiClient,
    /// How it logs in.
    pub method: AuthMethod,
    /// The workspace token cache (kept warm by its refresher).
    pub token: Arc<CredentialCache>,
    client_id: Option<String>,
}

impl Workspace {
    /// Sets up the login `config` describes, without contacting the workspace yet.
    pub fn new(config: &WorkspaceConfig, http: reqwest::Client) -> Result<Workspace, AuthError> {
        let method = choose_method(config)?;
        let host = config.host.clone().expect("choose_method requires a host");
        let source: Box<dyn CredentialSource> = match method {
            AuthMethod::Pat => Box::new(PatSource(Secret::new(config.token.clone().unwrap_or_default()))),
            AuthMethod::OAuthM2m => Box::new(M2mSource {
                http: http.clone(),
                host: host.clone(),
                client_id: config.client_id.clone().unwrap_or_default(),
                client_secret: Secret::new(config.client_secret.clone().unwrap_or_default()),
            }),
            AuthMethod::DatabricksCli => Box::new(CliSource {
                program: config.cli_path.clone().unwrap_or_else(|| DEFAULT_CLI.to_owned()),
                host: host.clone(),
                profile: config.profile.clone(),
            }),
        };
        info!(host = %host, method = method.name(), settings_from = %config.sources.join(", "), "Databricks workspace login");
        // A workspace token with no stated expiry (a PAT) is simply re-checked hourly.
        let policy = RefreshPolicy { assumed_lifetime: Duration::from_secs(3600), ..RefreshPolicy::default() };
        let token = CredentialCache::new(source, policy);
        let api = ApiClient::new(http, host, token.clone(), config.workspace_id.clone());
        let client_id = (method == AuthMethod::OAuthM2m).then(|| config.client_id.clone()).flatten();
        Ok(Workspace { api, method, token, client_id })
    }

    /// The Postgres role of the logged-in identity: a service principal's client id, else the
    /// user name SCIM reports (an email).
    pub async fn postgres_role(&self) -> Result<String, ApiError> {
        match &self.client_id {
            Some(client_id) => Ok(client_id.clone()),
            None => self.api.current_user_name().await,
        }
    }
}
