//! `--run-connection-test`: resolve every target, obtain its password, log in, run `SELECT 1`,
//! and report what was used (never the secret).

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::config::Config;
use crate::protocol::StartupParams;
use crate::resolve::{resolve_targets, roots};
use crate::tls;
use crate::upstream::Endpoint;

/// Runs the test; the report is returned either way, and `Err` when any target failed.
pub async fn connection_test(config: &Config) -> Result<String, String> {
    let resolved = resolve_targets(config).await.map_err(|error| format!("cannot resolve the targets: {error}"))?;
    let mut report = String::new();
    let mut failed = false;
    for resolved_target in resolved.targets {
        let target = &resolved_target.target;
        let user = target.user.clone().unwrap_or_else(|| "postgres".to_owned());
        let database = target.database.clone().unwrap_or_else(|| user.clone());
        let _ = writeln!(report, "target {}", resolved_target.origin);
        let _ = writeln!(
            report,
            "  upstream  {}:{} (dialled at {}:{})",
            target.host,
            target.port,
            target.dial_address().0,
            target.dial_address().1
        );
        let _ = writeln!(report, "  role      {user}");
        let _ = writeln!(report, "  database  {database}");
        let outcome = async {
            let password = match &resolved_target.credentials {
                Some(cache) => {
                    let secret = cache.get().await.map_err(|e| e.to_string())?;
                    let status = cache.status();
                    let expiry = status.expires_at.map(describe_expiry).unwrap_or_else(|| "no expiry known".to_owned());
                    let _ = writeln!(report, "  password  from {}, {expiry}", cache.describe());
                    Some(secret)
                }
                None => None,
            };
            let trust = roots(target.ca_file.as_ref().or(config.ca_file.as_ref()));
            let tls = tls::upstream_config(&trust).map_err(|e| e.to_string())?;
            let endpoint =
                Endpoint::new(&target.host, target.port, target.connect_to.clone(), tls, config.connect_timeout)
                    .map_err(|e| e.to_string())?;
            let mut connection = endpoint
                .login(&user, &database, &StartupParams::default(), password.as_ref())
                .await
                .map_err(|e| e.to_string())?;
            connection.simple_query("SELECT 1").await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            let version = connection
                .server_params()
                .iter()
                .find(|(n, _)| n == "server_version")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            Ok::<_, String>(version)
        }
        .await;
        match outcome {
            Ok(version) => {
                let _ = writeln!(report, "  result    OK: logged in over TLS, SELECT 1 answered (server {version})");
            }
            Err(error) => {
                failed = true;
                let _ = writeln!(report, "  result    FAILED: {error}");
            }
        }
    }
    if failed { Err(report) } else { Ok(report) }
}

fn describe_expiry(expiry: SystemTime) -> String {
    let at =
        time::OffsetDateTime::from(expiry).format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    match expiry.duration_since(SystemTime::now()) {
        Ok(left) => format!("expires {at} (in {}s)", left.as_secs()),
        Err(_) => format!("expired at {at}"),
    }
}
