//! What the fake's tests share: the PostgreSQL behind the gateway, an HTTPS client for the
//! workspace API and a minimal wire client. The server itself is test-support's; this only
//! says how the fake's tests want it: unix socket only, `local all all trust` (the gateway
//! logs in there as any role), and the roles and database a Lakebase project has.
#![allow(dead_code)]

pub mod http;
pub mod pgwire;

use std::sync::OnceLock;

use test_support::postgres::{Lifetime, Listen, PgOptions, PgServer};

/// A user role that exists in the server (as Lakebase creates for identities).
pub const ALICE: &str = "alice@example.com";
/// A second user role, for tokens presented under the wrong role.
pub const BOB: &str = "bob@example.com";

const OPTIONS: PgOptions<'static> = PgOptions {
    name: "fake-lakebase-pg-",
    // No TCP at all: the gateway (like every client here) uses the socket, so no port can
    // collide.
    listen: Listen::UnixSocket,
    settings: "max_connections = 100\nshared_buffers = 32MB\n",
    hba: "local all all trust\n",
    setup_sql: r#"
CREATE ROLE "alice@example.com" LOGIN;
CREATE ROLE "bob@example.com" LOGIN;
CREATE DATABASE databricks_postgres;
"#,
};

/// The server shared by all tests of this process, started on first use and stopped (and
/// deleted) when the process exits, however it exits.
pub fn postgres() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    SHARED.get_or_init(|| PgServer::start(&OPTIONS, Lifetime::Process))
}
