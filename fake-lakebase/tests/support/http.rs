//! An HTTPS client for the fake's workspace API (reqwest over rustls with
//! aws-lc-rs, trusting only the fake's CA).
#![allow(dead_code)]

use std::path::Path;

use fake_lakebase::FakeLakebase;
use reqwest::{Client, StatusCode};
use rustls::ClientConfig;
use serde_json::{Value, json};

/// A client trusting only the fake's CA.
pub fn client(fake: &FakeLakebase) -> Client {
    client_with_ca(fake.ca_pem_path())
}

/// A client trusting only the CA in the PEM file `ca`.
pub fn client_with_ca(ca: &Path) -> Client {
    Client::builder()
        .tls_backend_preconfigured(ClientConfig::clone(&test_support::tls::client_config(ca, &[])))
        // Only 127.0.0.1: never through a proxy from the environment.
        .no_proxy()
        .build()
        .unwrap()
}

/// GET `path` with an optional bearer token: (status, JSON body or Null).
pub async fn get(c: &Client, fake: &FakeLakebase, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = c.get(format!("{}{path}", fake.api_url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("send");
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

/// POST a JSON body with a bearer token: (status, JSON body or Null).
pub async fn post(c: &Client, fake: &FakeLakebase, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let resp = c.post(format!("{}{path}", fake.api_url())).bearer_auth(token).json(&body).send().await.expect("send");
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

/// Mints an Autoscaling DB token for `endpoint` as the owner of `pat`.
pub async fn mint(fake: &FakeLakebase, pat: &str, endpoint: &str) -> String {
    let c = client(fake);
    let (status, body) = post(&c, fake, "/api/2.0/postgres/credentials", pat, json!({"endpoint": endpoint})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// Mints a Provisioned DB token for `instance` as the owner of `pat`.
pub async fn mint_instance(fake: &FakeLakebase, pat: &str, instance: &str) -> String {
    let c = client(fake);
    let body = json!({"instance_names": [instance], "request_id": "0f8fad5b-d9cb-469f-a165-70867728950e"});
    let (status, body) = post(&c, fake, "/api/2.0/database/credentials", pat, body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().unwrap().to_string()
}
