//! The protocol's one-byte and four-byte codes, by name.
//!
//! A message type byte means different things by direction (`E` is Execute from a client and
//! ErrorResponse from a server), so the tags live in one module per direction and code says
//! which one it reads.

/// Message types a client (frontend) sends.
pub mod frontend {
    /// Query: a simple-protocol query string.
    pub const QUERY: u8 = b'Q';
    /// Parse: prepares a statement.
    pub const PARSE: u8 = b'P';
    /// Bind: binds parameters to a prepared statement, creating a portal.
    pub const BIND: u8 = b'B';
    /// Execute: runs a portal.
    pub const EXECUTE: u8 = b'E';
    /// Describe: asks for a statement's or portal's description.
    pub const DESCRIBE: u8 = b'D';
    /// Close: closes a prepared statement or portal.
    pub const CLOSE: u8 = b'C';
    /// Flush: asks the server to send what it has.
    pub const FLUSH: u8 = b'H';
    /// Sync: ends an extended-protocol batch; the server answers ReadyForQuery.
    pub const SYNC: u8 = b'S';
    /// FunctionCall: the fast-path function interface.
    pub const FUNCTION_CALL: u8 = b'F';
    /// Terminate: the client is leaving.
    pub const TERMINATE: u8 = b'X';
    /// CopyData during COPY FROM STDIN.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone: the end of COPY FROM STDIN.
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail: the client aborts COPY FROM STDIN.
    pub const COPY_FAIL: u8 = b'f';
    /// PasswordMessage, SASLInitialResponse and SASLResponse share this type.
    pub const PASSWORD: u8 = b'p';
    /// The first body byte of a Describe or Close of a prepared statement.
    pub const OF_STATEMENT: u8 = b'S';
    /// The first body byte of a Describe or Close of a portal.
    pub const OF_PORTAL: u8 = b'P';
}

/// Message types a server (backend) sends.
pub mod backend {
    /// Authentication requests and AuthenticationOk (see [`super::AuthRequest`]).
    pub const AUTHENTICATION: u8 = b'R';
    /// ParameterStatus: a reported setting's current value.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// BackendKeyData: the cancel key.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// ReadyForQuery, with the transaction status (see [`super::TransactionStatus`]).
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// NotificationResponse (LISTEN/NOTIFY).
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// RowDescription.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// DataRow.
    pub const DATA_ROW: u8 = b'D';
    /// CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// EmptyQueryResponse.
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// CopyInResponse: the server waits for COPY FROM STDIN data.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// ParseComplete.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete.
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// NoData: the described statement returns no rows.
    pub const NO_DATA: u8 = b'n';
    /// PortalSuspended: Execute stopped at its row limit.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// ParameterDescription.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// NegotiateProtocolVersion.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// The answers to an SSLRequest or GSSENCRequest, a single untagged byte.
pub mod encryption_answer {
    /// Go ahead with the TLS (or GSS) handshake.
    pub const ACCEPTED: u8 = b'S';
    /// Not available: continue in plaintext or give up.
    pub const REFUSED: u8 = b'N';
}

/// The transaction status a ReadyForQuery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransactionStatus {
    /// Outside any transaction block.
    #[default]
    Idle,
    /// Inside a transaction block.
    InTransaction,
    /// Inside a failed transaction block: queries are refused until it ends.
    Failed,
}

impl TransactionStatus {
    /// The status byte of a ReadyForQuery body; anything unknown is taken as a failed block,
    /// the state that lets nothing be reused.
    pub fn from_byte(byte: u8) -> TransactionStatus {
        match byte {
            b'I' => TransactionStatus::Idle,
            b'T' => TransactionStatus::InTransaction,
            _ => TransactionStatus::Failed,
        }
    }

    /// The byte written in a ReadyForQuery.
    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// What an Authentication message (type `R`) asks for, by its four-byte code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRequest {
    /// AuthenticationOk: logged in.
    Ok,
    /// Kerberos V5 (unsupported by servers since 9.4).
    KerberosV5,
    /// A cleartext password.
    CleartextPassword,
    /// An MD5-hashed password; a four-byte salt follows.
    Md5Password,
    /// SCM credentials (unix sockets only, long gone).
    ScmCredential,
    /// GSSAPI.
    Gss,
    /// More GSSAPI or SSPI data.
    GssContinue,
    /// SSPI (Windows).
    Sspi,
    /// SASL: the mechanisms the server offers follow.
    Sasl,
    /// The server's next SASL challenge.
    SaslContinue,
    /// The server's final SASL message.
    SaslFinal,
    /// A code this protocol version does not define.
    Unknown(i32),
}

impl AuthRequest {
    /// The request for a code.
    pub fn from_code(code: i32) -> AuthRequest {
        match code {
            0 => AuthRequest::Ok,
            2 => AuthRequest::KerberosV5,
            3 => AuthRequest::CleartextPassword,
            5 => AuthRequest::Md5Password,
            6 => AuthRequest::ScmCredential,
            7 => AuthRequest::Gss,
            8 => AuthRequest::GssContinue,
            9 => AuthRequest::Sspi,
            10 => AuthRequest::Sasl,
            11 => AuthRequest::SaslContinue,
            12 => AuthRequest::SaslFinal,
            other => AuthRequest::Unknown(other),
        }
    }

    /// The four-byte code.
    pub fn code(self) -> i32 {
        match self {
            AuthRequest::Ok => 0,
            AuthRequest::KerberosV5 => 2,
            AuthRequest::CleartextPassword => 3,
            AuthRequest::Md5Password => 5,
            AuthRequest::ScmCredential => 6,
            AuthRequest::Gss => 7,
            AuthRequest::GssContinue => 8,
            AuthRequest::Sspi => 9,
            AuthRequest::Sasl => 10,
            AuthRequest::SaslContinue => 11,
            AuthRequest::SaslFinal => 12,
            AuthRequest::Unknown(code) => code,
        }
    }

    /// The method's name, for an error saying it is not supported.
    pub fn method_name(self) -> &'static str {
        match self {
            AuthRequest::Ok => "none",
            AuthRequest::KerberosV5 => "Kerberos V5",
            AuthRequest::CleartextPassword => "password",
            AuthRequest::Md5Password => "md5",
            AuthRequest::ScmCredential => "SCM credentials",
            AuthRequest::Gss | AuthRequest::GssContinue => "GSSAPI",
            AuthRequest::Sspi => "SSPI",
            AuthRequest::Sasl | AuthRequest::SaslContinue | AuthRequest::SaslFinal => "SASL",
            AuthRequest::Unknown(_) => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in -1..14 {
            assert_eq!(AuthRequest::from_code(code).code(), code);
        }
        for byte in [b'I', b'T', b'E'] {
            assert_eq!(TransactionStatus::from_byte(byte).as_byte(), byte);
        }
        assert_eq!(TransactionStatus::from_byte(b'?'), TransactionStatus::Failed);
    }
}
