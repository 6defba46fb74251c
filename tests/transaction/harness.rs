//! The differential harness: scenarios (message sequences from several clients), running one
//! against an endpoint (PostgreSQL itself, or the proxy), and comparing what every client
//! received, message for message.
//!
//! Clients speak the protocol byte by byte: a writer task per client sends what a step hands it
//! without waiting for replies (so a client can pipeline, or queue behind another client that
//! holds the only server), and a reader task records every message after the greeting's first
//! ReadyForQuery. Waiting is always for a condition (so many ReadyForQuery, so many messages of a
//! tag, a query visible as running), bounded by [`WAIT`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use test_support::wire;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::support::{APP_DB, SCRAM_USER};

/// How long any wait of a scenario may take before the scenario fails.
pub const WAIT: Duration = Duration::from_secs(4);

/// Tag of the pseudo-message recorded when the other side closes a client's connection before
/// the client left (after a FATAL error, or a proxy that drops it): part of the comparison.
pub const CLOSED_BY_PEER: u8 = b'!';

// ---------------------------------------------------------------------------------------------
// Scenarios

/// One thing a scenario does.
pub enum Step {
    /// Connect this client now instead of at the start (its greeting is not compared against a
    /// position in the other clients' sequences, only its own).
    Connect(usize),
    /// Hand these bytes to the client's writer; do not wait for anything.
    Send(usize, Vec<u8>),
    /// Like `Send`, cut into writes of at most this many bytes, so that the receiver sees a
    /// message split across reads.
    SendSplit(usize, Vec<u8>, usize),
    /// Wait until the client has received this many ReadyForQuery in all since its greeting.
    Await(usize, usize),
    /// Wait until the client has received this many messages with this tag in all.
    AwaitTag(usize, u8, usize),
    /// Close the client's socket without a Terminate (after writing what was handed to it).
    /// Its sequence is compared up to its last completed wait: what was in flight may or may
    /// not have arrived.
    Disconnect(usize),
    /// Send Terminate and wait until the other side has closed the connection.
    Terminate(usize),
    /// Send a CancelRequest with the client's BackendKeyData to the same endpoint, on a new
    /// connection, and wait until that connection is closed (the request has been handled).
    Cancel(usize),
    /// Run SQL out of band, on a connection of the harness's own straight to PostgreSQL.
    Admin(String),
    /// Wait until some other connection runs a query whose text contains this marker
    /// (`pg_stat_activity`), so that a cancel or a termination finds it running.
    WaitActive(String),
}

impl fmt::Debug for Step {
    /// A step on one line, a message batch by its tags.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Connect(c) => write!(f, "Connect({c})"),
            Step::Send(c, bytes) => write!(f, "Send({c}, {})", frame_tags(bytes)),
            Step::SendSplit(c, bytes, chunk) => write!(f, "SendSplit({c}, {}, by {chunk})", frame_tags(bytes)),
            Step::Await(c, k) => write!(f, "Await({c}, {k} ReadyForQuery)"),
            Step::AwaitTag(c, tag, n) => write!(f, "AwaitTag({c}, {n} x '{}')", *tag as char),
            Step::Disconnect(c) => write!(f, "Disconnect({c})"),
            Step::Terminate(c) => write!(f, "Terminate({c})"),
            Step::Cancel(c) => write!(f, "Cancel({c})"),
            Step::Admin(sql) => write!(f, "Admin({})", short(sql, 60)),
            Step::WaitActive(marker) => write!(f, "WaitActive({marker})"),
        }
    }
}

/// A named sequence of steps over clients `0..n`, built with the methods below. The builder
/// counts the messages that each end in a ReadyForQuery (Query, Sync, FunctionCall) so that
/// [`Scenario::wait`] knows how many to wait for.
pub struct Scenario {
    /// Name, starting with the checklist items it covers (`T1`, `P3`, ...).
    pub name: String,
    /// SQL run out of band before each run (tables of the scenario, dropped and created anew).
    setup: Vec<String>,
    /// Extra startup parameters per client.
    startup: Vec<Vec<(String, String)>>,
    steps: Vec<Step>,
    /// ReadyForQuery each client is owed after the steps so far.
    owed: Vec<usize>,
}

impl Scenario {
    /// A scenario with `clients` clients and no steps.
    pub fn new(name: &str, clients: usize) -> Scenario {
        Scenario {
            name: name.to_string(),
            setup: Vec::new(),
            startup: vec![Vec::new(); clients],
            steps: Vec::new(),
            owed: vec![0; clients],
        }
    }

    /// Number of clients.
    pub fn clients(&self) -> usize {
        self.owed.len()
    }

    /// Adds SQL to run out of band before each run.
    pub fn setup(&mut self, sql: &str) -> &mut Self {
        self.setup.push(sql.to_string());
        self
    }

    /// Adds startup parameters of client `c`.
    pub fn startup(&mut self, c: usize, params: &[(&str, &str)]) -> &mut Self {
        self.startup[c].extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Connects client `c` at this point rather than at the start.
    pub fn connect(&mut self, c: usize) -> &mut Self {
        self.steps.push(Step::Connect(c));
        self
    }

    /// Sends whole messages from client `c`, without waiting.
    pub fn send<I: IntoIterator<Item = Vec<u8>>>(&mut self, c: usize, messages: I) -> &mut Self {
        let bytes: Vec<u8> = messages.into_iter().flatten().collect();
        self.owed[c] += ready_owed(&bytes);
        self.steps.push(Step::Send(c, bytes));
        self
    }

    /// Sends whole messages from client `c` in writes of at most `chunk` bytes.
    pub fn send_split<I: IntoIterator<Item = Vec<u8>>>(&mut self, c: usize, messages: I, chunk: usize) -> &mut Self {
        let bytes: Vec<u8> = messages.into_iter().flatten().collect();
        self.owed[c] += ready_owed(&bytes);
        self.steps.push(Step::SendSplit(c, bytes, chunk));
        self
    }

    /// Sends bytes that need not be whole messages (nothing is counted as owed).
    pub fn send_raw(&mut self, c: usize, bytes: &[u8]) -> &mut Self {
        self.steps.push(Step::Send(c, bytes.to_vec()));
        self
    }

    /// Sends a simple Query from client `c` without waiting.
    pub fn sq(&mut self, c: usize, sql: &str) -> &mut Self {
        self.send(c, [wire::query(sql)])
    }

    /// Sends a simple Query from client `c` and waits for everything it is owed.
    pub fn q(&mut self, c: usize, sql: &str) -> &mut Self {
        self.sq(c, sql).wait(c)
    }

    /// Waits until client `c` has every ReadyForQuery it is owed so far.
    pub fn wait(&mut self, c: usize) -> &mut Self {
        self.steps.push(Step::Await(c, self.owed[c]));
        self
    }

    /// Waits until client `c` has received `n` messages tagged `tag` in all.
    pub fn tag(&mut self, c: usize, tag: u8, n: usize) -> &mut Self {
        self.steps.push(Step::AwaitTag(c, tag, n));
        self
    }

    /// Closes client `c`'s socket without a Terminate.
    pub fn disconnect(&mut self, c: usize) -> &mut Self {
        self.steps.push(Step::Disconnect(c));
        self
    }

    /// Terminates client `c` and waits for the connection to close.
    pub fn terminate(&mut self, c: usize) -> &mut Self {
        self.steps.push(Step::Terminate(c));
        self
    }

    /// Sends a CancelRequest for client `c`.
    pub fn cancel(&mut self, c: usize) -> &mut Self {
        self.steps.push(Step::Cancel(c));
        self
    }

    /// Runs SQL out of band.
    pub fn admin(&mut self, sql: &str) -> &mut Self {
        self.steps.push(Step::Admin(sql.to_string()));
        self
    }

    /// Waits until a query containing `marker` runs on some other connection.
    pub fn wait_active(&mut self, marker: &str) -> &mut Self {
        self.steps.push(Step::WaitActive(marker.to_string()));
        self
    }

    /// Takes the built scenario out of a builder chain.
    pub fn build(&mut self) -> Scenario {
        Scenario {
            name: std::mem::take(&mut self.name),
            setup: std::mem::take(&mut self.setup),
            startup: std::mem::take(&mut self.startup),
            steps: std::mem::take(&mut self.steps),
            owed: std::mem::take(&mut self.owed),
        }
    }
}

/// Splits bytes into whole messages `(tag, body)`; `None` if they do not frame.
fn frames(bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(1..5)?.try_into().ok()?) as usize;
        let body = rest.get(5..1 + len)?;
        out.push((rest[0], body));
        rest = &rest[1 + len..];
    }
    Some(out)
}

/// How many ReadyForQuery the frontend messages in `bytes` are owed: one per Query, Sync and
/// FunctionCall.
fn ready_owed(bytes: &[u8]) -> usize {
    let frames = frames(bytes).expect("Scenario::send takes whole messages; use send_raw for fragments");
    frames.iter().filter(|(tag, _)| matches!(tag, b'Q' | b'S' | b'F')).count()
}

/// The tags of the frontend messages in `bytes`, for step descriptions.
fn frame_tags(bytes: &[u8]) -> String {
    match frames(bytes) {
        Some(frames) if frames.len() <= 40 => frames.iter().map(|(tag, _)| *tag as char).collect(),
        Some(frames) => format!("{} messages", frames.len()),
        None => format!("{} raw bytes", bytes.len()),
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoints and connections

/// Where the clients of a run connect.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// PostgreSQL itself over its unix socket (trusted: no TLS, no password), each client on
    /// its own backend.
    Direct(PathBuf),
    /// The proxy's TCP port on 127.0.0.1 (it greets loopback clients without a password).
    Proxy(u16),
}

/// A byte stream of either kind.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Endpoint {
    /// A new connection to the endpoint.
    async fn open(&self) -> Result<Box<dyn Stream>, String> {
        match self {
            Endpoint::Direct(socket) => {
                let stream = UnixStream::connect(socket).await.map_err(|e| format!("connect {socket:?}: {e}"))?;
                Ok(Box::new(stream))
            }
            Endpoint::Proxy(port) => {
                let stream =
                    TcpStream::connect(("127.0.0.1", *port)).await.map_err(|e| format!("connect :{port}: {e}"))?;
                // Each write leaves at once, so split sends really arrive in pieces.
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                Ok(Box::new(stream))
            }
        }
    }
}

/// The unix socket file of a PostgreSQL listening on `port` with sockets in `dir`.
pub fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// One backend message.
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    /// The tag byte.
    pub tag: u8,
    /// The body after the length.
    pub body: Vec<u8>,
}

/// What a client's reader has recorded so far.
#[derive(Default)]
struct Received {
    /// Every message after the greeting except ParameterStatus.
    msgs: Vec<Msg>,
    /// ParameterStatus after the greeting, in order.
    params: Vec<(String, String)>,
    /// The connection has ended (EOF or error).
    closed: bool,
}

/// What one client received in a run.
pub struct Transcript {
    /// Every message after the greeting's ReadyForQuery, ParameterStatus left out.
    pub msgs: Vec<Msg>,
    /// ParameterStatus received after the greeting, in order.
    pub params: Vec<(String, String)>,
    /// ParameterStatus of the greeting.
    pub greeting: BTreeMap<String, String>,
}

/// A connected client of a run.
struct Client {
    index: usize,
    /// Bytes to write; dropping it makes the writer shut the socket down.
    writer: Option<mpsc::UnboundedSender<Vec<u8>>>,
    tasks: Vec<JoinHandle<()>>,
    received: watch::Receiver<Received>,
    /// Set before the client closes the connection itself, so the reader does not record the
    /// end as the peer's doing.
    leaving: Arc<AtomicBool>,
    /// BackendKeyData body (process id, secret).
    key: Vec<u8>,
    greeting: BTreeMap<String, String>,
    /// Length of the sequence known complete: up to the message that satisfied the last wait.
    settled: usize,
    /// Disconnected: the sequence ends at `settled`.
    gone: bool,
}

impl Drop for Client {
    /// Stops the reader and writer, which closes the socket.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A (name, value) pair from a ParameterStatus body.
fn parameter(body: &[u8]) -> (String, String) {
    let mut fields = body.split(|&b| b == 0);
    let name = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let value = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    (name, value)
}

impl Client {
    /// Connects, sends the startup message (user and database of the tests' server, plus
    /// `params`) and reads the greeting up to its ReadyForQuery.
    async fn connect(index: usize, endpoint: &Endpoint, params: &[(String, String)]) -> Result<Client, String> {
        let mut stream = endpoint.open().await?;
        let mut startup = vec![("user".to_string(), SCRAM_USER.to_string()), ("database".into(), APP_DB.into())];
        startup.extend(params.iter().cloned());
        let startup = wire::startup_message(wire::PROTOCOL_3_0, &startup);
        stream.write_all(&startup).await.map_err(|e| format!("send startup: {e}"))?;
        let mut key = Vec::new();
        let mut greeting = BTreeMap::new();
        let greet = async {
            loop {
                let (tag, body) = wire::read_message(&mut stream).await.map_err(|e| format!("greeting: {e}"))?;
                match tag {
                    b'R' if body.get(..4) == Some(&[0, 0, 0, 0]) => {}
                    b'R' => return Err(format!("asked for authentication {body:?}")),
                    b'S' => {
                        greeting.insert(parameter(&body).0, parameter(&body).1);
                    }
                    b'K' => key = body,
                    b'Z' => return Ok(()),
                    b'E' => return Err(format!("refused: {}", show(&Msg { tag, body }))),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(WAIT, greet).await.map_err(|_| "no greeting".to_string())??;

        let (read_half, write_half) = tokio::io::split(stream);
        let (tx, received) = watch::channel(Received::default());
        let leaving = Arc::new(AtomicBool::new(false));
        let (writer, to_write) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(read_messages(read_half, tx, leaving.clone())),
            tokio::spawn(write_messages(write_half, to_write)),
        ];
        Ok(Client { index, writer: Some(writer), tasks, received, leaving, key, greeting, settled: 0, gone: false })
    }

    /// Hands bytes to the writer task.
    fn write(&self, bytes: Vec<u8>) -> Result<(), String> {
        let writer = self.writer.as_ref().ok_or("client already left")?;
        writer.send(bytes).map_err(|_| "the writer stopped (connection lost)".to_string())
    }

    /// Waits until `done` holds of what was received, which returns the length of the sequence
    /// up to the message that satisfied it; fails on timeout or if the connection ends first.
    async fn wait_for(&mut self, what: &str, done: impl Fn(&[Msg]) -> Option<usize>) -> Result<(), String> {
        let wait = self.received.wait_for(|r| r.closed || done(&r.msgs).is_some());
        let timed_out = tokio::time::timeout(WAIT, wait).await.is_err();
        let received = self.received.borrow();
        match done(&received.msgs) {
            Some(settled) => {
                self.settled = self.settled.max(settled);
                Ok(())
            }
            None => {
                let why = if timed_out { format!("nothing more within {WAIT:?}") } else { "connection closed".into() };
                let tail: Vec<String> = received.msgs.iter().rev().take(8).rev().map(show).collect();
                Err(format!(
                    "client {} waited for {what}: {why}; it has {} messages, the last: [{}]",
                    self.index,
                    received.msgs.len(),
                    tail.join(", ")
                ))
            }
        }
    }

    /// Waits for the `k`th ReadyForQuery since the greeting.
    async fn await_ready(&mut self, k: usize) -> Result<(), String> {
        self.await_tag(b'Z', k).await
    }

    /// Waits for the `n`th message tagged `tag` since the greeting.
    async fn await_tag(&mut self, tag: u8, n: usize) -> Result<(), String> {
        let what = format!("{n} x '{}'", tag as char);
        self.wait_for(&what, |msgs| {
            if n == 0 {
                return Some(0);
            }
            let mut seen = 0;
            msgs.iter()
                .position(|m| {
                    seen += usize::from(m.tag == tag);
                    seen == n
                })
                .map(|i| i + 1)
        })
        .await
    }

    /// Sends Terminate and waits until the peer closes the connection.
    async fn terminate(&mut self) -> Result<(), String> {
        self.leaving.store(true, Ordering::SeqCst);
        if !self.received.borrow().closed {
            // The peer may have closed already; the wait below tells.
            let _ = self.write(wire::terminate());
        }
        self.writer = None;
        let closed = tokio::time::timeout(WAIT, self.received.wait_for(|r| r.closed)).await;
        closed.map(|_| ()).map_err(|_| format!("client {} sent Terminate but the connection stayed open", self.index))
    }

    /// Closes the socket without a Terminate (after what the writer still has).
    fn disconnect(&mut self) {
        self.leaving.store(true, Ordering::SeqCst);
        self.writer = None;
        // The reader's half goes with it, so the socket closes once the writer has written.
        self.tasks[0].abort();
        self.gone = true;
    }

    /// What the client received, cut at its last completed wait if it disconnected.
    fn transcript(&self) -> Transcript {
        let received = self.received.borrow();
        let mut msgs = received.msgs.clone();
        if self.gone {
            msgs.truncate(self.settled);
        }
        Transcript { msgs, params: received.params.clone(), greeting: self.greeting.clone() }
    }
}

/// The reader task: records messages until the connection ends.
async fn read_messages(mut stream: ReadHalf<Box<dyn Stream>>, tx: watch::Sender<Received>, leaving: Arc<AtomicBool>) {
    loop {
        match wire::read_message(&mut stream).await {
            Ok((b'S', body)) => tx.send_modify(|r| r.params.push(parameter(&body))),
            Ok((tag, body)) => tx.send_modify(|r| r.msgs.push(Msg { tag, body })),
            Err(_) => {
                let by_peer = !leaving.load(Ordering::SeqCst);
                tx.send_modify(|r| {
                    if by_peer {
                        r.msgs.push(Msg { tag: CLOSED_BY_PEER, body: Vec::new() });
                    }
                    r.closed = true;
                });
                return;
            }
        }
    }
}

/// The writer task: writes what it is handed, in order; shuts the socket's sending side down
/// once the client drops its sender.
async fn write_messages(mut stream: WriteHalf<Box<dyn Stream>>, mut to_write: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(bytes) = to_write.recv().await {
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = stream.shutdown().await;
}

/// The harness's own connection straight to PostgreSQL (same role and database as the clients,
/// so it can see their queries and terminate their backends), for setup and out-of-band SQL.
pub struct Admin {
    stream: UnixStream,
}

impl Admin {
    /// Connects over the unix socket.
    pub async fn connect(socket: &Path) -> Result<Admin, String> {
        let mut stream = UnixStream::connect(socket).await.map_err(|e| format!("admin connect: {e}"))?;
        let startup = wire::startup_message(wire::PROTOCOL_3_0, &[("user", SCRAM_USER), ("database", APP_DB)]);
        stream.write_all(&startup).await.map_err(|e| e.to_string())?;
        let mut admin = Admin { stream };
        admin.until_ready().await?;
        Ok(admin)
    }

    /// Reads up to ReadyForQuery: the first column of each row, or the first error.
    async fn until_ready(&mut self) -> Result<Vec<Option<String>>, String> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let read = tokio::time::timeout(WAIT * 4, wire::read_message(&mut self.stream)).await;
            let (tag, body) = read.map_err(|_| "admin: no answer".to_string())?.map_err(|e| format!("admin: {e}"))?;
            match tag {
                b'D' => rows.push(wire::data_row_first(&body)),
                b'E' => error = Some(show(&Msg { tag, body })),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Runs a simple query; the first column of each row.
    pub async fn sql(&mut self, sql: &str) -> Result<Vec<Option<String>>, String> {
        self.stream.write_all(&wire::query(sql)).await.map_err(|e| e.to_string())?;
        self.until_ready().await.map_err(|e| format!("{e} (running {})", short(sql, 80)))
    }

    /// Waits until another connection runs a query containing `marker`.
    async fn wait_active(&mut self, marker: &str) -> Result<(), String> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() \
             AND position('{marker}' in query) > 0"
        );
        let deadline = Instant::now() + WAIT;
        loop {
            if self.sql(&sql).await?.first().cloned().flatten().as_deref() != Some("0") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no query containing {marker:?} started within {WAIT:?}"));
            }
            // Polled: PostgreSQL cannot tell us when another backend starts a query.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Sends a CancelRequest for `key` to `endpoint` and waits until the connection is closed.
async fn cancel(endpoint: &Endpoint, key: &[u8]) -> Result<(), String> {
    let mut stream = endpoint.open().await?;
    stream.write_all(&wire::cancel_request(key)).await.map_err(|e| format!("send cancel: {e}"))?;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
    read.map_err(|_| "the cancel connection stayed open".to_string())?.map_err(|e| format!("cancel: {e}"))?;
    Ok(())
}

/// Runs `scenario` with its clients connected to `endpoint`; `admin_socket` is PostgreSQL's own
/// unix socket. Returns each client's transcript, or why the run could not finish.
pub async fn run(scenario: &Scenario, endpoint: &Endpoint, admin_socket: &Path) -> Result<Vec<Transcript>, String> {
    let mut admin = Admin::connect(admin_socket).await?;
    for sql in &scenario.setup {
        admin.sql(sql).await.map_err(|e| format!("setup: {e}"))?;
    }
    let late: Vec<usize> =
        scenario.steps.iter().filter_map(|s| if let Step::Connect(c) = s { Some(*c) } else { None }).collect();
    let mut clients: Vec<Option<Client>> = Vec::new();
    for c in 0..scenario.clients() {
        let client = if late.contains(&c) {
            None
        } else {
            Some(Client::connect(c, endpoint, &scenario.startup[c]).await.map_err(|e| format!("client {c}: {e}"))?)
        };
        clients.push(client);
    }
    for (i, step) in scenario.steps.iter().enumerate() {
        let result = run_step(step, scenario, endpoint, &mut admin, &mut clients).await;
        result.map_err(|e| format!("step {i} {step:?}: {e}{}", so_far(&clients)))?;
    }
    // Every client still connected gets all it is owed, then leaves with a Terminate; what it
    // receives up to the end of the connection is part of its sequence.
    // A connection the other side closed (after a FATAL error) owes nothing more.
    for (c, client) in clients.iter_mut().enumerate() {
        if let Some(client) = client.as_mut().filter(|cl| !cl.gone) {
            let settled = client.await_ready(scenario.owed[c]).await;
            if !client.received.borrow().closed {
                settled.map_err(|e| format!("at the end: {e}"))?;
            }
        }
    }
    for client in clients.iter_mut().flatten().filter(|cl| !cl.gone) {
        client.terminate().await.map_err(|e| format!("at the end: {e}"))?;
    }
    let transcript = |(c, client): (usize, &Option<Client>)| {
        client.as_ref().map(Client::transcript).ok_or_else(|| format!("client {c} never connected"))
    };
    clients.iter().enumerate().map(transcript).collect()
}

/// What each client has received so far (its last messages), for a run that cannot finish.
fn so_far(clients: &[Option<Client>]) -> String {
    let mut out = String::new();
    for client in clients.iter().flatten() {
        let received = client.received.borrow();
        let tail: Vec<String> = received.msgs.iter().rev().take(12).rev().map(show).collect();
        let skipped = received.msgs.len() - tail.len();
        let skipped = if skipped > 0 { format!("({skipped} before) ") } else { String::new() };
        out.push_str(&format!("\n    client {} received: {skipped}{}", client.index, tail.join(", ")));
    }
    out
}

/// Client `c`, if connected.
fn client(clients: &mut [Option<Client>], c: usize) -> Result<&mut Client, String> {
    clients[c].as_mut().ok_or_else(|| format!("client {c} is not connected"))
}

/// Runs one step of `scenario`.
async fn run_step(
    step: &Step,
    scenario: &Scenario,
    endpoint: &Endpoint,
    admin: &mut Admin,
    clients: &mut [Option<Client>],
) -> Result<(), String> {
    match step {
        Step::Connect(c) => clients[*c] = Some(Client::connect(*c, endpoint, &scenario.startup[*c]).await?),
        Step::Send(c, bytes) => client(clients, *c)?.write(bytes.clone())?,
        Step::SendSplit(c, bytes, chunk) => {
            let client = client(clients, *c)?;
            for piece in bytes.chunks(*chunk) {
                client.write(piece.to_vec())?;
            }
        }
        Step::Await(c, k) => client(clients, *c)?.await_ready(*k).await?,
        Step::AwaitTag(c, tag, n) => client(clients, *c)?.await_tag(*tag, *n).await?,
        Step::Disconnect(c) => client(clients, *c)?.disconnect(),
        Step::Terminate(c) => client(clients, *c)?.terminate().await?,
        Step::Cancel(c) => {
            let key = client(clients, *c)?.key.clone();
            cancel(endpoint, &key).await?;
        }
        Step::Admin(sql) => {
            admin.sql(sql).await?;
        }
        Step::WaitActive(marker) => admin.wait_active(marker).await?,
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Comparison

/// A message with what legitimately differs between two connections taken out: the source
/// location fields of errors and notices (file, line, routine; the rest sorted by field code),
/// and the sender's process id of a notification.
fn normalise(msg: &Msg) -> Msg {
    match msg.tag {
        b'E' | b'N' => {
            let mut fields: Vec<&[u8]> =
                msg.body.split(|&b| b == 0).filter(|f| !f.is_empty() && !matches!(f[0], b'F' | b'L' | b'R')).collect();
            fields.sort();
            let mut body = Vec::new();
            for field in fields {
                body.extend_from_slice(field);
                body.push(0);
            }
            body.push(0);
            Msg { tag: msg.tag, body }
        }
        b'A' if msg.body.len() >= 4 => {
            let mut body = msg.body.clone();
            body[..4].fill(0);
            Msg { tag: msg.tag, body }
        }
        _ => msg.clone(),
    }
}

/// `text` cut to `max` characters.
fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}...", text.chars().take(max).collect::<String>())
    }
}

/// The NUL-terminated strings of a body.
fn cstrings(body: &[u8]) -> Vec<String> {
    body.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// The big-endian u16 at `at` (0 past the end).
fn be16(body: &[u8], at: usize) -> usize {
    body.get(at..at + 2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize)
}

/// The big-endian i32 at `at` (0 past the end).
fn be32(body: &[u8], at: usize) -> i64 {
    body.get(at..at + 4).map_or(0, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64)
}

/// A message as one readable line: tag letter and a short form of its body.
pub fn show(msg: &Msg) -> String {
    let body = &msg.body;
    let tag = msg.tag as char;
    match msg.tag {
        b'Z' => format!("Z({})", body.first().map_or('?', |&b| b as char)),
        b'C' => format!("C {:?}", cstrings(body)[0]),
        b'E' | b'N' => {
            let fields: Vec<String> = cstrings(body)
                .into_iter()
                .filter(|f| !f.is_empty() && !matches!(f.as_bytes()[0], b'F' | b'L' | b'R' | b'V'))
                .map(|f| format!("{}:{}", &f[..1], short(&f[1..], 70)))
                .collect();
            format!("{tag} {{{}}}", fields.join(" "))
        }
        b'D' => {
            let mut at = 2;
            let mut values = Vec::new();
            for _ in 0..be16(body, 0) {
                let len = be32(body, at);
                at += 4;
                if len < 0 {
                    values.push("NULL".to_string());
                } else {
                    let end = (at + len as usize).min(body.len());
                    values.push(format!("{:?}", short(&String::from_utf8_lossy(&body[at..end]), 24)));
                    at = end;
                }
            }
            format!("D [{}]", values.join(", "))
        }
        b'T' => {
            let mut at = 2;
            let mut columns = Vec::new();
            for _ in 0..be16(body, 0) {
                let end = body[at..].iter().position(|&b| b == 0).map_or(body.len(), |p| at + p);
                let name = String::from_utf8_lossy(&body[at..end]);
                let (table, column, type_oid) = (be32(body, end + 1), be16(body, end + 5), be32(body, end + 7));
                let source = if table == 0 { String::new() } else { format!("@{table}.{column}") };
                columns.push(format!("{name}{source}:{type_oid}"));
                at = end + 19;
            }
            format!("T [{}]", columns.join(", "))
        }
        b't' => {
            let oids: Vec<String> = (0..be16(body, 0)).map(|i| be32(body, 2 + 4 * i).to_string()).collect();
            format!("t [{}]", oids.join(", "))
        }
        b'A' => {
            let strings = cstrings(body.get(4..).unwrap_or_default());
            format!("A {} {:?}", strings[0], strings.get(1).cloned().unwrap_or_default())
        }
        b'd' => format!("d {:?}", short(&String::from_utf8_lossy(body), 40)),
        b'V' => {
            let len = be32(body, 0);
            if len < 0 { "V NULL".into() } else { format!("V {:?}", String::from_utf8_lossy(&body[4..])) }
        }
        CLOSED_BY_PEER => "<connection closed by the other side>".into(),
        _ if body.is_empty() => tag.to_string(),
        _ => format!("{tag} {:02x?}", &body[..body.len().min(24)]),
    }
}

/// The messages of every client of a run, normalised, with the table OIDs of RowDescriptions
/// numbered 1, 2, ... in order of first appearance across the run's clients: tables (temp
/// tables, tables of a scenario's setup) are created anew for each run, so their OIDs differ
/// between runs, but which columns come from the same table must not.
fn normalised_run(run: &[Transcript]) -> Vec<Vec<Msg>> {
    let mut tables: Vec<[u8; 4]> = Vec::new();
    let mut out = Vec::new();
    for transcript in run {
        let mut msgs = Vec::new();
        for msg in &transcript.msgs {
            let mut msg = normalise(msg);
            if msg.tag == b'T' {
                let mut at = 2;
                for _ in 0..be16(&msg.body, 0) {
                    let Some(nul) = msg.body[at..].iter().position(|&b| b == 0) else { break };
                    let oid_at = at + nul + 1;
                    let Some(oid) = msg.body.get(oid_at..oid_at + 4) else { break };
                    let oid: [u8; 4] = oid.try_into().unwrap();
                    if oid != [0; 4] {
                        let number = match tables.iter().position(|t| *t == oid) {
                            Some(i) => i + 1,
                            None => {
                                tables.push(oid);
                                tables.len()
                            }
                        };
                        msg.body[oid_at..oid_at + 4].copy_from_slice(&(number as u32).to_be_bytes());
                    }
                    at = oid_at + 18;
                }
            }
            msgs.push(msg);
        }
        out.push(msgs);
    }
    out
}

/// Differences between the direct and the proxied transcripts of each client, each as a
/// readable report (empty if they match).
pub fn compare(direct: &[Transcript], proxied: &[Transcript]) -> Vec<String> {
    let mut problems = Vec::new();
    let (direct_msgs, proxied_msgs) = (normalised_run(direct), normalised_run(proxied));
    for (c, (d, p)) in direct.iter().zip(proxied).enumerate() {
        let (dn, pn) = (&direct_msgs[c], &proxied_msgs[c]);
        if dn != pn {
            problems.push(format!("client {c}: messages differ\n{}", side_by_side(dn, pn)));
        }
        if d.params != p.params {
            problems.push(format!(
                "client {c}: ParameterStatus after the greeting differ\n  direct:  {:?}\n  proxied: {:?}",
                d.params, p.params
            ));
        }
        let differing: Vec<String> = d
            .greeting
            .keys()
            .chain(p.greeting.keys())
            .filter(|k| d.greeting.get(*k) != p.greeting.get(*k))
            .map(|k| format!("{k}: direct {:?}, proxied {:?}", d.greeting.get(k), p.greeting.get(k)))
            .collect();
        if !differing.is_empty() {
            problems.push(format!("client {c}: greeting ParameterStatus differ: {}", differing.join("; ")));
        }
    }
    problems
}

/// Two sequences as numbered rows, around the first difference when they are long.
fn side_by_side(direct: &[Msg], proxied: &[Msg]) -> String {
    let first = direct.iter().zip(proxied).position(|(a, b)| a != b).unwrap_or(direct.len().min(proxied.len()));
    let longest = direct.len().max(proxied.len());
    let (from, to) = if longest <= 40 { (0, longest) } else { (first.saturating_sub(8), (first + 16).min(longest)) };
    let mut out =
        format!("  {} messages direct, {} proxied; first difference at #{first}\n", direct.len(), proxied.len());
    out.push_str(&format!("  {:>4}  {:<60} | proxied\n", "#", "direct"));
    if from > 0 {
        out.push_str(&format!("  {:>4}  ({from} identical messages before)\n", ""));
    }
    for i in from..to {
        let d = direct.get(i).map_or_else(|| "-".to_string(), show);
        let p = proxied.get(i).map_or_else(|| "-".to_string(), show);
        let mark = if direct.get(i) == proxied.get(i) { ' ' } else { '*' };
        out.push_str(&format!("{mark} {i:>4}  {:<60} | {}\n", short(&d, 60), short(&p, 60)));
    }
    if to < longest {
        out.push_str(&format!("  {:>4}  ({} more)\n", "", longest - to));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors compare without their source location, notifications without the pid.
    #[test]
    fn only_location_fields_and_notification_pids_are_normalised() {
        let error = Msg { tag: b'E', body: b"SERROR\0C42P01\0Mno\0Fparse.c\0L12\0Rfn\0\0".to_vec() };
        let other_order = Msg { tag: b'E', body: b"Mno\0SERROR\0Ffile.c\0C42P01\0L99\0\0".to_vec() };
        assert!(normalise(&error) == normalise(&other_order));
        let notify = |pid: u8| Msg { tag: b'A', body: [&[0, 0, 0, pid][..], b"ch\0hi\0"].concat() };
        assert!(normalise(&notify(1)) == normalise(&notify(2)));
        let row = |v: &[u8]| Msg { tag: b'D', body: wire::data_row(&[v])[5..].to_vec() };
        assert!(normalise(&row(b"1")) != normalise(&row(b"2")));
    }

    /// The builder counts what a batch is owed.
    #[test]
    fn ready_for_query_is_owed_per_query_sync_and_function_call() {
        let bytes = [wire::sync(), wire::query("SELECT 1"), wire::flush(), wire::function_call(1, &[])].concat();
        assert_eq!(ready_owed(&bytes), 3);
        assert_eq!(frame_tags(&bytes), "SQHF");
    }
}
