//! The workspace HTTP API, driven over real HTTPS (reqwest + rustls trusting
//! only the fake's CA).

mod support;

use std::time::{Duration, Instant, SystemTime};

use fake_lakebase::{FakeLakebase, FakeLakebaseConfig};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use support::http::{client, get, post};

const PAT: &str = "dapi-alice-0123456789";
const ALICE: &str = "alice@example.com";
const SP_ID: &str = "6f1c3a2e-0000-4000-8000-00000000cafe";
const SP_SECRET: &str = "dose-sp-secret";

async fn fake() -> FakeLakebase {
    // The API never touches PostgreSQL.
    let cfg = FakeLakebaseConfig::new("/nonexistent".into(), 5432);
    let fake = FakeLakebase::start(cfg).await.expect("start fake");
    fake.add_user(ALICE, PAT);
    fake.add_service_principal(SP_ID, SP_SECRET);
    fake
}

async fn m2m_token(c: &Client, fake: &FakeLakebase, secret: &str) -> reqwest::Response {
    c.post(format!("{}/oidc/v1/token", fake.api_url()))
        .basic_auth(SP_ID, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=all-apis")
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn calls_without_a_valid_token_get_401() {
    let fake = fake().await;
    let c = client(&fake);
    for token in [None, Some("dapi-wrong"), Some("")] {
        let (status, body) = get(&c, &fake, "/api/2.0/preview/scim/v2/Me", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["error_code"], "UNAUTHENTICATED");
        assert!(body["message"].as_str().is_some());
    }
    // Basic auth is not a workspace token.
    let resp = c
        .get(format!("{}/api/2.0/preview/scim/v2/Me", fake.api_url()))
        .basic_auth(SP_ID, Some(SP_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Unknown APIs answer like Databricks does.
    let (status, body) = get(&c, &fake, "/api/2.0/nope", Some(PAT)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error_code"], "ENDPOINT_NOT_FOUND");
}

#[tokio::test]
async fn pat_authenticates_as_the_user_and_headers_are_recorded() {
    let fake = fake().await;
    let c = client(&fake);
    let resp = c
        .get(format!("{}/api/2.0/preview/scim/v2/Me", fake.api_url()))
        .bearer_auth(PAT)
        .header("user-agent", "lakebase-proxy/0.1 test")
        .header("x-databricks-workspace-id", "1234567890")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let me: Value = resp.json().await.unwrap();
    assert_eq!(me["userName"], ALICE);
    assert_eq!(me["active"], true);
    assert!(me["id"].as_str().unwrap().chars().all(|c| c.is_ascii_digit()));
    assert!(me.get("applicationId").is_none());
    assert_eq!(fake.last_user_agent().as_deref(), Some("lakebase-proxy/0.1 test"));
    assert_eq!(fake.last_workspace_id().as_deref(), Some("1234567890"));
    let n = fake.counters();
    assert_eq!(n.api_calls, 1);
    assert_eq!(n.calls_by_path["GET /api/2.0/preview/scim/v2/Me"], 1);
}

#[tokio::test]
async fn m2m_client_credentials_with_basic_auth() {
    let fake = fake().await;
    let c = client(&fake);
    let (status, doc) = get(&c, &fake, "/oidc/.well-known/oauth-authorization-server", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["token_endpoint"], format!("{}/oidc/v1/token", fake.api_url()));
    assert_eq!(doc["issuer"], format!("{}/oidc", fake.api_url()));
    assert_eq!(doc["authorization_endpoint"], format!("{}/oidc/v1/authorize", fake.api_url()));

    let bad = m2m_token(&c, &fake, "wrong").await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["error"], "invalid_client");
    assert_eq!(bad["error_description"], "Client authentication failed");

    let ok = m2m_token(&c, &fake, SP_SECRET).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let tok: Value = ok.json().await.unwrap();
    assert_eq!(tok["token_type"], "Bearer");
    assert_eq!(tok["expires_in"], 3600);
    assert_eq!(tok["scope"], "all-apis");
    let access = tok["access_token"].as_str().unwrap();
    assert_eq!(fake.counters().oidc_tokens_issued, 1);

    let (status, me) = get(&c, &fake, "/api/2.0/preview/scim/v2/Me", Some(access)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["userName"], SP_ID);
    assert_eq!(me["applicationId"], SP_ID);
    assert!(me["displayName"].as_str().is_some());
}

/// Follows `next_page_token` until it is absent or empty; returns the names
/// and how many pages it took.
async fn list_all(c: &Client, fake: &FakeLakebase, path: &str, field: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut token = String::new();
    for pages in 1.. {
        let url = if token.is_empty() { path.to_string() } else { format!("{path}?page_token={token}") };
        let (status, body) = get(c, fake, &url, Some(PAT)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = body[field].as_array().unwrap();
        assert!(page.len() <= 2, "default page size is 2");
        items.extend(page.iter().cloned());
        token = body["next_page_token"].as_str().unwrap_or("").to_string();
        if token.is_empty() {
            return (items, pages);
        }
    }
    unreachable!()
}

#[tokio::test]
async fn projects_branches_and_endpoints_are_paged() {
    let fake = fake().await;
    let c = client(&fake);
    let host = fake.add_project("shop");
    for b in ["dev", "staging", "test"] {
        fake.add_branch("shop", b);
    }
    let ro_host = fake.add_endpoint("shop", "production", "reader", true);
    fake.add_endpoint("shop", "production", "spare", false);

    let (status, p) = get(&c, &fake, "/api/2.0/postgres/projects/shop", Some(PAT)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(p["name"], "projects/shop");
    assert_eq!(p["status"]["default_branch"], "projects/shop/branches/production");
    assert_eq!(p["status"]["display_name"], "shop");

    let (branches, pages) = list_all(&c, &fake, "/api/2.0/postgres/projects/shop/branches", "branches").await;
    assert_eq!(pages, 2);
    let names: Vec<&str> = branches.iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4);
    for b in ["dev", "production", "staging", "test"] {
        assert!(names.contains(&format!("projects/shop/branches/{b}").as_str()), "{names:?}");
    }
    for b in &branches {
        let default = b["name"] == "projects/shop/branches/production";
        assert_eq!(b["status"]["default"], default);
        assert_eq!(b["status"]["current_state"], "READY");
        assert!(b["uid"].as_str().unwrap().starts_with("br-"));
    }

    let path = "/api/2.0/postgres/projects/shop/branches/production/endpoints";
    let (endpoints, pages) = list_all(&c, &fake, path, "endpoints").await;
    assert_eq!((endpoints.len(), pages), (3, 2));
    let (_, one_page) = get(&c, &fake, &format!("{path}?page_size=10"), Some(PAT)).await;
    assert_eq!(one_page["endpoints"].as_array().unwrap().len(), 3);
    assert!(one_page["next_page_token"].as_str().unwrap_or("").is_empty());
    let (status, bad) = get(&c, &fake, &format!("{path}?page_token=%%%"), Some(PAT)).await;
    assert_eq!((status, bad["error_code"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_PARAMETER_VALUE")));

    let primary = "projects/shop/branches/production/endpoints/primary";
    let (status, ep) = get(&c, &fake, &format!("/api/2.0/postgres/{primary}"), Some(PAT)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ep["name"], primary);
    let uid = ep["uid"].as_str().unwrap();
    assert!(uid.starts_with("ep-"));
    assert_eq!(ep["status"]["endpoint_type"], "ENDPOINT_TYPE_READ_WRITE");
    assert_eq!(ep["status"]["current_state"], "ACTIVE");
    assert_eq!(ep["status"]["hosts"]["host"], host.as_str());
    assert_eq!(host, format!("{uid}.lakebase.test"));
    assert_eq!(fake.endpoint_host(primary), host);
    assert_eq!(ep["status"]["hosts"]["read_only_host"], format!("{uid}-ro.lakebase.test"));

    let reader = "projects/shop/branches/production/endpoints/reader";
    fake.set_endpoint_state(reader, "IDLE");
    let (_, ep) = get(&c, &fake, &format!("/api/2.0/postgres/{reader}"), Some(PAT)).await;
    assert_eq!(ep["status"]["endpoint_type"], "ENDPOINT_TYPE_READ_ONLY");
    assert_eq!(ep["status"]["current_state"], "IDLE");
    assert_eq!(ep["status"]["hosts"]["host"], ro_host.as_str());

    for missing in [
        "/api/2.0/postgres/projects/nope",
        "/api/2.0/postgres/projects/nope/branches",
        "/api/2.0/postgres/projects/shop/branches/nope/endpoints",
        "/api/2.0/postgres/projects/shop/branches/production/endpoints/nope",
    ] {
        let (status, body) = get(&c, &fake, missing, Some(PAT)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(body["error_code"], "NOT_FOUND");
    }
}

fn expiry(body: &Value, field: &str) -> SystemTime {
    humantime::parse_rfc3339(body[field].as_str().expect(field)).expect("RFC 3339")
}

#[tokio::test]
async fn postgres_credentials_validate_ttl_and_endpoint() {
    let fake = fake().await;
    let c = client(&fake);
    fake.add_project("shop");
    let ep = "projects/shop/branches/production/endpoints/primary";
    let mint = "/api/2.0/postgres/credentials";

    let (status, cred) = post(&c, &fake, mint, PAT, json!({"endpoint": ep})).await;
    assert_eq!(status, StatusCode::OK, "{cred}");
    assert!(cred["token"].as_str().unwrap().len() >= 80);
    assert!(cred.get("expiration_time").is_none());
    let left = expiry(&cred, "expire_time").duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600), "{left:?}");

    let (status, cred) = post(&c, &fake, mint, PAT, json!({"endpoint": ep, "ttl": "600s"})).await;
    assert_eq!(status, StatusCode::OK);
    let left = expiry(&cred, "expire_time").duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(590) && left <= Duration::from_secs(600), "{left:?}");

    for ttl in ["299s", "3601s", "1h", "abc", "1e300s", "-400s", "NaNs"] {
        let (status, body) = post(&c, &fake, mint, PAT, json!({"endpoint": ep, "ttl": ttl})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ttl}");
        assert_eq!(body["error_code"], "INVALID_PARAMETER_VALUE");
    }
    let (status, body) =
        post(&c, &fake, mint, PAT, json!({"endpoint": "projects/shop/branches/production/endpoints/nope"})).await;
    assert_eq!((status, body["error_code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
    let (status, _) = post(&c, &fake, mint, PAT, json!({"endpoint": "shop/primary"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(&c, &fake, mint, PAT, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    fake.set_credential_ttl_cap(Duration::from_secs(30));
    let (_, cred) = post(&c, &fake, mint, PAT, json!({"endpoint": ep})).await;
    let left = expiry(&cred, "expire_time").duration_since(SystemTime::now()).unwrap_or_default();
    assert!(left <= Duration::from_secs(30), "{left:?}");
    assert_eq!(fake.counters().credential_mints, 3);
}

#[tokio::test]
async fn provisioned_instances_and_their_credentials() {
    let fake = fake().await;
    let c = client(&fake);
    let rw = fake.add_instance("legacy");
    let (status, inst) = get(&c, &fake, "/api/2.0/database/instances/legacy", Some(PAT)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(inst["name"], "legacy");
    assert_eq!(inst["state"], "AVAILABLE");
    assert_eq!(inst["read_write_dns"], rw.as_str());
    let uid = inst["uid"].as_str().unwrap();
    assert_eq!(inst["read_only_dns"], format!("instance-ro-{uid}.lakebase.test"));
    let (status, _) = get(&c, &fake, "/api/2.0/database/instances/nope", Some(PAT)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let mint = "/api/2.0/database/credentials";
    let rid = "9b2c1d7e-3f4a-4b5c-8d6e-7f8091a2b3c4";
    let (status, cred) = post(&c, &fake, mint, PAT, json!({"instance_names": ["legacy"], "request_id": rid})).await;
    assert_eq!(status, StatusCode::OK, "{cred}");
    assert!(cred["token"].as_str().unwrap().len() >= 80);
    assert!(cred.get("expire_time").is_none(), "Provisioned uses expiration_time");
    assert!(expiry(&cred, "expiration_time") > SystemTime::now() + Duration::from_secs(3500));

    for body in [
        json!({"instance_names": ["legacy"]}),
        json!({"instance_names": ["legacy"], "request_id": "not-a-uuid"}),
        json!({"instance_names": [], "request_id": rid}),
    ] {
        let (status, err) = post(&c, &fake, mint, PAT, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(err["error_code"], "INVALID_PARAMETER_VALUE");
    }
    let (status, _) = post(&c, &fake, mint, PAT, json!({"instance_names": ["nope"], "request_id": rid})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn injected_failures_latency_and_retry_after() {
    let fake = fake().await;
    let c = client(&fake);
    let me = "/api/2.0/preview/scim/v2/Me";
    fake.fail_next_api_calls(2, 429, Some(7));
    // An unauthenticated call is refused before the injected failures.
    assert_eq!(get(&c, &fake, me, None).await.0, StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        let resp = c.get(format!("{}{me}", fake.api_url())).bearer_auth(PAT).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "7");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error_code"], "RESOURCE_EXHAUSTED");
    }
    assert_eq!(get(&c, &fake, me, Some(PAT)).await.0, StatusCode::OK);

    fake.fail_next_api_calls(1, 503, None);
    let (status, body) = get(&c, &fake, me, Some(PAT)).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("TEMPORARILY_UNAVAILABLE"))
    );
    fake.fail_next_api_calls(1, 500, None);
    // OIDC calls fail too.
    let resp = m2m_token(&c, &fake, SP_SECRET).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.json::<Value>().await.unwrap()["error_code"], "INTERNAL_ERROR");

    fake.set_api_latency(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(get(&c, &fake, me, Some(PAT)).await.0, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn revoked_workspace_tokens_get_401() {
    let fake = fake().await;
    let c = client(&fake);
    let me = "/api/2.0/preview/scim/v2/Me";
    let tok: Value = m2m_token(&c, &fake, SP_SECRET).await.json().await.unwrap();
    let access = tok["access_token"].as_str().unwrap().to_string();
    assert_eq!(get(&c, &fake, me, Some(PAT)).await.0, StatusCode::OK);
    assert_eq!(get(&c, &fake, me, Some(&access)).await.0, StatusCode::OK);

    fake.revoke_workspace_tokens();
    for t in [PAT, access.as_str()] {
        let (status, body) = get(&c, &fake, me, Some(t)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error_code"], "UNAUTHENTICATED");
    }
    // The service principal's secret still works: a new token is fine.
    let tok: Value = m2m_token(&c, &fake, SP_SECRET).await.json().await.unwrap();
    let (status, _) = get(&c, &fake, me, tok["access_token"].as_str()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.counters().calls_by_path["GET /api/2.0/preview/scim/v2/Me"], 5);
}
