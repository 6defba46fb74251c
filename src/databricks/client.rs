//! The workspace REST client: bearer auth from a refreshing token cache, the identifying
//! headers, Databricks-shaped errors, and retries with backoff for 429 and 5xx.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::credentials::{CredentialCache, CredentialError};

/// Sent with every request so workspace admins can see who calls.
pub const USER_AGENT: &str = concat!("lakebase-proxy/", env!("CARGO_PKG_VERSION"));
/// Attempts per call for retryable failures (the credential cache retries on top of this).
const ATTEMPTS: u32 = 4;
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait honoured from a `Retry-After` header.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed API call; the message never contains a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error.
    #[error("Databricks API {method} {path} failed: HTTP {status} {code}: {message}")]
    Http {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// Databricks `error_code` (or the OAuth `error`).
        code: String,
        /// Databricks `message`.
        message: String,
    },
    /// The request did not complete (DNS, TCP, TLS, timeout).
    #[error("Databricks API {method} {path} unreachable: {reason}")]
    Transport {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The answer was not the JSON expected.
    #[error("Databricks API {path} returned an unexpected response: {reason}")]
    Decode {
        /// Request path.
        path: String,
        /// Why.
        reason: String,
    },
    /// No workspace token could be had.
    #[error("workspace login failed: {0}")]
    Login(#[from] CredentialError),
}

impl ApiError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// As a credential error: refusals (4xx but 429) will not pass by retrying.
    pub fn into_credential_error(self) -> CredentialError {
        match &self {
            ApiError::Http { status, .. } if *status < 500 && *status != 429 => {
                CredentialError::Refused(self.to_string())
            }
            ApiError::Login(inner) => inner.clone(),
            _ => CredentialError::Unavailable(self.to_string()),
        }
    }
}

/// Builds the HTTP client used for every Databricks call, trusting `tls` roots.
pub fn http_client(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .user_agent(USER_AGENT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client with a preconfigured TLS setup always builds")
}

/// A client for one workspace.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    host: String,
    token: Arc<CredentialCache>,
    workspace_id: Option<String>,
}

impl ApiClient {
    /// A client for `host` authenticating with tokens from `token`.
    pub fn new(
        http: reqwest::Client,
        host: String,
        token: Arc<CredentialCache>,
        workspace_id: Option<String>,
    ) -> ApiClient {
        ApiClient { http, host, token, workspace_id }
    }

    /// The workspace URL.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// GET `path` with `query`, decoding JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, ApiError> {
        self.call(Method::GET, path, query, None::<&()>).await
    }

    /// POST `body` as JSON to `path`, decoding JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ApiError> {
        self.call(Method::POST, path, &[], Some(body)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let url = format!("{}{path}", self.host);
        let mut backoff = BACKOFF_START;
        for attempt in 1..=ATTEMPTS {
            let token = self.token.get().await?;
            let mut request = self.http.request(method.clone(), &url).bearer_auth(token.expose()).query(query);
            if let Some(id) = &self.workspace_id {
                request = request.header("X-Databricks-Workspace-Id", id);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let (error, retry_after) = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let text = response.text().await.map_err(|e| transport(&method, path, &e))?;
                    return serde_json::from_str(&text)
                        .map_err(|e| ApiError::Decode { path: path.to_owned(), reason: e.to_string() });
                }
                Ok(response) => {
                    let retry_after = retry_after(&response);
                    let status = response.status();
                    let error = error_from_body(&method, path, status, &response.text().await.unwrap_or_default());
                    if !retryable(status) {
                        return Err(error);
                    }
                    (error, retry_after)
                }
                Err(error) => (transport(&method, path, &error), None),
            };
            if attempt == ATTEMPTS {
                return Err(error);
            }
            let wait = retry_after.unwrap_or_else(|| backoff.mul_f64(rand::rng().random_range(0.8..1.2)));
            warn!(%error, attempt, retry_in = ?wait, "Databricks API call failed; retrying");
            tokio::time::sleep(wait).await;
            backoff *= 2;
        }
        unreachable!("the last attempt returns")
    }
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// `Retry-After` in seconds (the form Databricks sends), capped.
pub(super) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

fn transport(method: &Method, path: &str, error: &reqwest::Error) -> ApiError {
    // reqwest's Display names the URL, which never carries a secret here; the error chain
    // explains the cause (DNS, refused, certificate).
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    debug!(%reason, "transport error");
    ApiError::Transport { method: method.to_string(), path: path.to_owned(), reason }
}

/// Reads `{"error_code", "message"}` (or OAuth's `{"error", "error_description"}`).
pub(super) fn error_from_body(method: &Method, path: &str, status: StatusCode, body: &str) -> ApiError {
    #[derive(serde::Deserialize, Default)]
    struct Body {
        error_code: Option<String>,
        message: Option<String>,
        error: Option<String>,
        error_description: Option<String>,
    }
    let parsed: Body = serde_json::from_str(body).unwrap_or_default();
    let snippet: String = body.chars().take(200).collect();
    ApiError::Http {
        method: method.to_string(),
        path: path.to_owned(),
        status: status.as_u16(),
        code: parsed.error_code.or(parsed.error).unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned()),
        message: parsed.message.or(parsed.error_description).unwrap_or(snippet),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_both_shapes() {
        let error = error_from_body(
            &Method::GET,
            "/x",
            StatusCode::NOT_FOUND,
            r#"{"error_code":"NOT_FOUND","message":"no such endpoint"}"#,
        );
        assert_eq!(error.to_string(), "Databricks API GET /x failed: HTTP 404 NOT_FOUND: no such endpoint");
        let error = error_from_body(
            &Method::POST,
            "/oidc/v1/token",
            StatusCode::UNAUTHORIZED,
            r#"{"error":"invalid_client","error_description":"bad"}"#,
        );
        assert!(error.to_string().contains("invalid_client: bad"));
        assert!(matches!(error.into_credential_error(), CredentialError::Refused(_)));
        let error = error_from_body(&Method::GET, "/x", StatusCode::SERVICE_UNAVAILABLE, "<html>");
        assert!(matches!(error.into_credential_error(), CredentialError::Unavailable(_)));
    }
}
