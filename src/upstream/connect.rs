use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::connection::{ServerConnection, UpstreamStream};
use super::{ConnectError, auth};
use crate::credentials::Secret;
use crate::protocol::{CancelKey, StartupParams};
use crate::target::Target;
use crate::tls;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Where and how to open upstream connections for one target.
pub struct Endpoint {
    /// Host name for certificate verification and SNI.
    host: String,
    /// Address actually dialled.
    dial: (String, u16),
    server_name: ServerName<'static>,
    tls: TlsConnector,
    /// Limit for TCP connect, TLS and login together.
    connect_timeout: Duration,
}

impl Endpoint {
    /// An endpoint for `target`, verifying with `tls_config`.
    pub fn new(
        target: &Target,
        tls_config: Arc<ClientConfig>,
        connect_timeout: Duration,
    ) -> Result<Endpoint, ConnectError> {
        let server_name =
            ServerName::try_from(target.host.clone()).map_err(|_| ConnectError::Tls {
                host: target.host.clone(),
                reason: "the host is not a valid DNS name or IP address".into(),
            })?;
        let (dial_host, dial_port) = target.dial_address();
        Ok(Endpoint {
            host: target.host.clone(),
            dial: (dial_host.to_owned(), dial_port),
            server_name,
            tls: TlsConnector::from(tls_config),
            connect_timeout,
        })
    }

    /// `host:port` as dialled, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.dial.0, self.dial.1)
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
            postgres_protocol::message::frontend::startup_message(
                startup.iter().copied(),
                &mut buf,
            )?;
            stream.write_all(&buf).await?;
            stream.flush().await?;
            let login = auth::authenticate(&mut stream, user, password).await?;
            Ok::<_, ConnectError>(ServerConnection::new(
                stream,
                NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
                params.clone(),
                login,
            ))
        };
        let connection = tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| ConnectError::Timeout {
                address: self.address(),
                after: self.connect_timeout,
            })??;
        debug!(upstream = %self.address(), pid = connection.key().pid, elapsed = ?started.elapsed(), "upstream login complete");
        Ok(connection)
    }

    /// TCP, SSLRequest, then a verified TLS handshake with SNI and ALPN.
    async fn open_tls(&self) -> Result<UpstreamStream, ConnectError> {
        let mut tcp = TcpStream::connect((self.dial.0.as_str(), self.dial.1))
            .await
            .map_err(|source| ConnectError::Unreachable {
                address: self.address(),
                source,
            })?;
        tcp.set_nodelay(true)?;
        let mut request = BytesMut::new();
        postgres_protocol::message::frontend::ssl_request(&mut request);
        tcp.write_all(&request).await?;
        match tcp.read_u8().await? {
            b'S' => {}
            b'N' => {
                return Err(ConnectError::TlsRefused {
                    host: self.host.clone(),
                });
            }
            other => {
                return Err(ConnectError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "unexpected answer {:?} to SSLRequest: is this a PostgreSQL server?",
                        other as char
                    ),
                )));
            }
        }
        self.tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|error| ConnectError::Tls {
                host: self.host.clone(),
                reason: tls::describe_handshake_error(&error),
            })
    }

    /// Sends a CancelRequest for `key` over its own TLS connection, as libpq does.
    pub async fn cancel(&self, key: CancelKey) -> Result<(), ConnectError> {
        let attempt = async {
            let mut stream = self.open_tls().await?;
            let mut buf = BytesMut::new();
            postgres_protocol::message::frontend::cancel_request(
                key.pid,
                key.secret as i32,
                &mut buf,
            );
            stream.write_all(&buf).await?;
            stream.flush().await?;
            // The server closes without answering; waiting for that makes sure it read the request.
            let _ = stream.read_u8().await;
            Ok(())
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| ConnectError::Timeout {
                address: self.address(),
                after: self.connect_timeout,
            })?
    }
}
