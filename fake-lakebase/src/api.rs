//! The workspace HTTP API: OIDC (M2M tokens), SCIM Me, the Autoscaling
//! `postgres` resources and credentials, and the Provisioned `database` ones.
//!
//! Served over HTTPS/1.1 by hyper; every handler locks the state only briefly.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::state::{self, DEFAULT_DB_TOKEN_TTL, OAUTH_TOKEN_TTL, State, Target};

/// Largest request body accepted; the real API's are tiny too.
const MAX_BODY: usize = 1 << 20;
/// Default `page_size`: small so that clients' paging loops get exercised.
const DEFAULT_PAGE_SIZE: usize = 2;
const MAX_PAGE_SIZE: usize = 100;

type Resp = Response<Full<Bytes>>;

pub(crate) struct Api {
    pub state: Arc<Mutex<State>>,
    /// `https://127.0.0.1:<port>`, used in the OIDC discovery document.
    pub url: String,
}

/// Accepts TLS connections until `shutdown` flips.
pub(crate) async fn serve(listener: TcpListener, tls: TlsAcceptor, api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    loop {
        let mut stop = shutdown.clone();
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                // Transient accept errors (EMFILE...) must not end the server.
                Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
            },
            _ = stop.changed() => return,
        };
        let tls = tls.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp));
            let Ok(Ok(stream)) = handshake.await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(handle(&api, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        });
    }
}

fn json_resp(status: u16, body: Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The Databricks REST error shape.
fn error(status: u16, code: &str, message: impl Into<String>) -> Resp {
    json_resp(status, json!({"error_code": code, "message": message.into()}))
}

/// An injected failure, shaped as the real service answers it.
fn injected(status: u16, retry_after: Option<u32>) -> Resp {
    let (code, msg) = match status {
        429 => ("RESOURCE_EXHAUSTED", "Too many requests. Please wait a moment and try again."),
        500 => ("INTERNAL_ERROR", "Internal error (injected by fake-lakebase)"),
        503 => ("TEMPORARILY_UNAVAILABLE", "The service is temporarily unavailable. Please try again later."),
        400 => ("INVALID_PARAMETER_VALUE", "Invalid request (injected)"),
        401 => ("UNAUTHENTICATED", "Credential was not sent or was invalid."),
        403 => ("PERMISSION_DENIED", "Permission denied (injected)"),
        404 => ("NOT_FOUND", "Not found (injected)"),
        _ => ("UNKNOWN", "Injected failure"),
    };
    let mut r = error(status, code, msg);
    if let Some(secs) = retry_after.filter(|_| status == 429 || status == 503) {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

fn unauthenticated() -> Resp {
    error(401, "UNAUTHENTICATED", "Credential was not sent or was of an unsupported type for this API.")
}

fn header(req: &Request<Incoming>, name: impl hyper::header::AsHeaderName) -> Option<String> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

async fn handle(api: &Api, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = header(&req, AUTHORIZATION);
    let latency = {
        let mut st = api.state.lock().unwrap();
        st.counters.api_calls += 1;
        *st.counters.calls_by_path.entry(format!("{method} {path}")).or_default() += 1;
        if let Some(ua) = header(&req, USER_AGENT) {
            st.last_user_agent = Some(ua);
        }
        if let Some(ws) = header(&req, "x-databricks-workspace-id") {
            st.last_workspace_id = Some(ws);
        }
        st.api_latency
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(400, "INVALID_PARAMETER_VALUE", "request body too large or unreadable");
        }
    };
    let is_oidc = path.starts_with("/oidc/");
    let is_api = path.starts_with("/api/");
    if !(is_oidc || is_api) {
        return no_such_api(&method, &path);
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if is_oidc {
        return oidc(api, &method, &path, auth.as_deref(), &body);
    }

    let mut st = api.state.lock().unwrap();
    let bearer = auth.as_deref().and_then(|a| {
        let (scheme, token) = a.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let Some(who) = bearer.and_then(|t| st.identity_for_bearer(t)) else {
        return unauthenticated();
    };
    if let Some((status, retry_after)) = st.take_failure() {
        return injected(status, retry_after);
    }
    let rest = path.strip_prefix("/api/2.0/").unwrap_or("");
    let segs: Vec<&str> = rest.split('/').collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["preview", "scim", "v2", "Me"]) => {
            let mut me = json!({
                "id": who.id,
                "userName": who.role,
                "displayName": who.display_name,
                "active": true,
            });
            if who.service_principal {
                me["applicationId"] = json!(who.role);
            } else {
                me["emails"] = json!([{"value": who.role, "primary": true, "type": "work"}]);
            }
            json_resp(200, me)
        }
        (&Method::GET, ["postgres", "projects"]) => {
            let items: Vec<(String, Value)> =
                st.projects.iter().map(|(p, proj)| (p.clone(), project_json(p, proj))).collect();
            page(&query, "projects", items)
        }
        (&Method::GET, ["postgres", "projects", p]) => match st.projects.get(*p) {
            Some(proj) => json_resp(200, project_json(p, proj)),
            None => not_found(&format!("projects/{p}")),
        },
        (&Method::GET, ["postgres", "projects", p, "branches"]) => match st.projects.get(*p) {
            Some(proj) => {
                let items = proj.branches.iter().map(|(b, br)| (b.clone(), branch_json(p, b, br, proj))).collect();
                page(&query, "branches", items)
            }
            None => not_found(&format!("projects/{p}")),
        },
        (&Method::GET, ["postgres", "projects", p, "branches", b]) => {
            match st.projects.get(*p).and_then(|proj| Some((proj, proj.branches.get(*b)?))) {
                Some((proj, br)) => json_resp(200, branch_json(p, b, br, proj)),
                None => not_found(&format!("projects/{p}/branches/{b}")),
            }
        }
        (&Method::GET, ["postgres", "projects", p, "branches", b, "endpoints"]) => {
            match st.projects.get(*p).and_then(|proj| proj.branches.get(*b)) {
                Some(br) => {
                    let suffix = &st.host_suffix;
                    let items = br
                        .endpoints
                        .iter()
                        .map(|(e, ep)| (e.clone(), endpoint_json(&state::endpoint_name(p, b, e), ep, suffix)))
                        .collect();
                    page(&query, "endpoints", items)
                }
                None => not_found(&format!("projects/{p}/branches/{b}")),
            }
        }
        (&Method::GET, ["postgres", "projects", p, "branches", b, "endpoints", e]) => {
            let name = state::endpoint_name(p, b, e);
            match st.endpoint(&name) {
                Some(ep) => json_resp(200, endpoint_json(&name, ep, &st.host_suffix)),
                None => not_found(&name),
            }
        }
        (&Method::POST, ["postgres", "credentials"]) => postgres_credential(&mut st, &who.role, &body),
        (&Method::GET, ["database", "instances", name]) => match st.instances.get(*name) {
            Some(inst) => {
                let s = &st.host_suffix;
                json_resp(
                    200,
                    json!({
                        "name": name,
                        "uid": inst.uid,
                        "state": "AVAILABLE",
                        "read_write_dns": format!("instance-{}.{s}", inst.uid),
                        "read_only_dns": format!("instance-ro-{}.{s}", inst.uid),
                    }),
                )
            }
            None => error(404, "NOT_FOUND", format!("Database instance '{name}' does not exist.")),
        },
        (&Method::POST, ["database", "credentials"]) => database_credential(&mut st, &who.role, &body),
        _ => no_such_api(&method, &path),
    }
}

/// What Databricks answers for a path or method it has no API for.
fn no_such_api(method: &Method, path: &str) -> Resp {
    error(404, "ENDPOINT_NOT_FOUND", format!("No API found for '{method} {path}'"))
}

fn not_found(name: &str) -> Resp {
    error(404, "NOT_FOUND", format!("Resource '{name}' does not exist."))
}

fn bad_param(message: impl Into<String>) -> Resp {
    error(400, "INVALID_PARAMETER_VALUE", message)
}

fn project_json(p: &str, proj: &state::Project) -> Value {
    json!({
        "name": format!("projects/{p}"),
        "uid": proj.uid,
        "status": {
            "default_branch": format!("projects/{p}/branches/{}", proj.default_branch),
            "display_name": p,
        },
    })
}

fn branch_json(p: &str, b: &str, br: &state::Branch, proj: &state::Project) -> Value {
    json!({
        "name": format!("projects/{p}/branches/{b}"),
        "uid": br.uid,
        "parent": format!("projects/{p}"),
        "status": {"default": proj.default_branch == b, "current_state": "READY"},
    })
}

fn endpoint_json(name: &str, ep: &state::Endpoint, suffix: &str) -> Value {
    let mut hosts = json!({"host": format!("{}.{suffix}", ep.uid)});
    if !ep.read_only {
        hosts["read_only_host"] = json!(format!("{}-ro.{suffix}", ep.uid));
    }
    let parent = name.rsplit_once("/endpoints/").map_or("", |(p, _)| p);
    json!({
        "name": name,
        "uid": ep.uid,
        "parent": parent,
        "status": {
            "endpoint_type": if ep.read_only { "ENDPOINT_TYPE_READ_ONLY" } else { "ENDPOINT_TYPE_READ_WRITE" },
            "current_state": ep.state,
            "hosts": hosts,
        },
    })
}

/// One page of `items` (sorted by key) per `page_size` / `page_token`; the
/// token is the last key served, so pages stay stable while items are added.
fn page(query: &str, field: &str, items: Vec<(String, Value)>) -> Resp {
    let mut size = DEFAULT_PAGE_SIZE;
    let mut after: Option<String> = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "page_size" => match v.parse::<usize>() {
                Ok(0) => size = DEFAULT_PAGE_SIZE,
                Ok(n) => size = n.min(MAX_PAGE_SIZE),
                Err(_) => return bad_param(format!("Invalid page_size: '{v}'")),
            },
            "page_token" if !v.is_empty() => {
                let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v.as_bytes())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                match decoded {
                    Some(key) => after = Some(key),
                    None => return bad_param("Invalid page_token"),
                }
            }
            _ => {}
        }
    }
    let rest: Vec<&(String, Value)> = items.iter().filter(|(k, _)| after.as_ref().is_none_or(|a| k > a)).collect();
    let this: Vec<Value> = rest.iter().take(size).map(|(_, v)| v.clone()).collect();
    let mut out = json!({ field: this });
    if rest.len() > size {
        let last = &rest[size - 1].0;
        out["next_page_token"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last));
    }
    json_resp(200, out)
}

fn parse_json_body(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

fn malformed() -> Resp {
    error(400, "MALFORMED_REQUEST", "Request body must be a JSON object")
}

/// A protobuf-JSON duration (`"3600s"`, `"300.5s"`) within the credential
/// API's 300 s - 3600 s. The range is checked on the float so that absurd
/// values (`"1e300s"`) are refused instead of overflowing `Duration`.
fn parse_ttl(s: &str) -> Option<Duration> {
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (300.0..=3600.0).contains(&secs).then(|| Duration::from_secs_f64(secs))
}

fn rfc3339(t: SystemTime) -> String {
    // Whole seconds, rounded down: a client trusting it never uses a token
    // past its real expiry.
    humantime::format_rfc3339_seconds(t).to_string()
}

fn postgres_credential(st: &mut State, role: &str, body: &[u8]) -> Resp {
    let Some(req) = parse_json_body(body) else {
        return malformed();
    };
    let Some(endpoint) = req.get("endpoint").and_then(Value::as_str) else {
        return bad_param("Missing required field: endpoint");
    };
    if state::split_endpoint_name(endpoint).is_none() {
        return bad_param(format!(
            "Invalid endpoint name '{endpoint}': expected projects/{{project}}/branches/{{branch}}/endpoints/{{endpoint}}"
        ));
    }
    let ttl = match req.get("ttl") {
        None | Some(Value::Null) => DEFAULT_DB_TOKEN_TTL,
        Some(Value::String(s)) => match parse_ttl(s) {
            Some(d) => d,
            None => return bad_param(format!("ttl must be between 300s and 3600s, got '{s}'")),
        },
        Some(other) => {
            return bad_param(format!("ttl must be a duration string like \"3600s\", got {other}"));
        }
    };
    if st.endpoint(endpoint).is_none() {
        return not_found(endpoint);
    }
    let (token, expires) = st.mint_db_token(role, vec![Target::Endpoint(endpoint.to_string())], ttl);
    json_resp(200, json!({"token": token, "expire_time": rfc3339(expires)}))
}

fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn database_credential(st: &mut State, role: &str, body: &[u8]) -> Resp {
    let Some(req) = parse_json_body(body) else {
        return malformed();
    };
    let names: Vec<&str> = match req.get("instance_names").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => match a.iter().map(Value::as_str).collect::<Option<_>>() {
            Some(v) => v,
            None => return bad_param("instance_names must be a list of strings"),
        },
        _ => return bad_param("instance_names must name at least one instance"),
    };
    match req.get("request_id").and_then(Value::as_str) {
        Some(id) if looks_like_uuid(id) => {}
        Some(id) => return bad_param(format!("request_id '{id}' is not a valid UUID")),
        None => return bad_param("Missing required field: request_id"),
    }
    if let Some(missing) = names.iter().find(|n| !st.instances.contains_key(**n)) {
        return error(404, "NOT_FOUND", format!("Database instance '{missing}' does not exist."));
    }
    let targets = names.iter().map(|n| Target::Instance(n.to_string())).collect();
    let (token, expires) = st.mint_db_token(role, targets, DEFAULT_DB_TOKEN_TTL);
    json_resp(200, json!({"token": token, "expiration_time": rfc3339(expires)}))
}

/// OAuth error shape (RFC 6749), used by the token endpoint instead of Databricks'.
fn oauth_error(status: u16, error: &str, description: &str) -> Resp {
    json_resp(status, json!({"error": error, "error_description": description}))
}

fn oidc(api: &Api, method: &Method, path: &str, auth: Option<&str>, body: &[u8]) -> Resp {
    let mut st = api.state.lock().unwrap();
    match (method, path) {
        (&Method::GET, "/oidc/.well-known/oauth-authorization-server") => {
            if let Some((status, retry_after)) = st.take_failure() {
                return injected(status, retry_after);
            }
            let h = &api.url;
            json_resp(
                200,
                json!({
                    "issuer": format!("{h}/oidc"),
                    "authorization_endpoint": format!("{h}/oidc/v1/authorize"),
                    "token_endpoint": format!("{h}/oidc/v1/token"),
                    "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
                    "scopes_supported": ["all-apis", "offline_access"],
                }),
            )
        }
        (&Method::POST, "/oidc/v1/token") => {
            let form: Vec<(String, String)> =
                url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            // HTTP Basic (what the SDKs send), else client_secret_post.
            let basic = auth.and_then(|a| {
                let (scheme, b64) = a.split_once(' ')?;
                if !scheme.eq_ignore_ascii_case("basic") {
                    return None;
                }
                let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
                let raw = String::from_utf8(raw).ok()?;
                let (id, secret) = raw.split_once(':')?;
                Some((id.to_string(), secret.to_string()))
            });
            let creds = basic.or_else(|| Some((get("client_id")?.to_string(), get("client_secret")?.to_string())));
            let client_id = match creds {
                Some((id, secret)) if st.sp_secrets.get(&id) == Some(&secret) => id,
                _ => return oauth_error(401, "invalid_client", "Client authentication failed"),
            };
            if let Some((status, retry_after)) = st.take_failure() {
                return injected(status, retry_after);
            }
            if get("grant_type") != Some("client_credentials") {
                return oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported here");
            }
            let scope = get("scope").unwrap_or("");
            if !scope.split(' ').any(|s| s == "all-apis") {
                return oauth_error(400, "invalid_scope", "The requested scope is invalid, unknown, or malformed.");
            }
            let token = state::random_token(48);
            st.oauth_tokens.insert(token.clone(), (client_id, SystemTime::now() + OAUTH_TOKEN_TTL));
            st.counters.oidc_tokens_issued += 1;
            json_resp(
                200,
                json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": OAUTH_TOKEN_TTL.as_secs(),
                    "scope": scope,
                }),
            )
        }
        _ => no_such_api(method, path),
    }
}
