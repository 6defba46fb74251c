use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::connection::ServerConnection;
use super::stream::{ServerStream, UpstreamStream};
use super::{ConnectError, login};
use crate::credentials::Secret;
use crate::protocol::codes::encryption_answer;
use crate::protocol::{CancelKey, StartupParams};
use crate::tls;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Where and how to open upstream connections for one target.
pub struct Endpoint {
    host: Arc<MovableHost>,
    tls: TlsConnector,
    /// Limit for one attempt at TCP connect, TLS and login together.
    attempt_timeout: Duration,
    /// Limit for all attempts together (see [`Endpoint::connect_timeout`]).
    connect_timeout: Duration,
}

/// One attempt may take at most this long; a silent network then gets another try within
/// the connect timeout.
const MAX_ATTEMPT: Duration = Duration::from_secs(15);

/// The host a connection verifies and names in SNI, and the address it dials.
struct Address {
    host: String,
    dial: (String, u16),
    server_name: ServerName<'static>,
}

impl Address {
    fn new(host: &str, port: u16, connect_to: &Option<(String, u16)>) -> Result<Address, ConnectError> {
        let server_name = ServerName::try_from(host.to_owned()).map_err(|_| ConnectError::Tls {
            host: host.to_owned(),
            reason: "the host is not a valid DNS name or IP address".into(),
        })?;
        let dial = connect_to.clone().unwrap_or_else(|| (host.to_owned(), port));
        Ok(Address { host: host.to_owned(), dial, server_name })
    }
}

/// The host an endpoint connects to, which a re-resolved Lakebase name can move.
pub struct MovableHost {
    /// The current address.
    address: RwLock<Arc<Address>>,
    /// Upstream port.
    port: u16,
    /// A fixed dial address (`connect-to=`), if any.
    connect_to: Option<(String, u16)>,
}

impl MovableHost {
    /// Points new connections at `host`; returns whether it changed.
    pub fn set_host(&self, host: &str) -> Result<bool, ConnectError> {
        if self.current().host == host {
            return Ok(false);
        }
        *self.address.write().unwrap() = Arc::new(Address::new(host, self.port, &self.connect_to)?);
        Ok(true)
    }

    fn current(&self) -> Arc<Address> {
        self.address.read().unwrap().clone()
    }
}

impl Endpoint {
    /// An endpoint for `host`:`port` (dialled at `connect_to` instead when given, while still
    /// verifying and naming `host`), verifying with `tls_config`.
    pub fn new(
        host: &str,
        port: u16,
        connect_to: Option<(String, u16)>,
        tls_config: Arc<ClientConfig>,
        connect_timeout: Duration,
    ) -> Result<Endpoint, ConnectError> {
        let address = RwLock::new(Arc::new(Address::new(host, port, &connect_to)?));
        Ok(Endpoint {
            host: Arc::new(MovableHost { address, port, connect_to }),
            tls: TlsConnector::from(tls_config),
            attempt_timeout: connect_timeout.min(MAX_ATTEMPT),
            connect_timeout,
        })
    }

    /// The host, to move it when a Lakebase name resolves elsewhere (from a background task).
    pub fn host(&self) -> Arc<MovableHost> {
        self.host.clone()
    }

    fn current(&self) -> Arc<Address> {
        self.host.current()
    }

    /// How long a client may wait for a connection to open, retries included.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// `host:port` as dialled, for messages.
    pub fn address(&self) -> String {
        let address = self.current();
        format!("{}:{}", address.dial.0, address.dial.1)
    }

    /// Opens a connection and logs in as `user` to `database` with the extra startup
    /// `params`, presenting `password` if the server asks for one.
    pub async fn login(
        &self,
        user: &str,
        database: &str,
        params: &StartupParams,
        password: Option<&Secret>,
    ) -> Result<ServerConnection, ConnectError> {
        let started = Instant::now();
        let attempt = async {
            let mut stream = self.open_tls().await?;
            let mut startup: Vec<(&str, &str)> = vec![("user", user), ("database", database)];
            startup.extend(params.iter());
            let mut buf = BytesMut::new();
            postgres_protocol::message::frontend::startup_message(startup.iter().copied(), &mut buf)?;
            stream.write_all(&buf).await?;
            stream.flush().await?;
            let login = login::authenticate(&mut stream, user, password).await?;
            Ok::<_, ConnectError>(ServerConnection::new(
                ServerStream::Tls(stream),
                NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
                params.clone(),
                login,
            ))
        };
        let connection = tokio::time::timeout(self.attempt_timeout, attempt)
            .await
            .map_err(|_| ConnectError::Timeout { address: self.address(), after: self.attempt_timeout })??;
        debug!(upstream = %self.address(), pid = connection.key().pid, elapsed = ?started.elapsed(), "upstream login complete");
        Ok(connection)
    }

    /// TCP, SSLRequest, then a verified TLS handshake with SNI and ALPN.
    async fn open_tls(&self) -> Result<UpstreamStream, ConnectError> {
        let address = self.current();
        let mut tcp = TcpStream::connect((address.dial.0.as_str(), address.dial.1))
            .await
            .map_err(|source| ConnectError::Unreachable { address: self.address(), source })?;
        tcp.set_nodelay(true)?;
        let mut request = BytesMut::new();
        postgres_protocol::message::frontend::ssl_request(&mut request);
        tcp.write_all(&request).await?;
        match tcp.read_u8().await? {
            encryption_answer::ACCEPTED => {}
            encryption_answer::REFUSED => {
                return Err(ConnectError::TlsRefused { host: address.host.clone() });
            }
            other => {
                return Err(ConnectError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unexpected answer {:?} to SSLRequest: is this a PostgreSQL server?", other as char),
                )));
            }
        }
        self.tls.connect(address.server_name.clone(), tcp).await.map_err(|error| {
            // A TLS verdict (certificate, protocol) repeats; a connection dropped mid-handshake,
            // as a restarting server does, is an I/O failure that may pass by itself.
            if error.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                ConnectError::Tls { host: address.host.clone(), reason: tls::describe_handshake_error(&error) }
            } else {
                ConnectError::Io(error)
            }
        })
    }

    /// Sends a CancelRequest for `key` over its own TLS connection, as libpq does.
    pub async fn cancel(&self, key: CancelKey) -> Result<(), ConnectError> {
        let attempt = async {
            let mut stream = self.open_tls().await?;
            let mut buf = BytesMut::new();
            postgres_protocol::message::frontend::cancel_request(key.pid, key.secret as i32, &mut buf);
            stream.write_all(&buf).await?;
            stream.flush().await?;
            // The server closes without answering; waiting for that makes sure it read the request.
            let _ = stream.read_u8().await;
            Ok(())
        };
        tokio::time::timeout(self.attempt_timeout, attempt)
            .await
            .map_err(|_| ConnectError::Timeout { address: self.address(), after: self.attempt_timeout })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{TrustRoots, upstream_config};

    #[test]
    fn a_moved_host_changes_where_new_connections_go() {
        let tls = upstream_config(&TrustRoots::System).unwrap();
        let endpoint = Endpoint::new("ep-one.example.com", 5432, None, tls.clone(), Duration::from_secs(1)).unwrap();
        assert_eq!(endpoint.address(), "ep-one.example.com:5432");
        assert!(!endpoint.host().set_host("ep-one.example.com").unwrap());
        assert!(endpoint.host().set_host("ep-two.example.com").unwrap());
        assert_eq!(endpoint.address(), "ep-two.example.com:5432");
        assert!(endpoint.host().set_host("not a host name").is_err());
        assert_eq!(endpoint.address(), "ep-two.example.com:5432", "a bad answer changes nothing");

        // With connect-to, only the name verified and sent as SNI changes.
        let tunnel = Some(("127.0.0.1".to_owned(), 7000));
        let endpoint = Endpoint::new("ep-one.example.com", 5432, tunnel, tls, Duration::from_secs(1)).unwrap();
        assert!(endpoint.host().set_host("ep-two.example.com").unwrap());
        assert_eq!(endpoint.address(), "127.0.0.1:7000");
        assert_eq!(endpoint.current().host, "ep-two.example.com");
    }
}
