//! The TOML configuration file (`--config`): every command-line option as a key (the long
//! name with `_` for `-`), and `[[target]]` tables. The file is turned into command-line
//! arguments placed before the real ones, so the same parsers validate it and the command line
//! wins; a key whose environment variable is set is skipped, so the environment wins too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Command};

use crate::target::TargetSpec;

/// Target keys and the query parameter each becomes.
const TARGET_KEYS: &[(&str, &str)] = &[
    ("port", "port"),
    ("connect_to", "connect-to"),
    ("database", "database"),
    ("user", "user"),
    ("read_only", "read-only"),
    ("sslrootcert", "sslrootcert"),
    ("pool_mode", "pool-mode"),
    ("min_idle", "min-idle"),
    ("max_pool_size", "max-pool-size"),
    ("idle_timeout", "idle-timeout"),
    ("max_lifetime", "max-lifetime"),
];

/// Options that make no sense in a file.
const COMMAND_LINE_ONLY: &[&str] = &["config", "run_connection_test", "help", "version"];

/// A file that cannot be used, pointing at the line and key.
#[derive(Debug, thiserror::Error)]
#[error("{}{}{}: {message}", .path.display(), .line.map(|l| format!(":{l}")).unwrap_or_default(), .key.as_ref().map(|k| format!(" ({k})")).unwrap_or_default())]
pub struct ConfigFileError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key at fault, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// The file as command-line material.
#[derive(Debug, Default)]
pub struct FileArgs {
    /// `--key=value` options (and bare `--flag`s).
    pub options: Vec<OsString>,
    /// TARGET strings from `[[target]]` tables.
    pub targets: Vec<OsString>,
}

/// Reads `path` as settings for `command` (the proxy's command line, whose options the keys
/// name). `env_is_set` tells whether an environment variable is set (keys whose variable is
/// set are left to the environment).
pub fn load(path: &Path, command: &Command, env_is_set: &dyn Fn(&str) -> bool) -> Result<FileArgs, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| fail(path, None, None, format!("cannot read: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|span| line_of(&text, span.start));
        fail(path, line, None, e.message().to_owned())
    })?;
    let mut args = FileArgs::default();
    for (key, value) in &table {
        let line = Some(find_line(&text, key, 0));
        if key == "target" {
            let targets = value
                .as_array()
                .ok_or_else(|| fail(path, line, Some(key), "write targets as [[target]] tables".into()))?;
            for (index, target) in targets.iter().enumerate() {
                args.targets.push(target_arg(path, &text, index, target)?.into());
            }
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|arg| {
                arg.get_long().is_some_and(|long| long.replace('-', "_") == *key)
                    && !COMMAND_LINE_ONLY.contains(&key.as_str())
            })
            .ok_or_else(|| {
                fail(path, line, Some(key), "unknown key (the keys are the long option names, with _ for -)".into())
            })?;
        if arg.get_env().is_some_and(|name| env_is_set(&name.to_string_lossy())) {
            continue;
        }
        let long = arg.get_long().expect("found by its long name");
        let option = match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(true)) => format!("--{long}"),
            (ArgAction::SetTrue, toml::Value::Boolean(false)) => continue,
            (ArgAction::SetTrue, _) => return Err(fail(path, line, Some(key), "expected true or false".into())),
            (_, value) => format!(
                "--{long}={}",
                scalar(value).ok_or_else(|| fail(
                    path,
                    line,
                    Some(key),
                    "expected a string, number or boolean".into()
                ))?
            ),
        };
        // Validate with the option's own parser now, so the error can name the line.
        if let Err(error) =
            command.clone().try_get_matches_from(["lakebase-proxy", option.as_str(), "postgresql://validation"])
        {
            let message = error.to_string();
            let first = message.lines().next().unwrap_or("invalid value").trim_start_matches("error: ");
            return Err(fail(path, line, Some(key), first.to_owned()));
        }
        args.options.push(option.into());
    }
    Ok(args)
}

/// Turns one `[[target]]` table into a TARGET string with query parameters.
fn target_arg(path: &Path, text: &str, index: usize, target: &toml::Value) -> Result<String, ConfigFileError> {
    let section_start = text.match_indices("[[target]]").nth(index).map(|(at, _)| at).unwrap_or(0);
    let line_of_key = |key: &str| Some(find_line(text, key, section_start));
    let table = target
        .as_table()
        .ok_or_else(|| fail(path, Some(line_of(text, section_start)), Some("target"), "expected a table".into()))?;
    let name = table.get("name").and_then(toml::Value::as_str).ok_or_else(|| {
        fail(path, Some(line_of(text, section_start)), Some("target"), "a [[target]] needs name = \"...\"".into())
    })?;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in table.iter().filter(|(key, _)| *key != "name") {
        let parameter = TARGET_KEYS.iter().find(|(k, _)| k == key).map(|(_, p)| *p).ok_or_else(|| {
            let known: Vec<&str> = TARGET_KEYS.iter().map(|(k, _)| *k).collect();
            fail(path, line_of_key(key), Some(key), format!("unknown target key (known: name, {})", known.join(", ")))
        })?;
        match value {
            toml::Value::Boolean(false) if parameter == "read-only" => {}
            value => {
                let value = scalar(value).ok_or_else(|| {
                    fail(path, line_of_key(key), Some(key), "expected a string, number or boolean".into())
                })?;
                query.append_pair(parameter, &value);
            }
        }
    }
    let query = query.finish();
    let spec = match (query.is_empty(), name.contains('?')) {
        (true, _) => name.to_owned(),
        (false, true) => format!("{name}&{query}"),
        (false, false) => format!("{name}?{query}"),
    };
    spec.parse::<TargetSpec>()
        .map_err(|e| fail(path, Some(line_of(text, section_start)), Some("target"), e.to_string()))?;
    Ok(spec)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn fail(path: &Path, line: Option<usize>, key: Option<&str>, message: String) -> ConfigFileError {
    ConfigFileError { path: path.to_owned(), line, key: key.map(str::to_owned), message }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line where `key = ...` is first written at or after `from`.
fn find_line(text: &str, key: &str, from: usize) -> usize {
    let mut offset = from;
    for line in text[from..].split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')) {
            return line_of(text, offset);
        }
        offset += line.len();
    }
    line_of(text, from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<FileArgs, ConfigFileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text).unwrap();
        load(&path, &<crate::cli::Cli as clap::CommandFactory>::command(), &|name| name == "LAKEBASE_PROXY_PORT")
    }

    #[test]
    fn keys_become_options_and_targets_become_urls() {
        let args = load_text(
            "max_pool_size = 7\nidle_timeout = \"5m\"\nlazy_attach = true\nport = 6000\npool_mode = \"transaction\"\n\n\
             [[target]]\nname = \"projects/app\"\nread_only = true\nport = 7000\nmax_pool_size = 3\npool_mode = \"session\"\n\n\
             [[target]]\nname = \"postgresql://u@h/db\"\n",
        )
        .unwrap();
        let options: Vec<String> = args.options.iter().map(|o| o.to_string_lossy().into_owned()).collect();
        assert!(
            options.contains(&"--max-pool-size=7".to_owned())
                && options.contains(&"--lazy-attach".to_owned())
                && options.contains(&"--pool-mode=transaction".to_owned()),
            "{options:?}"
        );
        assert!(!options.iter().any(|o| o.starts_with("--port")), "the environment sets the port");
        assert_eq!(args.targets[0], "projects/app?max-pool-size=3&pool-mode=session&port=7000&read-only=true");
        assert_eq!(args.targets[1], "postgresql://u@h/db");
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let error = load_text("port = 1\nmax_pool_sizes = 3\n").unwrap_err();
        assert_eq!((error.line, error.key.as_deref()), (Some(2), Some("max_pool_sizes")));
        let error = load_text("\n\nidle_timeout = \"soon\"\n").unwrap_err();
        assert_eq!((error.line, error.key.as_deref()), (Some(3), Some("idle_timeout")));
        assert!(error.to_string().contains(":3 (idle_timeout)"), "{error}");
        let error = load_text("[[target]]\nname = \"projects/app\"\nport = \"x\"\n").unwrap_err();
        assert_eq!(error.line, Some(1));
        let error = load_text("[[target]]\nname = \"projects/app\"\nbogus = 1\n").unwrap_err();
        assert_eq!((error.line, error.key.as_deref()), (Some(3), Some("bogus")));
        let error = load_text("port = \n").unwrap_err();
        assert_eq!(error.line, Some(1));
    }
}
