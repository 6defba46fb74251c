use super::pipe::MAX_IDLE_CAPACITY;
use super::*;
use crate::protocol::frame::MAX_BUFFERED_MESSAGE;
use crate::protocol::{CancelKey, StartupParams, TransactionStatus};
use test_support::wire::message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::task::JoinHandle;

/// A server connection over an in-memory pipe; returns it and the stand-in server's end.
fn connection() -> (ServerConnection, DuplexStream) {
    let (upstream_far, upstream_near) = duplex(64 * 1024);
    let key = CancelKey { pid: 7, secret: 7 };
    (ServerConnection::in_memory(upstream_near, 1, StartupParams::default(), Vec::new(), key), upstream_far)
}

/// What a relay task hands back when it ends.
struct Ended<H> {
    relay: Relay<H>,
    server: ServerConnection,
    end: RelayEnd,
}

/// Runs a relay with `hook` between a new in-memory client and `server`; returns the client's
/// end and the relay task.
fn attach<H: Hook + Send + 'static>(hook: H, mut server: ServerConnection) -> (DuplexStream, JoinHandle<Ended<H>>) {
    let (client_far, mut client_near) = duplex(64 * 1024);
    let task = tokio::spawn(async move {
        let mut relay = Relay::with_hook(hook);
        let end = relay.run(&mut client_near, &mut server).await;
        Ended { relay, server, end }
    });
    (client_far, task)
}

/// A session-mode relay over a fresh connection: the client's end, the server's, the task.
fn start() -> (DuplexStream, DuplexStream, JoinHandle<Ended<Passthrough>>) {
    let (server, upstream) = connection();
    let (client, task) = attach(Passthrough, server);
    (client, upstream, task)
}

async fn read_exactly(stream: &mut DuplexStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

#[tokio::test]
async fn terminate_ends_the_relay_and_is_not_forwarded() {
    let (mut client, mut upstream, task) = start();
    let query = message(b'Q', b"SELECT 1\0");
    client.write_all(&query).await.unwrap();
    assert_eq!(read_exactly(&mut upstream, query.len()).await, query);
    let answer = [message(b'C', b"SELECT 1\0"), message(b'Z', b"I")].concat();
    upstream.write_all(&answer).await.unwrap();
    assert_eq!(read_exactly(&mut client, answer.len()).await, answer);
    client.write_all(&message(b'X', b"")).await.unwrap();
    let ended = task.await.unwrap();
    assert!(matches!(ended.end, RelayEnd::ClientTerminated));
    assert!(ended.server.reusable());
    assert!(ended.relay.used());
    drop(ended);
    let mut rest = Vec::new();
    upstream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the upstream never sees Terminate");
}

#[tokio::test]
async fn an_open_transaction_or_unanswered_query_is_not_reusable() {
    let (mut client, mut upstream, task) = start();
    client.write_all(&message(b'Q', b"BEGIN\0")).await.unwrap();
    upstream.write_all(&[message(b'C', b"BEGIN\0"), message(b'Z', b"T")].concat()).await.unwrap();
    read_exactly(&mut client, 17).await;
    drop(client);
    let Ended { server, end, .. } = task.await.unwrap();
    assert!(matches!(end, RelayEnd::ClientGone(None)));
    assert_eq!(server.protocol().transaction_status(), TransactionStatus::InTransaction);
    assert!(!server.reusable());

    let (mut client, _upstream, task) = start();
    client.write_all(&message(b'Q', b"SELECT pg_sleep(9)\0")).await.unwrap();
    client.write_all(&message(b'X', b"")).await.unwrap();
    let Ended { server, .. } = task.await.unwrap();
    assert_eq!(server.protocol().ready_owed(), 1);
    assert!(!server.reusable());
}

#[tokio::test]
async fn extended_protocol_without_sync_is_not_reusable() {
    let (mut client, mut upstream, task) = start();
    let parse = message(b'P', b"\0SELECT 1\0\0\0");
    client.write_all(&parse).await.unwrap();
    read_exactly(&mut upstream, parse.len()).await;
    client.write_all(&message(b'X', b"")).await.unwrap();
    let Ended { server, .. } = task.await.unwrap();
    assert!(server.protocol().unsynced());
    assert!(!server.reusable());
}

#[tokio::test]
async fn a_message_cut_short_by_the_client_is_not_reusable() {
    let (mut client, mut upstream, task) = start();
    let copy_data = message(b'd', &[7u8; 1000]);
    client.write_all(&copy_data[..600]).await.unwrap();
    read_exactly(&mut upstream, 600).await;
    drop(client);
    let Ended { server, .. } = task.await.unwrap();
    assert!(server.protocol().is_idle(), "no reply is owed for CopyData");
    assert!(!server.reusable(), "the upstream holds half a message");
}

#[tokio::test]
async fn large_messages_stream_through_a_small_buffer() {
    let (mut client, mut upstream, task) = start();
    client.write_all(&message(b'Q', b"SELECT big\0")).await.unwrap();
    read_exactly(&mut upstream, 16).await;
    let row = message(b'D', &vec![42u8; 8 * 1024 * 1024]);
    let row_len = row.len();
    let writer = tokio::spawn(async move {
        upstream.write_all(&row).await.unwrap();
        upstream.write_all(&message(b'Z', b"I")).await.unwrap();
        upstream
    });
    let received = read_exactly(&mut client, row_len + 6).await;
    assert_eq!(&received[row_len..], &message(b'Z', b"I")[..]);
    let _upstream = writer.await.unwrap();
    client.write_all(&message(b'X', b"")).await.unwrap();
    let Ended { relay, server, .. } = task.await.unwrap();
    assert!(server.reusable());
    assert!(relay.to_client.buf.capacity() <= MAX_IDLE_CAPACITY, "capacity {}", relay.to_client.buf.capacity());
}

#[tokio::test]
async fn pipelined_syncs_wait_for_every_ready_for_query() {
    let (mut client, mut upstream, task) = start();
    let batch = [message(b'S', b""), message(b'S', b""), message(b'Q', b"SELECT 1\0")].concat();
    client.write_all(&batch).await.unwrap();
    read_exactly(&mut upstream, batch.len()).await;
    upstream.write_all(&[message(b'Z', b"I"), message(b'Z', b"I")].concat()).await.unwrap();
    read_exactly(&mut client, 12).await;
    client.write_all(&message(b'X', b"")).await.unwrap();
    let Ended { server, .. } = task.await.unwrap();
    assert_eq!(server.protocol().ready_owed(), 1, "one answer is still owed");
    assert!(!server.reusable());
}

#[tokio::test]
async fn a_broken_length_from_the_client_is_a_protocol_violation() {
    let (mut client, _upstream, task) = start();
    client.write_all(&[b'Q', 0, 0, 0, 2]).await.unwrap();
    let Ended { server, end, .. } = task.await.unwrap();
    assert!(matches!(end, RelayEnd::ClientProtocolViolation(_)));
    assert!(!server.reusable());
}

// ---------------------------------------------------------------------------------------------
// Inserted messages
// ---------------------------------------------------------------------------------------------

/// Prepares the statement a Bind names, ahead of it, if the server does not have it: what
/// transaction pooling does for a client whose statement was prepared on another connection.
struct PrepareOnBind;

impl Hook for PrepareOnBind {
    fn wants(&self, tag: u8) -> bool {
        tag == frontend::BIND
    }

    fn before(&mut self, _tag: u8, body: &[u8], _len: usize, insert: &mut Insert<'_>) -> Decision {
        let statement = body.split(|&b| b == 0).nth(1).unwrap();
        assert_eq!(statement, b"S1", "the tests bind statement S1, prepared as statement 1");
        if !insert.prepared().contains(1) {
            insert.message(frontend::PARSE, &[statement, b"\0SELECT 1\0\0\0"].concat(), StatementEffect::Prepares(1));
        }
        Decision::Forward
    }
}

fn parse_s1() -> Vec<u8> {
    message(b'P', b"S1\0SELECT 1\0\0\0")
}

/// Bind of S1 to the unnamed portal with `params_len` bytes of parameter data, Execute, Sync.
fn bind_execute_sync(params_len: usize) -> Vec<u8> {
    let mut bind = b"\0S1\0\0\0".to_vec();
    if params_len == 0 {
        bind.extend_from_slice(b"\0\0");
    } else {
        bind.extend_from_slice(b"\0\x01");
        bind.extend_from_slice(&(params_len as u32).to_be_bytes());
        bind.extend(std::iter::repeat_n(b'x', params_len));
    }
    bind.extend_from_slice(b"\0\0");
    [message(b'B', &bind), message(b'E', b"\0\0\0\0\0"), message(b'S', b"")].concat()
}

/// Writes `bytes` one at a time, so the relay reads every message in pieces.
async fn write_bytewise(stream: &mut DuplexStream, bytes: &[u8]) {
    for byte in bytes {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::task::yield_now().await;
    }
}

/// The client sends Terminate and reads what is left until the relay lets go.
async fn hang_up(mut client: DuplexStream) -> Vec<u8> {
    client.write_all(&message(b'X', b"")).await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    rest
}

#[tokio::test]
async fn an_inserted_parse_goes_first_and_its_reply_is_swallowed() {
    let (server, mut upstream) = connection();
    let (mut client, task) = attach(PrepareOnBind, server);
    let sent = bind_execute_sync(0);
    client.write_all(&sent).await.unwrap();
    let expected = [parse_s1(), sent].concat();
    assert_eq!(read_exactly(&mut upstream, expected.len()).await, expected, "Parse, Bind, Execute, Sync");
    let for_client =
        [message(b'2', b""), message(b'D', b"\0\x01\0\0\0\x011"), message(b'C', b"SELECT 1\0"), message(b'Z', b"I")]
            .concat();
    write_bytewise(&mut upstream, &[message(b'1', b""), for_client.clone()].concat()).await;
    assert_eq!(read_exactly(&mut client, for_client.len()).await, for_client, "no ParseComplete");
    assert!(hang_up(client).await.is_empty());
    let Ended { server, end, .. } = task.await.unwrap();
    assert!(matches!(end, RelayEnd::ClientTerminated));
    assert!(server.prepared().contains(1));
    assert!(server.protocol().owes_nothing());
    assert!(server.reusable());
}

#[tokio::test]
async fn a_failed_inserted_parse_shows_its_error_and_the_ready_for_query() {
    let (server, mut upstream) = connection();
    let (mut client, task) = attach(PrepareOnBind, server);
    let sent = bind_execute_sync(0);
    client.write_all(&sent).await.unwrap();
    let expected = [parse_s1(), sent].concat();
    assert_eq!(read_exactly(&mut upstream, expected.len()).await, expected);
    // The server skips Bind and Execute up to the Sync.
    let answer = [message(b'E', b"SERROR\0C42601\0Msyntax error\0\0"), message(b'Z', b"I")].concat();
    upstream.write_all(&answer).await.unwrap();
    assert_eq!(read_exactly(&mut client, answer.len()).await, answer);
    assert!(hang_up(client).await.is_empty());
    let Ended { server, .. } = task.await.unwrap();
    assert!(!server.prepared().contains(1));
    assert!(server.protocol().owes_nothing());
    assert!(server.reusable());
}

#[tokio::test]
async fn a_bind_too_long_to_hold_is_shown_cut_and_streams_whole() {
    let (server, mut upstream) = connection();
    let (mut client, task) = attach(PrepareOnBind, server);
    let sent = bind_execute_sync(2 * MAX_BUFFERED_MESSAGE);
    let expected = [parse_s1(), sent.clone()].concat();
    let (_, received) = tokio::join!(client.write_all(&sent), read_exactly(&mut upstream, expected.len()));
    assert!(received == expected, "the Parse, then the Bind whole");
    let answer = [message(b'1', b""), message(b'2', b""), message(b'C', b"SELECT 1\0"), message(b'Z', b"I")].concat();
    upstream.write_all(&answer).await.unwrap();
    assert_eq!(read_exactly(&mut client, answer.len() - 5).await, &answer[5..]);
    assert!(hang_up(client).await.is_empty());
    let Ended { server, .. } = task.await.unwrap();
    assert!(server.prepared().contains(1) && server.reusable());
}

#[tokio::test]
async fn state_carries_from_one_relay_to_the_next() {
    let (server, mut upstream) = connection();

    // A transaction opened in one attach is still open in the next.
    let (mut client, task) = attach(Passthrough, server);
    client.write_all(&message(b'Q', b"BEGIN\0")).await.unwrap();
    read_exactly(&mut upstream, 11).await;
    upstream.write_all(&[message(b'C', b"BEGIN\0"), message(b'Z', b"T")].concat()).await.unwrap();
    read_exactly(&mut client, 17).await;
    hang_up(client).await;
    let Ended { server, .. } = task.await.unwrap();
    assert!(!server.reusable());

    let (mut client, task) = attach(PrepareOnBind, server);
    client.write_all(&message(b'Q', b"COMMIT\0")).await.unwrap();
    read_exactly(&mut upstream, 12).await;
    upstream.write_all(&[message(b'C', b"COMMIT\0"), message(b'Z', b"I")].concat()).await.unwrap();
    read_exactly(&mut client, 18).await;
    // And a statement prepared in one attach is not prepared again in the next.
    let sent = bind_execute_sync(0);
    client.write_all(&sent).await.unwrap();
    read_exactly(&mut upstream, parse_s1().len() + sent.len()).await;
    upstream
        .write_all(
            &[message(b'1', b""), message(b'2', b""), message(b'C', b"SELECT 1\0"), message(b'Z', b"I")].concat(),
        )
        .await
        .unwrap();
    read_exactly(&mut client, 5 + 14 + 6).await;
    hang_up(client).await;
    let Ended { server, .. } = task.await.unwrap();
    assert!(server.reusable() && server.prepared().contains(1));

    let (mut client, task) = attach(PrepareOnBind, server);
    client.write_all(&sent).await.unwrap();
    assert_eq!(read_exactly(&mut upstream, sent.len()).await, sent, "no Parse this time");
    // A reply still owed when the client left is owed in the next attach.
    hang_up(client).await;
    let Ended { server, .. } = task.await.unwrap();
    assert_eq!(server.protocol().ready_owed(), 1);

    let (mut client, task) = attach(PrepareOnBind, server);
    let answer = [message(b'2', b""), message(b'C', b"SELECT 1\0"), message(b'Z', b"I")].concat();
    upstream.write_all(&answer).await.unwrap();
    read_exactly(&mut client, answer.len()).await;
    hang_up(client).await;
    let Ended { server, .. } = task.await.unwrap();
    assert!(server.protocol().owes_nothing() && server.reusable());
}

// ---------------------------------------------------------------------------------------------
// Answers in place and held messages
// ---------------------------------------------------------------------------------------------

/// Answers every Close itself, and holds a Bind while the server owes anything.
struct AnswerCloseHoldBind;

impl Hook for AnswerCloseHoldBind {
    fn wants(&self, tag: u8) -> bool {
        tag == frontend::CLOSE || tag == frontend::BIND
    }

    fn before(&mut self, tag: u8, _body: &[u8], _len: usize, insert: &mut Insert<'_>) -> Decision {
        if tag == frontend::CLOSE {
            insert.answer(tag, Bytes::from(message(b'3', b"")));
            return Decision::Drop;
        }
        if insert.protocol().owes_nothing() { Decision::Forward } else { Decision::Hold }
    }
}

#[tokio::test]
async fn a_reply_made_in_place_goes_out_in_the_order_the_server_would_send_it() {
    let (server, mut upstream) = connection();
    let (mut client, task) = attach(AnswerCloseHoldBind, server);
    let parse = message(b'P', b"\0SELECT 1\0\0\0");
    client.write_all(&[parse.clone(), message(b'C', b"Sx\0"), message(b'S', b"")].concat()).await.unwrap();
    let forwarded = read_exactly(&mut upstream, parse.len() + 5).await;
    assert_eq!(forwarded, [parse, message(b'S', b"")].concat(), "the Close never reaches the server");
    upstream.write_all(&[message(b'1', b""), message(b'Z', b"I")].concat()).await.unwrap();
    let expected = [message(b'1', b""), message(b'3', b""), message(b'Z', b"I")].concat();
    assert_eq!(
        read_exactly(&mut client, expected.len()).await,
        expected,
        "ParseComplete, CloseComplete, ReadyForQuery"
    );
    assert!(hang_up(client).await.is_empty());
    let Ended { server, .. } = task.await.unwrap();
    assert!(server.reusable());
}

#[tokio::test]
async fn a_held_message_waits_for_the_reply_it_depends_on_and_the_server_is_told_to_send_it() {
    let (server, mut upstream) = connection();
    let (mut client, task) = attach(AnswerCloseHoldBind, server);
    let parse = message(b'P', b"\0SELECT 1\0\0\0");
    let rest = [message(b'B', b"\0\0\0\0\0\0\0\0"), message(b'E', b"\0\0\0\0\0"), message(b'S', b"")].concat();
    client.write_all(&[parse.clone(), rest.clone()].concat()).await.unwrap();
    // The Parse goes on, and a Flush so the server answers it without waiting for a Sync.
    let forwarded = read_exactly(&mut upstream, parse.len() + 5).await;
    assert_eq!(forwarded, [parse, message(b'H', b"")].concat());
    upstream.write_all(&message(b'1', b"")).await.unwrap();
    assert_eq!(read_exactly(&mut upstream, rest.len()).await, rest, "then the Bind and what followed it");
    upstream
        .write_all(&[message(b'2', b""), message(b'C', b"SELECT 1\0"), message(b'Z', b"I")].concat())
        .await
        .unwrap();
    read_exactly(&mut client, 5 + 5 + 14 + 6).await;
    assert!(hang_up(client).await.is_empty());
    let Ended { server, .. } = task.await.unwrap();
    assert!(server.reusable());
}
