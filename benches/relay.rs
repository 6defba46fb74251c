//! Micro-benchmarks of the proxy's hot path: message framing, startup packet parsing and the
//! relay itself over in-memory pipes.
//!
//! Run with `cargo bench --bench relay -- --warm-up-time 1 --measurement-time 2` (or
//! `--quick`). The relay benches compare against the same traffic over a bare pipe, so the
//! difference is the relay's own cost (one extra hop, header scanning, buffering).

use std::hint::black_box;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use lakebase_proxy::protocol::frame::{FrameHeader, take_message};
use lakebase_proxy::protocol::startup::{self, CancelKey, StartupParams};
use lakebase_proxy::relay::{Relay, RelayEnd};
use lakebase_proxy::upstream::ServerConnection;
use test_support::wire;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};
use tokio::runtime::Runtime;

// ---------------------------------------------------------------------------------------------
// Wire fixtures
// ---------------------------------------------------------------------------------------------

/// A typical small result set: RowDescription, 100 DataRows, CommandComplete, ReadyForQuery.
fn result_set_100_rows() -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_slice(&wire::row_description(&["aid", "bid", "abalance", "filler"]));
    for i in 0..100u32 {
        let aid = i.to_string();
        let filler = [b' '; 84]; // pgbench_accounts.filler is char(84)
        buf.put_slice(&wire::data_row(&[aid.as_bytes(), b"1", b"0", &filler]));
    }
    buf.put_slice(&wire::command_complete("SELECT 100"));
    buf.put_slice(&wire::ready_for_query(b'I'));
    buf.freeze()
}

/// The startup body psql 15 sends (after the 4-byte length).
fn psql_startup_body() -> Vec<u8> {
    wire::psql_startup("bench", "bench").split_off(4)
}

/// `SELECT 1` as a simple Query.
fn query_select_1() -> Bytes {
    Bytes::from(wire::query("SELECT 1"))
}

/// The server's whole answer to `SELECT 1`.
fn answer_select_1() -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_slice(&wire::row_description(&["?column?"]));
    buf.put_slice(&wire::data_row(&[b"1"]));
    buf.put_slice(&wire::command_complete("SELECT 1"));
    buf.put_slice(&wire::ready_for_query(b'I'));
    buf.freeze()
}

/// A 10 MiB result streamed as 8 KiB DataRows, closed by CommandComplete and ReadyForQuery.
fn bulk_answer(total: usize, row: usize) -> Bytes {
    let value = vec![b'x'; row - 5 - 2 - 4]; // header, column count, value length
    let data_row = wire::data_row(&[&value]);
    let mut buf = BytesMut::with_capacity(total + 64);
    for _ in 0..total / row {
        buf.put_slice(&data_row);
    }
    buf.put_slice(&wire::command_complete("SELECT 1280"));
    buf.put_slice(&wire::ready_for_query(b'I'));
    buf.freeze()
}

// ---------------------------------------------------------------------------------------------
// Codec benches
// ---------------------------------------------------------------------------------------------

fn bench_frame(c: &mut Criterion) {
    let result = result_set_100_rows();
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(result.len() as u64));

    // What the relay does per message: parse the header, skip the body.
    group.bench_function("parse_headers_103_msgs", |b| {
        b.iter(|| {
            let buf = black_box(&result[..]);
            let mut pos = 0;
            let mut count = 0u32;
            while let Some(header) = FrameHeader::parse(&buf[pos..]).unwrap() {
                pos += header.total_len();
                count += 1;
            }
            assert_eq!(count, 103);
            count
        })
    });

    // What the proxy does when it holds a conversation itself: split whole messages off.
    // The setup copies the fixture into a fresh BytesMut, which is not timed.
    group.bench_function("take_message_103_msgs", |b| {
        b.iter_batched(
            || BytesMut::from(&result[..]),
            |mut buf| {
                let mut count = 0u32;
                while let Some((tag, body)) = take_message(&mut buf, 1 << 20).unwrap() {
                    black_box((tag, body));
                    count += 1;
                }
                assert_eq!(count, 103);
                count
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_startup(c: &mut Criterion) {
    let body = psql_startup_body();
    let mut group = c.benchmark_group("startup");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse_psql", |b| {
        b.iter(|| {
            let request = startup::parse(black_box(&body)).unwrap();
            assert!(matches!(request, startup::StartupRequest::Startup { .. }));
            request
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Relay benches
// ---------------------------------------------------------------------------------------------

/// Capacity of each in-memory pipe, in the range of a loopback socket's buffer.
const PIPE_CAPACITY: usize = 64 * 1024;
/// Round trips per ping-pong iteration.
const ROUND_TRIPS: u64 = 100;
const BULK_TOTAL: usize = 10 * 1024 * 1024;
const BULK_ROW: usize = 8 * 1024;

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn two_workers() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A client-facing stream. With `via_relay` it passes through a spawned [`Relay`]; without,
/// the client talks to the server directly (the baseline). The returned handle yields how
/// the relay ended.
fn connect(via_relay: bool) -> (DuplexStream, DuplexStream, Option<tokio::task::JoinHandle<RelayEnd>>) {
    if !via_relay {
        let (client, server) = duplex(PIPE_CAPACITY);
        return (client, server, None);
    }
    let (client, mut relay_client_side) = duplex(PIPE_CAPACITY);
    let (relay_upstream_side, server) = duplex(PIPE_CAPACITY);
    let relay = tokio::spawn(async move {
        let key = CancelKey { pid: 1, secret: 1 };
        let mut upstream =
            ServerConnection::in_memory(relay_upstream_side, 1, StartupParams::default(), Vec::new(), key);
        Relay::default().run(&mut relay_client_side, &mut upstream).await
        // Both relay ends drop here, so the server sees EOF.
    });
    (client, server, Some(relay))
}

/// Hangs up the client side: Terminate through the relay, or a plain close without one.
async fn finish<S: AsyncWrite + Unpin>(
    mut client: S,
    relay: Option<tokio::task::JoinHandle<RelayEnd>>,
    server: tokio::task::JoinHandle<()>,
) {
    client.write_all(&wire::terminate()).await.unwrap();
    if let Some(relay) = relay {
        let end = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::ClientTerminated), "relay ended with {end:?}");
    } else {
        drop(client);
    }
    server.await.unwrap();
}

/// Answers every Query with `answer` until the client side goes away (or, on the baseline, a
/// Terminate arrives).
async fn echo_server<S: AsyncRead + AsyncWrite + Unpin>(mut server: S, query_len: usize, answer: Bytes) {
    let mut query = vec![0u8; query_len];
    loop {
        match server.read_exact(&mut query).await {
            Ok(_) if query[0] == b'Q' => server.write_all(&answer).await.unwrap(),
            _ => return,
        }
    }
}

async fn ping_pong(via_relay: bool, query: &Bytes, answer: &Bytes) {
    let (mut client, server, relay) = connect(via_relay);
    // Terminate (5 bytes) is shorter than a Query, so on the baseline the server needs EOF too.
    let server = tokio::spawn(echo_server(server, query.len(), answer.clone()));
    let mut reply = vec![0u8; answer.len()];
    for _ in 0..ROUND_TRIPS {
        client.write_all(query).await.unwrap();
        client.read_exact(&mut reply).await.unwrap();
    }
    debug_assert_eq!(&reply[..], &answer[..]);
    finish(client, relay, server).await;
}

async fn bulk(via_relay: bool, query: &Bytes, answer: &Bytes) {
    let (mut client, mut server, relay) = connect(via_relay);
    let (query_len, answer_clone) = (query.len(), answer.clone());
    let server = tokio::spawn(async move {
        let mut query = vec![0u8; query_len];
        server.read_exact(&mut query).await.unwrap();
        server.write_all(&answer_clone).await.unwrap();
        // Hold the pipe open until the client is done, like an idle backend.
        let mut rest = [0u8; 16];
        while let Ok(n) = server.read(&mut rest).await {
            if n == 0 {
                break;
            }
        }
    });
    client.write_all(query).await.unwrap();
    let mut buf = vec![0u8; PIPE_CAPACITY];
    let mut received = 0;
    while received < answer.len() {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "stream ended after {received} bytes");
        received += n;
    }
    assert_eq!(received, answer.len());
    finish(client, relay, server).await;
}

fn bench_relay(c: &mut Criterion) {
    let query = query_select_1();
    let answer = answer_select_1();
    let rt = current_thread();

    let mut group = c.benchmark_group("relay_ping_pong_x100");
    // One element = one round trip, so criterion reports round trips per second.
    group.throughput(Throughput::Elements(ROUND_TRIPS));
    for (name, via_relay) in [("baseline_no_relay", false), ("relay", true)] {
        group.bench_function(name, |b| b.iter(|| rt.block_on(ping_pong(via_relay, &query, &answer))));
    }
    group.finish();

    let bulk_answer = bulk_answer(BULK_TOTAL, BULK_ROW);
    let multi = two_workers();
    let mut group = c.benchmark_group("relay_stream_10MiB_8KiB_rows");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(bulk_answer.len() as u64));
    for (name, runtime, via_relay) in [
        ("baseline_no_relay/current_thread", &rt, false),
        ("relay/current_thread", &rt, true),
        ("relay/2_workers", &multi, true),
    ] {
        group.bench_function(name, |b| b.iter(|| runtime.block_on(bulk(via_relay, &query, &bulk_answer))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = bench_frame, bench_startup, bench_relay
}
criterion_main!(benches);
