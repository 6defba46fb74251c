//! Lakebase end to end: the real binary logs into a fake Databricks workspace (each auth
//! method), resolves Lakebase names, mints credentials, and serves psql and tokio-postgres
//! through the fake Lakebase gateway to a real PostgreSQL.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::lakebase::{ENDPOINT, PAT, SP_ID, SP_SECRET, USER, World};

fn psql(port: u16, sql: &str) -> String {
    let output = Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port.to_string(), "-c", sql])
        .env_remove("PGPASSWORD")
        .env_remove("PGDATABASE")
        .output()
        .unwrap();
    assert!(output.status.success(), "psql: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn a_pat_login_serves_psql_in_databricks_postgres() {
    let world = World::new();
    let proxy = world.proxy(&world.via_gateway(ENDPOINT), &[], &world.pat_env());
    // No user, no database, no password: the identity's role in databricks_postgres.
    assert_eq!(
        psql(proxy.port, "SELECT current_user || ' ' || current_database()"),
        format!("{USER} databricks_postgres")
    );
    assert!(world.fake.last_user_agent().unwrap().starts_with("lakebase-proxy/"));
    assert_eq!(world.fake.counters().credential_mints, 1);
    let (_, log) = proxy.terminate();
    assert!(!log.contains(PAT), "the workspace token leaked into the log");
}

#[test]
fn a_service_principal_logs_in_as_its_client_id_via_the_default_branch() {
    let world = World::new();
    let mut env = world.env(&[("DATABRICKS_CLIENT_ID", SP_ID), ("DATABRICKS_CLIENT_SECRET", SP_SECRET)]);
    env.push(("DATABRICKS_HOST", world.fake.api_url()));
    let proxy = world.proxy(&world.via_gateway("projects/app"), &["--log-level=trace"], &env);
    assert_eq!(psql(proxy.port, "SELECT current_user"), SP_ID);
    let counters = world.fake.counters();
    assert!(counters.oidc_tokens_issued >= 1);
    assert!(
        counters.calls_by_path.keys().any(|k| k.contains("oauth-authorization-server")),
        "discovery was used: {counters:?}"
    );
    let (_, log) = proxy.terminate();
    assert!(!log.contains(SP_SECRET), "the client secret leaked into the log");
}

#[test]
fn the_databricks_cli_login_is_used_when_nothing_else_is_configured() {
    let world = World::new();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, PAT).unwrap();
    let call_log = dir.path().join("calls");
    let cli = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fake-lakebase/scripts/databricks");
    let mut env = world.env(&[]);
    env.extend([
        ("DATABRICKS_HOST", world.fake.api_url()),
        ("DATABRICKS_CLI_PATH", cli.display().to_string()),
        ("FAKE_DATABRICKS_TOKEN_FILE", token_file.display().to_string()),
        ("FAKE_DATABRICKS_CALL_LOG", call_log.display().to_string()),
    ]);
    let output = world.connection_test(&world.via_gateway("projects/app/branches/production"), &[], &env);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains(&format!("role      {USER}")), "{}", text(&output));
    let calls = std::fs::read_to_string(&call_log).unwrap();
    assert!(calls.contains("auth token") && calls.contains("--host"), "{calls}");

    // Without a login the message says what to do.
    std::fs::remove_file(&token_file).unwrap();
    let output = world.connection_test(&world.via_gateway(ENDPOINT), &[], &env);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("databricks auth login"), "{}", text(&output));
}

#[test]
fn a_config_file_profile_reaches_a_provisioned_instance() {
    let world = World::new();
    world.fake.add_instance("legacy");
    let config = world.home.path().join("custom.cfg");
    std::fs::write(
        &config,
        format!(
            "[DEFAULT]\nhost = https://wrong.invalid\ntoken = nope\n\n[dev]\nhost = {}\ntoken = {PAT}\n",
            world.fake.api_url()
        ),
    )
    .unwrap();
    let env = world.env(&[("DATABRICKS_CONFIG_FILE", config.to_str().unwrap())]);
    let output = world.connection_test(&world.via_gateway("instances/legacy"), &["--profile=dev"], &env);
    assert!(output.status.success(), "{}", text(&output));
    let report = text(&output);
    assert!(report.contains("Lakebase credentials for instance legacy") && report.contains("result    OK"), "{report}");
    assert!(world.fake.counters().calls_by_path.keys().any(|k| k.contains("/api/2.0/database/credentials")));
}

#[test]
fn unusable_names_and_logins_fail_at_start_with_one_readable_message() {
    let world = World::new();
    world.fake.add_branch("app", "multi");
    world.fake.add_endpoint("app", "multi", "one", false);
    world.fake.add_endpoint("app", "multi", "two", false);
    let output = world.connection_test(&world.via_gateway("projects/app/branches/multi"), &[], &world.pat_env());
    assert_eq!(output.status.code(), Some(1));
    let message = text(&output);
    assert!(
        message.contains("projects/app/branches/multi/endpoints/one")
            && message.contains("projects/app/branches/multi/endpoints/two"),
        "{message}"
    );

    let output = world.connection_test(
        &world.via_gateway("projects/app/branches/production/endpoints/nope"),
        &[],
        &world.pat_env(),
    );
    assert!(text(&output).contains("NOT_FOUND"), "{}", text(&output));

    let mut wrong = world.env(&[("DATABRICKS_TOKEN", "dapi-wrong")]);
    wrong.push(("DATABRICKS_HOST", world.fake.api_url()));
    let output = world.connection_test(&world.via_gateway(ENDPOINT), &[], &wrong);
    assert!(text(&output).contains("401") && text(&output).contains("databricks auth login"), "{}", text(&output));

    let output = world.connection_test(&world.via_gateway(ENDPOINT), &[], &world.env(&[]));
    assert!(text(&output).contains("no Databricks workspace host"), "{}", text(&output));

    let mut both = world.pat_env();
    both.extend([("DATABRICKS_CLIENT_ID", SP_ID.to_owned()), ("DATABRICKS_CLIENT_SECRET", SP_SECRET.to_owned())]);
    let output = world.connection_test(&world.via_gateway(ENDPOINT), &[], &both);
    assert!(text(&output).contains("several Databricks auth methods"), "{}", text(&output));
    assert!(!text(&output).contains(PAT) && !text(&output).contains(SP_SECRET), "no secret in the message");
}

#[test]
fn five_hundred_concurrent_clients_cause_one_mint() {
    let world = World::new();
    let proxy =
        world.proxy(&world.via_gateway(ENDPOINT), &["--max-pool-size=40", "--checkout-timeout=60s"], &world.pat_env());
    let port = proxy.port;
    let failures = world.runtime.block_on(async move {
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                tokio::spawn(async move {
                    let mut config = tokio_postgres::Config::new();
                    config.host("127.0.0.1").port(port).user("anyone");
                    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                    tokio::spawn(connection);
                    let row = client.query_one("SELECT $1::int4", &[&i]).await?;
                    assert_eq!(row.get::<_, i32>(0), i);
                    Ok::<_, tokio_postgres::Error>(())
                })
            })
            .collect();
        let mut failures = Vec::new();
        for task in tasks {
            if let Err(error) = task.await.unwrap() {
                failures.push(error.to_string());
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{} failed, e.g. {:?}", failures.len(), failures.first());
    assert_eq!(world.fake.counters().credential_mints, 1, "one mint for everyone");
}

#[test]
fn transient_api_failures_at_start_are_retried() {
    let world = World::new();
    world.fake.fail_next_api_calls(2, 503, None);
    let output = world.connection_test(&world.via_gateway(ENDPOINT), &[], &world.pat_env());
    assert!(output.status.success(), "{}", text(&output));
    world.fake.fail_next_api_calls(1, 429, Some(1));
    let started = Instant::now();
    let output = world.connection_test(&world.via_gateway(ENDPOINT), &[], &world.pat_env());
    assert!(output.status.success(), "{}", text(&output));
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
}

#[test]
fn credentials_are_refreshed_ahead_of_expiry_without_disturbing_sessions() {
    let world = World::new();
    // 40 s tokens: unusable 30 s before expiry, so refreshed after roughly 8 s.
    world.fake.set_credential_ttl_cap(Duration::from_secs(40));
    let proxy = world.proxy(&world.via_gateway(ENDPOINT), &[], &world.pat_env());
    let port = proxy.port;
    world.runtime.block_on(async move {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port).user("anyone");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let deadline = Instant::now() + Duration::from_secs(25);
        while world.fake.counters().credential_mints < 2 {
            assert!(Instant::now() < deadline, "no refresh ahead of expiry");
            client.query_one("SELECT 1", &[]).await.expect("the session is undisturbed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A new login uses the new credential.
        let (fresh, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        fresh.query_one("SELECT 1", &[]).await.unwrap();
        client.query_one("SELECT 1", &[]).await.unwrap();
    });
}

#[test]
fn a_trace_level_log_of_whole_sessions_holds_no_secret() {
    let world = World::new();
    let mut env = world.env(&[("DATABRICKS_CLIENT_ID", SP_ID), ("DATABRICKS_CLIENT_SECRET", SP_SECRET)]);
    env.push(("DATABRICKS_HOST", world.fake.api_url()));
    let proxy = world.proxy(&world.via_gateway(ENDPOINT), &["--log-level=trace", "--log-format=json"], &env);
    assert_eq!(psql(proxy.port, "SELECT current_user"), SP_ID);
    assert_eq!(psql(proxy.port, "SELECT 1"), "1");
    let (_, log) = proxy.terminate();
    let secrets = world.fake.issued_secrets();
    assert!(secrets.len() >= 2, "a database token and an OAuth token were issued");
    assert!(log.lines().count() > 50, "trace logging was on");
    for secret in secrets.iter().map(String::as_str).chain([SP_SECRET]) {
        assert!(!log.contains(secret), "a secret leaked into the trace log");
    }
}
