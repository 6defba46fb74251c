//! Workspace configuration as the Databricks SDKs resolve it ("unified auth"): explicit
//! flags, then `DATABRICKS_*` environment variables, then a profile of `~/.databrickscfg`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The workspace settings that matter to lakebase-proxy, after resolution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceConfig {
    /// Normalised workspace URL, e.g. `https://adb-123.4.azuredatabricks.net`.
    pub host: Option<String>,
    /// A personal access token.
    pub token: Option<String>,
    /// OAuth client (application) id of a service principal.
    pub client_id: Option<String>,
    /// Its secret.
    pub client_secret: Option<String>,
    /// Forces one authentication method (`pat`, `oauth-m2m`, `databricks-cli`).
    pub auth_type: Option<String>,
    /// The profile asked for, if any.
    pub profile: Option<String>,
    /// The Databricks CLI to run for `databricks-cli` auth.
    pub cli_path: Option<String>,
    /// The workspace id, sent as `X-Databricks-Workspace-Id` when known.
    pub workspace_id: Option<String>,
    /// Where settings came from, for messages (e.g. "environment", "~/.databrickscfg [dev]").
    pub sources: Vec<String>,
}

/// Explicit settings from the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct WorkspaceFlags {
    /// `--host`.
    pub host: Option<String>,
    /// `--profile`.
    pub profile: Option<String>,
    /// `--auth-type`.
    pub auth_type: Option<String>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The profile asked for is not in the file.
    #[error("{path} has no [{profile}] profile")]
    NoSuchProfile {
        /// The file.
        path: PathBuf,
        /// The profile.
        profile: String,
    },
}

const SETTINGS_SECTION: &str = "__settings__";

impl WorkspaceConfig {
    /// Resolves the configuration from `flags`, the environment `env` (a lookup so tests can
    /// supply their own) and the config file.
    pub fn resolve(
        flags: &WorkspaceFlags,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<WorkspaceConfig, ConfigError> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let mut config = WorkspaceConfig::default();
        config.merge_explicit(flags);
        config.merge(
            "environment",
            &[
                ("host", env("DATABRICKS_HOST")),
                ("token", env("DATABRICKS_TOKEN")),
                ("client_id", env("DATABRICKS_CLIENT_ID")),
                ("client_secret", env("DATABRICKS_CLIENT_SECRET")),
                ("auth_type", env("DATABRICKS_AUTH_TYPE")),
                ("databricks_cli_path", env("DATABRICKS_CLI_PATH")),
                ("workspace_id", env("DATABRICKS_WORKSPACE_ID")),
            ],
        );
        if config.profile.is_none() {
            config.profile = env("DATABRICKS_CONFIG_PROFILE");
        }
        let path = env("DATABRICKS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|home| Path::new(&home).join(".databrickscfg")));
        // As the SDKs do: without an explicit profile, settings already given (host or
        // credentials) mean the file is not consulted at all.
        let explicit_profile = config.profile.is_some();
        let already_configured = config.host.is_some() || config.token.is_some() || config.client_id.is_some();
        if let Some(path) = path.filter(|_| explicit_profile || !already_configured) {
            config.merge_file(&path)?;
        }
        config.host = config.host.as_deref().map(normalize_host);
        Ok(config)
    }

    fn merge_explicit(&mut self, flags: &WorkspaceFlags) {
        self.merge("command line", &[("host", flags.host.clone()), ("auth_type", flags.auth_type.clone())]);
        self.profile = flags.profile.clone();
    }

    /// Fills unset fields from `values`, noting `source` if anything was taken.
    fn merge(&mut self, source: &str, values: &[(&str, Option<String>)]) {
        let mut used = false;
        for (key, value) in values {
            let Some(value) = value.clone() else { continue };
            let slot = match *key {
                "host" => &mut self.host,
                "token" => &mut self.token,
                "client_id" => &mut self.client_id,
                "client_secret" => &mut self.client_secret,
                "auth_type" => &mut self.auth_type,
                "databricks_cli_path" => &mut self.cli_path,
                "workspace_id" => &mut self.workspace_id,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value);
                used = true;
            }
        }
        if used {
            self.sources.push(source.to_owned());
        }
    }

    fn merge_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            // No file is fine unless a profile was asked for.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && self.profile.is_none() => {
                return Ok(());
            }
            Err(source) => {
                return Err(ConfigError::Read { path: path.to_owned(), source });
            }
        };
        let sections = parse_ini(&text);
        let explicit = self.profile.clone();
        let profile = explicit.clone().unwrap_or_else(|| {
            sections
                .get(SETTINGS_SECTION)
                .and_then(|settings| settings.get("default_profile").cloned())
                .unwrap_or_else(|| "DEFAULT".to_owned())
        });
        let Some(values) = sections.get(&profile) else {
            if explicit.is_some() {
                return Err(ConfigError::NoSuchProfile { path: path.to_owned(), profile });
            }
            return Ok(());
        };
        let pairs: Vec<(&str, Option<String>)> = values.iter().map(|(k, v)| (k.as_str(), Some(v.clone()))).collect();
        self.merge(&format!("{} [{profile}]", path.display()), &pairs);
        self.profile = Some(profile);
        Ok(())
    }
}

/// Adds `https://`, strips a trailing `/` and a `:443`, as the SDKs do.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    let with_scheme = if host.contains("://") { host.to_owned() } else { format!("https://{host}") };
    with_scheme.strip_suffix(":443").map(str::to_owned).unwrap_or(with_scheme)
}

/// A minimal INI reader for `.databrickscfg`: `[section]` headers, `key = value` lines
/// (split at the first `=`, so base64 values survive), `;` and `#` comments. Keys are
/// lower-cased; values are kept as written.
fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current = "DEFAULT".to_owned();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
            sections.entry(current.clone()).or_default();
        } else if let Some((key, value)) = line.split_once('=') {
            sections
                .entry(current.clone())
                .or_default()
                .insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(flags: WorkspaceFlags, vars: &[(&str, &str)]) -> Result<WorkspaceConfig, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        WorkspaceConfig::resolve(&flags, &|name| vars.get(name).cloned())
    }

    fn config_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg");
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_owned();
        (dir, path)
    }

    const FILE: &str = "[DEFAULT]\nhost = default.cloud.databricks.com\ntoken = dapi-default\n\n\
                        [dev]\nhost = https://dev.cloud.databricks.com:443/\nclient_id = abc\nclient_secret = s=cr=t\n\
                        ; comment\n[cli]\nhost = cli.cloud.databricks.com\nauth_type = databricks-cli\n";

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(normalize_host("adb-1.azuredatabricks.net/"), "https://adb-1.azuredatabricks.net");
        assert_eq!(normalize_host("https://x.cloud.databricks.com:443"), "https://x.cloud.databricks.com");
        assert_eq!(normalize_host("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }

    #[test]
    fn default_profile_then_named_profile() {
        let (_dir, path) = config_file(FILE);
        let config = resolve(WorkspaceFlags::default(), &[("DATABRICKS_CONFIG_FILE", &path)]).unwrap();
        assert_eq!(config.host.as_deref(), Some("https://default.cloud.databricks.com"));
        assert_eq!(config.token.as_deref(), Some("dapi-default"));
        let flags = WorkspaceFlags { profile: Some("dev".into()), ..Default::default() };
        let config = resolve(flags, &[("DATABRICKS_CONFIG_FILE", &path)]).unwrap();
        assert_eq!(config.host.as_deref(), Some("https://dev.cloud.databricks.com"));
        assert_eq!(config.client_secret.as_deref(), Some("s=cr=t"));
        assert_eq!(config.token, None);
        let config = resolve(
            WorkspaceFlags::default(),
            &[("DATABRICKS_CONFIG_FILE", &path), ("DATABRICKS_CONFIG_PROFILE", "cli")],
        )
        .unwrap();
        assert_eq!(config.auth_type.as_deref(), Some("databricks-cli"));
    }

    #[test]
    fn settings_section_picks_the_default_profile() {
        let (_dir, path) = config_file(&format!("[__settings__]\ndefault_profile = dev\n{FILE}"));
        let config = resolve(WorkspaceFlags::default(), &[("DATABRICKS_CONFIG_FILE", &path)]).unwrap();
        assert_eq!(config.client_id.as_deref(), Some("abc"));
        assert_eq!(config.profile.as_deref(), Some("dev"));
    }

    #[test]
    fn env_credentials_skip_the_file_unless_a_profile_is_named() {
        let (_dir, path) = config_file(FILE);
        let config = resolve(
            WorkspaceFlags::default(),
            &[("DATABRICKS_CONFIG_FILE", &path), ("DATABRICKS_HOST", "env.cloud.databricks.com")],
        )
        .unwrap();
        assert_eq!(config.host.as_deref(), Some("https://env.cloud.databricks.com"));
        assert_eq!(config.token, None, "the file was not consulted");
        let flags = WorkspaceFlags { profile: Some("dev".into()), ..Default::default() };
        let config =
            resolve(flags, &[("DATABRICKS_CONFIG_FILE", &path), ("DATABRICKS_HOST", "env.cloud.databricks.com")])
                .unwrap();
        assert_eq!(config.host.as_deref(), Some("https://env.cloud.databricks.com"), "env wins over the file");
        assert_eq!(config.client_id.as_deref(), Some("abc"), "the named profile fills the rest");
    }

    #[test]
    fn flags_win_and_missing_profiles_are_errors() {
        let (_dir, path) = config_file(FILE);
        let flags = WorkspaceFlags {
            host: Some("flag.cloud.databricks.com".into()),
            profile: Some("dev".into()),
            ..Default::default()
        };
        let config = resolve(flags, &[("DATABRICKS_CONFIG_FILE", &path), ("DATABRICKS_HOST", "env")]).unwrap();
        assert_eq!(config.host.as_deref(), Some("https://flag.cloud.databricks.com"));
        let flags = WorkspaceFlags { profile: Some("nope".into()), ..Default::default() };
        assert!(matches!(resolve(flags, &[("DATABRICKS_CONFIG_FILE", &path)]), Err(ConfigError::NoSuchProfile { .. })));
        let config = resolve(WorkspaceFlags::default(), &[("DATABRICKS_CONFIG_FILE", "/nonexistent/cfg")]).unwrap();
        assert_eq!(config, WorkspaceConfig::default());
    }
}
