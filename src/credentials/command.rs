use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::file::first_line;
use super::{BoxFuture, Credential, CredentialError, CredentialSource, Secret};

/// Longest a password command may run before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A password printed by a command (`aws rds generate-db-auth-token ...`, `gcloud auth
/// print-access-token`, a vault client): the first line of its standard output.
pub struct CommandSource {
    command_line: String,
}

impl CommandSource {
    /// A source running `command_line` through `sh -c`.
    pub fn new(command_line: String) -> CommandSource {
        CommandSource { command_line }
    }
}

impl CredentialSource for CommandSource {
    fn describe(&self) -> String {
        // Only the program: arguments sometimes carry secrets of their own.
        let program = self.command_line.split_whitespace().next().unwrap_or("");
        format!("password command `{program} ...`")
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Credential, CredentialError>> {
        Box::pin(async move {
            let unavailable = |what: String| CredentialError::Unavailable(format!("{} {what}", self.describe()));
            let child = Command::new("sh")
                .arg("-c")
                .arg(&self.command_line)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|error| unavailable(format!("could not start: {error}")))?;
            let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
                .await
                .map_err(|_| unavailable(format!("did not finish within {}s", COMMAND_TIMEOUT.as_secs())))?
                .map_err(|error| unavailable(format!("failed: {error}")))?;
            if !output.status.success() {
                // stderr is shown (it explains the failure); stdout never is: it may hold a secret.
                let stderr = String::from_utf8_lossy(&output.stderr);
                let reason: String = stderr.lines().next().unwrap_or("").chars().take(300).collect();
                return Err(unavailable(format!("exited with {}: {reason}", output.status)));
            }
            let stdout =
                String::from_utf8(output.stdout).map_err(|_| unavailable("printed non-UTF-8 output".into()))?;
            let password = first_line(&stdout).ok_or_else(|| unavailable("printed nothing".into()))?;
            Ok(Credential { secret: Secret::new(password), expires_at: None })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takes_the_first_line_of_stdout() {
        let source = CommandSource::new("printf 'tok-1\\nignored\\n'".into());
        assert_eq!(source.fetch().await.unwrap().secret.expose(), "tok-1");
    }

    #[tokio::test]
    async fn failure_reports_stderr_but_not_stdout() {
        let source = CommandSource::new("echo leaked-secret; echo 'no session' >&2; exit 3".into());
        let error = source.fetch().await.unwrap_err().to_string();
        assert!(error.contains("no session"), "{error}");
        assert!(!error.contains("leaked-secret"), "{error}");
    }
}
