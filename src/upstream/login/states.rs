//! The login conversation as explicit states, in the manner of rustls's `Expect*` states.
//!
//! Each state is a type holding only what its step needs, and it handles only the messages
//! the protocol allows next: a SASLContinue is only read where a SCRAM exchange is waiting
//! for one, a cancel key only after AuthenticationOk. An out-of-order message has no code path
//! but an error, and nothing here does I/O, so the whole conversation is testable with canned
//! bytes. The driver in the parent module reads, feeds and writes.

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256};
use postgres_protocol::message::frontend;
use tracing::debug;

use super::LoginResult;
use crate::credentials::Secret;
use crate::protocol::messages::{self, ErrorFields};
use crate::protocol::{AuthRequest, CancelKey, backend};
use crate::upstream::ConnectError;

/// A login in progress after the StartupMessage; which server messages are legal next
/// depends on the state it is in. A variant names what has happened, the state it holds what
/// is expected next.
pub(super) enum Login<'a> {
    /// The StartupMessage went out: the server is to say how to authenticate (or that it
    /// needs nothing).
    Started(ExpectAuthRequest<'a>),
    /// A password or a verified SCRAM exchange went out; the server is to accept it.
    CredentialsSent(ExpectAuthOk),
    /// The SCRAM client-first message went out; the server is to answer with its salt.
    SaslStarted(ExpectSaslContinue),
    /// The SCRAM proof went out; the server is to prove it knows the password too.
    ProofSent(ExpectSaslFinal),
    /// Logged in; the server reports its parameters and cancel key up to ReadyForQuery.
    Authenticated(ExpectReady),
}

/// What the driver does after feeding one message.
pub(super) enum Step<'a> {
    /// Feed the next message to this state.
    Read(Login<'a>),
    /// Send these bytes, then feed the next message to this state.
    Send(Login<'a>, BytesMut),
    /// Run [`ScramProof::compute`] off the event loop, then send what it yields.
    Compute(ScramProof),
    /// The login is complete. Its `leftover` is empty: the bytes read past ReadyForQuery are
    /// the driver's.
    Done(LoginResult),
}

impl<'a> Login<'a> {
    /// A login as `user`, with `password` for a server that asks for one and, for SCRAM
    /// channel binding, the tls-server-end-point hash of the server's certificate (RFC 5929).
    pub(super) fn new(user: &'a str, password: Option<&'a Secret>, certificate_hash: Option<Vec<u8>>) -> Login<'a> {
        Login::Started(ExpectAuthRequest { user, password, certificate_hash })
    }

    /// Takes one server message, as `protocol::frame` splits it.
    pub(super) fn feed(self, tag: u8, body: Bytes) -> Result<Step<'a>, ConnectError> {
        match tag {
            // A refusal ends the login wherever it comes.
            backend::ERROR_RESPONSE => return Err(ConnectError::Server(ErrorFields::parse(&body))),
            // Notices and NegotiateProtocolVersion carry nothing the proxy needs.
            backend::NOTICE_RESPONSE | backend::NEGOTIATE_PROTOCOL_VERSION => return Ok(Step::Read(self)),
            _ => {}
        }
        let message = Message::parse(tag, body)?;
        match self {
            Login::Started(state) => state.handle(message),
            Login::CredentialsSent(state) => state.handle(message),
            Login::SaslStarted(state) => state.handle(message),
            Login::ProofSent(state) => state.handle(message),
            Login::Authenticated(state) => state.handle(message),
        }
    }
}

/// Awaits the first authentication request, holding what answering it takes.
pub(super) struct ExpectAuthRequest<'a> {
    user: &'a str,
    password: Option<&'a Secret>,
    certificate_hash: Option<Vec<u8>>,
}

impl<'a> ExpectAuthRequest<'a> {
    fn handle(self, message: Message) -> Result<Step<'a>, ConnectError> {
        let Message::Auth(request, data) = message else {
            return Err(message.unexpected());
        };
        let mut send = BytesMut::new();
        match request {
            AuthRequest::Ok => return Ok(Step::Read(Login::Authenticated(ExpectReady::default()))),
            AuthRequest::CleartextPassword => {
                debug!("upstream asks for a cleartext password");
                let password = self.password.ok_or(ConnectError::NoPassword)?;
                frontend::password_message(password.expose().as_bytes(), &mut send)?;
            }
            AuthRequest::Md5Password => {
                let password = self.password.ok_or(ConnectError::NoPassword)?;
                let salt: [u8; 4] =
                    data.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(|| protocol_error("short MD5 salt"))?;
                let hashed = md5_hash(self.user.as_bytes(), password.expose().as_bytes(), salt);
                frontend::password_message(hashed.as_bytes(), &mut send)?;
            }
            AuthRequest::Sasl => {
                let password = self.password.ok_or(ConnectError::NoPassword)?;
                let (mechanism, binding) = choose_mechanism(&data, self.certificate_hash)?;
                debug!(mechanism, "upstream asks for SASL");
                let exchange = ScramSha256::new(password.expose().as_bytes(), binding);
                frontend::sasl_initial_response(mechanism, exchange.message(), &mut send)?;
                return Ok(Step::Send(Login::SaslStarted(ExpectSaslContinue { exchange }), send));
            }
            AuthRequest::SaslContinue => return Err(protocol_error("SASLContinue without SASL")),
            AuthRequest::SaslFinal => return Err(protocol_error("SASLFinal without SASL")),
            other => return Err(ConnectError::UnsupportedAuth(other.method_name().into())),
        }
        Ok(Step::Send(Login::CredentialsSent(ExpectAuthOk), send))
    }
}

/// Picks the SCRAM variant from the mechanisms an AuthenticationSASL offers: with channel
/// binding when the certificate allows it and the server offers it.
fn choose_mechanism(
    offered: &[u8],
    certificate_hash: Option<Vec<u8>>,
) -> Result<(&'static str, ChannelBinding), ConnectError> {
    let mechanisms: Vec<&[u8]> = offered.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
    let (mechanism, binding) = match certificate_hash {
        Some(hash) if mechanisms.contains(&SCRAM_SHA_256_PLUS.as_bytes()) => {
            (SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(hash))
        }
        // We could bind but the server did not offer it: say so, which lets a server that did
        // offer it (behind a downgrading man in the middle) detect the downgrade.
        Some(_) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
        None => (SCRAM_SHA_256, ChannelBinding::unsupported()),
    };
    if !mechanisms.contains(&mechanism.as_bytes()) {
        let offered: Vec<_> = mechanisms.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
        return Err(ConnectError::UnsupportedAuth(format!("SASL {}", offered.join(", "))));
    }
    Ok((mechanism, binding))
}

/// Awaits AuthenticationOk, after a password or a verified SCRAM exchange.
pub(super) struct ExpectAuthOk;

impl ExpectAuthOk {
    fn handle(self, message: Message) -> Result<Step<'static>, ConnectError> {
        match message {
            Message::Auth(AuthRequest::Ok, _) => Ok(Step::Read(Login::Authenticated(ExpectReady::default()))),
            Message::Auth(request, _) => Err(unexpected_request(request, "AuthenticationOk")),
            other => Err(other.unexpected()),
        }
    }
}

/// Awaits the server-first message of the SCRAM exchange it holds.
pub(super) struct ExpectSaslContinue {
    exchange: ScramSha256,
}

impl ExpectSaslContinue {
    fn handle(self, message: Message) -> Result<Step<'static>, ConnectError> {
        match message {
            Message::Auth(AuthRequest::SaslContinue, server_first) => {
                Ok(Step::Compute(ScramProof { exchange: self.exchange, server_first }))
            }
            Message::Auth(request, _) => Err(unexpected_request(request, "SASLContinue")),
            other => Err(other.unexpected()),
        }
    }
}

/// The SCRAM client-final message: salting the password takes thousands of HMAC rounds
/// (milliseconds of CPU), so it is a step of its own that the driver runs off the event loop,
/// which may be relaying for every other client meanwhile.
pub(super) struct ScramProof {
    exchange: ScramSha256,
    server_first: Bytes,
}

impl ScramProof {
    /// Checks the server-first message and proves the password; yields the SASLResponse to
    /// send and the state that awaits the server's proof.
    pub(super) fn compute(self) -> Result<(Login<'static>, BytesMut), ConnectError> {
        let mut exchange = self.exchange;
        exchange.update(&self.server_first)?;
        let mut send = BytesMut::new();
        frontend::sasl_response(exchange.message(), &mut send)?;
        Ok((Login::ProofSent(ExpectSaslFinal { exchange }), send))
    }
}

/// Awaits the server-final message, whose signature the exchange it holds verifies.
pub(super) struct ExpectSaslFinal {
    exchange: ScramSha256,
}

impl ExpectSaslFinal {
    fn handle(self, message: Message) -> Result<Step<'static>, ConnectError> {
        match message {
            Message::Auth(AuthRequest::SaslFinal, server_final) => {
                let mut exchange = self.exchange;
                // Verifies the server's signature: a server that does not know the password
                // (an impostor) fails here.
                exchange.finish(&server_final)?;
                Ok(Step::Read(Login::CredentialsSent(ExpectAuthOk)))
            }
            Message::Auth(request, _) => Err(unexpected_request(request, "SASLFinal")),
            other => Err(other.unexpected()),
        }
    }
}

/// Collects ParameterStatus and BackendKeyData up to ReadyForQuery.
#[derive(Default)]
pub(super) struct ExpectReady {
    params: Vec<(String, String)>,
    key: Option<CancelKey>,
}

impl ExpectReady {
    fn handle(mut self, message: Message) -> Result<Step<'static>, ConnectError> {
        match message {
            Message::ParameterStatus(name, value) => messages::record_parameter(&mut self.params, name, value),
            Message::BackendKeyData(key) => self.key = Some(key),
            Message::ReadyForQuery => {
                let key = self.key.ok_or_else(|| protocol_error("no BackendKeyData before ReadyForQuery"))?;
                return Ok(Step::Done(LoginResult { params: self.params, key, leftover: BytesMut::new() }));
            }
            Message::Auth(request, _) => return Err(unexpected_request(request, "ReadyForQuery")),
            other => return Err(other.unexpected()),
        }
        Ok(Step::Read(Login::Authenticated(self)))
    }
}

/// A server message as the login states read it (ErrorResponse and notices never reach them).
enum Message {
    /// Authentication: the request and the data after its code.
    Auth(AuthRequest, Bytes),
    /// ParameterStatus: a name and its value.
    ParameterStatus(String, String),
    /// BackendKeyData: the cancel key.
    BackendKeyData(CancelKey),
    /// ReadyForQuery: the login is over.
    ReadyForQuery,
    /// Any other type, which has no place in a login.
    Other(u8),
}

impl Message {
    fn parse(tag: u8, mut body: Bytes) -> Result<Message, ConnectError> {
        Ok(match tag {
            backend::AUTHENTICATION => {
                if body.len() < 4 {
                    return Err(protocol_error("short authentication message"));
                }
                let request = AuthRequest::from_code(body.get_i32());
                Message::Auth(request, body)
            }
            backend::PARAMETER_STATUS => {
                let (name, value) = messages::read_parameter_status(&body);
                Message::ParameterStatus(name, value)
            }
            backend::BACKEND_KEY_DATA => {
                if body.len() < 8 {
                    return Err(protocol_error("short BackendKeyData"));
                }
                Message::BackendKeyData(CancelKey { pid: body.get_i32(), secret: body.get_u32() })
            }
            backend::READY_FOR_QUERY => Message::ReadyForQuery,
            other => Message::Other(other),
        })
    }

    /// The error for a message the current state has no use for.
    fn unexpected(&self) -> ConnectError {
        let tag = match self {
            Message::Auth(..) => backend::AUTHENTICATION,
            Message::ParameterStatus(..) => backend::PARAMETER_STATUS,
            Message::BackendKeyData(_) => backend::BACKEND_KEY_DATA,
            Message::ReadyForQuery => backend::READY_FOR_QUERY,
            Message::Other(tag) => *tag,
        };
        protocol_error(&format!("unexpected message '{}' during login", tag.escape_ascii()))
    }
}

/// The error for an authentication request out of turn. An AuthenticationOk in the middle of
/// SCRAM is the one that matters: a server that skips the exchange's end never proved it
/// knows the password.
fn unexpected_request(request: AuthRequest, awaited: &str) -> ConnectError {
    protocol_error(&format!("unexpected authentication request {request:?} while awaiting {awaited}"))
}

/// A protocol violation, reported as invalid data as every other broken login is.
pub(super) fn protocol_error(what: &str) -> ConnectError {
    ConnectError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()))
}
