//! A TLS client for tests: rustls with aws-lc-rs (the provider the proxy and the fake use),
//! trusting only a test CA's PEM file and never the system's roots, so a test cannot pass
//! by reaching something it did not start.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::wire;

/// A client config trusting only the certificates in the PEM file `ca`, offering the ALPN
/// protocols `alpn` (none if empty).
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| panic!("read CA {}: {e}", ca.display())) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    // Explicit provider: the process default is ambiguous when the build enables two.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

/// Sends an SSLRequest on `tcp` and returns the server's one-byte answer (`S` or `N`).
pub async fn ssl_request(tcp: &mut TcpStream) -> io::Result<u8> {
    tcp.write_all(&wire::ssl_request()).await?;
    tcp.read_u8().await
}

/// A TLS handshake over `tcp` with SNI and verified name `host`, trusting only `ca`.
pub async fn handshake(tcp: TcpStream, host: &str, ca: &Path, alpn: &[&[u8]]) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.to_string()).map_err(io::Error::other)?;
    TlsConnector::from(client_config(ca, alpn)).connect(name, tcp).await
}

/// Connects to a PostgreSQL-speaking server at `addr` over TLS to `host`: an SSLRequest first
/// (which must be answered `S`), or with `direct` the handshake straight away (PostgreSQL 17's
/// direct TLS, which wants ALPN `postgresql`).
pub async fn connect(
    addr: impl ToSocketAddrs,
    host: &str,
    ca: &Path,
    direct: bool,
    alpn: &[&[u8]],
) -> io::Result<TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(addr).await?;
    if !direct {
        let answer = ssl_request(&mut tcp).await?;
        if answer != b'S' {
            return Err(io::Error::other(format!("SSLRequest answered {:?}", answer as char)));
        }
    }
    handshake(tcp, host, ca, alpn).await
}
