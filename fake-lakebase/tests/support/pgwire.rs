//! A minimal PostgreSQL wire client over TLS, for what psql cannot show:
//! SQLSTATE codes, direct TLS with ALPN, CancelRequest inside TLS.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// An ErrorResponse's SQLSTATE and message, or an I/O failure (`code` "io").
#[derive(Debug)]
pub struct PgError {
    pub code: String,
    pub message: String,
}

impl From<io::Error> for PgError {
    fn from(e: io::Error) -> PgError {
        PgError { code: "io".into(), message: e.to_string() }
    }
}

/// A client TLS config trusting only `ca` and offering `alpn`.
pub fn tls_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// Connects to the gateway with SNI `host`: SSLRequest first, or PG17 direct TLS.
pub async fn connect_tls(
    addr: SocketAddr,
    host: &str,
    ca: &Path,
    direct: bool,
    alpn: &[&[u8]],
) -> io::Result<TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(addr).await?;
    if !direct {
        tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        if answer[0] != b'S' {
            return Err(io::Error::other(format!("SSLRequest answered {:?}", answer[0] as char)));
        }
    }
    let name = ServerName::try_from(host.to_string()).map_err(io::Error::other)?;
    TlsConnector::from(tls_config(ca, alpn)).connect(name, tcp).await
}

pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

pub async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<(u8, Vec<u8>)> {
    let mut hdr = [0u8; 5];
    s.read_exact(&mut hdr).await?;
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    s.read_exact(&mut body).await?;
    Ok((hdr[0], body))
}

pub fn parse_error(body: &[u8]) -> PgError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let value = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    PgError { code, message }
}

/// A logged-in session.
pub struct Session<S> {
    pub stream: S,
    /// BackendKeyData body (pid + secret).
    pub cancel_key: Vec<u8>,
}

/// Logs in over `stream` (startup, cleartext password) up to ReadyForQuery.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    user: &str,
    password: &str,
    database: Option<&str>,
) -> Result<Session<S>, PgError> {
    let mut params = vec![("user", user), ("application_name", "fake-lakebase-test")];
    if let Some(db) = database {
        params.push(("database", db));
    }
    stream.write_all(&startup_message(&params)).await?;
    let mut cancel_key = Vec::new();
    loop {
        let (ty, body) = read_message(&mut stream).await?;
        match ty {
            b'R' if body[..4] == [0, 0, 0, 3] => {
                let mut msg = vec![b'p'];
                msg.extend_from_slice(&((password.len() + 5) as u32).to_be_bytes());
                msg.extend_from_slice(password.as_bytes());
                msg.push(0);
                stream.write_all(&msg).await?;
            }
            b'R' if body[..4] == [0, 0, 0, 0] => {}
            b'R' => panic!("unexpected auth request {body:?}"),
            b'K' => cancel_key = body,
            b'E' => return Err(parse_error(&body)),
            b'Z' => return Ok(Session { stream, cancel_key }),
            _ => {}
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Runs a simple query; returns the first column of each row.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<String>, PgError> {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.stream.write_all(&msg).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (ty, body) = read_message(&mut self.stream).await?;
            match ty {
                b'D' => {
                    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                    let value = if len < 0 {
                        "NULL".to_string()
                    } else {
                        String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
                    };
                    rows.push(value);
                }
                b'E' => error = Some(parse_error(&body)),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }
}

/// A CancelRequest packet for `key`.
pub fn cancel_request(key: &[u8]) -> Vec<u8> {
    let mut pkt = ((key.len() + 8) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&80877102u32.to_be_bytes());
    pkt.extend_from_slice(key);
    pkt
}
