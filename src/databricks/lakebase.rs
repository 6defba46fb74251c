//! Lakebase resources over the workspace API: resolving a name to a host, finding the
//! Postgres role of the caller, and minting database credentials.

use std::fmt;
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use serde_json::json;

use super::auth::parse_rfc3339;
use super::client::{ApiClient, ApiError};
use crate::credentials::{BoxFuture, Credential, CredentialError, CredentialSource, Secret};

/// A Lakebase resource named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// `projects/P/branches/B/endpoints/E` (Autoscaling).
    Endpoint(String),
    /// `projects/P/branches/B`: its read-write (or read-only) endpoint.
    Branch(String),
    /// `projects/P`: its default branch's endpoint.
    Project(String),
    /// `instances/NAME` (Provisioned).
    Instance(String),
}

impl Resource {
    /// Parses a resource name, or `None` when `text` is not one.
    pub fn parse(text: &str) -> Option<Result<Resource, String>> {
        let parts: Vec<&str> = text.split('/').collect();
        let kind = match parts.as_slice() {
            ["projects", _, "branches", _, "endpoints", _] => Resource::Endpoint,
            ["projects", _, "branches", _] => Resource::Branch,
            ["projects", _] => Resource::Project,
            ["instances", _] => Resource::Instance,
            ["projects" | "instances", ..] => {
                return Some(Err(format!("{text:?} is not projects/P[/branches/B[/endpoints/E]] or instances/NAME")));
            }
            _ => return None,
        };
        let ids = parts.iter().skip(1).step_by(2);
        for id in ids {
            let valid = (1..=63).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            // Provisioned instance names predate the rule; only check Autoscaling ids.
            if !valid && parts[0] == "projects" {
                return Some(Err(format!(
                    "{id:?} in {text:?} is not an id (1-63 lowercase letters, digits and hyphens)"
                )));
            }
        }
        Some(Ok(kind(text.to_owned())))
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Endpoint(name) | Resource::Branch(name) | Resource::Project(name) | Resource::Instance(name) => {
                f.write_str(name)
            }
        }
    }
}

/// What database credentials are minted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialScope {
    /// An Autoscaling endpoint, by full name.
    Endpoint(String),
    /// A Provisioned instance, by name.
    Instance(String),
}

/// A resource resolved to what the proxy connects to.
#[derive(Debug, Clone)]
pub struct ResolvedResource {
    /// What to mint credentials for.
    pub scope: CredentialScope,
    /// The host to connect to (and verify, and send as SNI).
    pub host: String,
    /// The state the API reported (`ACTIVE`, `IDLE`, `AVAILABLE`, ...), if any.
    pub state: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Endpoint {
    name: String,
    #[serde(default)]
    status: EndpointStatus,
}

#[derive(Debug, Default, Deserialize)]
struct EndpointStatus {
    endpoint_type: Option<String>,
    current_state: Option<String>,
    #[serde(default)]
    hosts: Hosts,
}

#[derive(Debug, Default, Deserialize)]
struct Hosts {
    host: Option<String>,
    read_only_host: Option<String>,
}

const READ_WRITE: &str = "ENDPOINT_TYPE_READ_WRITE";
const READ_ONLY: &str = "ENDPOINT_TYPE_READ_ONLY";

/// Why a resource could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The resource exists but does not name one usable endpoint.
    #[error("{0}")]
    Unusable(String),
}

impl ApiClient {
    /// The caller's Postgres role as SCIM `Me` reports it (`userName`: an email for users).
    pub async fn current_user_name(&self) -> Result<String, ApiError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Me {
            user_name: String,
        }
        Ok(self.get::<Me>("/api/2.0/preview/scim/v2/Me", &[]).await?.user_name)
    }

    /// Resolves `resource` to a host, choosing the read-only host when `read_only`.
    pub async fn resolve(&self, resource: &Resource, read_only: bool) -> Result<ResolvedResource, ResolveError> {
        match resource {
            Resource::Endpoint(name) => {
                let endpoint: Endpoint = self.get(&format!("/api/2.0/postgres/{name}"), &[]).await?;
                endpoint_host(endpoint, read_only)
            }
            Resource::Branch(name) => self.resolve_branch(name, read_only).await,
            Resource::Project(name) => {
                #[derive(Deserialize)]
                struct Project {
                    #[serde(default)]
                    status: ProjectStatus,
                }
                #[derive(Default, Deserialize)]
                struct ProjectStatus {
                    default_branch: Option<String>,
                }
                let project: Project = self.get(&format!("/api/2.0/postgres/{name}"), &[]).await?;
                let branch = project.status.default_branch.ok_or_else(|| {
                    ResolveError::Unusable(format!(
                        "{name} reports no default branch; name a branch: {name}/branches/<branch>"
                    ))
                })?;
                // Accept both a full name and a bare id: the field's form is not documented.
                let branch = if branch.contains('/') { branch } else { format!("{name}/branches/{branch}") };
                self.resolve_branch(&branch, read_only).await
            }
            Resource::Instance(name) => {
                #[derive(Deserialize)]
                struct Instance {
                    state: Option<String>,
                    read_write_dns: Option<String>,
                    read_only_dns: Option<String>,
                }
                let instance: Instance = self.get(&format!("/api/2.0/database/{name}"), &[]).await?;
                let short = name.trim_start_matches("instances/");
                let host = if read_only { instance.read_only_dns } else { instance.read_write_dns };
                let host = host.ok_or_else(|| {
                    ResolveError::Unusable(format!(
                        "instance {short} reports no {} host",
                        if read_only { "read-only" } else { "read-write" }
                    ))
                })?;
                Ok(ResolvedResource { scope: CredentialScope::Instance(short.to_owned()), host, state: instance.state })
            }
        }
    }

    /// The branch's endpoints, all pages.
    async fn resolve_branch(&self, branch: &str, read_only: bool) -> Result<ResolvedResource, ResolveError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            endpoints: Vec<Endpoint>,
            next_page_token: Option<String>,
        }
        let mut endpoints = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let page: Page = self.get(&format!("/api/2.0/postgres/{branch}/endpoints"), &query).await?;
            endpoints.extend(page.endpoints);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) => token = next,
                None => break,
            }
        }
        let wanted = if read_only { READ_ONLY } else { READ_WRITE };
        let names: Vec<String> = endpoints.iter().map(|e| e.name.clone()).collect();
        let mut matching: Vec<Endpoint> =
            endpoints.into_iter().filter(|e| e.status.endpoint_type.as_deref() == Some(wanted)).collect();
        match matching.len() {
            1 => endpoint_host(matching.remove(0), false),
            0 => Err(ResolveError::Unusable(format!(
                "{branch} has no {} endpoint (endpoints: {}); name one: {branch}/endpoints/<endpoint>",
                if read_only { "read-only" } else { "read-write" },
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            ))),
            _ => Err(ResolveError::Unusable(format!(
                "{branch} has several matching endpoints; name one of: {}",
                matching.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Mints a database credential for `scope`.
    pub async fn mint(&self, scope: &CredentialScope, ttl: Option<Duration>) -> Result<Credential, ApiError> {
        let (token, expiry) = match scope {
            CredentialScope::Endpoint(name) => {
                #[derive(Deserialize)]
                struct Minted {
                    token: String,
                    expire_time: Option<String>,
                }
                let mut body = json!({ "endpoint": name });
                if let Some(ttl) = ttl {
                    body["ttl"] = json!(format!("{}s", ttl.as_secs()));
                }
                let minted: Minted = self.post("/api/2.0/postgres/credentials", &body).await?;
                (minted.token, minted.expire_time)
            }
            CredentialScope::Instance(name) => {
                #[derive(Deserialize)]
                struct Minted {
                    token: String,
                    expiration_time: Option<String>,
                }
                let body = json!({ "instance_names": [name], "request_id": uuid_v4() });
                let minted: Minted = self.post("/api/2.0/database/credentials", &body).await?;
                (minted.token, minted.expiration_time)
            }
        };
        let expires_at = match expiry {
            Some(text) => Some(parse_rfc3339(&text).ok_or_else(|| ApiError::Decode {
                path: "credentials".into(),
                reason: format!("unreadable expiry {text:?}"),
            })?),
            // Documented as one hour when not said otherwise.
            None => Some(std::time::SystemTime::now() + ttl.unwrap_or(Duration::from_secs(3600))),
        };
        Ok(Credential { secret: Secret::new(token), expires_at })
    }
}

fn endpoint_host(endpoint: Endpoint, read_only: bool) -> Result<ResolvedResource, ResolveError> {
    let hosts = endpoint.status.hosts;
    let host = if read_only { hosts.read_only_host } else { hosts.host };
    let host = host.ok_or_else(|| {
        ResolveError::Unusable(format!(
            "{} reports no {}host",
            endpoint.name,
            if read_only { "read-only " } else { "" }
        ))
    })?;
    Ok(ResolvedResource { scope: CredentialScope::Endpoint(endpoint.name), host, state: endpoint.status.current_state })
}

/// A random (version 4) UUID, as the Provisioned API wants for `request_id`.
fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Lakebase database credentials for one endpoint or instance, minted with the workspace login.
pub struct LakebaseSource {
    /// The workspace client.
    pub api: ApiClient,
    /// What to mint for.
    pub scope: CredentialScope,
    /// Lifetime to ask for (`--token-ttl`); the API's default otherwise.
    pub ttl: Option<Duration>,
}

impl CredentialSource for LakebaseSource {
    fn describe(&self) -> String {
        match &self.scope {
            CredentialScope::Endpoint(name) => format!("Lakebase credentials for {name}"),
            CredentialScope::Instance(name) => format!("Lakebase credentials for instance {name}"),
        }
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Credential, CredentialError>> {
        Box::pin(async move { self.api.mint(&self.scope, self.ttl).await.map_err(ApiError::into_credential_error) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        assert_eq!(
            Resource::parse("projects/a/branches/b/endpoints/c"),
            Some(Ok(Resource::Endpoint("projects/a/branches/b/endpoints/c".into())))
        );
        assert_eq!(
            Resource::parse("projects/a/branches/b"),
            Some(Ok(Resource::Branch("projects/a/branches/b".into())))
        );
        assert_eq!(Resource::parse("projects/my-app"), Some(Ok(Resource::Project("projects/my-app".into()))));
        assert_eq!(Resource::parse("instances/Legacy_1"), Some(Ok(Resource::Instance("instances/Legacy_1".into()))));
        assert!(matches!(Resource::parse("projects/UPPER"), Some(Err(_))));
        assert!(matches!(Resource::parse("projects/a/branches"), Some(Err(_))));
        assert_eq!(Resource::parse("postgresql://h/db"), None);
    }

    #[test]
    fn uuids_are_version_4() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
    }
}
