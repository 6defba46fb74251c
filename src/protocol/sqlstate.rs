//! Every SQLSTATE the proxy sends or acts on, by name.

/// A notice that reports no error.
pub const SUCCESSFUL_COMPLETION: &str = "00000";
/// The upstream cannot be reached or refused the connection before login.
pub const CONNECTION_UNABLE: &str = "08001";
/// The connection failed after it was made.
pub const CONNECTION_FAILURE: &str = "08006";
/// The client broke the protocol.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// The class of connection exceptions (`08xxx`): worth retrying.
pub const CONNECTION_EXCEPTION_CLASS: &str = "08";
/// The client asked for something the proxy does not do.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// A statement other than ROLLBACK in a transaction that failed.
pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
/// A prepared statement a client names does not exist.
pub const UNDEFINED_PREPARED_STATEMENT: &str = "26000";
/// Credentials are missing or refused.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// The class of authorization failures (`28xxx`): never retried.
pub const INVALID_AUTHORIZATION_CLASS: &str = "28";
/// An admin console command the proxy does not know.
pub const SYNTAX_ERROR: &str = "42601";
/// A client prepares a statement under a name it already uses.
pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
/// No free connection within the wait limit, or too many clients.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// A statement too long for what the proxy keeps of it.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// A statement cancelled at the client's request.
pub const QUERY_CANCELED: &str = "57014";
/// The proxy is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// "The database system is starting up": a Lakebase compute waking from scale-to-zero.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// What an ErrorResponse without a code is taken as.
pub const INTERNAL_ERROR: &str = "XX000";
