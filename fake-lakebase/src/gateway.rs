//! The Lakebase TLS front: SSL negotiation (SSLRequest or PG17 direct TLS),
//! SNI routing, cleartext-password login with a minted token, then a byte
//! relay to the real PostgreSQL over its unix socket.
//!
//! Nothing a client sends may panic the gateway: every malformed input ends in
//! an ErrorResponse or a closed socket.
//!
//! The wire code here is deliberately the fake's own, shared with neither the proxy nor
//! test-support's encoders (see the crate doc): a bug in shared code could not show itself.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::WakeMode;
use crate::state::{Session, State, Target};

const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;
/// PostgreSQL's own limit (MAX_STARTUP_PACKET_LENGTH).
const MAX_STARTUP: usize = 10_000;
/// Tokens are ~90 bytes; anything far larger is not a password message.
const MAX_PASSWORD_MSG: usize = 64 * 1024;
/// Bound on one upstream message while logging in (ParameterStatus etc. are small).
const MAX_UPSTREAM_LOGIN_MSG: usize = 1 << 20;
/// A client that stalls mid-login is dropped rather than kept forever.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often sessions are checked against the maximum connection age.
const REAPER_PERIOD: Duration = Duration::from_millis(50);
/// Relay buffer per direction: larger than tokio's 8 KiB default so the fake
/// is not the bottleneck in the proxy's throughput benchmarks.
const RELAY_BUF: usize = 64 * 1024;
/// Database Lakebase logs into when the client names none.
const DEFAULT_DATABASE: &str = "databricks_postgres";

const INSECURE: &str = "connection is insecure (try using `sslmode=require`)";
const NO_ENDPOINT: &str = "Endpoint ID is not specified. Either please upgrade the postgres client library (libpq) for SNI support or pass the endpoint ID (first part of the domain name) as a parameter: '?options=endpoint%3D<endpoint-id>'.";
const UNKNOWN_ENDPOINT: &str = "The requested endpoint could not be found, or you don't have access to it. Please check the provided ID and try again.";

pub(crate) struct Gateway {
    pub state: Arc<Mutex<State>>,
    pub tls: TlsAcceptor,
    /// `<postgres_socket_dir>/.s.PGSQL.<port>`.
    pub socket_path: PathBuf,
}

/// Accepts connections until `shutdown` flips (or its sender is dropped).
pub(crate) async fn serve(listener: TcpListener, gw: Arc<Gateway>, shutdown: watch::Receiver<bool>) {
    tokio::spawn(reap_old_sessions(gw.state.clone(), shutdown.clone()));
    loop {
        let mut stop = shutdown.clone();
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
            },
            _ = stop.changed() => return,
        };
        if refusing(&gw.state) {
            // Scale-to-zero, compute not up yet: accepted, then closed at once.
            drop(tcp);
            continue;
        }
        let gw = gw.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let established = tokio::time::timeout(LOGIN_TIMEOUT, login(tcp, &gw)).await;
            if let Ok(Some(session)) = established {
                relay(session, stop).await;
            }
        });
    }
}

/// Whether a suspension in `Refuse` mode is in force (clearing a past one).
fn refusing(state: &Mutex<State>) -> bool {
    matches!(current_suspension(&mut state.lock().unwrap()), Some(WakeMode::Refuse))
}

fn current_suspension(st: &mut State) -> Option<WakeMode> {
    match st.suspended {
        Some((until, mode)) if Instant::now() < until => Some(mode),
        Some(_) => {
            st.suspended = None;
            None
        }
        None => None,
    }
}

async fn reap_old_sessions(state: Arc<Mutex<State>>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REAPER_PERIOD);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let mut st = state.lock().unwrap();
        if let Some(age) = st.max_age {
            for s in st.sessions.values_mut().filter(|s| s.started.elapsed() >= age) {
                if let Some(k) = s.kill.take() {
                    let _ = k.send(());
                }
            }
        }
    }
}

/// A logged-in session ready to relay.
struct Established {
    client: TlsStream<TcpStream>,
    upstream: UnixStream,
    kill: oneshot::Receiver<()>,
    _guard: SessionGuard,
}

/// Removes the session from the state (and so from `active_sessions`) on drop.
struct SessionGuard {
    state: Arc<Mutex<State>>,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.lock() {
            st.sessions.remove(&self.id);
        }
    }
}

async fn relay(s: Established, mut shutdown: watch::Receiver<bool>) {
    let Established { mut client, mut upstream, kill, _guard } = s;
    let killed = tokio::select! {
        _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, RELAY_BUF, RELAY_BUF) => false,
        _ = kill => true,
        _ = shutdown.changed() => true,
    };
    if killed {
        // Both sockets: the client sees the connection end, the backend exits.
        let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
        let _ = upstream.shutdown().await;
    }
}

/// ErrorResponse with severity FATAL.
fn fatal_message(code: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', message)] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    msg.extend_from_slice(&fields);
    msg
}

/// Sends a FATAL error and closes; counts a failed login.
async fn refuse<S: AsyncWrite + Unpin>(gw: &Gateway, stream: &mut S, code: &str, message: &str) {
    gw.state.lock().unwrap().counters.gateway_logins_failed += 1;
    tracing::debug!(code, message, "fake-lakebase gateway refuses a login");
    let _ = stream.write_all(&fatal_message(code, message)).await;
    let _ = stream.flush().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

/// Reads a length-prefixed startup-phase packet: `(code, rest of body)`.
async fn read_startup<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Option<(u32, Vec<u8>)>> {
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).await?;
    let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    let code = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    if !(8..=MAX_STARTUP).contains(&len) {
        return Ok(None);
    }
    let mut body = vec![0u8; len - 8];
    s.read_exact(&mut body).await?;
    Ok(Some((code, body)))
}

/// Reads one typed message; returns `(type, raw bytes including the header)`.
async fn read_message<S: AsyncRead + Unpin>(s: &mut S, max: usize) -> std::io::Result<(u8, Vec<u8>)> {
    let mut hdr = [0u8; 5];
    s.read_exact(&mut hdr).await?;
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    if !(4..=max).contains(&len) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad message length"));
    }
    let mut raw = hdr.to_vec();
    raw.resize(1 + len, 0);
    s.read_exact(&mut raw[5..]).await?;
    Ok((hdr[0], raw))
}

/// StartupMessage parameters, in order, as raw bytes.
type Params = Vec<(Vec<u8>, Vec<u8>)>;

fn parse_params(body: &[u8]) -> Option<Params> {
    // name\0value\0 ... \0 — the final byte must be the terminator.
    let (&0, mut rest) = body.split_last()? else {
        return None;
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let k = rest.iter().position(|&b| b == 0)?;
        let v = rest[k + 1..].iter().position(|&b| b == 0)?;
        out.push((rest[..k].to_vec(), rest[k + 1..k + 1 + v].to_vec()));
        rest = &rest[k + 2 + v..];
    }
    Some(out)
}

fn param(params: &Params, name: &str) -> Option<String> {
    params.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// The endpoint id from `options=endpoint=<id>` (the no-SNI fallback), and the
/// options left once it is removed (the real server would reject it).
fn endpoint_from_options(options: &str) -> (Option<String>, String) {
    let mut id = None;
    let mut rest = Vec::new();
    for opt in options.split_whitespace() {
        match opt.strip_prefix("endpoint=").or_else(|| opt.strip_prefix("project=")) {
            Some(v) => id = Some(v.to_ascii_lowercase()),
            None => rest.push(opt),
        }
    }
    (id, rest.join(" "))
}

fn startup_message(code: u32, params: &Params) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k);
        body.push(0);
        body.extend_from_slice(v);
        body.push(0);
    }
    body.push(0);
    let mut msg = (body.len() as u32 + 4).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// Forwards a CancelRequest to the real server if its key belongs to one of
/// our sessions; like PostgreSQL, never answers the canceller.
async fn forward_cancel(gw: &Gateway, key: &[u8]) {
    let known = {
        let st = gw.state.lock().unwrap();
        st.sessions.values().any(|s| s.cancel_key.as_deref() == Some(key))
    };
    if !known {
        return;
    }
    if let Ok(mut up) = UnixStream::connect(&gw.socket_path).await {
        let mut pkt = ((key.len() + 8) as u32).to_be_bytes().to_vec();
        pkt.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
        pkt.extend_from_slice(key);
        let _ = up.write_all(&pkt).await;
        // The server closes once it has acted: wait so the cancel lands first.
        let _ = tokio::time::timeout(Duration::from_secs(2), up.read(&mut [0u8; 1])).await;
    }
}

/// Negotiates TLS, checks the login and logs into the real server.
async fn login(mut tcp: TcpStream, gw: &Gateway) -> Option<Established> {
    let mut gss_declined = false;
    let mut tls = loop {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await.ok()? == 0 {
            return None;
        }
        if first[0] == 0x16 {
            // PG17 direct TLS: rustls itself rejects a client whose ALPN list
            // lacks `postgresql`; a client sending no ALPN is let through.
            break gw.tls.accept(tcp).await.ok()?;
        }
        let Some((code, body)) = read_startup(&mut tcp).await.ok()? else {
            refuse(gw, &mut tcp, "08P01", "invalid length of startup packet").await;
            return None;
        };
        match code {
            SSL_REQUEST if body.is_empty() => {
                tcp.write_all(b"S").await.ok()?;
                break gw.tls.accept(tcp).await.ok()?;
            }
            GSSENC_REQUEST if body.is_empty() && !gss_declined => {
                gss_declined = true;
                tcp.write_all(b"N").await.ok()?;
            }
            CANCEL_REQUEST => {
                // libpq before 17 sends cancels in plaintext; Lakebase (Neon's
                // proxy) accepts them without TLS, so the fake does too.
                forward_cancel(gw, &body).await;
                return None;
            }
            _ => {
                refuse(gw, &mut tcp, "08P01", INSECURE).await;
                return None;
            }
        }
    };

    let Some((code, body)) = read_startup(&mut tls).await.ok()? else {
        refuse(gw, &mut tls, "08P01", "invalid length of startup packet").await;
        return None;
    };
    match code {
        CANCEL_REQUEST => {
            forward_cancel(gw, &body).await;
            return None;
        }
        SSL_REQUEST | GSSENC_REQUEST => {
            refuse(gw, &mut tls, "08P01", "unsupported encryption request inside TLS").await;
            return None;
        }
        c if c != 3 << 16 => {
            let msg = format!("unsupported frontend protocol {}.{}: server supports 3.0 to 3.0", c >> 16, c & 0xffff);
            refuse(gw, &mut tls, "0A000", &msg).await;
            return None;
        }
        _ => {}
    }
    let Some(mut params) = parse_params(&body) else {
        refuse(gw, &mut tls, "08P01", "invalid startup packet layout: expected terminator as last byte").await;
        return None;
    };
    let Some(user) = param(&params, "user").filter(|u| !u.is_empty()) else {
        refuse(gw, &mut tls, "28000", "no PostgreSQL user name specified in startup packet").await;
        return None;
    };

    // Route: SNI's first label, else `options=endpoint=<id>`.
    let (option_id, other_options) = endpoint_from_options(&param(&params, "options").unwrap_or_default());
    params.retain(|(k, _)| k != b"options");
    if !other_options.is_empty() {
        params.push((b"options".to_vec(), other_options.into_bytes()));
    }
    let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
    let label = match (sni, option_id) {
        (Some(sni), _) => sni.split('.').next().unwrap_or_default().to_string(),
        (None, Some(id)) => id,
        (None, None) => {
            refuse(gw, &mut tls, "08P01", NO_ENDPOINT).await;
            return None;
        }
    };
    let target = gw.state.lock().unwrap().hosts.get(&label).cloned();
    let Some(target) = target else {
        refuse(gw, &mut tls, "XX000", UNKNOWN_ENDPOINT).await;
        return None;
    };

    // AuthenticationCleartextPassword: the token goes in clear, inside TLS.
    tls.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await.ok()?;
    tls.flush().await.ok()?;
    // A client without a password hangs up here (libpq then prompts): not a failure.
    let (ty, raw) = read_message(&mut tls, MAX_PASSWORD_MSG).await.ok()?;
    if ty != b'p' {
        refuse(gw, &mut tls, "08P01", "expected password response").await;
        return None;
    }
    let body = &raw[5..];
    let password =
        String::from_utf8_lossy(&body[..body.iter().position(|&b| b == 0).unwrap_or(body.len())]).into_owned();

    let (kill_rx, guard) = match admit(gw, &user, &password, &target) {
        Ok(x) => x,
        Err((code, msg)) => {
            refuse(gw, &mut tls, code, &msg).await;
            return None;
        }
    };

    let Ok(mut upstream) = UnixStream::connect(&gw.socket_path).await else {
        refuse(gw, &mut tls, "08006", "Couldn't connect to compute node").await;
        return None;
    };
    if param(&params, "database").is_none_or(|d| d.is_empty()) {
        params.retain(|(k, _)| k != b"database");
        params.push((b"database".to_vec(), DEFAULT_DATABASE.as_bytes().to_vec()));
    }
    upstream.write_all(&startup_message(code, &params)).await.ok()?;

    // Relay the real server's login replies, noting its cancel key, up to
    // ReadyForQuery (success) or an ErrorResponse (e.g. no such database).
    loop {
        let Ok((ty, raw)) = read_message(&mut upstream, MAX_UPSTREAM_LOGIN_MSG).await else {
            refuse(gw, &mut tls, "08006", "compute node closed the connection during login").await;
            return None;
        };
        match ty {
            b'R' if raw.get(5..9) != Some(&[0, 0, 0, 0]) => {
                let msg = "fake-lakebase: the real PostgreSQL asked for a password; its pg_hba.conf must trust local connections";
                refuse(gw, &mut tls, "XX000", msg).await;
                return None;
            }
            b'K' => {
                let mut st = gw.state.lock().unwrap();
                if let Some(s) = st.sessions.get_mut(&guard.id) {
                    s.cancel_key = Some(raw[5..].to_vec());
                }
            }
            _ => {}
        }
        tls.write_all(&raw).await.ok()?;
        match ty {
            b'E' => {
                gw.state.lock().unwrap().counters.gateway_logins_failed += 1;
                let _ = tls.flush().await;
                let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
                return None;
            }
            b'Z' => break,
            _ => {}
        }
    }
    tls.flush().await.ok()?;
    gw.state.lock().unwrap().counters.gateway_logins_ok += 1;
    Some(Established { client: tls, upstream, kill: kill_rx, _guard: guard })
}

type Refusal = (&'static str, String);

/// Token, wake-up and connection-limit checks, in one lock; on success the
/// session is registered (so it counts toward the limit at once).
fn admit(
    gw: &Gateway,
    user: &str,
    password: &str,
    target: &Target,
) -> Result<(oneshot::Receiver<()>, SessionGuard), Refusal> {
    let mut st = gw.state.lock().unwrap();
    let failed = |why: &str| ("28P01", format!("password authentication failed for user \"{user}\": {why}"));
    match st.db_tokens.get(password) {
        None => {
            return Err(("28P01", format!("Failed to decode token for role \"{user}\"")));
        }
        Some(t) if t.role != user => return Err(failed("the token was issued for another role")),
        Some(t) if !t.targets.contains(target) => {
            return Err(failed("the token is not valid for this endpoint"));
        }
        Some(t) if t.expires <= SystemTime::now() => return Err(failed("token expired")),
        Some(_) => {}
    }
    if current_suspension(&mut st) == Some(WakeMode::StartingUp) {
        return Err(("57P03", "the database system is starting up".to_string()));
    }
    if let Some(max) = st.max_connections
        && st.sessions.len() >= max
    {
        return Err(("53300", "sorry, too many clients already".to_string()));
    }
    // A connection wakes an idle compute.
    if let Target::Endpoint(name) = target
        && let Some(ep) = st.endpoint_mut(name)
        && ep.state == "IDLE"
    {
        ep.state = "ACTIVE".to_string();
    }
    let (tx, rx) = oneshot::channel();
    let id = st.next_session;
    st.next_session += 1;
    st.sessions.insert(id, Session { started: Instant::now(), kill: Some(tx), cancel_key: None });
    Ok((rx, SessionGuard { state: gw.state.clone(), id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_and_reject_garbage() {
        let p = parse_params(b"user\0alice\0database\0db\0\0").unwrap();
        assert_eq!(param(&p, "user").as_deref(), Some("alice"));
        assert_eq!(param(&p, "database").as_deref(), Some("db"));
        assert!(parse_params(b"").is_none());
        assert!(parse_params(b"user\0alice").is_none());
        assert!(parse_params(b"user\0\0").is_none());
        assert!(parse_params(b"user\0alice\0x\0").is_none());
        assert_eq!(parse_params(b"\0").unwrap().len(), 0);
    }

    #[test]
    fn options_endpoint_is_extracted_and_stripped() {
        let (id, rest) = endpoint_from_options("-c search_path=x endpoint=ep-abc");
        assert_eq!(id.as_deref(), Some("ep-abc"));
        assert_eq!(rest, "-c search_path=x");
        assert_eq!(endpoint_from_options("").0, None);
    }

    #[test]
    fn startup_roundtrip() {
        let p: Params = vec![(b"user".to_vec(), b"u".to_vec())];
        let m = startup_message(3 << 16, &p);
        assert_eq!(u32::from_be_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
        assert_eq!(parse_params(&m[8..]).unwrap(), p);
    }
}
