//! Property tests: fuzzing on stable Rust with proptest, through the crate's public API only.
//!
//! Targets: the startup packet reader and parser, message framing, ErrorResponse fields and
//! the relay over in-memory pipes. Every case builds its own current-thread tokio runtime.
//!
//! The default case counts keep this file well under 30 s in a debug build; for a long run:
//!
//! ```sh
//! PROPTEST_CASES=20000 cargo test --test fuzz --release
//! ```
//!
//! (`PROPTEST_CASES` sets every property's count here, the relay ones included.) Failures are
//! not persisted to a regressions file; proptest prints the shrunk input to paste into a test.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use lakebase_proxy::protocol::StartupParams;
use lakebase_proxy::protocol::frame::{FrameHeader, HEADER_LEN, take_message};
use lakebase_proxy::protocol::messages::{ErrorFields, Severity};
use lakebase_proxy::protocol::startup::{
    self, CancelKey, MAX_STARTUP_PACKET, PROTOCOL_3_0, StartupError, StartupRequest,
};
use lakebase_proxy::relay::{Decision, Hook, Insert, Relay, RelayEnd};
use lakebase_proxy::upstream::ServerConnection;
use lakebase_proxy::upstream::StatementEffect;
use lakebase_proxy::upstream::{PreparedStatements, ProtocolState};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use test_support::wire::{self, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE, message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, duplex};

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Longest a relay case may take before it counts as a hang.
const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

/// `default_cases` unless `PROPTEST_CASES` says otherwise (an explicit `cases` in a
/// `ProptestConfig` would otherwise win over the environment).
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// A message as (tag, body).
type Message = (u8, Vec<u8>);

fn concat(messages: &[Message]) -> Vec<u8> {
    messages.iter().flat_map(|(tag, body)| message(*tag, body)).collect()
}

/// Chunk sizes, used in turn (cycled): mostly tiny or mid-sized pieces.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(prop_oneof![1usize..8, 8usize..512, 512usize..8192], 1..16)
}

/// Splits `data` into pieces of the sizes given, cycled.
fn chunks<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let (mut rest, mut i) = (data, 0);
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

/// Bytes that look like the protocol often enough to get past the first check: whole
/// messages, bare headers with any length, special startup codes and raw noise.
fn protocol_noise(max_segments: usize) -> impl Strategy<Value = Vec<u8>> {
    let segment = prop_oneof![
        6 => (any::<u8>(), vec(any::<u8>(), 0..64)).prop_map(|(tag, body)| message(tag, &body)),
        6 => (prop::sample::select(b"QPBEDSCHFdcfZTIRK".to_vec()), vec(any::<u8>(), 0..8))
            .prop_map(|(tag, body)| message(tag, &body)),
        1 => Just(message(b'X', b"")),
        2 => (any::<u8>(), any::<u32>()).prop_map(|(tag, len)| {
            let mut out = vec![tag];
            out.extend_from_slice(&len.to_be_bytes());
            out
        }),
        1 => (any::<u8>(), 0u32..4).prop_map(|(tag, len)| {
            let mut out = vec![tag];
            out.extend_from_slice(&len.to_be_bytes());
            out
        }),
        1 => prop::sample::select(vec![PROTOCOL_3_0, SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE, 8, 10_000, 10_001])
            .prop_map(|code| code.to_be_bytes().to_vec()),
        3 => vec(prop_oneof![Just(0u8), Just(b'Z'), Just(b'X'), any::<u8>()], 0..32),
    ];
    vec(segment, 0..max_segments).prop_map(|segments| segments.concat())
}

/// An AsyncRead over a byte slice that hands out at most the given chunk sizes per read and
/// returns `Pending` (after waking itself) before every other read.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
    stall: bool,
}

impl<'a> Chunked<'a> {
    fn new(data: &'a [u8], sizes: Vec<usize>) -> Self {
        Chunked { data, sizes, next: 0, stall: true }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.stall = !this.stall;
        if this.stall {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let size = this.sizes[this.next % this.sizes.len()];
        this.next += 1;
        let n = size.min(this.data.len()).min(buf.remaining());
        buf.put_slice(&this.data[..n]);
        this.data = &this.data[n..];
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------------
// Startup packets
// ---------------------------------------------------------------------------------------------

/// Startup parameter names and values: any text without NUL.
fn cstring(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[^\\x00]{{{min},{max}}}")).unwrap()
}

/// Ordinary parameters (not `user`, not `_pq_.*`), each name once, in order.
fn extra_params() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((cstring(1, 12), cstring(0, 16)), 0..8).prop_map(|pairs| {
        let mut seen = std::collections::HashSet::new();
        pairs
            .into_iter()
            .filter(|(key, _)| key != "user" && !key.starts_with("_pq_.") && seen.insert(key.clone()))
            .collect()
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn startup_parse_never_panics(bytes in prop_oneof![vec(any::<u8>(), 0..256), protocol_noise(12)]) {
        let _ = startup::parse(&bytes);
    }

    #[test]
    fn startup_parse_of_protocol_3_bodies_never_panics(
        minor in any::<u16>(),
        rest in vec(prop_oneof![Just(0u8), Just(b'u'), any::<u8>()], 0..128),
    ) {
        let mut body = (PROTOCOL_3_0 | u32::from(minor)).to_be_bytes().to_vec();
        body.extend_from_slice(&rest);
        if let Ok(StartupRequest::Startup { params, .. }) = startup::parse(&body) {
            prop_assert!(params.get("user").is_some_and(|user| !user.is_empty()));
        }
    }

    #[test]
    fn startup_messages_round_trip(
        minor in any::<u16>(),
        user in cstring(1, 16),
        extra in extra_params(),
        user_at in any::<prop::sample::Index>(),
        options in vec((cstring(0, 8).prop_map(|s| format!("_pq_.{s}")), cstring(0, 8)), 0..3),
        option_at in any::<prop::sample::Index>(),
        sizes in vec(1usize..64, 1..8),
    ) {
        let mut pairs = extra.clone();
        pairs.insert(user_at.index(pairs.len() + 1), ("user".to_owned(), user.clone()));
        let expected: Vec<(String, String)> = pairs.clone();
        let at = option_at.index(pairs.len() + 1);
        for (i, option) in options.iter().enumerate() {
            pairs.insert(at + i, option.clone());
        }
        let body = wire::startup_body(PROTOCOL_3_0 | u32::from(minor), &pairs);
        prop_assume!(body.len() + 4 <= MAX_STARTUP_PACKET);
        let packet = wire::packet(&body);

        let mut rest = BytesMut::new();
        let read = block_on(startup::read_packet(&mut Chunked::new(&packet, sizes), &mut rest));
        let read = read.map_err(|e| TestCaseError::fail(format!("read_packet: {e}")))?;
        prop_assert_eq!(read.as_deref(), Some(&body[..]));
        prop_assert!(rest.is_empty());

        match startup::parse(&body) {
            Ok(StartupRequest::Startup { minor: got_minor, params, protocol_options }) => {
                prop_assert_eq!(got_minor, minor);
                let got: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
                prop_assert_eq!(got, expected);
                prop_assert_eq!(params.get("user"), Some(user.as_str()));
                let names: Vec<String> = options.into_iter().map(|(name, _)| name).collect();
                prop_assert_eq!(protocol_options, names);
            }
            other => prop_assert!(false, "expected a StartupMessage, got {other:?}"),
        }
    }

    #[test]
    fn startup_without_a_user_is_refused(
        minor in any::<u16>(),
        extra in extra_params(),
        empty_user_at in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut pairs = extra;
        if let Some(at) = empty_user_at {
            pairs.insert(at.index(pairs.len() + 1), ("user".to_owned(), String::new()));
        }
        let body = wire::startup_body(PROTOCOL_3_0 | u32::from(minor), &pairs);
        prop_assert!(matches!(startup::parse(&body), Err(StartupError::Malformed(_))));
    }

    #[test]
    fn other_protocol_versions_are_refused(version in any::<u32>(), extra in extra_params()) {
        prop_assume!(version >> 16 != 3 && ![SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE].contains(&version));
        let mut pairs = extra;
        pairs.push(("user".to_owned(), "u".to_owned()));
        let result = startup::parse(&wire::startup_body(version, &pairs));
        prop_assert!(
            matches!(result, Err(StartupError::UnsupportedProtocol { major, minor })
                if u32::from(major) == version >> 16 && u32::from(minor) == version & 0xffff),
            "{result:?}"
        );
    }

    #[test]
    fn cancel_requests_round_trip(pid in any::<i32>(), secret in any::<u32>()) {
        let packet = wire::cancel_request(&[pid.to_be_bytes(), secret.to_be_bytes()].concat());
        prop_assert_eq!(startup::parse(&packet[4..]).unwrap(), StartupRequest::Cancel(CancelKey { pid, secret }));
    }

    /// What `read_packet` does with any input, fully specified.
    #[test]
    fn read_packet_on_arbitrary_bytes(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..64),
            protocol_noise(8),
            (8u32..=64, vec(any::<u8>(), 0..80)).prop_map(|(len, rest)| [len.to_be_bytes().to_vec(), rest].concat()),
        ],
        sizes in vec(1usize..16, 1..8),
    ) {
        let mut rest = BytesMut::new();
        let result = block_on(startup::read_packet(&mut Chunked::new(&bytes, sizes), &mut rest));
        if bytes.is_empty() {
            prop_assert!(matches!(result, Ok(None)), "{result:?}");
        } else if bytes.len() < 4 {
            prop_assert!(matches!(&result, Err(StartupError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof), "{result:?}");
        } else {
            let declared = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            if !(8..=MAX_STARTUP_PACKET).contains(&declared) {
                prop_assert!(matches!(result, Err(StartupError::BadLength(n)) if n == declared), "{result:?}");
            } else if bytes.len() < declared {
                prop_assert!(matches!(&result, Err(StartupError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof), "{result:?}");
            } else {
                let body = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(body.as_deref(), Some(&bytes[4..declared]));
                // What followed the packet was kept, in order (a chunk may stop short of it).
                prop_assert!(bytes[declared..].starts_with(&rest));
            }
        }
    }

    #[test]
    fn startup_lengths_outside_8_to_10000_are_rejected(
        declared in prop_oneof![0u32..8, 10_001u32..=u32::MAX, Just(u32::MAX), Just(10_001)],
        rest in vec(any::<u8>(), 0..64),
    ) {
        let mut packet = declared.to_be_bytes().to_vec();
        packet.extend_from_slice(&rest);
        let result = block_on(startup::read_packet(&mut &packet[..], &mut BytesMut::new()));
        prop_assert!(matches!(result, Err(StartupError::BadLength(n)) if n == declared as usize), "{result:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// Any (tag, body) message, bodies mostly small.
fn any_message() -> impl Strategy<Value = Message> {
    (any::<u8>(), prop_oneof![4 => vec(any::<u8>(), 0..64), 1 => vec(any::<u8>(), 0..4096)])
}

proptest! {
    #![proptest_config(config(256))]

    /// What `FrameHeader::parse` does with any input, fully specified.
    #[test]
    fn frame_header_on_arbitrary_bytes(bytes in prop_oneof![vec(any::<u8>(), 0..16), protocol_noise(4)]) {
        let result = FrameHeader::parse(&bytes);
        if bytes.len() < HEADER_LEN {
            prop_assert!(matches!(result, Ok(None)), "{result:?}");
        } else {
            let declared = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
            if (4..=i32::MAX as u32).contains(&declared) {
                let header = result.map_err(|e| TestCaseError::fail(e.to_string()))?.unwrap();
                prop_assert_eq!(header, FrameHeader { tag: bytes[0], body_len: declared as usize - 4 });
                prop_assert_eq!(header.total_len(), declared as usize + 1);
            } else {
                prop_assert!(result.is_err(), "{result:?}");
            }
        }
    }

    /// `take_message` never panics, and whatever it returns is the front of the buffer.
    #[test]
    fn take_message_on_arbitrary_bytes(
        bytes in prop_oneof![vec(any::<u8>(), 0..128), protocol_noise(12)],
        limit in prop_oneof![0usize..16, 0usize..(1 << 20)],
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut consumed = 0;
        loop {
            match take_message(&mut buf, limit) {
                Ok(Some((tag, body))) => {
                    prop_assert!(body.len() <= limit);
                    prop_assert_eq!(&message(tag, &body)[..], &bytes[consumed..consumed + HEADER_LEN + body.len()]);
                    consumed += HEADER_LEN + body.len();
                    prop_assert_eq!(&buf[..], &bytes[consumed..]);
                }
                Ok(None) | Err(_) => {
                    prop_assert_eq!(&buf[..], &bytes[consumed..], "a refusal leaves the buffer alone");
                    break;
                }
            }
        }
    }

    /// A stream of messages arriving in any chunking splits back into exactly those messages.
    #[test]
    fn take_message_splits_any_chunking(messages in vec(any_message(), 0..16), sizes in chunk_sizes()) {
        let stream = concat(&messages);
        let limit = messages.iter().map(|(_, body)| body.len()).max().unwrap_or(0);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in chunks(&stream, &sizes) {
            buf.extend_from_slice(chunk);
            while let Some((tag, body)) = take_message(&mut buf, limit).map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push((tag, body.to_vec()));
            }
        }
        prop_assert_eq!(got, messages);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn declared_lengths_below_4_are_refused(tag in any::<u8>(), declared in 0u32..4, rest in vec(any::<u8>(), 0..16)) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&declared.to_be_bytes());
        bytes.extend_from_slice(&rest);
        prop_assert!(FrameHeader::parse(&bytes).is_err());
        prop_assert!(take_message(&mut BytesMut::from(&bytes[..]), usize::MAX).is_err());
        prop_assert!(take_message(&mut BytesMut::from(&bytes[..]), 0).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// ErrorResponse / NoticeResponse fields
// ---------------------------------------------------------------------------------------------

fn severity() -> impl Strategy<Value = Severity> {
    prop_oneof![Just(Severity::Fatal), Just(Severity::Error), Just(Severity::Notice)]
}

/// Field values with NUL in them now and then: the writer drops NULs rather than end the
/// field early.
fn field_text() -> impl Strategy<Value = String> {
    prop_oneof![4 => cstring(0, 24), 1 => proptest::string::string_regex("[\\x00a-z]{0,8}").unwrap()]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn error_fields_parse_never_panics(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..256),
            vec(prop_oneof![Just(0u8), prop::sample::select(b"SVCMDHPqWFLR".to_vec()), any::<u8>()], 0..128),
        ],
    ) {
        let fields = ErrorFields::parse(&bytes);
        let _ = fields.to_string();
    }

    #[test]
    fn error_fields_round_trip(
        severity in severity(),
        code in field_text(),
        text in field_text(),
        detail in proptest::option::of(field_text()),
        hint in proptest::option::of(field_text()),
        notice in any::<bool>(),
    ) {
        let mut fields = ErrorFields::new(severity, &code, text);
        if let Some(hint) = hint {
            fields = fields.with_hint(hint);
        }
        fields.detail = detail;
        let mut buf = BytesMut::new();
        if notice {
            fields.write_notice(&mut buf);
        } else {
            fields.write_error(&mut buf);
        }
        let (tag, body) = take_message(&mut buf, 1 << 20).unwrap().expect("one whole message");
        prop_assert!(buf.is_empty());
        prop_assert_eq!(tag, if notice { b'N' } else { b'E' });
        let strip = |s: &str| s.replace('\0', "");
        let expected = ErrorFields {
            severity: fields.severity,
            code: strip(&fields.code),
            message: strip(&fields.message),
            detail: fields.detail.as_deref().map(strip),
            hint: fields.hint.as_deref().map(strip),
        };
        prop_assert_eq!(ErrorFields::parse(&body), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// The relay
// ---------------------------------------------------------------------------------------------

/// What a relay case saw: how it ended, what the relay left on the server connection, and
/// the bytes each far end got.
struct RelayRun {
    end: RelayEnd,
    server: ProtocolState,
    prepared: PreparedStatements,
    at_upstream: Vec<u8>,
    at_client: Vec<u8>,
}

/// A server connection over the relay's end of an in-memory pipe.
fn server_connection(pipe: DuplexStream) -> ServerConnection {
    ServerConnection::in_memory(pipe, 1, StartupParams::default(), Vec::new(), CancelKey { pid: 1, secret: 1 })
}

/// Writes `data` in pieces of `sizes`, yielding between pieces so the relay sees each one
/// on its own. Errors (the relay went away) end the writing quietly.
async fn write_chunked<W: AsyncWrite + Unpin>(writer: &mut W, data: &[u8], sizes: &[usize]) {
    for chunk in chunks(data, sizes) {
        if writer.write_all(chunk).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// A client that writes `client_bytes` in pieces and closes, while an upstream writes
/// `upstream_bytes` in pieces and stays open; both far ends read until the relay lets go.
fn relay_free_for_all(
    client_bytes: &[u8],
    upstream_bytes: &[u8],
    sizes: &[usize],
    capacity: usize,
) -> Result<RelayRun, TestCaseError> {
    block_on(async {
        let (client_far, mut client_near) = duplex(capacity);
        let (upstream_far, upstream_near) = duplex(capacity);
        let relay = async move {
            let mut server = server_connection(upstream_near);
            let end = Relay::default().run(&mut client_near, &mut server).await;
            // The connection closes here, so the upstream sees the stream end.
            (end, server.protocol().clone())
        };
        let client = async move {
            let (mut reader, mut writer) = tokio::io::split(client_far);
            let write = async {
                write_chunked(&mut writer, client_bytes, sizes).await;
                let _ = writer.shutdown().await;
            };
            let mut got = Vec::new();
            let read = reader.read_to_end(&mut got);
            let _ = tokio::join!(write, read);
            got
        };
        let upstream = async move {
            let (mut reader, mut writer) = tokio::io::split(upstream_far);
            let mut got = Vec::new();
            let _ = tokio::join!(write_chunked(&mut writer, upstream_bytes, sizes), reader.read_to_end(&mut got));
            got
        };
        let all = async { tokio::join!(relay, client, upstream) };
        match tokio::time::timeout(RELAY_TIMEOUT, all).await {
            Ok(((end, server), at_client, at_upstream)) => {
                Ok(RelayRun { end, server, prepared: PreparedStatements::default(), at_upstream, at_client })
            }
            Err(_) => Err(TestCaseError::fail("the relay did not return: hung")),
        }
    })
}

/// How the relay must treat a client stream when the upstream is silent: how many bytes
/// reach the upstream and why it ends.
#[derive(Debug, PartialEq)]
enum Expect {
    ClientGone,
    Terminated,
    Violation,
}

fn model_client_stream(bytes: &[u8]) -> (usize, Expect) {
    let mut at = 0;
    loop {
        let Some(header) = bytes.get(at..at + HEADER_LEN) else {
            return (at, Expect::ClientGone);
        };
        let declared = u32::from_be_bytes(header[1..5].try_into().unwrap());
        if !(4..=i32::MAX as u32).contains(&declared) {
            return (at, Expect::Violation);
        }
        if header[0] == b'X' {
            return (at, Expect::Terminated);
        }
        at += HEADER_LEN + declared as usize - 4;
        if at >= bytes.len() {
            return (bytes.len(), Expect::ClientGone);
        }
    }
}

/// Client messages: any of the frontend tags but Terminate, bodies up to a few KB.
fn client_message() -> impl Strategy<Value = Message> {
    (
        prop::sample::select(b"QPBEDSCHFdcf".to_vec()),
        prop_oneof![4 => vec(any::<u8>(), 0..32), 1 => vec(any::<u8>(), 0..4096)],
    )
}

/// Server messages of any backend tag but ReadyForQuery.
fn server_message_not_ready() -> impl Strategy<Value = Message> {
    server_message_of(b"RSKTDCEN123nstAcdGHWIvV")
}

/// Server messages of any of `tags`, bodies up to a few KB.
fn server_message_of(tags: &[u8]) -> impl Strategy<Value = Message> {
    (prop::sample::select(tags.to_vec()), prop_oneof![4 => vec(any::<u8>(), 0..32), 1 => vec(any::<u8>(), 0..4096)])
}

/// Server messages including ReadyForQuery with any (short) body.
fn server_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        4 => server_message_not_ready(),
        1 => (Just(b'Z'), vec(prop_oneof![Just(b'I'), Just(b'T'), Just(b'E'), any::<u8>()], 0..4)),
    ]
}

fn pipe_capacity() -> impl Strategy<Value = usize> {
    prop_oneof![1 => 7usize..64, 3 => 64usize..=65_536]
}

/// Well-formed traffic both ways, the client ending with Terminate once it has every server
/// message: which bytes each side got, and the relay's verdict.
fn relay_conversation(
    client_messages: &[Message],
    server_messages: &[Message],
    server_waits_for_client: bool,
    preload: Option<(prop::sample::Index, prop::sample::Index)>,
    sizes: &[usize],
    capacity: usize,
) -> Result<(RelayRun, Vec<u8>), TestCaseError> {
    let to_upstream = concat(client_messages);
    let to_client = concat(server_messages);
    let run = converse(
        lakebase_proxy::relay::Passthrough,
        Script {
            client_sends: &to_upstream,
            upstream_gets: to_upstream.len(),
            upstream_sends: &to_client,
            client_gets: to_client.len(),
        },
        server_waits_for_client,
        preload,
        sizes,
        capacity,
    )?;
    Ok((run, to_upstream))
}

/// What each side of a conversation sends, and how many bytes each is to receive.
struct Script<'a> {
    client_sends: &'a [u8],
    upstream_gets: usize,
    upstream_sends: &'a [u8],
    client_gets: usize,
}

/// Runs `script` through a relay with `hook`, the client ending with Terminate once it has
/// its bytes; optionally a first part of each side's bytes is handed to `Relay::preload`.
fn converse<H: Hook>(
    hook: H,
    script: Script<'_>,
    server_waits_for_client: bool,
    preload: Option<(prop::sample::Index, prop::sample::Index)>,
    sizes: &[usize],
    capacity: usize,
) -> Result<RelayRun, TestCaseError> {
    let Script { client_sends, upstream_gets, upstream_sends, client_gets } = script;
    let (client_split, upstream_split) =
        preload.map_or((0, 0), |(c, u)| (c.index(client_sends.len() + 1), u.index(upstream_sends.len() + 1)));
    let (preloaded_client, client_rest) = client_sends.split_at(client_split);
    let (preloaded_upstream, upstream_rest) = upstream_sends.split_at(upstream_split);
    block_on(async {
        let (client_far, mut client_near) = duplex(capacity);
        let (upstream_far, upstream_near) = duplex(capacity);
        let relay = async move {
            let mut server = server_connection(upstream_near);
            let mut relay = Relay::with_hook(hook);
            if let Err(error) = relay.preload(&mut server, preloaded_client, preloaded_upstream) {
                return Err(TestCaseError::fail(format!("preload refused well-formed bytes: {error}")));
            }
            let end = relay.run(&mut client_near, &mut server).await;
            // The connection closes here, so the upstream sees the stream end.
            Ok((end, server.protocol().clone(), server.prepared().clone()))
        };
        let client = async {
            let (mut reader, mut writer) = tokio::io::split(client_far);
            let mut got = vec![0; client_gets];
            let (_, read) = tokio::join!(write_chunked(&mut writer, client_rest, sizes), reader.read_exact(&mut got));
            read.map_err(|e| TestCaseError::fail(format!("client reading: {e}")))?;
            writer.write_all(&wire::terminate()).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            // Nothing more comes after the relay lets go.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest).await;
            got.extend_from_slice(&rest);
            Ok::<_, TestCaseError>(got)
        };
        let upstream = async {
            let (mut reader, mut writer) = tokio::io::split(upstream_far);
            let mut got = vec![0; upstream_gets];
            if server_waits_for_client {
                reader.read_exact(&mut got).await.map_err(|e| TestCaseError::fail(format!("upstream reading: {e}")))?;
                write_chunked(&mut writer, upstream_rest, sizes).await;
            } else {
                let (_, read) =
                    tokio::join!(write_chunked(&mut writer, upstream_rest, sizes), reader.read_exact(&mut got));
                read.map_err(|e| TestCaseError::fail(format!("upstream reading: {e}")))?;
            }
            // The Terminate must not come through; the stream ends when the relay lets go.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest).await;
            got.extend_from_slice(&rest);
            Ok::<_, TestCaseError>(got)
        };
        let all = async { tokio::join!(relay, client, upstream) };
        match tokio::time::timeout(RELAY_TIMEOUT, all).await {
            Ok((relay, at_client, at_upstream)) => {
                let (end, server, prepared) = relay?;
                Ok(RelayRun { end, server, prepared, at_upstream: at_upstream?, at_client: at_client? })
            }
            Err(_) => Err(TestCaseError::fail("the relay did not return: hung")),
        }
    })
}

/// A session of requests answered in order, each sync point (Query, Sync, FunctionCall) by
/// some server messages and a ReadyForQuery. A Sync follows the last extended-protocol
/// message (Query and FunctionCall do not end an extended-protocol batch: after an error
/// the server skips them up to the Sync), optionally followed by a Query or FunctionCall.
///
/// The answers hold no ErrorResponse: the relay follows the server in skipping to the Sync
/// after one, and a made-up error in a made-up place would have the server skip sync points
/// it then answers. Errors are covered by `relay_follows_a_server_through_errors_and_inserts`.
/// Nor CopyInResponse: the server ignores Syncs during COPY FROM STDIN, so one in a made-up
/// place would have it skip sync points too.
fn answered_session(last_status: impl Strategy<Value = u8>) -> impl Strategy<Value = (Vec<Message>, Vec<Message>)> {
    (
        vec(client_message(), 0..12),
        prop::sample::select(vec![&b"S"[..], b"SQ", b"SF"]),
        vec((vec(server_message_of(b"RSKTDCN123nstAcdHWIvV"), 0..4), prop::sample::select(b"ITE".to_vec())), 0..16),
        last_status,
    )
        .prop_map(|(mut requests, tail, answers, last_status)| {
            requests.extend(tail.iter().map(|&tag| (tag, if tag == b'S' { Vec::new() } else { b"x\0".to_vec() })));
            let sync_points = requests.iter().filter(|(tag, _)| b"QSF".contains(tag)).count();
            let mut responses = Vec::new();
            for i in 0..sync_points {
                let (messages, status) = answers.get(i).cloned().unwrap_or((Vec::new(), b'I'));
                responses.extend(messages);
                let status = if i + 1 == sync_points { last_status } else { status };
                responses.push((b'Z', vec![status]));
            }
            (requests, responses)
        })
}

proptest! {
    #![proptest_config(config(128))]

    /// (a) Any client bytes, then a close: the relay returns, forwarding exactly the whole
    /// messages it scanned (as modelled) and ending as the model says.
    #[test]
    fn relay_survives_arbitrary_client_bytes(
        bytes in prop_oneof![1 => vec(any::<u8>(), 0..2048), 2 => protocol_noise(24)],
        sizes in chunk_sizes(),
        capacity in pipe_capacity(),
    ) {
        let run = relay_free_for_all(&bytes, b"", &sizes, capacity)?;
        let (forwarded, expect) = model_client_stream(&bytes);
        prop_assert!(run.at_client.is_empty());
        prop_assert_eq!(&run.at_upstream[..], &bytes[..run.at_upstream.len()], "the upstream got altered bytes");
        match expect {
            Expect::ClientGone => {
                prop_assert!(matches!(run.end, RelayEnd::ClientGone(None)), "{:?}", run.end);
                prop_assert_eq!(run.at_upstream.len(), forwarded);
            }
            Expect::Terminated => {
                prop_assert!(matches!(run.end, RelayEnd::ClientTerminated), "{:?}", run.end);
                prop_assert_eq!(run.at_upstream.len(), forwarded);
            }
            Expect::Violation => {
                prop_assert!(matches!(run.end, RelayEnd::ClientProtocolViolation(_)), "{:?}", run.end);
                // Whole messages scanned in the same read as the bad header are dropped too.
                prop_assert!(run.at_upstream.len() <= forwarded);
                prop_assert!(!run.server.reusable());
            }
        }
        if run.server.reusable() {
            prop_assert!(run.server.is_idle());
        }
    }

    /// (a) Noise from both sides at once: the relay still returns and only ever passes on a
    /// prefix of what each side sent.
    #[test]
    fn relay_survives_arbitrary_bytes_both_ways(
        client_bytes in prop_oneof![vec(any::<u8>(), 0..1024), protocol_noise(16)],
        upstream_bytes in prop_oneof![vec(any::<u8>(), 0..1024), protocol_noise(16)],
        sizes in chunk_sizes(),
        capacity in pipe_capacity(),
    ) {
        let run = relay_free_for_all(&client_bytes, &upstream_bytes, &sizes, capacity)?;
        prop_assert_eq!(&run.at_upstream[..], &client_bytes[..run.at_upstream.len()]);
        prop_assert_eq!(&run.at_client[..], &upstream_bytes[..run.at_client.len()]);
    }

    /// (b) Well-formed messages in any chunking arrive byte for byte, both ways; Terminate
    /// ends the relay and never reaches the upstream. Sometimes a first part of each stream
    /// is handed to `Relay::preload` (as a session does with bytes read before the relay).
    #[test]
    fn relay_passes_well_formed_traffic_unchanged(
        client_messages in vec(client_message(), 0..16),
        server_messages in vec(server_message(), 0..16),
        server_waits_for_client in any::<bool>(),
        preload in proptest::option::of(any::<(prop::sample::Index, prop::sample::Index)>()),
        sizes in chunk_sizes(),
        capacity in pipe_capacity(),
    ) {
        let (run, sent) =
            relay_conversation(&client_messages, &server_messages, server_waits_for_client, preload, &sizes, capacity)?;
        prop_assert!(matches!(run.end, RelayEnd::ClientTerminated), "{:?}", run.end);
        prop_assert_eq!(run.at_upstream, sent);
        prop_assert_eq!(run.at_client, concat(&server_messages));
    }

    /// (c) Every sync point answered, the last ReadyForQuery idle, then Terminate: reusable.
    #[test]
    fn relay_answered_idle_session_is_reusable(
        (requests, responses) in answered_session(Just(b'I')),
        sizes in chunk_sizes(),
        capacity in pipe_capacity(),
    ) {
        let (run, _) = relay_conversation(&requests, &responses, true, None, &sizes, capacity)?;
        prop_assert!(matches!(run.end, RelayEnd::ClientTerminated), "{:?}", run.end);
        prop_assert_eq!(run.server.ready_owed(), 0);
        prop_assert!(!run.server.unsynced());
        prop_assert!(run.server.reusable(), "state {:?}", run.server);
    }

    /// (c) The same ending inside a transaction (or a failed one): not reusable.
    #[test]
    fn relay_session_left_in_a_transaction_is_not_reusable(
        (requests, responses) in answered_session(prop::sample::select(b"TE".to_vec())),
        sizes in chunk_sizes(),
        capacity in pipe_capacity(),
    ) {
        let last = responses.last().unwrap().1[0];
        let (run, _) = relay_conversation(&requests, &responses, true, None, &sizes, capacity)?;
        prop_assert!(matches!(run.end, RelayEnd::ClientTerminated), "{:?}", run.end);
        prop_assert_eq!(run.server.transaction_status().as_byte(), last);
        prop_assert!(!run.server.reusable());
    }

    /// (c) One ReadyForQuery short: not reusable, whatever the statuses.
    #[test]
    fn relay_session_with_an_unanswered_sync_is_not_reusable(
        (requests, mut responses) in answered_session(Just(b'I')),
        sizes in chunk_sizes(),
        capacity in pipe_capacity(),
    ) {
        responses.pop();
        let (run, _) = relay_conversation(&requests, &responses, true, None, &sizes, capacity)?;
        prop_assert!(matches!(run.end, RelayEnd::ClientTerminated), "{:?}", run.end);
        prop_assert_eq!(run.server.ready_owed(), 1);
        prop_assert!(!run.server.reusable());
    }
}

// ---------------------------------------------------------------------------------------------
// The relay against a modelled server, with a hook that inserts messages
// ---------------------------------------------------------------------------------------------

/// Statements a Bind may name; the first is the unnamed one, which the hook leaves alone.
const STATEMENTS: [&str; 4] = ["", "s0", "s1", "s2"];

/// A client message, as the modelled server tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Parse,
    /// Of `STATEMENTS[i]`.
    Bind(usize),
    Describe,
    Execute,
    Close,
    Flush,
    Sync,
    Query,
    FunctionCall,
    /// The hook's Parse of `STATEMENTS[i]`.
    Prepare(usize),
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        1 => Just(Request::Parse),
        3 => (0..STATEMENTS.len()).prop_map(Request::Bind),
        1 => Just(Request::Describe),
        2 => Just(Request::Execute),
        1 => Just(Request::Close),
        1 => Just(Request::Flush),
        2 => Just(Request::Sync),
        1 => Just(Request::Query),
        1 => Just(Request::FunctionCall),
    ]
}

impl Request {
    fn encode(self) -> Vec<u8> {
        match self {
            Request::Parse => message(b'P', b"\0SELECT 1\0\0\0"),
            Request::Bind(i) => message(b'B', &[b"\0", STATEMENTS[i].as_bytes(), b"\0\0\0\0\0\0\0"].concat()),
            Request::Describe => message(b'D', b"P\0"),
            Request::Execute => message(b'E', b"\0\0\0\0\0"),
            Request::Close => message(b'C', b"P\0"),
            Request::Flush => message(b'H', b""),
            Request::Sync => message(b'S', b""),
            Request::Query => message(b'Q', b"SELECT 1\0"),
            Request::FunctionCall => message(b'F', b"\0\0\0\x01\0\0\0\0\0\0"),
            Request::Prepare(i) => message(b'P', &[STATEMENTS[i].as_bytes(), b"\0SELECT 2\0\0\0"].concat()),
        }
    }
}

/// Prepares, ahead of a Bind, the named statement it uses if the server does not have it.
struct PrepareOnBind;

impl Hook for PrepareOnBind {
    fn wants(&self, tag: u8) -> bool {
        tag == b'B'
    }

    fn before(&mut self, _tag: u8, body: &[u8], _len: usize, insert: &mut Insert<'_>) -> Decision {
        let name = String::from_utf8_lossy(body.split(|&b| b == 0).nth(1).unwrap_or_default()).into_owned();
        // Statement number i is prepared as statement id i.
        if let Some(i) = STATEMENTS.iter().skip(1).position(|&s| s == name)
            && !insert.prepared().contains(i as u64 + 1)
        {
            let parse = Request::Prepare(i + 1).encode();
            insert.message(parse[0], &parse[5..], StatementEffect::Prepares(i as u64 + 1));
        }
        Decision::Forward
    }
}

/// What the modelled exchange puts on each wire, and what the server has prepared after.
struct Modelled {
    to_server: Vec<u8>,
    from_server: Vec<u8>,
    to_client: Vec<u8>,
    prepared: Vec<usize>,
}

/// Plays `requests` against a server that fails where `fates` say, as PostgreSQL does: an
/// error in an extended-protocol message has it skip everything up to the next Sync. The
/// hook's Parse goes ahead of the first Bind of each named statement (the server answers
/// only once it has every request, so until then the hook knows only what it inserted). The
/// client gets every reply but those to the hook's Parse messages, their errors and notices
/// excepted.
fn model(requests: &[Request], fates: &[u8]) -> Modelled {
    let mut stream = Vec::new();
    for &request in requests {
        if let Request::Bind(i) = request
            && i > 0
            && !stream.contains(&Request::Prepare(i))
        {
            stream.push(Request::Prepare(i));
        }
        stream.push(request);
    }
    let mut modelled = Modelled {
        to_server: stream.iter().flat_map(|r| r.encode()).collect(),
        from_server: Vec::new(),
        to_client: Vec::new(),
        prepared: Vec::new(),
    };
    let error = message(b'E', b"SERROR\0C42000\0Mmodelled failure\0\0");
    let mut fates = fates.iter().copied().cycle();
    let mut skipping = false;
    for request in stream {
        if skipping && request != Request::Sync {
            continue;
        }
        let fate = fates.next().unwrap();
        let fails = fate % 6 == 0;
        let mut replies = Vec::new();
        if fate >= 224 {
            replies.push(message(b'N', b"SNOTICE\0C00000\0Mby the way\0\0"));
        }
        match request {
            Request::Flush => {}
            Request::Sync | Request::Query | Request::FunctionCall => {
                skipping = false;
                if fails {
                    replies.push(error.clone());
                } else if request == Request::Query {
                    replies.extend([message(b'T', b"\0\0"), message(b'C', b"SELECT 0\0")]);
                } else if request == Request::FunctionCall {
                    replies.push(message(b'V', b"\xff\xff\xff\xff"));
                }
                replies.push(message(b'Z', b"I"));
            }
            _ if fails => {
                replies.push(error.clone());
                skipping = true;
            }
            Request::Parse => replies.push(message(b'1', b"")),
            Request::Prepare(i) => {
                replies.push(message(b'1', b""));
                modelled.prepared.push(i);
            }
            Request::Bind(_) => replies.push(message(b'2', b"")),
            Request::Describe => replies.push(message(if fate % 2 == 0 { b'T' } else { b'n' }, b"\0\0")),
            Request::Execute => {
                for _ in 0..fate / 8 % 3 {
                    replies.push(message(b'D', b"\0\0"));
                }
                let done = [message(b'C', b"SELECT 0\0"), message(b'I', b""), message(b's', b"")];
                replies.push(done[usize::from(fate / 32 % 3)].clone());
            }
            Request::Close => replies.push(message(b'3', b"")),
        }
        for reply in replies {
            modelled.from_server.extend_from_slice(&reply);
            if !matches!(request, Request::Prepare(_)) || matches!(reply[0], b'E' | b'N') {
                modelled.to_client.extend_from_slice(&reply);
            }
        }
    }
    modelled
}

proptest! {
    #![proptest_config(config(128))]

    /// A batch of requests ending in a Sync, some failing, through a relay whose hook prepares
    /// the statements Binds use: each side gets exactly what the model says, the hook's
    /// statements are recorded as prepared exactly when the server prepared them, and the
    /// connection ends owing nothing.
    #[test]
    fn relay_follows_a_server_through_errors_and_inserts(
        mut requests in vec(request(), 0..24),
        fates in vec(any::<u8>(), 1..32),
        sizes in chunk_sizes(),
        capacity in pipe_capacity(),
    ) {
        requests.push(Request::Sync);
        let modelled = model(&requests, &fates);
        let client_sends: Vec<u8> = requests.iter().flat_map(|r| r.encode()).collect();
        let script = Script {
            client_sends: &client_sends,
            upstream_gets: modelled.to_server.len(),
            upstream_sends: &modelled.from_server,
            client_gets: modelled.to_client.len(),
        };
        let run = converse(PrepareOnBind, script, true, None, &sizes, capacity)?;
        prop_assert!(matches!(run.end, RelayEnd::ClientTerminated), "{:?}", run.end);
        prop_assert_eq!(run.at_upstream, modelled.to_server);
        prop_assert_eq!(run.at_client, modelled.to_client);
        prop_assert!(run.server.owes_nothing() && run.server.reusable(), "state {:?}", run.server);
        for (i, name) in STATEMENTS.iter().enumerate().skip(1) {
            prop_assert_eq!(run.prepared.contains(i as u64), modelled.prepared.contains(&i), "statement {}", name);
        }
    }
}
