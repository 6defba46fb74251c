//! The login state machine fed canned server messages, checking what it sends back; SCRAM
//! against the real server side in `test_server`. No sockets: one test runs the driver over
//! an in-memory pipe.

use std::io;
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use tokio::io::AsyncWriteExt;

use super::states::{Login, Step};
use super::test_server::ScramServer;
use super::{LoginResult, drive};
use crate::credentials::Secret;
use crate::protocol::frame::{self, take_message};
use crate::protocol::messages::{self, ErrorFields, Severity};
use crate::protocol::{AuthRequest, CancelKey, TransactionStatus, backend, frontend};
use crate::upstream::ConnectError;

const USER: &str = "alice";
static PASSWORD: LazyLock<Secret> = LazyLock::new(|| Secret::new("pencil"));
const KEY: CancelKey = CancelKey { pid: 4242, secret: 0xdead_beef };
/// A tls-server-end-point hash (a SHA-256 of some certificate).
const CERTIFICATE_HASH: [u8; 32] = [0x5a; 32];

fn start(certificate_hash: Option<Vec<u8>>) -> Login<'static> {
    Login::new(USER, Some(&PASSWORD), certificate_hash)
}

/// An Authentication message with `data` after the request code.
fn auth(request: AuthRequest, data: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(backend::AUTHENTICATION);
    buf.put_u32(8 + data.len() as u32);
    buf.put_i32(request.code());
    buf.extend_from_slice(data);
    buf
}

/// AuthenticationSASL offering `mechanisms`.
fn sasl(mechanisms: &[&str]) -> BytesMut {
    let offered: Vec<u8> = mechanisms.iter().flat_map(|m| [m.as_bytes(), b"\0"].concat()).chain([0]).collect();
    auth(AuthRequest::Sasl, &offered)
}

/// What a server sends from AuthenticationOk on, as PostgreSQL orders it.
fn after_auth() -> BytesMut {
    let mut buf = auth(AuthRequest::Ok, &[]);
    messages::parameter_status(&mut buf, "server_version", "17.5");
    messages::parameter_status(&mut buf, "TimeZone", "UTC");
    messages::backend_key_data(&mut buf, KEY);
    messages::ready_for_query(&mut buf, TransactionStatus::Idle);
    buf
}

/// Feeds each whole message in `server` in turn; all but the last must leave the login
/// waiting for more.
fn feed(mut login: Login<'static>, server: &[u8]) -> Result<Step<'static>, ConnectError> {
    let mut buf = BytesMut::from(server);
    loop {
        let (tag, body) = take_message(&mut buf, usize::MAX).unwrap().expect("whole messages");
        let step = login.feed(tag, body)?;
        if buf.is_empty() {
            return Ok(step);
        }
        login = match step {
            Step::Read(next) => next,
            other => panic!("{} before the last message", name(&other)),
        };
    }
}

fn name(step: &Step) -> &'static str {
    match step {
        Step::Read(_) => "Read",
        Step::Send(..) => "Send",
        Step::Compute(_) => "Compute",
        Step::Done(_) => "Done",
    }
}

/// The next state and the body of the one message (PasswordMessage or a SASL response) sent.
fn sent(step: Result<Step<'static>, ConnectError>) -> (Login<'static>, Bytes) {
    match step.unwrap() {
        Step::Send(next, mut bytes) => {
            let (tag, body) = take_message(&mut bytes, usize::MAX).unwrap().expect("one whole message");
            assert_eq!(tag, frontend::PASSWORD);
            assert!(bytes.is_empty(), "one message");
            (next, body)
        }
        other => panic!("expected Send, got {}", name(&other)),
    }
}

fn waiting(step: Result<Step<'static>, ConnectError>) -> Login<'static> {
    match step.unwrap() {
        Step::Read(next) => next,
        other => panic!("expected Read, got {}", name(&other)),
    }
}

fn done(step: Result<Step<'static>, ConnectError>) -> LoginResult {
    match step.unwrap() {
        Step::Done(result) => result,
        other => panic!("expected Done, got {}", name(&other)),
    }
}

fn error(step: Result<Step<'static>, ConnectError>) -> ConnectError {
    match step {
        Err(error) => error,
        Ok(other) => panic!("expected an error, got {}", name(&other)),
    }
}

/// The text of a protocol violation (an invalid-data I/O error).
fn violation(step: Result<Step<'static>, ConnectError>) -> String {
    match error(step) {
        ConnectError::Io(error) if error.kind() == io::ErrorKind::InvalidData => error.to_string(),
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

fn assert_logged_in(result: LoginResult) {
    assert_eq!(result.params, [("server_version".into(), "17.5".into()), ("TimeZone".into(), "UTC".into())]);
    assert_eq!(result.key, KEY);
    assert!(result.leftover.is_empty());
}

/// A SCRAM exchange with `server` up to the state awaiting SASLFinal: the mechanism chosen,
/// that state, and the client-final message.
fn scram_until_final(
    server: &mut ScramServer,
    certificate_hash: Option<Vec<u8>>,
    offered: &[&str],
) -> (String, Login<'static>, String) {
    let (login, mut initial) = sent(feed(start(certificate_hash), &sasl(offered)));
    // SASLInitialResponse: mechanism, then the client-first message with its length.
    let mechanism = initial.split_to(initial.iter().position(|&b| b == 0).unwrap());
    initial.advance(1);
    assert_eq!(initial.get_i32() as usize, initial.len());
    let server_first = server.first(std::str::from_utf8(&initial).unwrap());
    let Step::Compute(proof) = feed(login, &auth(AuthRequest::SaslContinue, server_first.as_bytes())).unwrap() else {
        panic!("the proof is computed off the event loop");
    };
    let (login, mut response) = proof.compute().unwrap();
    let (tag, client_final) = take_message(&mut response, usize::MAX).unwrap().unwrap();
    assert_eq!(tag, frontend::PASSWORD);
    (String::from_utf8(mechanism.to_vec()).unwrap(), login, String::from_utf8(client_final.to_vec()).unwrap())
}

/// A whole SCRAM login; returns the mechanism and GS2 header the client chose.
fn scram_login(certificate_hash: Option<Vec<u8>>, offered: &[&str]) -> (String, String) {
    let mut server = ScramServer::new("pencil", Some(CERTIFICATE_HASH.to_vec()));
    let (mechanism, login, client_final) = scram_until_final(&mut server, certificate_hash, offered);
    let server_final = server.last(&client_final).expect("the server accepts the proof");
    let login = waiting(feed(login, &auth(AuthRequest::SaslFinal, server_final.as_bytes())));
    assert_logged_in(done(feed(login, &after_auth())));
    (mechanism, server.gs2_header().to_owned())
}

#[test]
fn cleartext_sends_the_password_then_collects_parameters_and_key() {
    // AuthenticationCleartextPassword, byte for byte.
    let (login, password) = sent(feed(start(None), b"R\0\0\0\x08\0\0\0\x03"));
    assert_eq!(&password[..], b"pencil\0");
    assert_logged_in(done(feed(login, &after_auth())));
}

#[test]
fn notices_are_skipped_and_a_parameter_reported_twice_keeps_its_place() {
    let mut server = auth(AuthRequest::Ok, &[]);
    ErrorFields::new(Severity::Notice, "00000", "welcome").write_notice(&mut server);
    messages::parameter_status(&mut server, "server_version", "16.0");
    messages::parameter_status(&mut server, "TimeZone", "UTC");
    messages::parameter_status(&mut server, "server_version", "17.5");
    messages::backend_key_data(&mut server, KEY);
    messages::ready_for_query(&mut server, TransactionStatus::Idle);
    // A server that trusts the role sends AuthenticationOk at once; no password is needed.
    assert_logged_in(done(feed(Login::new(USER, None, None), &server)));
}

#[test]
fn md5_sends_the_salted_hash_of_password_and_user() {
    let salt = [0x93, 0x0f, 0x11, 0x7c];
    let (login, hashed) = sent(feed(start(None), &auth(AuthRequest::Md5Password, &salt)));
    let expected = md5_hash(USER.as_bytes(), b"pencil", salt);
    assert!(expected.starts_with("md5"));
    assert_eq!(&hashed[..], [expected.as_bytes(), b"\0"].concat());
    assert_logged_in(done(feed(login, &after_auth())));
}

#[test]
fn scram_sha_256_completes_and_verifies_the_server() {
    // No certificate hash: the client cannot bind and says so.
    assert_eq!(scram_login(None, &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]), (SCRAM_SHA_256.into(), "n,,".into()));
}

#[test]
fn scram_sha_256_plus_binds_to_the_certificate_when_offered() {
    let chosen = scram_login(Some(CERTIFICATE_HASH.to_vec()), &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
    assert_eq!(chosen, (SCRAM_SHA_256_PLUS.into(), "p=tls-server-end-point,,".into()));
    // The binding covers the certificate: a man in the middle presenting another one is caught.
    let mut server = ScramServer::new("pencil", Some(vec![0xa5; 32]));
    let (_, _, client_final) = scram_until_final(&mut server, Some(CERTIFICATE_HASH.to_vec()), &[SCRAM_SHA_256_PLUS]);
    assert_eq!(server.last(&client_final), Err("channel binding mismatch"));
}

#[test]
fn scram_without_plus_offered_says_binding_was_possible() {
    let chosen = scram_login(Some(CERTIFICATE_HASH.to_vec()), &[SCRAM_SHA_256]);
    assert_eq!(chosen, (SCRAM_SHA_256.into(), "y,,".into()));
    // Only PLUS offered and nothing to bind to: the proxy cannot log in.
    let refused = error(feed(start(None), &sasl(&[SCRAM_SHA_256_PLUS])));
    assert!(matches!(&refused, ConnectError::UnsupportedAuth(m) if m == "SASL SCRAM-SHA-256-PLUS"), "{refused}");
}

#[test]
fn scram_refuses_a_server_that_does_not_prove_the_password() {
    let mut server = ScramServer::new("pencil", None);
    let (_, login, _) = scram_until_final(&mut server, None, &[SCRAM_SHA_256]);
    let forged = format!("v={}", STANDARD.encode([0u8; 32]));
    let refused = error(feed(login, &auth(AuthRequest::SaslFinal, forged.as_bytes())));
    assert!(matches!(&refused, ConnectError::Io(e) if e.to_string() == "SCRAM verification error"), "{refused}");

    // Nor one that skips the end of the exchange and declares success.
    let (_, login, _) = scram_until_final(&mut server, None, &[SCRAM_SHA_256]);
    let skipped = violation(feed(login, &auth(AuthRequest::Ok, &[])));
    assert_eq!(skipped, "unexpected authentication request Ok while awaiting SASLFinal");
    let (login, _) = sent(feed(start(None), &sasl(&[SCRAM_SHA_256])));
    let skipped = violation(feed(login, &auth(AuthRequest::Ok, &[])));
    assert_eq!(skipped, "unexpected authentication request Ok while awaiting SASLContinue");
}

#[test]
fn scram_rejects_a_malformed_server_first_message_without_panicking() {
    for server_first in [&b"r=not-our-nonce,s=QSXCR+Q6sek8bf92,i=4096"[..], b"garbage", b"\xff\xfe"] {
        let (login, _) = sent(feed(start(None), &sasl(&[SCRAM_SHA_256])));
        let Step::Compute(proof) = feed(login, &auth(AuthRequest::SaslContinue, server_first)).unwrap() else {
            panic!("expected Compute");
        };
        assert!(matches!(proof.compute(), Err(ConnectError::Io(_))));
    }
}

#[test]
fn an_error_response_at_any_step_is_the_servers_refusal() {
    let refusal = ErrorFields::new(Severity::Fatal, "28P01", "password authentication failed for user \"alice\"");
    let mut message = BytesMut::new();
    refusal.write_error(&mut message);
    let check = |step| match error(step) {
        ConnectError::Server(fields) => assert_eq!(fields, refusal),
        other => panic!("expected the server's refusal, got {other:?}"),
    };
    // Before any authentication request (no such database, too many connections).
    check(feed(start(None), &message));
    // After the password.
    let (after_password, _) = sent(feed(start(None), &auth(AuthRequest::CleartextPassword, &[])));
    check(feed(after_password, &message));
    // After SASLInitialResponse, and after the SCRAM proof.
    let (after_initial, _) = sent(feed(start(None), &sasl(&[SCRAM_SHA_256])));
    check(feed(after_initial, &message));
    let (_, after_proof, _) = scram_until_final(&mut ScramServer::new("pencil", None), None, &[SCRAM_SHA_256]);
    check(feed(after_proof, &message));
    // After AuthenticationOk, among the parameters.
    let mut server = auth(AuthRequest::Ok, &[]);
    messages::parameter_status(&mut server, "server_version", "17.5");
    server.extend_from_slice(&message);
    check(feed(start(None), &server));
}

#[test]
fn a_message_out_of_place_is_a_protocol_violation() {
    let mut data_row = BytesMut::new();
    messages::data_row(&mut data_row, &[Some("1")]);
    let logged_in = || waiting(feed(start(None), &auth(AuthRequest::Ok, &[])));
    let after_password = || sent(feed(start(None), &auth(AuthRequest::CleartextPassword, &[]))).0;
    assert_eq!(violation(feed(logged_in(), &data_row)), "unexpected message 'D' during login");
    assert_eq!(violation(feed(start(None), &data_row)), "unexpected message 'D' during login");

    // Parameters, the cancel key and ReadyForQuery only come after AuthenticationOk.
    let mut parameter = BytesMut::new();
    messages::parameter_status(&mut parameter, "TimeZone", "UTC");
    assert_eq!(violation(feed(start(None), &parameter)), "unexpected message 'S' during login");
    let mut key = BytesMut::new();
    messages::backend_key_data(&mut key, KEY);
    assert_eq!(violation(feed(after_password(), &key)), "unexpected message 'K' during login");
    let mut ready = BytesMut::new();
    messages::ready_for_query(&mut ready, TransactionStatus::Idle);
    assert_eq!(violation(feed(start(None), &ready)), "unexpected message 'Z' during login");

    // SCRAM steps without a SCRAM exchange, and requests out of turn.
    let sasl_continue = auth(AuthRequest::SaslContinue, b"r=abc");
    assert_eq!(violation(feed(start(None), &sasl_continue)), "SASLContinue without SASL");
    assert_eq!(violation(feed(start(None), &auth(AuthRequest::SaslFinal, b"v="))), "SASLFinal without SASL");
    assert_eq!(
        violation(feed(after_password(), &sasl_continue)),
        "unexpected authentication request SaslContinue while awaiting AuthenticationOk"
    );
    assert_eq!(
        violation(feed(logged_in(), &auth(AuthRequest::CleartextPassword, &[]))),
        "unexpected authentication request CleartextPassword while awaiting ReadyForQuery"
    );
}

#[test]
fn truncated_messages_are_protocol_violations() {
    assert_eq!(violation(feed(start(None), b"R\0\0\0\x06\0\0")), "short authentication message");
    assert_eq!(violation(feed(start(None), &auth(AuthRequest::Md5Password, &[1, 2]))), "short MD5 salt");
    let logged_in = || waiting(feed(start(None), &auth(AuthRequest::Ok, &[])));
    assert_eq!(violation(feed(logged_in(), b"K\0\0\0\x08\0\0\0\x01")), "short BackendKeyData");
    let mut ready = BytesMut::new();
    messages::ready_for_query(&mut ready, TransactionStatus::Idle);
    assert_eq!(violation(feed(logged_in(), &ready)), "no BackendKeyData before ReadyForQuery");
}

#[test]
fn a_password_request_without_a_password_or_an_unsupported_method_is_refused() {
    for request in
        [auth(AuthRequest::CleartextPassword, &[]), auth(AuthRequest::Md5Password, &[1; 4]), sasl(&["SCRAM-SHA-256"])]
    {
        let refused = error(feed(Login::new(USER, None, None), &request));
        assert!(matches!(refused, ConnectError::NoPassword), "{refused}");
    }
    for (request, method) in [
        (AuthRequest::Gss, "GSSAPI"),
        (AuthRequest::Sspi, "SSPI"),
        (AuthRequest::KerberosV5, "Kerberos V5"),
        (AuthRequest::Unknown(42), "unknown"),
    ] {
        let refused = error(feed(start(None), &auth(request, &[])));
        assert!(matches!(&refused, ConnectError::UnsupportedAuth(m) if m == method), "{refused}");
    }
}

#[tokio::test]
async fn the_driver_runs_the_exchange_over_a_stream_and_keeps_bytes_past_ready_for_query() {
    let (mut proxy_side, mut server_side) = tokio::io::duplex(4096);
    let mut notice = BytesMut::new();
    ErrorFields::new(Severity::Notice, "00000", "first relayed").write_notice(&mut notice);
    let trailing = notice.clone();
    let server = tokio::spawn(async move {
        let mut scram = ScramServer::new("pencil", None);
        let mut inbound = BytesMut::new();
        let mut next = async |stream: &mut tokio::io::DuplexStream| {
            let (_, body) = frame::read_message(stream, &mut inbound, 1 << 20).await.unwrap().unwrap();
            body
        };
        server_side.write_all(&sasl(&[SCRAM_SHA_256])).await.unwrap();
        let initial = next(&mut server_side).await;
        let client_first = std::str::from_utf8(&initial[SCRAM_SHA_256.len() + 5..]).unwrap();
        server_side.write_all(&auth(AuthRequest::SaslContinue, scram.first(client_first).as_bytes())).await.unwrap();
        let client_final = next(&mut server_side).await;
        let server_final = scram.last(std::str::from_utf8(&client_final).unwrap()).unwrap();
        let mut rest = auth(AuthRequest::SaslFinal, server_final.as_bytes());
        rest.extend_from_slice(&after_auth());
        rest.extend_from_slice(&trailing);
        server_side.write_all(&rest).await.unwrap();
        server_side
    });
    let result = drive(&mut proxy_side, start(None)).await.unwrap();
    assert_eq!(result.key, KEY);
    assert_eq!(result.leftover, notice, "the relay must see what came after ReadyForQuery");
    drop(server.await.unwrap());

    // A server that hangs up mid-login.
    let (mut proxy_side, mut server_side) = tokio::io::duplex(4096);
    server_side.write_all(&auth(AuthRequest::Ok, &[])).await.unwrap();
    drop(server_side);
    let cut = drive(&mut proxy_side, start(None)).await.err().unwrap();
    assert!(matches!(&cut, ConnectError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof), "{cut}");
}
