//! What a TARGET argument means: a PostgreSQL URL or a Lakebase resource name, with
//! per-target overrides as query parameters.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use url::Url;

use crate::databricks::Resource;

/// Database Lakebase clients land in unless they name another.
pub const LAKEBASE_DEFAULT_DATABASE: &str = "databricks_postgres";

/// A TARGET as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// `postgresql://...`: used as it is.
    Postgres(Target),
    /// A Lakebase name, resolved through the workspace API at start.
    Lakebase(LakebaseTarget),
}

/// A Lakebase target: `projects/P[/branches/B[/endpoints/E]]` or `instances/NAME`, with
/// `?port=&connect-to=&database=&user=&read-only`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakebaseTarget {
    /// The resource.
    pub resource: Resource,
    /// Local port to listen on.
    pub listen_port: Option<u16>,
    /// Dial this address instead of the resolved host (still verified against it).
    pub connect_to: Option<(String, u16)>,
    /// Default database instead of `databricks_postgres`.
    pub database: Option<String>,
    /// Postgres role instead of the logged-in identity's.
    pub user: Option<String>,
    /// Connect to the read-only host.
    pub read_only: bool,
    /// Pool settings for this target.
    pub pool: PoolOverrides,
}

impl TargetSpec {
    /// Local port asked for with `port=`.
    pub fn listen_port(&self) -> Option<u16> {
        match self {
            TargetSpec::Postgres(target) => target.listen_port,
            TargetSpec::Lakebase(target) => target.listen_port,
        }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSpec::Postgres(target) => target.fmt(f),
            TargetSpec::Lakebase(target) => target.resource.fmt(f),
        }
    }
}

impl FromStr for TargetSpec {
    type Err = TargetError;

    fn from_str(spec: &str) -> Result<TargetSpec, TargetError> {
        if spec.contains("://") {
            return spec.parse().map(TargetSpec::Postgres);
        }
        let fail = |reason: String| TargetError { target: spec.to_owned(), reason };
        let (name, query) = spec.split_once('?').unwrap_or((spec, ""));
        let resource = Resource::parse(name)
            .ok_or_else(|| fail("expected postgresql://... or a Lakebase name (projects/P/branches/B/endpoints/E, projects/P/branches/B, projects/P, instances/NAME)".into()))?
            .map_err(fail)?;
        let mut target = LakebaseTarget {
            resource,
            listen_port: None,
            connect_to: None,
            database: None,
            user: None,
            read_only: false,
            pool: PoolOverrides::default(),
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if common_parameter(&key, &value, &mut target.listen_port, &mut target.connect_to, &mut target.pool)
                .map_err(fail)?
            {
                continue;
            }
            match &*key {
                "database" => target.database = Some(value.into_owned()),
                "user" => target.user = Some(value.into_owned()),
                "read-only" => {
                    target.read_only = match &*value {
                        "" | "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        other => {
                            return Err(fail(format!("read-only={other} is not true or false")));
                        }
                    }
                }
                other => {
                    return Err(fail(format!(
                        "unknown parameter {other:?} (supported: database, user, read-only, {COMMON_PARAMETERS})"
                    )));
                }
            }
        }
        Ok(TargetSpec::Lakebase(target))
    }
}

/// When a client gives its server connection back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolMode {
    /// At the end of the client's session: the client has a server connection to itself.
    #[default]
    Session,
    /// At the end of each transaction (or statement outside one): many clients share few
    /// server connections, and session state is carried or pins the client.
    Transaction,
}

impl PoolMode {
    /// The mode's name, as the flag takes it.
    pub fn name(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

impl std::str::FromStr for PoolMode {
    type Err = String;

    fn from_str(value: &str) -> Result<PoolMode, String> {
        match value {
            "session" => Ok(PoolMode::Session),
            "transaction" => Ok(PoolMode::Transaction),
            other => Err(format!("pool mode {other:?} is neither session nor transaction")),
        }
    }
}

/// Pool settings a target may set for itself (`pool-mode=`, `min-idle=`, `max-pool-size=`,
/// `idle-timeout=`, `max-lifetime=`), over the global ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolOverrides {
    /// `pool-mode=`.
    pub mode: Option<PoolMode>,
    /// `min-idle=`.
    pub min_idle: Option<usize>,
    /// `max-pool-size=`.
    pub max_size: Option<usize>,
    /// `idle-timeout=`.
    pub idle_timeout: Option<Duration>,
    /// `max-lifetime=`.
    pub max_lifetime: Option<Duration>,
}

/// Parameters both kinds of target take; `Ok(false)` when `key` is not one of them.
fn common_parameter(
    key: &str,
    value: &str,
    listen_port: &mut Option<u16>,
    connect_to: &mut Option<(String, u16)>,
    pool: &mut PoolOverrides,
) -> Result<bool, String> {
    let count = |what: &str| value.parse::<usize>().map_err(|_| format!("{what}={value} is not a number"));
    let duration = |what: &str| humantime::parse_duration(value).map_err(|e| format!("{what}={value}: {e}"));
    match key {
        "port" => *listen_port = Some(value.parse().map_err(|_| format!("port={value} is not a port number"))?),
        "connect-to" => {
            *connect_to = Some(parse_host_port(value).ok_or_else(|| format!("connect-to={value} is not HOST:PORT"))?)
        }
        "pool-mode" => pool.mode = Some(value.parse()?),
        "min-idle" => pool.min_idle = Some(count(key)?),
        "max-pool-size" => pool.max_size = Some(count(key)?.max(1)),
        "idle-timeout" => pool.idle_timeout = Some(duration(key)?),
        "max-lifetime" => pool.max_lifetime = Some(duration(key)?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// Listed in errors about unknown parameters.
const COMMON_PARAMETERS: &str = "port, connect-to, pool-mode, min-idle, max-pool-size, idle-timeout, max-lifetime";

/// Default PostgreSQL port.
pub const DEFAULT_PORT: u16 = 5432;

/// One upstream the proxy serves, parsed from
/// `postgresql://[user@]host[:port][/dbname][?sslrootcert=PATH&port=N&connect-to=HOST:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name the certificate must match and SNI carries.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Dial this address instead of `host:port` (tunnels, tests, broken DNS); the certificate
    /// is still verified against `host`.
    pub connect_to: Option<(String, u16)>,
    /// Upstream role; when absent the client's user name is used.
    pub user: Option<String>,
    /// Database for clients that do not name one.
    pub database: Option<String>,
    /// Trust only this CA for the upstream certificate.
    pub ca_file: Option<PathBuf>,
    /// Local port to listen on for this target.
    pub listen_port: Option<u16>,
    /// Pool settings for this target.
    pub pool: PoolOverrides,
}

/// A TARGET that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("invalid target {target:?}: {reason}")]
pub struct TargetError {
    target: String,
    reason: String,
}

impl TargetError {
    /// For a configuration with no target at all.
    pub fn none_given() -> TargetError {
        TargetError {
            target: String::new(),
            reason: "no TARGET given (on the command line, in LAKEBASE_PROXY_TARGET, or as [[target]] in --config)"
                .into(),
        }
    }
}

impl Target {
    /// The address to open TCP connections to.
    pub fn dial_address(&self) -> (&str, u16) {
        match &self.connect_to {
            Some((host, port)) => (host, *port),
            None => (&self.host, self.port),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)?;
        if let Some(database) = &self.database {
            write!(f, "/{database}")?;
        }
        Ok(())
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(spec: &str) -> Result<Target, TargetError> {
        let fail = |reason: String| TargetError { target: redact_password(spec), reason };
        let url = Url::parse(spec).map_err(|error| fail(error.to_string()))?;
        if !matches!(url.scheme(), "postgresql" | "postgres") {
            return Err(fail("expected a postgresql:// URL".into()));
        }
        if url.password().is_some() {
            return Err(fail("do not put a password in the target; use --password-file or --password-command".into()));
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| fail("no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let decode = |text: &str| percent_decode_str(text).decode_utf8().map(|s| s.into_owned());
        let user = match url.username() {
            "" => None,
            name => Some(decode(name).map_err(|_| fail("user name is not UTF-8".into()))?),
        };
        let database = match url.path().trim_start_matches('/') {
            "" => None,
            name => Some(decode(name).map_err(|_| fail("database name is not UTF-8".into()))?),
        };
        let mut target = Target {
            host,
            port: url.port().unwrap_or(DEFAULT_PORT),
            connect_to: None,
            user,
            database,
            ca_file: None,
            listen_port: None,
            pool: PoolOverrides::default(),
        };
        for (key, value) in url.query_pairs() {
            if common_parameter(&key, &value, &mut target.listen_port, &mut target.connect_to, &mut target.pool)
                .map_err(fail)?
            {
                continue;
            }
            match &*key {
                "sslrootcert" => target.ca_file = Some(PathBuf::from(&*value)),
                "sslmode" if value == "disable" => {
                    return Err(fail("sslmode=disable: lakebase-proxy always uses verified TLS upstream".into()));
                }
                // Any other sslmode is accepted: the proxy always verifies fully.
                "sslmode" => {}
                other => {
                    return Err(fail(format!(
                        "unknown parameter {other:?} (supported: sslrootcert, sslmode, {COMMON_PARAMETERS})"
                    )));
                }
            }
        }
        Ok(target)
    }
}

fn parse_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| Some((host.to_owned(), port.parse().ok()?)))?
}

/// Hides a password in a URL so error messages can quote it.
fn redact_password(spec: &str) -> String {
    match Url::parse(spec) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("REDACTED"));
            url.to_string()
        }
        _ => spec.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_url() {
        let target: Target =
            "postgresql://app%40corp@db.example.com:6543/sales?sslrootcert=/ca.pem&port=7000&connect-to=127.0.0.1:9999"
                .parse()
                .unwrap();
        assert_eq!(target.host, "db.example.com");
        assert_eq!(target.port, 6543);
        assert_eq!(target.user.as_deref(), Some("app@corp"));
        assert_eq!(target.database.as_deref(), Some("sales"));
        assert_eq!(target.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(target.listen_port, Some(7000));
        assert_eq!(target.dial_address(), ("127.0.0.1", 9999));
    }

    #[test]
    fn defaults_are_sensible() {
        let target: Target = "postgres://localhost".parse().unwrap();
        assert_eq!((target.port, &target.user, &target.database), (DEFAULT_PORT, &None, &None));
        assert_eq!(target.dial_address(), ("localhost", DEFAULT_PORT));
        let v6: Target = "postgresql://[::1]:5433/x?connect-to=[::1]:1".parse().unwrap();
        assert_eq!((v6.host.as_str(), v6.connect_to), ("::1", Some(("::1".to_owned(), 1))));
    }

    #[test]
    fn refuses_passwords_without_echoing_them() {
        let error = "postgresql://u:topsecret@h/db".parse::<Target>().unwrap_err().to_string();
        assert!(error.contains("--password-file"), "{error}");
        assert!(!error.contains("topsecret"), "{error}");
    }

    #[test]
    fn lakebase_names_and_their_parameters() {
        let spec: TargetSpec = "projects/app/branches/production/endpoints/primary?port=6000&database=sales&read-only&connect-to=127.0.0.1:7000"
            .parse()
            .unwrap();
        let TargetSpec::Lakebase(target) = spec else { panic!("not a Lakebase target") };
        assert_eq!(target.resource, Resource::Endpoint("projects/app/branches/production/endpoints/primary".into()));
        assert_eq!(
            (target.listen_port, target.database.as_deref(), target.read_only),
            (Some(6000), Some("sales"), true)
        );
        assert_eq!(target.connect_to, Some(("127.0.0.1".into(), 7000)));
        assert!(matches!("instances/legacy".parse::<TargetSpec>().unwrap(), TargetSpec::Lakebase(_)));
        assert!(matches!("postgresql://h/db".parse::<TargetSpec>().unwrap(), TargetSpec::Postgres(_)));
        assert!("projects/app?bogus=1".parse::<TargetSpec>().is_err());
        assert!("projects/app?read-only=maybe".parse::<TargetSpec>().is_err());
        assert!("db.example.com".parse::<TargetSpec>().unwrap_err().to_string().contains("Lakebase name"));
    }

    #[test]
    fn targets_may_set_their_own_pool_limits() {
        let target: Target = "postgresql://h/db?max-pool-size=5&idle-timeout=90s".parse().unwrap();
        assert_eq!((target.pool.max_size, target.pool.idle_timeout), (Some(5), Some(Duration::from_secs(90))));
        assert_eq!(target.pool.max_lifetime, None);
        let TargetSpec::Lakebase(lakebase) = "projects/app?min-idle=2".parse::<TargetSpec>().unwrap() else {
            unreachable!()
        };
        assert_eq!(lakebase.pool.min_idle, Some(2));
        assert!("projects/app?max-lifetime=forever".parse::<TargetSpec>().is_err());
    }

    #[test]
    fn refuses_unknown_parameters_and_plaintext() {
        assert!("postgresql://h/db?bogus=1".parse::<Target>().is_err());
        assert!("postgresql://h/db?sslmode=disable".parse::<Target>().is_err());
        assert!("postgresql://h/db?sslmode=require".parse::<Target>().is_ok());
        assert!("mysql://h/db".parse::<Target>().is_err());
        assert!("postgresql://h/db?connect-to=nope".parse::<Target>().is_err());
    }
}
