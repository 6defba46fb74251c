use std::io;
use std::time::Duration;

use crate::credentials::CredentialError;
use crate::error::UserFacing;
use crate::protocol::messages::{ErrorFields, Severity};
use crate::protocol::sqlstate;

/// Why an upstream connection could not be opened or logged into.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("cannot reach upstream {address}: {source}")]
    Unreachable {
        /// `host:port` dialled.
        address: String,
        /// The socket error.
        source: io::Error,
    },
    /// Connect, TLS and login together took longer than allowed.
    #[error("upstream {address} did not complete the login within {}s", .after.as_secs())]
    Timeout {
        /// `host:port` dialled.
        address: String,
        /// The limit.
        after: Duration,
    },
    /// The server answered SSLRequest with `N`.
    #[error("upstream {host} does not accept TLS, and lakebase-proxy never sends a password in plaintext")]
    TlsRefused {
        /// The upstream host.
        host: String,
    },
    /// The TLS handshake failed, usually certificate verification.
    #[error("TLS with upstream {host} failed: {reason}")]
    Tls {
        /// The upstream host.
        host: String,
        /// What went wrong, in words (see `tls::describe_handshake_error`).
        reason: String,
    },
    /// The server sent an ErrorResponse during login (bad password, no such database...).
    #[error("upstream refused the login: {0}")]
    Server(ErrorFields),
    /// No password could be obtained.
    #[error("no upstream password: {0}")]
    Credential(#[from] CredentialError),
    /// The server asked for a password but none is configured.
    #[error("upstream asks for a password but none is configured (use --password-file or --password-command)")]
    NoPassword,
    /// The server asked for an authentication method the proxy does not implement.
    #[error("upstream asks for an unsupported authentication method: {0}")]
    UnsupportedAuth(String),
    /// The server broke the protocol or the connection dropped during login.
    #[error("upstream connection failed during login: {0}")]
    Io(#[from] io::Error),
}

impl ConnectError {
    /// A short name for metrics.
    pub fn class(&self) -> &'static str {
        match self {
            ConnectError::Unreachable { .. } => "unreachable",
            ConnectError::Timeout { .. } => "timeout",
            ConnectError::TlsRefused { .. } | ConnectError::Tls { .. } => "tls",
            ConnectError::Server(fields) if fields.code.starts_with(sqlstate::INVALID_AUTHORIZATION_CLASS) => "auth",
            ConnectError::Server(_) => "server",
            ConnectError::Credential(_) | ConnectError::NoPassword => "credential",
            ConnectError::UnsupportedAuth(_) => "unsupported_auth",
            ConnectError::Io(_) => "io",
        }
    }

    /// True for connection failures that may pass by themselves within seconds (network,
    /// restarts, a compute waking from scale-to-zero), as opposed to refusals that repeat until
    /// someone acts (credentials, permissions, certificates) or a missing password.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Unreachable { .. } | ConnectError::Timeout { .. } | ConnectError::Io(_) => true,
            // Connection-class errors and "the database system is starting up" (a waking
            // compute). Not 53300 (full), and never 28xxx or 42501: those repeat.
            ConnectError::Server(fields) => {
                fields.code.starts_with(sqlstate::CONNECTION_EXCEPTION_CLASS)
                    || fields.code == sqlstate::CANNOT_CONNECT_NOW
            }
            _ => false,
        }
    }
}

impl UserFacing for ConnectError {
    fn to_client(&self) -> ErrorFields {
        let fatal = |code: &str, hint: &str| {
            ErrorFields::new(Severity::Fatal, code, format!("lakebase-proxy: {self}")).with_hint(hint.to_owned())
        };
        match self {
            ConnectError::Server(fields) => {
                let mut fields = fields.clone();
                fields.severity = Severity::Fatal;
                if fields.code.starts_with(sqlstate::INVALID_AUTHORIZATION_CLASS) && fields.hint.is_none() {
                    fields.hint = Some("The upstream refused the password lakebase-proxy presented: check the role name and the password source.".into());
                }
                fields
            }
            ConnectError::Unreachable { .. } | ConnectError::Timeout { .. } => {
                fatal(sqlstate::CONNECTION_UNABLE, "Check the target host and port, and that the server is running.")
            }
            ConnectError::TlsRefused { .. } => fatal(sqlstate::CONNECTION_UNABLE, "Enable TLS on the upstream server."),
            ConnectError::Tls { .. } => fatal(
                sqlstate::CONNECTION_UNABLE,
                "The upstream certificate must be valid for the target host name and signed by a trusted CA (sslrootcert=, SSL_CERT_FILE).",
            ),
            // A source that is down (an API outage) is a connection-class failure a client may
            // retry; a refusal or no source at all is an authorization problem.
            ConnectError::Credential(CredentialError::Unavailable(_)) => fatal(
                sqlstate::CONNECTION_UNABLE,
                "lakebase-proxy cannot obtain a password right now and retries in the background; try again shortly.",
            ),
            ConnectError::Credential(_) | ConnectError::NoPassword => fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "Fix the password source; lakebase-proxy retries it in the background.",
            ),
            ConnectError::UnsupportedAuth(_) => {
                fatal(sqlstate::FEATURE_NOT_SUPPORTED, "Use password, md5 or scram-sha-256 upstream.")
            }
            ConnectError::Io(_) => {
                fatal(sqlstate::CONNECTION_FAILURE, "Try again; if it persists, check the upstream server's log.")
            }
        }
    }
}
