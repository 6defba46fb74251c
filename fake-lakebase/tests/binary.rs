//! The `fake-lakebase` binary (for the demo) and the fake `databricks` CLI script.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::ALICE;
use support::http::client_with_ca;
use test_support::postgres::pg_bin;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_its_coordinates_and_serves_until_sigterm() {
    let pg = support::postgres();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-lakebase"))
        .arg("--postgres-socket-dir")
        .arg(pg.socket_dir())
        .args(["--postgres-port", &pg.port().to_string()])
        .args(["--user", ALICE, "--pat", "dapi-bin"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fake-lakebase");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut vars = HashMap::new();
    while vars.len() < 5 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("output in time")
            .unwrap()
            .expect("five KEY=value lines");
        let (k, v) = line.split_once('=').expect("KEY=value");
        vars.insert(k.to_string(), v.to_string());
    }
    let endpoint = &vars["ENDPOINT"];
    assert_eq!(endpoint, "projects/demo/branches/production/endpoints/primary");
    assert!(vars["API_URL"].starts_with("https://127.0.0.1:"));
    assert!(vars["HOST"].ends_with(".lakebase.test"));
    let gateway: std::net::SocketAddr = vars["GATEWAY"].parse().unwrap();
    let ca = PathBuf::from(&vars["CA_FILE"]);

    let http = client_with_ca(&ca);
    let resp = http
        .post(format!("{}/api/2.0/postgres/credentials", vars["API_URL"]))
        .bearer_auth("dapi-bin")
        .json(&json!({"endpoint": endpoint}))
        .send()
        .await
        .unwrap();
    let token = resp.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let conninfo = format!(
        "host={} hostaddr=127.0.0.1 port={} sslmode=verify-full sslrootcert={} user={ALICE} dbname=databricks_postgres",
        vars["HOST"],
        gateway.port(),
        ca.display()
    );
    let out = tokio::process::Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-t", "-w", "-d", &conninfo, "-c", "SELECT current_user"])
        .env("PGPASSWORD", &token)
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ALICE, "{}", String::from_utf8_lossy(&out.stderr));

    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits on SIGTERM").unwrap();
    assert!(status.success(), "{status}");
    assert!(!ca.exists(), "the CA's temp dir is removed on exit");
}

fn cli(args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/databricks"));
    cmd.args(args)
        .env_remove("FAKE_DATABRICKS_TOKEN_FILE")
        .env_remove("FAKE_DATABRICKS_CALL_LOG")
        .env_remove("FAKE_DATABRICKS_TOKEN_TTL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run scripts/databricks")
}

#[test]
fn fake_databricks_cli_prints_tokens_and_logs_calls() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let log = dir.path().join("calls.log");
    std::fs::write(&token_file, "eyJ-workspace-token\n").unwrap();
    let env = [("FAKE_DATABRICKS_TOKEN_FILE", token_file.as_path()), ("FAKE_DATABRICKS_CALL_LOG", log.as_path())];

    for args in [&["auth", "token", "--host", "https://127.0.0.1:1"][..], &["auth", "token", "--profile", "dev"]] {
        let out = cli(args, &env);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(v["access_token"], "eyJ-workspace-token");
        assert_eq!(v["token_type"], "Bearer");
        let expiry = v["expiry"].as_str().unwrap();
        assert!(expiry.ends_with("+00:00"), "{expiry}");
        // An hour ahead (humantime wants the Z form).
        let t = humantime::parse_rfc3339(&expiry.replace("+00:00", "Z")).unwrap();
        let left = t.duration_since(std::time::SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600), "{left:?}");
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);

    std::fs::remove_file(&token_file).unwrap();
    let out = cli(&["auth", "token", "--profile", "dev"], &env);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot load Databricks config file") && err.contains("databricks auth login"), "{err}");

    let out = cli(&["clusters", "list"], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 4);
}
