use std::path::PathBuf;

use super::{BoxFuture, Credential, CredentialError, CredentialSource, Secret};

/// A password read from a file (a mounted Kubernetes secret, a file another agent rotates).
/// The file is read again at every refresh, so rotating its contents takes effect without a
/// restart.
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    /// A source reading `path`.
    pub fn new(path: PathBuf) -> FileSource {
        FileSource { path }
    }
}

impl CredentialSource for FileSource {
    fn describe(&self) -> String {
        format!("password file {}", self.path.display())
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Credential, CredentialError>> {
        Box::pin(async move {
            let contents = tokio::fs::read_to_string(&self.path)
                .await
                .map_err(|error| CredentialError::Unavailable(format!("cannot read {}: {error}", self.describe())))?;
            let password = first_line(&contents)
                .ok_or_else(|| CredentialError::Refused(format!("{} is empty", self.describe())))?;
            Ok(Credential { secret: Secret::new(password), expires_at: None })
        })
    }
}

/// The password in a file or a command's output: its first line, without the line ending.
pub(super) fn first_line(text: &str) -> Option<&str> {
    let line = text.lines().next()?.trim_end_matches('\r');
    (!line.is_empty()).then_some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_drops_line_endings() {
        assert_eq!(first_line("pw\r\nmore"), Some("pw"));
        assert_eq!(first_line("pw"), Some("pw"));
        assert_eq!(first_line("\n"), None);
        assert_eq!(first_line(""), None);
    }

    #[tokio::test]
    async fn reads_the_current_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "one\n").unwrap();
        let source = FileSource::new(path.clone());
        assert_eq!(source.fetch().await.unwrap().secret.expose(), "one");
        std::fs::write(&path, "two\n").unwrap();
        assert_eq!(source.fetch().await.unwrap().secret.expose(), "two");
        std::fs::write(&path, "").unwrap();
        assert!(matches!(source.fetch().await, Err(CredentialError::Refused(_))));
    }
}
