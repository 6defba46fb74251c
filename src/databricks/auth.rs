//! Workspace authentication methods, each a [`CredentialSource`] of workspace bearer tokens:
//! a personal access token, OAuth machine-to-machine (a service principal's client id and
//! secret, as Databricks Apps inject them), and the Databricks CLI's user login.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use reqwest::Method;
use serde::Deserialize;
use tokio::process::Command;

use super::client::error_from_body;
use super::config::WorkspaceConfig;
use crate::credentials::{BoxFuture, Credential, CredentialError, CredentialSource, Secret};

/// The authentication methods lakebase-proxy supports, in the SDKs' default order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `pat`: a personal access token.
    Pat,
    /// `oauth-m2m`: client credentials.
    OAuthM2m,
    /// `databricks-cli`: `databricks auth token`.
    DatabricksCli,
}

impl AuthMethod {
    /// The `auth_type` name.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Pat => "pat",
            AuthMethod::OAuthM2m => "oauth-m2m",
            AuthMethod::DatabricksCli => "databricks-cli",
        }
    }
}

/// A workspace login that cannot work, with what was found and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No workspace host anywhere.
    #[error(
        "no Databricks workspace host is configured ({found}); pass --host, set DATABRICKS_HOST, or run `databricks auth login --host <workspace-url>`"
    )]
    NoHost {
        /// What was looked at.
        found: String,
    },
    /// More than one method configured and none chosen.
    #[error(
        "several Databricks auth methods are configured ({methods}) in {found}; set auth_type (DATABRICKS_AUTH_TYPE or --auth-type) to one of them"
    )]
    Ambiguous {
        /// The methods found.
        methods: String,
        /// Where they were found.
        found: String,
    },
    /// `auth_type` names a method this tool does not implement, or whose settings are missing.
    #[error("auth_type {auth_type:?} cannot be used: {reason}")]
    Unusable {
        /// The method asked for.
        auth_type: String,
        /// Why.
        reason: String,
    },
}

/// Picks the method `config` describes: the forced `auth_type`, else the only one configured,
/// else the Databricks CLI.
pub fn choose_method(config: &WorkspaceConfig) -> Result<AuthMethod, AuthError> {
    let found = if config.sources.is_empty() { "nothing found".to_owned() } else { config.sources.join(", ") };
    if config.host.is_none() {
        return Err(AuthError::NoHost { found });
    }
    let unusable = |auth_type: &str, reason: &str| AuthError::Unusable {
        auth_type: auth_type.to_owned(),
        reason: reason.to_owned(),
    };
    if let Some(auth_type) = &config.auth_type {
        return match auth_type.as_str() {
            "pat" if config.token.is_some() => Ok(AuthMethod::Pat),
            "pat" => Err(unusable(auth_type, "no token is configured")),
            "oauth-m2m" if config.client_id.is_some() && config.client_secret.is_some() => Ok(AuthMethod::OAuthM2m),
            "oauth-m2m" => Err(unusable(auth_type, "client_id and client_secret are both needed")),
            "databricks-cli" => Ok(AuthMethod::DatabricksCli),
            other => Err(unusable(other, "lakebase-proxy supports pat, oauth-m2m and databricks-cli")),
        };
    }
    let mut configured = Vec::new();
    if config.token.is_some() {
        configured.push(AuthMethod::Pat);
    }
    if config.client_id.is_some() && config.client_secret.is_some() {
        configured.push(AuthMethod::OAuthM2m);
    }
    match configured.as_slice() {
        [] => Ok(AuthMethod::DatabricksCli),
        [one] => Ok(*one),
        many => {
            Err(AuthError::Ambiguous { methods: many.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "), found })
        }
    }
}

/// A personal access token: never expires as far as we can tell.
pub struct PatSource(pub Secret);

impl CredentialSource for PatSource {
    fn describe(&self) -> String {
        "Databricks personal access token".into()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Credential, CredentialError>> {
        Box::pin(async move { Ok(Credential { secret: self.0.clone(), expires_at: None }) })
    }
}

/// OAuth client credentials against the workspace's token endpoint.
pub struct M2mSource {
    /// HTTP client (no bearer auth).
    pub http: reqwest::Client,
    /// Workspace URL.
    pub host: String,
    /// Client (application) id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: Secret,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

impl M2mSource {
    /// The token endpoint from OIDC discovery, falling back to the well-known path.
    async fn token_endpoint(&self) -> String {
        #[derive(Deserialize)]
        struct Discovery {
            token_endpoint: String,
        }
        let url = format!("{}/oidc/.well-known/oauth-authorization-server", self.host);
        match self.http.get(&url).send().await {
            Ok(response) if response.status().is_success() => match response.json::<Discovery>().await {
                Ok(discovery) => return discovery.token_endpoint,
                Err(error) => tracing::debug!(%error, "OIDC discovery returned no token endpoint"),
            },
            Ok(response) => tracing::debug!(status = %response.status(), "OIDC discovery failed"),
            Err(error) => tracing::debug!(%error, "OIDC discovery failed"),
        }
        format!("{}/oidc/v1/token", self.host)
    }
}

impl CredentialSource for M2mSource {
    fn describe(&self) -> String {
        format!("Databricks OAuth M2M for client {}", self.client_id)
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Credential, CredentialError>> {
        Box::pin(async move {
            let endpoint = self.token_endpoint().await;
            let response = self
                .http
                .post(&endpoint)
                .basic_auth(&self.client_id, Some(self.client_secret.expose()))
                .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
                .send()
                .await
                .map_err(|error| {
                    CredentialError::Unavailable(format!("OAuth token request to {endpoint} failed: {error}"))
                })?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(error_from_body(&Method::POST, "/oidc/v1/token", status, &body).into_credential_error());
            }
            let token: TokenResponse = serde_json::from_str(&body).map_err(|error| {
                CredentialError::Unavailable(format!("OAuth token response was not understood: {error}"))
            })?;
            let expires_at = token.expires_in.map(|seconds| SystemTime::now() + Duration::from_secs(seconds));
            Ok(Credential { secret: Secret::new(token.access_token), expires_at })
        })
    }
}

/// The Databricks CLI's user login: `databricks auth token --profile P` (or `--host H`),
/// which refreshes the login itself and keeps it in the OS keyring.
pub struct CliSource {
    /// The CLI program.
    pub program: String,
    /// Workspace URL.
    pub host: String,
    /// The profile, when one was named or found.
    pub profile: Option<String>,
}

impl CredentialSource for CliSource {
    fn describe(&self) -> String {
        format!("Databricks CLI login ({} auth token)", self.program)
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Credential, CredentialError>> {
        Box::pin(async move {
            let mut command = Command::new(&self.program);
            command.args(["auth", "token"]);
            match &self.profile {
                Some(profile) => command.args(["--profile", profile]),
                None => command.args(["--host", &self.host]),
            };
            let login_hint = format!("run `databricks auth login --host {}`", self.host);
            let output =
                tokio::time::timeout(Duration::from_secs(60), command.stdin(Stdio::null()).kill_on_drop(true).output())
                    .await
                    .map_err(|_| {
                        CredentialError::Unavailable(format!("{} did not answer within 60s", self.describe()))
                    })?
                    .map_err(|error| {
                        CredentialError::Refused(format!(
                            "cannot run the Databricks CLI `{}`: {error}; install it or set DATABRICKS_CLI_PATH",
                            self.program
                        ))
                    })?;
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let reason: String =
                    stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").chars().take(300).collect();
                return Err(CredentialError::Refused(format!(
                    "`databricks auth token` failed: {reason}; {login_hint}"
                )));
            }
            #[derive(Deserialize)]
            struct CliToken {
                access_token: String,
                expiry: Option<String>,
            }
            let token: CliToken = serde_json::from_slice(&output.stdout).map_err(|error| {
                CredentialError::Unavailable(format!("`databricks auth token` printed something unexpected: {error}"))
            })?;
            let expires_at = match token.expiry.as_deref() {
                Some(text) => Some(
                    parse_rfc3339(text)
                        .ok_or_else(|| CredentialError::Unavailable(format!("unreadable token expiry {text:?}")))?,
                ),
                None => None,
            };
            Ok(Credential { secret: Secret::new(token.access_token), expires_at })
        })
    }
}

/// Parses an RFC 3339 timestamp with any offset and optional fractional seconds.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let parsed = time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(token: bool, m2m: bool, auth_type: Option<&str>) -> WorkspaceConfig {
        WorkspaceConfig {
            host: Some("https://w.cloud.databricks.com".into()),
            token: token.then(|| "dapi".into()),
            client_id: m2m.then(|| "id".into()),
            client_secret: m2m.then(|| "secret".into()),
            auth_type: auth_type.map(str::to_owned),
            sources: vec!["environment".into()],
            ..Default::default()
        }
    }

    #[test]
    fn method_choice_follows_the_sdks() {
        assert_eq!(choose_method(&config(true, false, None)).unwrap(), AuthMethod::Pat);
        assert_eq!(choose_method(&config(false, true, None)).unwrap(), AuthMethod::OAuthM2m);
        assert_eq!(choose_method(&config(false, false, None)).unwrap(), AuthMethod::DatabricksCli);
        let error = choose_method(&config(true, true, None)).unwrap_err().to_string();
        assert!(error.contains("pat, oauth-m2m") && error.contains("auth_type"), "{error}");
        assert_eq!(choose_method(&config(true, true, Some("oauth-m2m"))).unwrap(), AuthMethod::OAuthM2m);
        assert!(choose_method(&config(false, false, Some("pat"))).is_err());
        assert!(choose_method(&config(false, false, Some("azure-cli"))).is_err());
        let mut no_host = config(true, false, None);
        no_host.host = None;
        assert!(choose_method(&no_host).unwrap_err().to_string().contains("databricks auth login"));
    }

    #[test]
    fn rfc3339_with_offsets_and_fractions() {
        let utc = parse_rfc3339("2026-11-27T10:00:00Z").unwrap();
        assert_eq!(
            parse_rfc3339("2026-11-27T11:00:00.123456+01:00").unwrap().duration_since(utc).unwrap().as_millis(),
            123
        );
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
