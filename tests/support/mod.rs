//! Integration-test fixtures of lakebase-proxy: the shared PostgreSQL (test-support's, with
//! TLS and one role per password method), the real binary ([`binary`]) and the fake Lakebase
//! in front of PostgreSQL ([`lakebase`]).
//!
//! Each test binary compiles this module separately and uses a subset of it.
#![allow(dead_code)]

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::OnceLock;

use test_support::pki::write_private;
use test_support::postgres::{self, Lifetime, Listen, PgOptions};

pub mod binary;
pub mod lakebase;

/// Role authenticated with `scram-sha-256` (the server offers SCRAM-SHA-256-PLUS over TLS).
pub const SCRAM_USER: &str = "scram_user";
/// Role authenticated with `md5`; its password is stored as an md5 hash.
pub const MD5_USER: &str = "md5_user";
/// Role authenticated with the `password` method (cleartext, inside TLS).
pub const CLEAR_USER: &str = "clear_user";
/// Password of all three roles.
pub const PASSWORD: &str = "s3cret-Pw!";
/// Database owned by [`SCRAM_USER`]; all three roles may connect and create (temp) tables.
pub const APP_DB: &str = "app";

const OPTIONS: PgOptions<'static> = PgOptions {
    name: "lakebase-pg-",
    listen: Listen::TcpWithTls,
    settings: "max_connections = 400\npassword_encryption = 'scram-sha-256'\nshared_buffers = 64MB\n",
    // First match wins, so the per-user methods must precede the catch-all.
    hba: "local   all  all                      trust\n\
          hostssl all  clear_user  127.0.0.1/32 password\n\
          hostssl all  md5_user    127.0.0.1/32 md5\n\
          hostssl all  all         127.0.0.1/32 scram-sha-256\n\
          host    all  all         127.0.0.1/32 reject\n",
    setup_sql: r#"
CREATE ROLE scram_user LOGIN PASSWORD 's3cret-Pw!';
CREATE ROLE clear_user LOGIN PASSWORD 's3cret-Pw!';
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 's3cret-Pw!';
RESET password_encryption;
CREATE DATABASE app OWNER scram_user;
\connect app
GRANT ALL ON SCHEMA public TO scram_user, md5_user, clear_user;
"#,
};

/// A PostgreSQL server on 127.0.0.1 with TLS and the three password roles; the server's own
/// methods (port, CA, superuser SQL, restart, stop) come through `Deref`.
pub struct PgServer {
    server: postgres::PgServer,
    password_file: PathBuf,
}

impl PgServer {
    /// The server shared by all tests of this process, started on first use and stopped (and
    /// deleted) when the process exits, however it exits. Use [`PgServer::start`] instead to
    /// stop or restart a server.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(|| PgServer::launch(Lifetime::Process))
    }

    /// A private server (for tests that stop or restart it); stopped and deleted on drop.
    pub fn start() -> PgServer {
        PgServer::launch(Lifetime::Owned)
    }

    fn launch(lifetime: Lifetime) -> PgServer {
        let server = postgres::PgServer::start(&OPTIONS, lifetime);
        let password_file = server.dir().join("password");
        write_private(&password_file, format!("{PASSWORD}\n").as_bytes());
        PgServer { server, password_file }
    }

    /// A file containing [`PASSWORD`] and a newline (mode 0600).
    pub fn password_file(&self) -> PathBuf {
        self.password_file.clone()
    }
}

impl Deref for PgServer {
    type Target = postgres::PgServer;

    fn deref(&self) -> &postgres::PgServer {
        &self.server
    }
}

/// A configuration for an in-process proxy in front of the shared server as `user`, on any free
/// port, with the roles' password file.
pub fn proxy_config(user: &str) -> lakebase_proxy::config::Config {
    let pg = PgServer::shared();
    let target = format!("postgresql://{user}@localhost:{}/{APP_DB}?sslrootcert={}", pg.port(), pg.ca_path().display());
    let mut config = lakebase_proxy::config::Config::new(vec![target.parse().unwrap()]);
    config.port = 0;
    config.password = lakebase_proxy::config::PasswordSource::File(pg.password_file());
    config
}
