//! Differential tests of the pool modes: the same message sequences from several clients are
//! sent straight to PostgreSQL (each client on its own backend, over the unix socket) and
//! through the proxy binary, and every reply each client receives must be identical, message
//! for message (errors without their source location, notifications without the sender's pid,
//! ParameterStatus compared on their own). The scenarios, one or more per item of the
//! transaction-pooling checklist, are in `transaction/scenarios.rs`; the harness that runs and
//! compares them in `transaction/harness.rs`.
//!
//! - `differential_session_mode`: the proxy in session mode with room for every client, where
//!   each client has a server of its own, exactly as directly.
//! - `differential_transaction_pool_of_one` / `_of_two`: transaction mode, where the clients
//!   share one (two) server connections.
//!
//! Every scenario runs even after one fails (the proxy is restarted after a failure so that
//! one broken state does not spill into the next scenario); the test then fails listing each
//! failing scenario with both sequences. `TXN_DIFF_ONLY=<text>[,<text>...]` runs only the
//! scenarios whose name contains one of the texts; `TXN_DIFF_SHOW=1` prints every sequence,
//! direct and pooled.

mod support;

#[path = "transaction/harness.rs"]
mod harness;
#[path = "transaction/scale.rs"]
mod scale;
#[path = "transaction/scenarios.rs"]
mod scenarios;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use harness::{Admin, Endpoint, Scenario};
use scenarios::Ctx;
use support::binary::ProxyProcess;
use support::{APP_DB, PgServer, SCRAM_USER};

/// How one test function runs the pooler, and the names its scenarios use.
struct Mode {
    /// For reports: what is being compared with PostgreSQL.
    label: &'static str,
    /// Schema (and name prefix) of this function's objects, distinct per function so the
    /// functions can run at the same time.
    schema: &'static str,
    /// First of the advisory lock keys of this function.
    lock_base: i64,
    /// What the clients connect to.
    pooler: Pooler,
    /// Scenarios with more clients than this are left out: a session-mode pool gives each
    /// client a server connection of its own, so more would only wait.
    max_clients: usize,
}

/// The pooler under test.
enum Pooler {
    /// lakebase-proxy with these flags besides the target and the password file.
    Proxy(&'static [&'static str]),
    /// A PgBouncer binary in transaction mode with this many server connections: the
    /// reference the checklist was measured against, to see what the suite tells apart.
    PgBouncer(PathBuf, usize),
}

/// A running pooler: the port clients connect to, and its log.
enum Running {
    /// lakebase-proxy.
    Proxy(ProxyProcess),
    /// PgBouncer.
    PgBouncer(PgBouncerProcess),
}

impl Running {
    /// Starts `pooler` in front of `pg` and waits until it listens.
    fn start(pg: &PgServer, pooler: &Pooler) -> Running {
        match pooler {
            Pooler::Proxy(flags) => {
                let mut args = vec![
                    format!(
                        "postgresql://{SCRAM_USER}@localhost:{}/{APP_DB}?sslrootcert={}",
                        pg.port(),
                        pg.ca_path().display()
                    ),
                    format!("--password-file={}", pg.password_file().display()),
                ];
                args.extend(flags.iter().map(|f| f.to_string()));
                Running::Proxy(ProxyProcess::spawn(&args, &[]))
            }
            Pooler::PgBouncer(binary, size) => Running::PgBouncer(PgBouncerProcess::spawn(binary, pg, *size)),
        }
    }

    /// The TCP port on 127.0.0.1 clients connect to.
    fn port(&self) -> u16 {
        match self {
            Running::Proxy(proxy) => proxy.port,
            Running::PgBouncer(bouncer) => bouncer.port,
        }
    }

    /// Everything it logged so far.
    fn log_text(&self) -> String {
        match self {
            Running::Proxy(proxy) => proxy.log_text(),
            Running::PgBouncer(bouncer) => std::fs::read_to_string(bouncer.dir.path().join("log")).unwrap_or_default(),
        }
    }
}

/// PgBouncer in transaction mode in front of the shared server's unix socket, killed (by PID)
/// when dropped.
struct PgBouncerProcess {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PgBouncerProcess {
    /// Starts `binary` with `pool_size` server connections in front of `pg`.
    fn spawn(binary: &Path, pg: &PgServer, pool_size: usize) -> PgBouncerProcess {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = test_support::net::free_port();
        // Clients may name any user (`any`): every server login is scram_user's, over the
        // unix socket that trusts it. extra_float_digits is a startup parameter PgBouncer
        // would otherwise refuse (ST1 sends it).
        let config = format!(
            "[databases]\n{APP_DB} = host={} port={} dbname={APP_DB} user={SCRAM_USER}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = any\npool_mode = transaction\ndefault_pool_size = {pool_size}\n\
             max_prepared_statements = 10\nignore_startup_parameters = extra_float_digits\nlogfile = {}\n",
            pg.socket_dir().display(),
            pg.port(),
            dir.path().join("log").display()
        );
        let config_path = dir.path().join("pgbouncer.ini");
        std::fs::write(&config_path, config).unwrap();
        // Its own log file (stderr would be block-buffered and lost when it is killed),
        // writable by whoever it runs as.
        let log = dir.path().join("log");
        std::fs::write(&log, "").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        // PgBouncer refuses to run as root; setpriv execs it as postgres without staying in
        // between, so killing the child kills PgBouncer itself.
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let mut command = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        let child = command
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let bouncer = PgBouncerProcess { child, port, dir };
        test_support::wait::until(
            Duration::from_secs(10),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || {
                format!(
                    "pgbouncer did not listen: {}",
                    std::fs::read_to_string(bouncer.dir.path().join("log")).unwrap_or_default()
                )
            },
        );
        bouncer
    }
}

impl Drop for PgBouncerProcess {
    /// Kills it (and so closes its connections).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A role the clients' role is a member of, for SET ROLE; created once per test process.
const ROLE: &str = "diff_member_role";

/// Creates [`ROLE`] and makes the clients' role a member, once per test process.
fn create_role_once(pg: &PgServer) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        pg.superuser_sql(&format!(
            "DO $$ BEGIN CREATE ROLE {ROLE} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;\n\
             GRANT {ROLE} TO {SCRAM_USER};\n"
        ));
    });
}

/// Runs every scenario directly and through the proxy in `mode`; panics listing the ones whose
/// replies differ (or that could not finish through the proxy).
fn differential(mode: Mode) {
    let pg = PgServer::shared();
    create_role_once(pg);
    let socket = harness::socket_path(pg.socket_dir(), pg.port());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ctx = Ctx { schema: mode.schema.to_string(), lock_base: mode.lock_base, role: ROLE.to_string() };
    let only = std::env::var("TXN_DIFF_ONLY").ok();
    let show = std::env::var_os("TXN_DIFF_SHOW").is_some();
    let scenarios: Vec<Scenario> = scenarios::all(&ctx).into_iter().chain(scale::all()).collect();
    assert!(scenarios.len() >= 32, "the suite has {} scenarios", scenarios.len());
    let scenarios: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| s.clients() <= mode.max_clients)
        .filter(|s| only.as_deref().is_none_or(|o| o.split(',').any(|o| s.name.contains(o))))
        .collect();

    runtime.block_on(async {
        let mut admin = Admin::connect(&socket).await.unwrap();
        drop_schemas(&mut admin, mode.schema).await;
        admin.sql(&format!("CREATE SCHEMA {}", mode.schema)).await.unwrap();
    });

    let started = Instant::now();
    let mut pooler = Running::start(pg, &mode.pooler);
    let mut failures = Vec::new();
    for scenario in &scenarios {
        let t0 = Instant::now();
        let log_start = pooler.log_text().len();
        let direct = runtime.block_on(harness::run(scenario, &Endpoint::Direct(socket.clone()), &socket));
        let direct = match direct {
            Ok(direct) => direct,
            Err(error) => {
                // The scenario itself is wrong: PostgreSQL alone cannot run it.
                failures.push(format!("[{}] directly: {error}", scenario.name));
                continue;
            }
        };
        let proxied = runtime.block_on(harness::run(scenario, &Endpoint::Proxy(pooler.port()), &socket));
        if show {
            let runs = [("directly", Some(&direct)), ("pooled", proxied.as_ref().ok())];
            for (how, run) in runs.into_iter().filter_map(|(how, run)| Some((how, run?))) {
                for (c, transcript) in run.iter().enumerate() {
                    let msgs: Vec<String> = transcript.msgs.iter().map(harness::show).collect();
                    eprintln!("[{}] client {c} {how}: {}", scenario.name, msgs.join(", "));
                }
            }
        }
        let problems = match proxied {
            Ok(proxied) => harness::compare(&direct, &proxied),
            Err(error) => vec![format!("could not finish: {error}")],
        };
        let verdict = if problems.is_empty() { "same" } else { "DIFFERENT" };
        eprintln!("{verdict:>9}  {:>5} ms  {}", t0.elapsed().as_millis(), scenario.name);
        if !problems.is_empty() {
            let log = pooler.log_text();
            let lines: Vec<&str> = log[log_start.min(log.len())..].lines().collect();
            let log = lines[lines.len().saturating_sub(12)..].join("\n");
            failures.push(format!(
                "[{}] {}:\n{}\n  the pooler's log during the scenario (last lines):\n{log}",
                scenario.name,
                mode.label,
                problems.join("\n")
            ));
            // A fresh pooler, so that whatever state broke stays with this scenario.
            drop(pooler);
            pooler = Running::start(pg, &mode.pooler);
        }
    }
    drop(pooler);
    runtime.block_on(async {
        let mut admin = Admin::connect(&socket).await.unwrap();
        drop_schemas(&mut admin, mode.schema).await;
    });
    eprintln!("{}: {} scenarios in {:.1} s", mode.label, scenarios.len(), started.elapsed().as_secs_f64());
    let names: Vec<String> = failures.iter().map(|f| f.lines().next().unwrap_or_default().to_string()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} scenarios differ from PostgreSQL through {}:\n  {}\n\n{}",
        failures.len(),
        scenarios.len(),
        mode.label,
        names.join("\n  "),
        failures.join("\n\n")
    );
}

/// Drops the schemas of a test function (its own and those its scenarios create beside it).
async fn drop_schemas(admin: &mut Admin, schema: &str) {
    let names =
        admin.sql(&format!("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, '{schema}')")).await.unwrap();
    for name in names.into_iter().flatten() {
        admin.sql(&format!("DROP SCHEMA {name} CASCADE")).await.unwrap();
    }
}

/// Session mode with room for every client: each client has a server of its own, as directly.
#[test]
fn differential_session_mode() {
    differential(Mode {
        label: "the proxy in session mode (pool of 16)",
        schema: "diff_session",
        lock_base: 7_100_000,
        pooler: Pooler::Proxy(&["--max-pool-size=16"]),
        max_clients: 16,
    });
}

/// Transaction mode, every client sharing one server connection (a statement cap of 10, so
/// evictions happen all the time).
#[test]
fn differential_transaction_pool_of_one() {
    differential(Mode {
        label: "the proxy in transaction mode with a pool of one",
        schema: "diff_txn1",
        lock_base: 7_200_000,
        pooler: Pooler::Proxy(&["--pool-mode=transaction", "--max-pool-size=1", "--max-prepared-statements=10"]),
        max_clients: usize::MAX,
    });
}

/// Transaction mode with two server connections, so clients move between servers.
#[test]
fn differential_transaction_pool_of_two() {
    differential(Mode {
        label: "the proxy in transaction mode with a pool of two",
        schema: "diff_txn2",
        lock_base: 7_300_000,
        pooler: Pooler::Proxy(&["--pool-mode=transaction", "--max-pool-size=2", "--max-prepared-statements=10"]),
        max_clients: usize::MAX,
    });
}

/// The suite against PgBouncer (1.21+, for its prepared statements) in transaction mode with two
/// server connections, to compare: `PGBOUNCER=/path/to/pgbouncer cargo test --test transaction
/// -- --ignored pgbouncer` (`shared/third-party/build-pgbouncer.sh` builds one).
#[test]
#[ignore = "compares PgBouncer, not the proxy: needs PGBOUNCER=/path/to/pgbouncer"]
fn differential_pgbouncer_pool_of_two() {
    let binary = std::env::var_os("PGBOUNCER").expect("PGBOUNCER=/path/to/pgbouncer");
    differential(Mode {
        label: "PgBouncer in transaction mode with a pool of two",
        schema: "diff_pgbouncer",
        lock_base: 7_400_000,
        pooler: Pooler::PgBouncer(PathBuf::from(binary), 2),
        max_clients: usize::MAX,
    });
}
