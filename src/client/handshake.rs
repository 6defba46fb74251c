//! The startup phase: encryption requests, cancel requests and the StartupMessage.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::ClientStream;
use crate::error::UserFacing;
use crate::protocol::messages::{ErrorFields, Severity};
use crate::protocol::sqlstate;
use crate::protocol::startup::{self, StartupError, read_packet};
use crate::protocol::{CancelKey, StartupParams, StartupRequest};

/// Encryption requests a client may send before its startup message (GSSENC, then SSL).
const MAX_PRELUDE_PACKETS: usize = 3;

/// What the client wants once the handshake is done.
#[derive(Debug)]
pub enum Handshake {
    /// Cancel the query of the session with this key.
    Cancel(CancelKey),
    /// Open a session.
    Session {
        /// The StartupMessage.
        startup: SessionStartup,
        /// What the client sent after its StartupMessage without waiting for an answer, to
        /// be handled as the session's first messages.
        early: BytesMut,
    },
}

/// A client's StartupMessage.
#[derive(Debug)]
pub struct SessionStartup {
    /// Minor protocol version asked for.
    pub minor: u16,
    /// Startup parameters.
    pub params: StartupParams,
    /// `_pq_.*` options asked for, all unsupported.
    pub protocol_options: Vec<String>,
}

impl SessionStartup {
    /// Whether the client must be told the protocol version and options the proxy supports.
    pub fn needs_negotiation(&self) -> bool {
        self.minor > 0 || !self.protocol_options.is_empty()
    }
}

/// A handshake that failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The startup packet was invalid.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// TLS toward the client failed.
    #[error("TLS handshake with the client failed: {0}")]
    Tls(std::io::Error),
    /// The client kept sending encryption requests.
    #[error("too many encryption requests before the startup message")]
    TooManyRequests,
    /// Bytes followed an encryption request before its answer; they could have been injected
    /// by a man in the middle, so PostgreSQL refuses them too.
    #[error("received unencrypted data after an encryption request")]
    DataAfterEncryptionRequest,
}

impl UserFacing for HandshakeError {
    fn to_client(&self) -> ErrorFields {
        let code = match self {
            HandshakeError::Startup(StartupError::UnsupportedProtocol { .. }) => sqlstate::FEATURE_NOT_SUPPORTED,
            _ => sqlstate::PROTOCOL_VIOLATION,
        };
        ErrorFields::new(Severity::Fatal, code, format!("lakebase-proxy: {self}"))
    }
}

/// Reads startup packets until the client asks for a session or a cancel; `Ok(None)` when it
/// left without asking for either. SSLRequest is accepted on TCP when `tls` is configured.
pub async fn negotiate(
    client: &mut ClientStream,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> Result<Option<Handshake>, HandshakeError> {
    let mut buf = BytesMut::new();
    for _ in 0..MAX_PRELUDE_PACKETS {
        let Some(packet) = read_packet(client, &mut buf).await? else {
            return Ok(None);
        };
        let request = startup::parse(&packet)?;
        if matches!(request, StartupRequest::Ssl | StartupRequest::GssEnc) && !buf.is_empty() {
            return Err(HandshakeError::DataAfterEncryptionRequest);
        }
        match request {
            StartupRequest::Ssl => match tls {
                Some(config) if client.is_tcp() => {
                    client.write_all(b"S").await.map_err(StartupError::Io)?;
                    client.upgrade_to_tls(config.clone()).await.map_err(HandshakeError::Tls)?;
                }
                _ => client.write_all(b"N").await.map_err(StartupError::Io)?,
            },
            StartupRequest::GssEnc => client.write_all(b"N").await.map_err(StartupError::Io)?,
            StartupRequest::Cancel(key) => return Ok(Some(Handshake::Cancel(key))),
            StartupRequest::Startup { minor, params, protocol_options } => {
                let startup = SessionStartup { minor, params, protocol_options };
                // An empty `buf` still holds its read allocation; an idle client must not.
                let early = if buf.is_empty() { BytesMut::new() } else { buf };
                return Ok(Some(Handshake::Session { startup, early }));
            }
        }
    }
    Err(HandshakeError::TooManyRequests)
}
