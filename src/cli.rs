//! The command line. Every flag can also be set as `LAKEBASE_PROXY_<FLAG>` in the environment.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, ValueEnum};

use crate::config::{ClientTls, Config, PasswordSource, PoolSettings};
use crate::databricks::WorkspaceFlags;
use crate::target::{PoolMode, TargetError, TargetSpec};

/// A local PostgreSQL endpoint for clients without passwords: lakebase-proxy logs in upstream
/// over verified TLS with a password it keeps fresh, and pools the connections.
#[derive(Debug, Parser)]
#[command(name = "lakebase-proxy", version, about, long_about = None)]
#[command(args_conflicts_with_subcommands = true, args_override_self = true)]
pub struct Cli {
    /// Serving options.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Something other than serving.
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

/// The other things the binary does.
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Validate the configuration (file, flags, environment) and print the effective settings, secrets masked.
    CheckConfig(Box<ProxyArgs>),
    /// Block until a lakebase-proxy's /startup probe answers 200 (for ordering containers at start).
    Wait(WaitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Manpage,
}

/// Options of `wait`.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Address of the proxy's HTTP admin listener.
    #[arg(long, env = "LAKEBASE_PROXY_HTTP_ADDRESS", default_value = "127.0.0.1", value_parser = parse_address)]
    pub http_address: IpAddr,
    /// Port of the proxy's HTTP admin listener.
    #[arg(long, env = "LAKEBASE_PROXY_HTTP_PORT")]
    pub http_port: u16,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Everything that configures the proxy itself.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// A TOML file with any of these settings (keys are the long option names with `_`) and
    /// [[target]] tables; the command line and the environment win over it. SIGHUP re-reads it.
    #[arg(long, env = "LAKEBASE_PROXY_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Upstreams to serve: a Lakebase name (projects/P/branches/B/endpoints/E, projects/P/branches/B,
    /// projects/P, instances/NAME) or postgresql://[user@]host[:port][/dbname]; options as
    /// ?port=N&connect-to=HOST:PORT (and database=, user=, read-only for Lakebase; sslrootcert= for URLs)
    // Kept as text here and parsed in `into_config`: clap would echo a rejected value, and a
    // target with a password in it must not be printed.
    #[arg(env = "LAKEBASE_PROXY_TARGET", value_name = "TARGET")]
    pub targets: Vec<String>,

    /// Databricks workspace URL (else DATABRICKS_HOST or the config profile).
    #[arg(long, env = "LAKEBASE_PROXY_HOST", value_name = "URL")]
    pub host: Option<String>,

    /// Profile of ~/.databrickscfg to use (else DATABRICKS_CONFIG_PROFILE, [__settings__] default_profile, [DEFAULT]).
    #[arg(long, env = "LAKEBASE_PROXY_PROFILE")]
    pub profile: Option<String>,

    /// Force one workspace auth method: pat, oauth-m2m or databricks-cli (else DATABRICKS_AUTH_TYPE).
    #[arg(long, env = "LAKEBASE_PROXY_AUTH_TYPE")]
    pub auth_type: Option<String>,

    /// Lifetime to ask for when minting Lakebase credentials (300s to 1h; default: the API's, 1h).
    #[arg(long, env = "LAKEBASE_PROXY_TOKEN_TTL", value_parser = humantime::parse_duration)]
    pub token_ttl: Option<Duration>,

    /// Resolve every target, mint a credential, log in, run SELECT 1, print what was used, and exit 0 or 1.
    #[arg(long, env = "LAKEBASE_PROXY_RUN_CONNECTION_TEST")]
    pub run_connection_test: bool,

    /// Address to listen on ("localhost" means 127.0.0.1).
    #[arg(long, env = "LAKEBASE_PROXY_ADDRESS", default_value = "127.0.0.1", value_parser = parse_address)]
    pub address: IpAddr,

    /// Port for the first target; each further target takes the next one (0: any free port).
    #[arg(long, env = "LAKEBASE_PROXY_PORT", default_value_t = 5432)]
    pub port: u16,

    /// Also listen on DIR/.s.PGSQL.<port>, so `psql -h DIR` works.
    #[arg(long, env = "LAKEBASE_PROXY_UNIX_SOCKET", value_name = "DIR")]
    pub unix_socket: Option<PathBuf>,

    /// Upstream password: the first line of this file, re-read every --password-ttl.
    #[arg(long, env = "LAKEBASE_PROXY_PASSWORD_FILE", value_name = "PATH", conflicts_with = "password_command")]
    pub password_file: Option<PathBuf>,

    /// Upstream password: the first line this shell command prints, re-run every --password-ttl.
    #[arg(long, env = "LAKEBASE_PROXY_PASSWORD_COMMAND", value_name = "CMD")]
    pub password_command: Option<String>,

    /// How long a password from a file or command is used; it is fetched again ahead of that.
    #[arg(long, env = "LAKEBASE_PROXY_PASSWORD_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub password_ttl: Duration,

    /// Trust only the CAs in this PEM file for upstream certificates (default: the system store, or SSL_CERT_FILE).
    #[arg(long, env = "LAKEBASE_PROXY_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// Certificate chain (PEM) to offer clients that ask for TLS.
    #[arg(long, env = "LAKEBASE_PROXY_CLIENT_CERT", value_name = "PATH", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// Private key (PEM) for --client-cert.
    #[arg(long, env = "LAKEBASE_PROXY_CLIENT_KEY", value_name = "PATH", requires = "client_cert")]
    pub client_key: Option<PathBuf>,

    /// Greet clients at once and attach an upstream connection only at their first message
    /// (PgBouncer style: many idle clients cost no upstream connections; cancel keys are
    /// the proxy's own).
    #[arg(long, env = "LAKEBASE_PROXY_LAZY_ATTACH")]
    pub lazy_attach: bool,

    /// When a client gives its server connection back: at the end of its session, or of each
    /// transaction (many clients then share few server connections; see the README).
    #[arg(long, env = "LAKEBASE_PROXY_POOL_MODE", value_enum, default_value_t = PoolMode::Session)]
    pub pool_mode: PoolMode,

    /// In transaction mode, most prepared statements kept on each server connection.
    #[arg(long, env = "LAKEBASE_PROXY_MAX_PREPARED_STATEMENTS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_prepared_statements: u32,

    /// Warm connections kept open for the target's own role and database.
    #[arg(long, env = "LAKEBASE_PROXY_MIN_IDLE", default_value_t = 0)]
    pub min_idle: usize,

    /// Most upstream connections per (database, role, options).
    #[arg(long, env = "LAKEBASE_PROXY_MAX_POOL_SIZE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pool_size: u32,

    /// Close idle connections (beyond --min-idle) unused this long.
    #[arg(long, env = "LAKEBASE_PROXY_IDLE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Retire connections by this age (each gets up to 10% less, so they do not expire together).
    #[arg(long, env = "LAKEBASE_PROXY_MAX_LIFETIME", default_value = "45m", value_parser = humantime::parse_duration)]
    pub max_lifetime: Duration,

    /// How long a client waits for a connection when the pool is full before it gets SQLSTATE 53300.
    #[arg(long, env = "LAKEBASE_PROXY_CHECKOUT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub checkout_timeout: Duration,

    /// Limit for opening an upstream connection (TCP, TLS, login), retrying connection failures
    /// and "starting up" answers meanwhile (a compute waking from scale-to-zero).
    #[arg(long, env = "LAKEBASE_PROXY_CONNECT_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Limit for a client's startup handshake.
    #[arg(long, env = "LAKEBASE_PROXY_STARTUP_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub startup_timeout: Duration,

    /// Most client connections at once over all targets; beyond it clients get SQLSTATE 53300.
    #[arg(long, env = "LAKEBASE_PROXY_MAX_CLIENT_CONNECTIONS", default_value_t = 5000)]
    pub max_client_connections: usize,

    /// On SIGTERM/SIGINT, let running transactions finish for up to this long; then sessions get SQLSTATE 57P01.
    #[arg(long, env = "LAKEBASE_PROXY_MAX_SIGTERM_DELAY", default_value = "15s", value_parser = humantime::parse_duration)]
    pub max_sigterm_delay: Duration,

    /// On SIGTERM/SIGINT, keep accepting new clients this long before draining (for a sidecar
    /// whose application still connects while it shuts down).
    #[arg(long, env = "LAKEBASE_PROXY_MIN_SIGTERM_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub min_sigterm_delay: Duration,

    /// Address of the HTTP admin listener (metrics, probes, POST /quitquitquit).
    #[arg(long, env = "LAKEBASE_PROXY_HTTP_ADDRESS", default_value = "127.0.0.1", value_parser = parse_address)]
    pub http_address: IpAddr,

    /// Port of the HTTP admin listener; off unless set.
    #[arg(long, env = "LAKEBASE_PROXY_HTTP_PORT")]
    pub http_port: Option<u16>,

    /// Log format.
    #[arg(long, env = "LAKEBASE_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `lakebase_proxy=debug` (RUST_LOG syntax).
    #[arg(long, env = "LAKEBASE_PROXY_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Threads that relay traffic. 1 runs everything on one event loop, as PgBouncer does: no
    /// wakeups between threads, the least CPU per query (see BENCHMARKS.md); raise it when one
    /// core is not enough for the load. 0 means one per CPU.
    #[arg(long, env = "LAKEBASE_PROXY_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured only on a terminal and never with `NO_COLOR` set.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

fn parse_address(text: &str) -> Result<IpAddr, String> {
    if text.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    text.parse().map_err(|_| format!("{text:?} is not an IP address"))
}

impl ProxyArgs {
    /// The settings these flags describe, or why a target is unusable.
    pub fn into_config(self) -> Result<Config, TargetError> {
        if self.targets.is_empty() {
            return Err(TargetError::none_given());
        }
        let targets = self.targets.iter().map(|spec| spec.parse()).collect::<Result<Vec<TargetSpec>, _>>()?;
        let password = match (self.password_file, self.password_command) {
            (Some(path), _) => PasswordSource::File(path),
            (None, Some(command)) => PasswordSource::Command(command),
            (None, None) => PasswordSource::None,
        };
        let client_tls = match (self.client_cert, self.client_key) {
            (Some(cert), Some(key)) => Some(ClientTls { cert, key }),
            _ => None,
        };
        Ok(Config {
            targets,
            databricks: WorkspaceFlags { host: self.host, profile: self.profile, auth_type: self.auth_type },
            token_ttl: self.token_ttl,
            address: self.address,
            port: self.port,
            unix_socket_dir: self.unix_socket,
            password,
            password_ttl: self.password_ttl,
            ca_file: self.ca_file,
            client_tls,
            lazy_attach: self.lazy_attach,
            pool: PoolSettings {
                mode: self.pool_mode,
                max_prepared_statements: self.max_prepared_statements as usize,
                min_idle: self.min_idle,
                max_size: self.max_pool_size as usize,
                idle_timeout: self.idle_timeout,
                max_lifetime: self.max_lifetime,
                checkout_timeout: self.checkout_timeout,
            },
            connect_timeout: self.connect_timeout,
            startup_timeout: self.startup_timeout,
            max_client_connections: self.max_client_connections,
            max_sigterm_delay: self.max_sigterm_delay,
            min_sigterm_delay: self.min_sigterm_delay,
            http: self.http_port.map(|port| std::net::SocketAddr::new(self.http_address, port)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_map_onto_the_config() {
        let cli = Cli::try_parse_from([
            "lakebase-proxy",
            "postgresql://app@db.example.com/sales",
            "postgresql://db2.example.com?port=7000",
            "--port=6000",
            "--password-command=cat /pw",
            "--max-lifetime=1h",
            "--address=localhost",
        ])
        .unwrap();
        let config = cli.proxy.into_config().unwrap();
        assert_eq!(config.password, PasswordSource::Command("cat /pw".into()));
        assert_eq!(config.pool.max_lifetime, Duration::from_secs(3600));
        assert_eq!((config.listen_port(0), config.listen_port(1)), (6000, 7000));
        assert!(config.address.is_loopback());
    }

    #[test]
    fn password_sources_are_exclusive() {
        assert!(
            Cli::try_parse_from(["lakebase-proxy", "postgresql://h", "--password-file=a", "--password-command=b"])
                .is_err()
        );
    }
}

/// Why the command line (with its config file) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// clap's own error (it also prints help and version).
    #[error(transparent)]
    Arguments(#[from] clap::Error),
    /// The config file is unusable.
    #[error(transparent)]
    File(#[from] crate::config_file::ConfigFileError),
}

/// Parses `argv`, folding in the `--config` file: its settings go before the real arguments,
/// so the command line wins, and its targets are used when none are given otherwise.
pub fn parse(argv: &[OsString]) -> Result<Cli, LoadError> {
    let cli = Cli::try_parse_from(argv)?;
    let (args, insert_at) = match &cli.command {
        None => (&cli.proxy, 1),
        Some(Subcommand::CheckConfig(args)) => (&**args, 2),
        Some(_) => return Ok(cli),
    };
    let Some(path) = &args.config else { return Ok(cli) };
    let file = crate::config_file::load(path, &Cli::command(), &|name| std::env::var_os(name).is_some())?;
    let mut full: Vec<OsString> = argv[..insert_at].to_vec();
    full.extend(file.options);
    full.extend(argv[insert_at..].iter().cloned());
    if args.targets.is_empty() {
        full.extend(file.targets);
    }
    Ok(Cli::try_parse_from(full)?)
}
