//! How a client session ends: in failure ([`SessionError`], which decides what the client is
//! told) or not ([`SessionEnd`]). Below every phase of the session, so each can return them.

use std::io;
use std::time::Duration;

use super::HandshakeError;
use crate::error::UserFacing;
use crate::pool::CheckoutError;
use crate::protocol::messages::{ErrorFields, Severity};
use crate::protocol::sqlstate;

/// A session that ended in failure; the client is told via [`UserFacing`].
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The startup handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The client did not complete the startup in time.
    #[error("no startup message within {}s", .0.as_secs())]
    StartupTimeout(Duration),
    /// The client connected from an address the proxy does not trust.
    #[error("connections from {0} are not accepted: lakebase-proxy trusts only loopback and unix-socket clients")]
    UntrustedPeer(String),
    /// A replication connection was asked for.
    #[error("replication connections are not supported through lakebase-proxy")]
    Replication,
    /// No upstream connection could be had.
    #[error(transparent)]
    Checkout(#[from] CheckoutError),
    /// The client connection failed.
    #[error("client connection failed: {0}")]
    ClientIo(io::Error),
    /// The client broke the message framing.
    #[error("invalid message from the client: {0}")]
    ClientProtocol(io::Error),
    /// The upstream connection went away without a word.
    #[error("the upstream connection was lost{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    UpstreamLost(Option<io::Error>),
    /// The upstream broke the message framing.
    #[error("invalid message from the upstream: {0}")]
    UpstreamProtocol(io::Error),
    /// The proxy is shutting down.
    #[error("terminating connection due to administrator command")]
    ShuttingDown,
}

impl SessionError {
    /// For sessions turned away before they started, why (a metric label).
    pub(super) fn refusal(&self) -> Option<&'static str> {
        match self {
            SessionError::Handshake(_) => Some("protocol"),
            SessionError::StartupTimeout(_) => Some("startup_timeout"),
            SessionError::UntrustedPeer(_) => Some("untrusted"),
            SessionError::Replication => Some("replication"),
            SessionError::Checkout(CheckoutError::Exhausted { .. }) => Some("pool_exhausted"),
            SessionError::Checkout(CheckoutError::Connect(_)) => Some("upstream_login"),
            _ => None,
        }
    }
}

impl UserFacing for SessionError {
    fn to_client(&self) -> ErrorFields {
        let fatal = |code| ErrorFields::new(Severity::Fatal, code, format!("lakebase-proxy: {self}"));
        match self {
            SessionError::Handshake(error) => error.to_client(),
            SessionError::Checkout(error) => error.to_client(),
            SessionError::StartupTimeout(_) | SessionError::ClientProtocol(_) => fatal(sqlstate::PROTOCOL_VIOLATION),
            SessionError::UntrustedPeer(_) => fatal(sqlstate::INVALID_AUTHORIZATION),
            SessionError::Replication => fatal(sqlstate::FEATURE_NOT_SUPPORTED),
            SessionError::ClientIo(_) | SessionError::UpstreamLost(_) | SessionError::UpstreamProtocol(_) => {
                fatal(sqlstate::CONNECTION_FAILURE)
            }
            SessionError::ShuttingDown => {
                fatal(sqlstate::ADMIN_SHUTDOWN).with_hint("lakebase-proxy is shutting down; reconnect in a moment.")
            }
        }
    }
}

/// How a session ended without error.
#[derive(Debug)]
pub enum SessionEnd {
    /// Connected and left without a startup message (probes, port scans).
    NoStartup,
    /// A cancel request was handled.
    Cancel,
    /// The client finished (Terminate or close).
    ClientDone,
    /// The upstream ended the session and told the client why (a FATAL such as
    /// `pg_terminate_backend`).
    UpstreamEnded,
}
