//! Operations: the HTTP admin listener's metrics and probes, and shutdown over HTTP.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::binary::ProxyProcess;
use support::lakebase::{ENDPOINT, World};
use support::{APP_DB, PgServer, SCRAM_USER};
use test_support::net::free_port;
use test_support::wait;

/// A plain HTTP/1.1 request; returns (status, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Parses Prometheus text exposition into `name{labels}` -> value, checking every line's shape.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let kind = comment.split_whitespace().next().unwrap();
            assert!(kind == "TYPE" || kind == "HELP", "bad comment line {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad metric name in {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels in {line:?}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

fn sum(samples: &HashMap<String, f64>, name: &str, label: &str) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name) && series.contains(label))
        .map(|(_, v)| v)
        .sum()
}

fn psql(port: u16, sql: &str) -> String {
    psql_at(port, "", sql)
}

/// `psql -c sql` against `database` (the target's own when empty) through the proxy's port.
fn psql_at(port: u16, database: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string(), "-c", sql])
        .args((!database.is_empty()).then(|| format!("--dbname={database}")))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn proxy_with_http(extra: &[&str]) -> (ProxyProcess, u16) {
    let pg = PgServer::shared();
    let http_port = free_port();
    let mut args = vec![
        format!("postgresql://{SCRAM_USER}@localhost:{}/{APP_DB}?sslrootcert={}", pg.port(), pg.ca_path().display()),
        format!("--password-file={}", pg.password_file().display()),
        format!("--http-port={http_port}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    (ProxyProcess::spawn(&args, &[]), http_port)
}

#[test]
fn metrics_are_valid_prometheus_text_and_count_real_traffic() {
    let (proxy, http_port) = proxy_with_http(&[]);
    for _ in 0..3 {
        assert_eq!(psql(proxy.port, "SELECT 1; SELECT repeat('x', 10000)").lines().next(), Some("1"));
    }
    // The last session's connection is reset and pooled in the background: wait for that.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (body, samples) = loop {
        let (status, body) = http(http_port, "GET", "/metrics");
        assert_eq!(status, 200);
        let samples = parse_prometheus(&body);
        let settled = sum(&samples, "lakebase_proxy_upstream_connections", "state=\"idle\"") == 1.0
            && sum(&samples, "lakebase_proxy_clients_active", "") == 0.0;
        if settled || Instant::now() > deadline {
            break (body, samples);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(sum(&samples, "lakebase_proxy_client_connections_total", "") >= 3.0, "{body}");
    assert_eq!(
        sum(&samples, "lakebase_proxy_upstream_logins_total", "result=\"ok\""),
        1.0,
        "one login served all: {body}"
    );
    assert!(sum(&samples, "lakebase_proxy_bytes_total", "direction=\"to_client\"") > 30_000.0, "{body}");
    assert!(sum(&samples, "lakebase_proxy_query_round_trips_total", "") >= 3.0, "{body}");
    assert_eq!(sum(&samples, "lakebase_proxy_upstream_connections", "state=\"idle\""), 1.0, "{body}");
    assert_eq!(sum(&samples, "lakebase_proxy_clients_active", ""), 0.0, "{body}");
    assert!(sum(&samples, "lakebase_proxy_checkout_wait_seconds_count", "") >= 3.0, "{body}");
    assert!(sum(&samples, "lakebase_proxy_credential_refreshes_total", "result=\"ok\"") >= 1.0, "{body}");
    assert!(samples.keys().any(|k| k.starts_with("lakebase_proxy_credential_age_seconds")), "{body}");
    assert!(!body.contains(support::PASSWORD));
}

#[test]
fn token_expiry_is_exported_for_lakebase_targets() {
    let world = World::new();
    let http_port = free_port();
    let proxy = world.proxy(&world.via_gateway(ENDPOINT), &[&format!("--http-port={http_port}")], &world.pat_env());
    psql(proxy.port, "SELECT 1");
    let samples = parse_prometheus(&http(http_port, "GET", "/metrics").1);
    let expiry = sum(&samples, "lakebase_proxy_credential_expiry_seconds", "Lakebase credentials");
    assert!((3000.0..=3600.0).contains(&expiry), "seconds to expiry of a one-hour token: {expiry}");
}

#[test]
fn probes_follow_the_lifecycle_and_quitquitquit_stops_gracefully() {
    let (mut proxy, http_port) = proxy_with_http(&["--min-sigterm-delay=2s", "--max-sigterm-delay=5s"]);
    assert_eq!(http(http_port, "GET", "/startup").0, 200);
    assert_eq!(http(http_port, "GET", "/readiness"), (200, "ok\n".into()));
    assert_eq!(http(http_port, "GET", "/liveness").0, 200);
    assert_eq!(http(http_port, "GET", "/nope").0, 404);
    assert_eq!(http(http_port, "GET", "/quitquitquit").0, 405);
    let (status, _) = http(http_port, "POST", "/quitquitquit");
    assert_eq!(status, 200);
    // During --min-sigterm-delay: not ready, still alive, still accepting clients.
    let deadline = Instant::now() + Duration::from_secs(2);
    while http(http_port, "GET", "/readiness").0 != 503 {
        assert!(Instant::now() < deadline, "readiness did not drop");
    }
    assert_eq!(http(http_port, "GET", "/readiness").1, "shutting down\n");
    assert_eq!(http(http_port, "GET", "/liveness").0, 200);
    assert_eq!(psql(proxy.port, "SELECT 'still here'"), "still here");
    // Then it drains and exits 0.
    wait::until(Duration::from_secs(15), || !proxy.is_running(), || "did not exit after POST /quitquitquit".into());
    let (status, _) = proxy.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn startup_waits_for_the_targets_to_resolve() {
    let world = World::new();
    world.fake.set_api_latency(Duration::from_millis(1500));
    let http_port = free_port();
    let args = vec![
        world.via_gateway(ENDPOINT),
        format!("--ca-file={}", world.fake.ca_pem_path().display()),
        format!("--http-port={http_port}"),
    ];
    let env: Vec<(&str, String)> = world.pat_env();
    let mut command = Command::new(env!("CARGO_BIN_EXE_lakebase-proxy"));
    command.args(&args).arg(format!("--port={}", free_port())).envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut child = command.stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_starting = false;
    loop {
        assert!(Instant::now() < deadline, "never started");
        match TcpStream::connect(("127.0.0.1", http_port)) {
            Ok(_) => match http(http_port, "GET", "/startup") {
                (503, body) => {
                    assert_eq!(body, "starting\n");
                    assert_eq!(http(http_port, "GET", "/readiness").0, 503);
                    saw_starting = true;
                }
                (200, _) => break,
                other => panic!("{other:?}"),
            },
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(saw_starting, "the probe answered before the targets were resolved");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_admin_console_answers_every_show_through_psql() {
    let (proxy, _) = proxy_with_http(&["--min-idle=1"]);
    let _ = psql(proxy.port, "SELECT 1");
    let console = |sql: &str, aligned: bool| {
        let mut args = vec!["-X", "-h", "127.0.0.1", "-d", "lakebase_proxy", "-v", "ON_ERROR_STOP=1", "-c", sql];
        if !aligned {
            args.push("-At");
        }
        let port = proxy.port.to_string();
        let output = Command::new("psql").args(&args).args(["-p", &port]).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    for command in ["POOLS", "CLIENTS", "SERVERS", "TARGETS", "CREDENTIALS", "STATS", "CONFIG", "VERSION", "HELP"] {
        let (ok, out, err) = console(&format!("SHOW {command}"), true);
        assert!(ok, "SHOW {command}: {err}");
        // psql's aligned output: a header, a rule, rows, and the row count.
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() >= 3 && lines[1].starts_with('-'), "SHOW {command}:\n{out}");
        assert!(lines.iter().any(|l| l.starts_with('(') && l.contains("row")), "SHOW {command}:\n{out}");
    }
    let (_, pools, _) = console("show pools;", false);
    assert!(pools.contains(SCRAM_USER) && pools.contains(APP_DB), "{pools}");
    let (_, clients, _) = console("SHOW CLIENTS", false);
    assert!(clients.lines().any(|l| l.contains("|console|")), "the console sees itself: {clients}");
    let (_, servers, _) = console("SHOW SERVERS", false);
    assert!(servers.lines().any(|l| l.contains("|idle|")), "{servers}");
    let (_, credentials, _) = console("SHOW CREDENTIALS", false);
    assert!(credentials.contains("password file") && !credentials.contains(support::PASSWORD), "{credentials}");
    let (_, config, _) = console("SHOW CONFIG", false);
    assert!(config.contains("max_pool_size|20"), "{config}");
    let (ok, _, err) = console("DROP TABLE x", false);
    assert!(!ok && err.contains("unknown admin command") && err.contains("SHOW HELP"), "{err}");
    // Two statements in one query string, and the session goes on after an error.
    let (ok, out, _) = console("SHOW VERSION; SHOW VERSION", false);
    assert!(ok && out.matches("lakebase-proxy").count() == 2, "{out}");
}

#[test]
fn sighup_adds_and_removes_targets_under_load_without_failures() {
    let pg = PgServer::shared();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    let url = |user: &str| {
        format!("postgresql://{user}@localhost:{}/{APP_DB}?sslrootcert={}", pg.port(), pg.ca_path().display())
    };
    let first = format!("[[target]]\nname = \"{}\"\n", url(SCRAM_USER));
    std::fs::write(&file, format!("max_pool_size = 6\n{first}")).unwrap();
    let proxy = ProxyProcess::spawn(
        &[format!("--config={}", file.display()), format!("--password-file={}", pg.password_file().display())],
        &[],
    );
    let first_port = proxy.port;
    let hangup = || {
        Command::new("kill").args(["-HUP", &proxy.pid().to_string()]).status().unwrap();
    };
    let bench_target = format!("host=127.0.0.1 port={first_port} dbname={APP_DB}");
    let init = Command::new("pgbench").args(["-i", "-s", "1", "-q", &bench_target]).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let load = std::thread::spawn(move || {
        Command::new("pgbench").args(["-c", "4", "-j", "2", "-T", "8", "-n", &bench_target]).output().unwrap()
    });
    // All four pgbench clients must be in before their target goes away below (on a loaded
    // machine their logins can take a while): count them in the admin console.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let clients = psql_at(first_port, "lakebase_proxy", "SHOW CLIENTS");
        if clients.lines().filter(|row| row.split('|').nth(5) == Some("active")).count() >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "pgbench's clients never all attached: {clients}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Add a second target.
    let second_port = free_port();
    std::fs::write(
        &file,
        format!(
            "max_pool_size = 6\n{first}\n[[target]]\nname = \"{}\"\nport = {second_port}\n",
            url(support::MD5_USER)
        ),
    )
    .unwrap();
    hangup();
    let listens = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
    let log = || proxy.log_text();
    let why = |what| move || format!("{what}: {}", log());
    wait::until(Duration::from_secs(10), || listens(second_port), why("the added target never listened"));
    assert_eq!(psql(second_port, "SELECT current_user"), support::MD5_USER);

    // A broken file is rejected and changes nothing.
    std::fs::write(&file, "max_pool_size = \"many\"\n").unwrap();
    hangup();
    wait::until(Duration::from_secs(10), || proxy.log_text().contains("reload rejected"), why("no rejection logged"));
    assert!(proxy.log_text().contains("max_pool_size"), "the rejection names the key: {}", proxy.log_text());
    assert_eq!(psql(second_port, "SELECT 2"), "2");

    // Remove the first target: it stops accepting, while its running sessions carry on.
    std::fs::write(
        &file,
        format!("max_pool_size = 6\n[[target]]\nname = \"{}\"\nport = {second_port}\n", url(support::MD5_USER)),
    )
    .unwrap();
    hangup();
    wait::until(Duration::from_secs(10), || !listens(first_port), why("the removed target still accepts"));
    let output = load.join().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report} {}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("number of failed transactions: 0"), "{report}");
    assert_eq!(psql(second_port, "SELECT 3"), "3");
}

#[test]
fn check_config_prints_effective_settings_or_the_broken_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        "idle_timeout = \"90s\"\nlazy_attach = true\nworker_threads = 4\n\n[[target]]\nname = \"projects/app\"\nport = 7000\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lakebase-proxy"))
            .arg("check-config")
            .arg(format!("--config={}", file.display()))
            .args(extra)
            .env_remove("LAKEBASE_PROXY_IDLE_TIMEOUT")
            .env_remove("LAKEBASE_PROXY_LOG_LEVEL")
            .env_remove("LAKEBASE_PROXY_WORKER_THREADS")
            .env("LAKEBASE_PROXY_MAX_POOL_SIZE", "9")
            .output()
            .unwrap()
    };
    let output = run(&["--lazy-attach"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "idle_timeout = 1m 30s",
        "lazy_attach = true",
        "max_pool_size = 9",
        "target.0 = projects/app (listens on port 7000)",
        "worker_threads = 4",
        "log_level = info",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // The command line wins over the file.
    let text = String::from_utf8_lossy(&run(&["--idle-timeout=5m"]).stdout).into_owned();
    assert!(text.contains("idle_timeout = 5m"), "{text}");
    // A broken file: the line and the key.
    std::fs::write(&file, "port = 6000\n\nmax_lifetime = \"a while\"\n").unwrap();
    let output = run(&[]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("proxy.toml:3 (max_lifetime)"), "{error}");
}

#[test]
fn wait_blocks_until_startup_and_gives_up_after_its_timeout() {
    let (_proxy, http_port) = proxy_with_http(&[]);
    let wait = |port: u16, timeout: &str| {
        Command::new(env!("CARGO_BIN_EXE_lakebase-proxy"))
            .args(["wait", &format!("--http-port={port}"), &format!("--timeout={timeout}")])
            .output()
            .unwrap()
    };
    assert!(wait(http_port, "10s").status.success());
    let started = Instant::now();
    let output = wait(free_port(), "1s");
    assert_eq!(output.status.code(), Some(1));
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("did not answer 200"));
}

#[test]
fn transaction_mode_counts_pins_and_statement_reuse_and_shows_them() {
    let (proxy, http_port) = proxy_with_http(&["--pool-mode=transaction", "--max-pool-size=2"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(proxy.port)
            .user("someone")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        // tokio-postgres prepares by name: the first run prepares it, the others find it.
        let statement = client.prepare("SELECT $1::int + 1").await.unwrap();
        for n in 0..5 {
            assert_eq!(client.query_one(&statement, &[&n]).await.unwrap().get::<_, i32>(0), n + 1);
        }
        client.batch_execute("LISTEN ops_channel").await.unwrap();
        let clients = psql_at(proxy.port, "lakebase_proxy", "SHOW CLIENTS");
        assert!(clients.lines().any(|row| row.contains("|listen|")), "a pinned client shows its reason: {clients}");
        let pools = psql_at(proxy.port, "lakebase_proxy", "SHOW POOLS");
        assert!(pools.contains("|transaction|"), "{pools}");
    });
    let samples = parse_prometheus(&http(http_port, "GET", "/metrics").1);
    assert_eq!(sum(&samples, "lakebase_proxy_pinned_clients_total", "reason=\"listen\""), 1.0);
    // Each run's Bind found the statement its Parse left on the server.
    assert!(sum(&samples, "lakebase_proxy_prepared_statements_total", "result=\"hit\"") >= 5.0);
}
