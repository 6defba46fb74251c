//! Micro-benchmarks of the client side of a login, as far as the public API reaches.
//!
//! The handshake itself (`client::handshake::negotiate`) and the session's greeting are private,
//! so this measures the public pieces they are made of, in the order a `--lazy-attach` login
//! uses them: `startup::read_packet` + `startup::parse` of psql's StartupMessage, then the
//! greeting (AuthenticationOk, the server's ParameterStatus set, BackendKeyData,
//! ReadyForQuery) built with `protocol::messages`, written, and read by the client up to
//! ReadyForQuery. Not covered: the listener's accept loop, pool lookup, cancel-key
//! registration, tracing spans and the task spawn per client; `pgbench -C` in
//! benches/pgbench.sh measures the whole thing.
//!
//! Run with `cargo bench --bench handshake` (1 s warm-up, 2 s measurement by default).

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use lakebase_proxy::protocol::messages;
use lakebase_proxy::protocol::startup::{self, StartupRequest};
use lakebase_proxy::protocol::{CancelKey, FrameHeader, TransactionStatus};
use test_support::wire;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, duplex};
use tokio::net::{TcpListener, TcpStream};

/// psql 15's StartupMessage (with its length prefix).
fn psql_startup() -> Vec<u8> {
    wire::psql_startup("bench", "bench")
}

/// The ParameterStatus set PostgreSQL 15 sends at login (what a lazy greeting replays).
const SERVER_PARAMS: &[(&str, &str)] = &[
    ("application_name", "psql"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("default_transaction_read_only", "off"),
    ("in_hot_standby", "off"),
    ("integer_datetimes", "on"),
    ("IntervalStyle", "postgres"),
    ("is_superuser", "off"),
    ("server_encoding", "UTF8"),
    ("server_version", "15.18 (Debian 15.18-0+deb12u1)"),
    ("session_authorization", "bench"),
    ("standard_conforming_strings", "on"),
    ("TimeZone", "Etc/UTC"),
];

fn greeting(buf: &mut BytesMut) {
    messages::authentication_ok(buf);
    for (name, value) in SERVER_PARAMS {
        messages::parameter_status(buf, name, value);
    }
    messages::backend_key_data(buf, CancelKey { pid: 4242, secret: 0x5eed_1234 });
    messages::ready_for_query(buf, TransactionStatus::Idle);
}

/// The proxy's side: read and parse the StartupMessage, answer with the greeting.
async fn serve_login<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let packet = startup::read_packet(stream, &mut BytesMut::new()).await.unwrap().expect("a startup packet");
    let StartupRequest::Startup { params, .. } = startup::parse(&packet).unwrap() else {
        panic!("not a StartupMessage");
    };
    assert_eq!(params.get("user"), Some("bench"));
    let mut buf = BytesMut::with_capacity(512);
    greeting(&mut buf);
    stream.write_all(&buf).await.unwrap();
}

/// The client's side: send the StartupMessage, read messages until ReadyForQuery.
async fn client_login<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, packet: &[u8]) {
    stream.write_all(packet).await.unwrap();
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        stream.read_buf(&mut buf).await.unwrap();
        let mut pos = 0;
        while let Some(header) = FrameHeader::parse(&buf[pos..]).unwrap() {
            if pos + header.total_len() > buf.len() {
                break;
            }
            if header.tag == b'Z' {
                return;
            }
            pos += header.total_len();
        }
    }
}

fn bench_handshake(c: &mut Criterion) {
    let packet = psql_startup();
    let mut group = c.benchmark_group("handshake");

    group.bench_function("parse_startup_and_build_greeting", |b| {
        let mut buf = BytesMut::with_capacity(512);
        b.iter(|| {
            let request = startup::parse(black_box(&packet[4..])).unwrap();
            buf.clear();
            greeting(&mut buf);
            black_box((request, buf.len()))
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    group.bench_function("login_over_duplex", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (mut client, mut server) = duplex(16 * 1024);
                let proxy = serve_login(&mut server);
                let client = client_login(&mut client, &packet);
                tokio::join!(proxy, client);
            })
        })
    });

    // A new loopback TCP connection per iteration: connect, accept, the same exchange, close.
    // This is the kernel's share of what `pgbench -C` pays per client, plus the login above.
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    group.bench_function("login_over_new_tcp_connection", |b| {
        b.iter(|| {
            rt.block_on(async {
                let accept = async {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    stream.set_nodelay(true).unwrap();
                    serve_login(&mut stream).await;
                    stream
                };
                let connect = async {
                    let mut stream = TcpStream::connect(address).await.unwrap();
                    stream.set_nodelay(true).unwrap();
                    client_login(&mut stream, &packet).await;
                    stream
                };
                let (server, client) = tokio::join!(accept, connect);
                drop((server, client));
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    targets = bench_handshake
}
criterion_main!(benches);
