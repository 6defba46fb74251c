//! The login conversation after the StartupMessage: password authentication (cleartext, MD5,
//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS), then the server's parameters and cancel key.
//!
//! [`states`] holds the conversation as a pure state machine; this module drives it over a
//! stream.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::ConnectError;
use super::stream::{UpstreamStream, read_server_message};
use crate::credentials::Secret;
use crate::protocol::CancelKey;
use crate::tls::server_end_point_hash;
use states::{Login, Step, protocol_error};

mod states;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

/// What a successful login yields.
pub struct LoginResult {
    /// ParameterStatus values in the order the server sent them.
    pub params: Vec<(String, String)>,
    /// The server's BackendKeyData.
    pub key: CancelKey,
    /// Bytes read past ReadyForQuery (normally none).
    pub leftover: BytesMut,
}

/// Runs the login after the StartupMessage was sent.
pub(super) async fn authenticate(
    stream: &mut UpstreamStream,
    user: &str,
    password: Option<&Secret>,
) -> Result<LoginResult, ConnectError> {
    // One hash of the certificate: cheap enough to take whether or not the server asks for SCRAM.
    let certificate_hash = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| server_end_point_hash(leaf));
    drive(stream, Login::new(user, password, certificate_hash)).await
}

/// Reads a message, feeds it to the state machine, sends what it answers, until it is done.
/// Generic over the stream so tests can run it over an in-memory pipe.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut login: Login<'_>,
) -> Result<LoginResult, ConnectError> {
    let mut inbound = BytesMut::with_capacity(1024);
    loop {
        let (tag, body) = read_server_message(stream, &mut inbound).await?;
        let (next, send) = match login.feed(tag, body)? {
            Step::Read(next) => (next, None),
            Step::Send(next, send) => (next, Some(send)),
            Step::Compute(proof) => {
                let (next, send) = tokio::task::spawn_blocking(move || proof.compute())
                    .await
                    .map_err(|_| protocol_error("SCRAM computation failed"))??;
                (next, Some(send))
            }
            Step::Done(result) => return Ok(LoginResult { leftover: inbound, ..result }),
        };
        if let Some(send) = send {
            stream.write_all(&send).await?;
            stream.flush().await?;
        }
        login = next;
    }
}
