use std::sync::Arc;
use std::time::Instant;

use tokio::sync::RwLock;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::ConnectError;
use super::login::LoginResult;
use super::prepared::PreparedStatements;
use super::state::{DROPS_ALL_STATEMENTS, ProtocolState};
use super::stream::{ServerStream, read_server_message};
use crate::protocol::messages::{self, ErrorFields};
use crate::protocol::{CancelKey, StartupParams, TransactionStatus, backend};

/// A server connection taken apart for the relay: the transport, and the state the relay keeps
/// current on it.
pub(crate) struct RelayParts<'a> {
    pub(crate) stream: &'a mut ServerStream,
    pub(crate) protocol: &'a mut ProtocolState,
    pub(crate) prepared: &'a mut PreparedStatements,
    /// Current ParameterStatus values.
    pub(crate) params: &'a mut Vec<(String, String)>,
}

/// A logged-in upstream connection, and what is known of the session on it: its settings,
/// the statements the proxy prepared, and the replies it owes. The relay keeps the last two
/// current, and they carry from one client to the next.
pub struct ServerConnection {
    stream: ServerStream,
    id: u64,
    /// The startup parameters it was opened with, besides user and database.
    startup_params: StartupParams,
    /// The client settings the session carries now: its startup parameters, or those of the
    /// client a checkout last adjusted it for (with SET), which a reset re-applies.
    settings: StartupParams,
    /// Current values of the parameters the server reports (ParameterStatus).
    server_params: Vec<(String, String)>,
    key: CancelKey,
    opened_at: Instant,
    /// Bytes read from the server past the last message the proxy consumed itself.
    leftover: BytesMut,
    /// The replies the server owes and where its session stands.
    protocol: ProtocolState,
    /// The statements the proxy prepared on it.
    prepared: PreparedStatements,
    /// Held open by every cancel on its way here (see `cancel.rs`).
    cancel_gate: Arc<RwLock<()>>,
}

impl ServerConnection {
    pub(super) fn new(
        stream: ServerStream,
        id: u64,
        startup_params: StartupParams,
        login: LoginResult,
    ) -> ServerConnection {
        ServerConnection {
            stream,
            id,
            settings: startup_params.clone(),
            startup_params,
            server_params: login.params,
            key: login.key,
            opened_at: Instant::now(),
            leftover: login.leftover,
            protocol: ProtocolState::default(),
            prepared: PreparedStatements::default(),
            cancel_gate: Arc::default(),
        }
    }

    /// A connection over an in-memory pipe to a stand-in server that has already logged it in
    /// with `server_params` and cancel `key`, for tests (the pool's, the relay's) and benches.
    pub fn in_memory(
        pipe: tokio::io::DuplexStream,
        id: u64,
        startup_params: StartupParams,
        server_params: Vec<(String, String)>,
        key: CancelKey,
    ) -> ServerConnection {
        let login = LoginResult { params: server_params, key, leftover: BytesMut::new() };
        ServerConnection::new(ServerStream::Memory(pipe), id, startup_params, login)
    }

    /// A process-unique id for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The server's cancel key (its real backend pid and secret).
    pub fn key(&self) -> CancelKey {
        self.key
    }

    /// What a cancel on its way to this connection holds open (see `cancel.rs`).
    pub fn cancel_gate(&self) -> Arc<RwLock<()>> {
        self.cancel_gate.clone()
    }

    /// Whether a cancel is on its way to this connection.
    pub fn cancel_in_flight(&self) -> bool {
        self.cancel_gate.try_write().is_err()
    }

    /// Completes once no cancel is on its way to this connection.
    pub async fn cancels_done(&self) {
        drop(self.cancel_gate.write().await);
    }

    /// When the login completed.
    pub fn opened_at(&self) -> Instant {
        self.opened_at
    }

    /// Startup parameters it was opened with.
    pub fn startup_params(&self) -> &StartupParams {
        &self.startup_params
    }

    /// The client settings the session carries now (see the field).
    pub fn settings(&self) -> &StartupParams {
        &self.settings
    }

    /// Records that the session now carries `settings`.
    pub fn set_settings(&mut self, settings: StartupParams) {
        self.settings = settings;
    }

    /// Current ParameterStatus values, in the order the server first reported them.
    pub fn server_params(&self) -> &[(String, String)] {
        &self.server_params
    }

    /// The replies the server owes and where its session stands, as the relay saw them.
    pub fn protocol(&self) -> &ProtocolState {
        &self.protocol
    }

    /// The statements the proxy prepared on the server.
    pub fn prepared(&self) -> &PreparedStatements {
        &self.prepared
    }

    /// Whether the connection can serve another client: idle outside a transaction, owing
    /// nothing, and its stream between two messages (see [`ProtocolState::reusable`]).
    pub fn reusable(&self) -> bool {
        self.protocol.reusable()
    }

    /// The transport and the state the relay keeps current on it, apart, for the relay.
    pub(crate) fn relay_parts(&mut self) -> RelayParts<'_> {
        RelayParts {
            stream: &mut self.stream,
            protocol: &mut self.protocol,
            prepared: &mut self.prepared,
            params: &mut self.server_params,
        }
    }

    /// Takes bytes already read from the server that the relay must see first.
    pub fn take_leftover(&mut self) -> BytesMut {
        std::mem::take(&mut self.leftover)
    }

    /// Runs `sql` as a simple query and reads to ReadyForQuery, recording reported parameters,
    /// the transaction status, that the unnamed statement is gone, and a `DISCARD ALL` or
    /// `DEALLOCATE ALL` (no statement prepared any more); returns the first column of the first row, if any. A server error is returned
    /// after the ReadyForQuery that follows it, so the connection stays usable; an I/O error
    /// means it is not.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Result<Option<String>, ErrorFields>, ConnectError> {
        let mut outcomes = self.simple_queries(&[sql]).await?;
        Ok(outcomes.remove(0))
    }

    /// Sends each of `statements` as its own simple query, all in one write, and reads one
    /// outcome per query as [`Self::simple_query`] does: a round trip for the lot, while each
    /// still runs outside any transaction block the others would open.
    pub async fn simple_queries(
        &mut self,
        statements: &[&str],
    ) -> Result<Vec<Result<Option<String>, ErrorFields>>, ConnectError> {
        let mut buf = BytesMut::new();
        for sql in statements {
            postgres_protocol::message::frontend::query(sql, &mut buf)?;
        }
        // A simple query destroys the unnamed statement, whoever prepared it.
        self.prepared.set_unnamed_owner(None);
        self.stream.write_all(&buf).await?;
        self.stream.flush().await?;
        let mut inbound = std::mem::take(&mut self.leftover);
        let mut outcomes = Vec::with_capacity(statements.len());
        let mut outcome = Ok(None);
        while outcomes.len() < statements.len() {
            let (tag, body) = read_server_message(&mut self.stream, &mut inbound).await?;
            match tag {
                backend::PARAMETER_STATUS => {
                    let (name, value) = messages::read_parameter_status(&body);
                    messages::record_parameter(&mut self.server_params, name, value);
                }
                backend::ERROR_RESPONSE => outcome = Err(ErrorFields::parse(&body)),
                backend::DATA_ROW if matches!(outcome, Ok(None)) => outcome = Ok(first_column(&body)),
                backend::COMMAND_COMPLETE
                    if DROPS_ALL_STATEMENTS.contains(&body.strip_suffix(b"\0").unwrap_or(&body)) =>
                {
                    self.prepared.forget_all();
                }
                backend::READY_FOR_QUERY => {
                    let status = TransactionStatus::from_byte(body.first().copied().unwrap_or_default());
                    self.protocol.set_transaction_status(status);
                    outcomes.push(std::mem::replace(&mut outcome, Ok(None)));
                }
                _ => {}
            }
        }
        self.leftover = inbound;
        Ok(outcomes)
    }

    /// A cheap check that an idle connection is still there: the server sends nothing to an
    /// idle session, so readable bytes (a FATAL before a shutdown) or EOF mean it is gone.
    pub fn looks_alive(&mut self) -> bool {
        self.leftover.is_empty() && self.stream.looks_alive()
    }
}

/// The first column of a DataRow body as text (`None` for NULL or a malformed row).
fn first_column(body: &[u8]) -> Option<String> {
    let columns = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let length = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    if columns < 1 || length < 0 {
        return None;
    }
    let value = body.get(6..6 + length as usize)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::wire::message;
    use tokio::io::duplex;

    #[tokio::test]
    async fn the_proxys_own_queries_keep_the_session_state() {
        let (pipe, mut server) = duplex(4096);
        let key = CancelKey { pid: 1, secret: 1 };
        let mut connection = ServerConnection::in_memory(pipe, 1, StartupParams::default(), Vec::new(), key);
        connection.prepared.record(1, 0);
        server.write_all(&[message(b'C', b"BEGIN\0"), message(b'Z', b"T")].concat()).await.unwrap();
        connection.simple_query("BEGIN").await.unwrap().unwrap();
        assert_eq!(connection.protocol().transaction_status(), TransactionStatus::InTransaction);
        assert!(!connection.reusable() && connection.prepared().contains(1));
        let answers =
            [message(b'C', b"ROLLBACK\0"), message(b'Z', b"I"), message(b'C', b"DISCARD ALL\0"), message(b'Z', b"I")];
        server.write_all(&answers.concat()).await.unwrap();
        let outcomes = connection.simple_queries(&["ROLLBACK", "DISCARD ALL"]).await.unwrap();
        assert!(outcomes.iter().all(Result::is_ok));
        assert!(connection.reusable());
        assert!(!connection.prepared().contains(1));
    }

    #[test]
    fn reads_the_first_column_of_a_data_row() {
        assert_eq!(first_column(b"\0\x02\0\0\0\x03419\0\0\0\x01x"), Some("419".into()));
        assert_eq!(first_column(b"\0\x01\xff\xff\xff\xff"), None);
        assert_eq!(first_column(b"\0\x01\0\0\0\x09ab"), None);
    }
}
