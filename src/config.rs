//! The proxy's settings, resolved from the command line (see `cli.rs`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::databricks::WorkspaceFlags;
use crate::target::{PoolMode, PoolOverrides, TargetSpec};

/// Pool limits and lifetimes, shared by all pools of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// When clients give their server connections back.
    pub mode: PoolMode,
    /// Most protocol-level prepared statements each server connection keeps in transaction
    /// mode; the least recently used is closed to make room.
    pub max_prepared_statements: usize,
    /// Connections opened ahead of demand for the target's default database and role.
    pub min_idle: usize,
    /// Most connections (busy and idle) per pool.
    pub max_size: usize,
    /// Idle connections beyond `min_idle` are closed after this long unused.
    pub idle_timeout: Duration,
    /// Upper bound on a connection's age; each gets a deadline jittered below it so
    /// connections opened together do not all expire together.
    pub max_lifetime: Duration,
    /// Longest a client waits for a connection when the pool is at `max_size`.
    pub checkout_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            mode: PoolMode::Session,
            max_prepared_statements: 200,
            min_idle: 0,
            max_size: 20,
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(45 * 60),
            checkout_timeout: Duration::from_secs(30),
        }
    }
}

/// Lakebase closes a connection idle this long…
pub const SERVER_IDLE_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// …and may close any connection this old.
pub const SERVER_AGE_LIMIT: Duration = Duration::from_secs(3 * 24 * 3600);
/// Connections are retired this long before those limits, so the server never gets to act.
const SERVER_LIMIT_MARGIN: Duration = Duration::from_secs(600);

impl PoolSettings {
    /// These settings with a target's own overrides applied.
    pub fn overridden_by(&self, overrides: &PoolOverrides) -> PoolSettings {
        PoolSettings {
            mode: overrides.mode.unwrap_or(self.mode),
            max_prepared_statements: self.max_prepared_statements,
            min_idle: overrides.min_idle.unwrap_or(self.min_idle),
            max_size: overrides.max_size.unwrap_or(self.max_size),
            idle_timeout: overrides.idle_timeout.unwrap_or(self.idle_timeout),
            max_lifetime: overrides.max_lifetime.unwrap_or(self.max_lifetime),
            checkout_timeout: self.checkout_timeout,
        }
    }

    /// Longest a connection may live: `max_lifetime`, but never near the server's age limit.
    pub fn lifetime_cap(&self) -> Duration {
        self.max_lifetime.min(SERVER_AGE_LIMIT - SERVER_LIMIT_MARGIN)
    }

    /// Longest any connection may sit idle, warm ones included: near the server's idle limit
    /// even a `min_idle` connection is replaced.
    pub fn idle_cap(&self) -> Duration {
        SERVER_IDLE_LIMIT - SERVER_LIMIT_MARGIN
    }
}

/// Where upstream passwords come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// None: for upstreams that do not ask (trust, certificates).
    None,
    /// The first line of a file, re-read at every refresh.
    File(PathBuf),
    /// The first line a command prints.
    Command(String),
}

/// A certificate and key for TLS toward clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Everything the proxy needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Upstreams to serve, each on its own local port.
    pub targets: Vec<TargetSpec>,
    /// Workspace login settings given on the command line (for Lakebase targets).
    pub databricks: WorkspaceFlags,
    /// Lifetime to ask for when minting Lakebase credentials (API default: 1 h).
    pub token_ttl: Option<Duration>,
    /// Local address to listen on.
    pub address: IpAddr,
    /// Local port of the first target; later targets take the following ports unless they
    /// set `port=`. Port 0 picks free ports.
    pub port: u16,
    /// Also listen on `DIR/.s.PGSQL.<port>`.
    pub unix_socket_dir: Option<PathBuf>,
    /// Upstream password source.
    pub password: PasswordSource,
    /// How long a password from a file or command is used before it is fetched again.
    pub password_ttl: Duration,
    /// CA file for upstream certificates, unless a target sets `sslrootcert`.
    pub ca_file: Option<PathBuf>,
    /// TLS toward clients that ask for it.
    pub client_tls: Option<ClientTls>,
    /// Greet clients before attaching an upstream connection.
    pub lazy_attach: bool,
    /// Pool limits and lifetimes.
    pub pool: PoolSettings,
    /// Limit for opening and logging into an upstream connection, retries included.
    pub connect_timeout: Duration,
    /// Limit for a client's startup handshake.
    pub startup_timeout: Duration,
    /// Most client connections at once, over all targets.
    pub max_client_connections: usize,
    /// On SIGTERM/SIGINT, how long running transactions may take to finish.
    pub max_sigterm_delay: Duration,
    /// On SIGTERM/SIGINT, keep accepting clients this long first (sidecars whose
    /// application still connects while it shuts down).
    pub min_sigterm_delay: Duration,
    /// The HTTP admin listener (metrics, probes, quitquitquit), if enabled.
    pub http: Option<std::net::SocketAddr>,
}

impl Config {
    /// A configuration with the defaults for `targets`.
    pub fn new(targets: Vec<TargetSpec>) -> Config {
        Config {
            targets,
            databricks: WorkspaceFlags::default(),
            token_ttl: None,
            address: IpAddr::from([127, 0, 0, 1]),
            port: 5432,
            unix_socket_dir: None,
            password: PasswordSource::None,
            password_ttl: Duration::from_secs(600),
            ca_file: None,
            client_tls: None,
            lazy_attach: false,
            pool: PoolSettings::default(),
            connect_timeout: Duration::from_secs(120),
            startup_timeout: Duration::from_secs(15),
            max_client_connections: 5000,
            max_sigterm_delay: Duration::from_secs(15),
            min_sigterm_delay: Duration::ZERO,
            http: None,
        }
    }

    /// The effective settings as (name, value) rows for `check-config` and the admin console.
    /// Secrets are never part of a Config (only where they come from), so nothing is masked
    /// but the password command's arguments, which can carry one.
    pub fn describe(&self) -> Vec<(String, String)> {
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        let mut rows = Vec::new();
        for (index, target) in self.targets.iter().enumerate() {
            rows.push((format!("target.{index}"), format!("{target} (listens on port {})", self.listen_port(index))));
        }
        let password = match &self.password {
            PasswordSource::None => "none".to_owned(),
            PasswordSource::File(path) => format!("file {}", path.display()),
            PasswordSource::Command(command) => {
                format!("command `{} ...`", command.split_whitespace().next().unwrap_or(""))
            }
        };
        let optional = |value: Option<String>| value.unwrap_or_else(|| "-".into());
        rows.extend([
            ("address".into(), self.address.to_string()),
            ("port".into(), self.port.to_string()),
            ("unix_socket".into(), optional(self.unix_socket_dir.as_ref().map(|d| d.display().to_string()))),
            ("password".into(), password),
            ("password_ttl".into(), duration(self.password_ttl)),
            ("databricks.host".into(), optional(self.databricks.host.clone())),
            ("databricks.profile".into(), optional(self.databricks.profile.clone())),
            ("databricks.auth_type".into(), optional(self.databricks.auth_type.clone())),
            ("token_ttl".into(), optional(self.token_ttl.map(duration))),
            ("ca_file".into(), optional(self.ca_file.as_ref().map(|p| p.display().to_string()))),
            ("client_tls".into(), optional(self.client_tls.as_ref().map(|t| t.cert.display().to_string()))),
            ("lazy_attach".into(), self.lazy_attach.to_string()),
            ("pool_mode".into(), self.pool.mode.name().into()),
            ("max_prepared_statements".into(), self.pool.max_prepared_statements.to_string()),
            ("min_idle".into(), self.pool.min_idle.to_string()),
            ("max_pool_size".into(), self.pool.max_size.to_string()),
            ("idle_timeout".into(), duration(self.pool.idle_timeout)),
            ("max_lifetime".into(), duration(self.pool.max_lifetime)),
            ("checkout_timeout".into(), duration(self.pool.checkout_timeout)),
            ("connect_timeout".into(), duration(self.connect_timeout)),
            ("startup_timeout".into(), duration(self.startup_timeout)),
            ("max_client_connections".into(), self.max_client_connections.to_string()),
            ("min_sigterm_delay".into(), duration(self.min_sigterm_delay)),
            ("max_sigterm_delay".into(), duration(self.max_sigterm_delay)),
            ("http".into(), optional(self.http.map(|a| a.to_string()))),
        ]);
        rows
    }

    /// The local port for target number `index`.
    pub fn listen_port(&self, index: usize) -> u16 {
        match self.targets[index].listen_port() {
            Some(port) => port,
            None if self.port == 0 => 0,
            None => self.port.saturating_add(index as u16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_stay_clear_of_the_servers_limits() {
        let settings = PoolSettings { max_lifetime: Duration::from_secs(7 * 24 * 3600), ..PoolSettings::default() };
        assert!(settings.lifetime_cap() < SERVER_AGE_LIMIT);
        assert!(settings.idle_cap() < SERVER_IDLE_LIMIT);
        assert_eq!(PoolSettings::default().lifetime_cap(), Duration::from_secs(45 * 60));
    }

    #[test]
    fn targets_override_the_global_pool_settings() {
        let target: crate::target::Target =
            "postgresql://h/db?max-pool-size=5&idle-timeout=90s&pool-mode=transaction".parse().unwrap();
        let settings = PoolSettings::default().overridden_by(&target.pool);
        assert_eq!((settings.max_size, settings.idle_timeout), (5, Duration::from_secs(90)));
        assert_eq!(settings.mode, PoolMode::Transaction);
        assert_eq!(settings.max_lifetime, PoolSettings::default().max_lifetime);
    }
}
