//! The proxy's settings, resolved from the command line (see `cli.rs`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::databricks::WorkspaceFlags;
use crate::pool::PoolSettings;
use crate::target::TargetSpec;

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

    /// The local port for target number `index`.
    pub fn listen_port(&self, index: usize) -> u16 {
        match self.targets[index].listen_port() {
            Some(port) => port,
            None if self.port == 0 => 0,
            None => self.port.saturating_add(index as u16),
        }
    }
}
