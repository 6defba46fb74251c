//! The login conversation after the StartupMessage: password authentication (cleartext, MD5,
//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS), then the server's parameters and cancel key.

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::ConnectError;
use super::stream::UpstreamStream;
use crate::credentials::Secret;
use crate::protocol::CancelKey;
use crate::protocol::frame::{self, MAX_BUFFERED_MESSAGE};
use crate::protocol::messages::ErrorFields;
use crate::protocol::{AuthRequest, backend};
use crate::tls::server_end_point_hash;

/// What a successful login yields.
pub struct LoginResult {
    /// ParameterStatus values in the order the server sent them.
    pub params: Vec<(String, String)>,
    /// The server's BackendKeyData.
    pub key: CancelKey,
    /// Bytes read past ReadyForQuery (normally none).
    pub leftover: BytesMut,
}

/// Reads one whole message from the server.
async fn read_message(stream: &mut UpstreamStream, buf: &mut BytesMut) -> Result<(u8, Bytes), ConnectError> {
    frame::read_message(stream, buf, MAX_BUFFERED_MESSAGE)
        .await?
        .ok_or_else(|| ConnectError::Io(std::io::ErrorKind::UnexpectedEof.into()))
}

async fn send(stream: &mut UpstreamStream, buf: &mut BytesMut) -> Result<(), ConnectError> {
    stream.write_all(buf).await?;
    stream.flush().await?;
    buf.clear();
    Ok(())
}

fn protocol_error(what: &str) -> ConnectError {
    ConnectError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()))
}

/// Runs the login after the StartupMessage was sent.
pub(super) async fn authenticate(
    stream: &mut UpstreamStream,
    user: &str,
    password: Option<&Secret>,
) -> Result<LoginResult, ConnectError> {
    let mut inbound = BytesMut::with_capacity(1024);
    let mut outbound = BytesMut::new();
    let mut scram: Option<ScramSha256> = None;
    let mut params = Vec::new();
    let mut key = None;
    loop {
        let (tag, mut body) = read_message(stream, &mut inbound).await?;
        match tag {
            backend::AUTHENTICATION => {
                if body.len() < 4 {
                    return Err(protocol_error("short authentication message"));
                }
                match AuthRequest::from_code(body.get_i32()) {
                    AuthRequest::Ok => {}
                    AuthRequest::CleartextPassword => {
                        debug!("upstream asks for a cleartext password");
                        let password = password.ok_or(ConnectError::NoPassword)?;
                        frontend::password_message(password.expose().as_bytes(), &mut outbound)?;
                        send(stream, &mut outbound).await?;
                    }
                    AuthRequest::Md5Password => {
                        let password = password.ok_or(ConnectError::NoPassword)?;
                        let salt: [u8; 4] = body
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| protocol_error("short MD5 salt"))?;
                        let hashed = md5_hash(user.as_bytes(), password.expose().as_bytes(), salt);
                        frontend::password_message(hashed.as_bytes(), &mut outbound)?;
                        send(stream, &mut outbound).await?;
                    }
                    AuthRequest::Sasl => {
                        let password = password.ok_or(ConnectError::NoPassword)?;
                        let mechanisms: Vec<&[u8]> = body.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                        let certificate_hash = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|leaf| server_end_point_hash(leaf));
                        let (mechanism, binding) = match certificate_hash {
                            Some(hash) if mechanisms.contains(&SCRAM_SHA_256_PLUS.as_bytes()) => {
                                (SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(hash))
                            }
                            // We could bind but the server did not offer it: say so, which lets a
                            // server that did offer it detect a downgrade.
                            Some(_) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
                            None => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                        };
                        if !mechanisms.contains(&mechanism.as_bytes()) {
                            let offered: Vec<_> =
                                mechanisms.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
                            return Err(ConnectError::UnsupportedAuth(format!("SASL {}", offered.join(", "))));
                        }
                        debug!(mechanism, "upstream asks for SASL");
                        let exchange = ScramSha256::new(password.expose().as_bytes(), binding);
                        frontend::sasl_initial_response(mechanism, exchange.message(), &mut outbound)?;
                        send(stream, &mut outbound).await?;
                        scram = Some(exchange);
                    }
                    AuthRequest::SaslContinue => {
                        let mut exchange = scram.take().ok_or_else(|| protocol_error("SASLContinue without SASL"))?;
                        // The salted password costs thousands of HMAC rounds (milliseconds):
                        // off the event loop, which may be relaying for every other client.
                        let exchange = tokio::task::spawn_blocking(move || exchange.update(&body).map(|()| exchange))
                            .await
                            .map_err(|_| protocol_error("SCRAM computation failed"))??;
                        frontend::sasl_response(exchange.message(), &mut outbound)?;
                        scram = Some(exchange);
                        send(stream, &mut outbound).await?;
                    }
                    AuthRequest::SaslFinal => {
                        let exchange = scram.as_mut().ok_or_else(|| protocol_error("SASLFinal without SASL"))?;
                        // Verifies the server's signature: a server that does not know the
                        // password (an impostor) fails here.
                        exchange.finish(&body)?;
                    }
                    other => {
                        return Err(ConnectError::UnsupportedAuth(other.method_name().into()));
                    }
                }
            }
            backend::PARAMETER_STATUS => {
                let mut fields = body.split(|&b| b == 0);
                let name = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
                let value = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
                match params.iter_mut().find(|(n, _)| *n == name) {
                    Some(entry) => entry.1 = value,
                    None => params.push((name, value)),
                }
            }
            backend::BACKEND_KEY_DATA => {
                if body.len() < 8 {
                    return Err(protocol_error("short BackendKeyData"));
                }
                key = Some(CancelKey { pid: body.get_i32(), secret: body.get_u32() });
            }
            backend::ERROR_RESPONSE => return Err(ConnectError::Server(ErrorFields::parse(&body))),
            backend::READY_FOR_QUERY => {
                let key = key.ok_or_else(|| protocol_error("no BackendKeyData before ReadyForQuery"))?;
                return Ok(LoginResult { params, key, leftover: inbound });
            }
            // Notices during login and NegotiateProtocolVersion carry nothing the proxy needs.
            backend::NOTICE_RESPONSE | backend::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(protocol_error(&format!("unexpected message '{}' during login", other.escape_ascii())));
            }
        }
    }
}
