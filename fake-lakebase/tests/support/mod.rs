//! A throwaway PostgreSQL for the gateway tests (a trimmed cousin of the main crate's
//! tests/support): unix socket only, `local all all trust`, and the roles and
//! database a Lakebase project has. Stopped and deleted when the test process
//! exits, however it exits.
#![allow(dead_code)]

pub mod http;
pub mod pgwire;

use test_support::{init_cluster, pg_isready, spawn_postgres, superuser_psql};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A user role that exists in the server (as Lakebase creates for identities).
pub const ALICE: &str = "alice@example.com";
/// A second user role, for tokens presented under the wrong role.
pub const BOB: &str = "bob@example.com";

const SETUP_SQL: &str = r#"
CREATE ROLE "alice@example.com" LOGIN;
CREATE ROLE "bob@example.com" LOGIN;
CREATE DATABASE databricks_postgres;
"#;

/// A PostgreSQL server listening only on its unix socket, trusting local logins.
pub struct PgServer {
    base: PathBuf,
    port: u16,
    socket_dir: PathBuf,
    // Never waited on: the process-wide server lives until the process exits,
    // and the wrapper notices that through its stdin.
    _child: Child,
}

impl PgServer {
    /// The server shared by all tests of this process, started on first use.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(PgServer::launch)
    }

    fn launch() -> PgServer {
        let tmp = tempfile::Builder::new()
            .prefix("fake-lakebase-pg-")
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir_in("/tmp")
            .expect("create server temp dir");
        // Only the wrapper deletes it (TempDir's cleanup never runs for a static).
        let base = tmp.keep();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).expect("chmod base");
        let socket_dir = base.join("sock");
        fs::create_dir(&socket_dir).expect("create socket dir");

        // No TCP at all: the gateway (like every client here) uses the socket,
        // so no port can collide; the port only names the socket file.
        let conf = format!(
            "\nlisten_addresses = ''\nunix_socket_directories = '{}'\nmax_connections = 100\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             shared_buffers = 32MB\nlog_min_messages = warning\n",
            socket_dir.display(),
        );
        init_cluster(&base, &conf, "local all all trust\n");

        let port = 5432;
        let mut child = spawn_postgres(&base, port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if pg_isready(port, &socket_dir) {
                break;
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let log = fs::read_to_string(base.join("postgres.log")).unwrap_or_default();
                panic!("postgres did not start; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let server = PgServer { base, port, socket_dir, _child: child };
        server.superuser_sql(SETUP_SQL);
        server
    }

    /// The port naming the socket file.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's `unix_socket_directories`.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Runs `sql` as the `postgres` superuser over the unix socket; panics
    /// with stderr on failure and returns the trimmed, tuples-only stdout.
    pub fn superuser_sql(&self, sql: &str) -> String {
        superuser_psql(self.port, &self.socket_dir, sql)
    }
}
