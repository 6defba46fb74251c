//! Integration-test harness: a throwaway PostgreSQL with TLS and one role per
//! password method, plus a small test PKI.
//!
//! Each test binary compiles this module separately and uses a subset of it.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod binary;
pub mod lakebase;

use test_support::{init_cluster, pg_isready, spawn_postgres, superuser_psql};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

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

/// A test certificate authority whose files live in a directory.
///
/// rustls refuses a self-signed certificate used as a leaf, so tests need a
/// real CA → leaf chain rather than one self-signed certificate.
pub struct TestPki {
    dir: PathBuf,
    // Only `Some` for `new()`: the server's PKI lives inside the server's dir.
    _tmp: Option<tempfile::TempDir>,
    ca_path: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    next_leaf: AtomicU32,
}

impl TestPki {
    /// A fresh CA in a new temporary directory (removed when dropped).
    pub fn new() -> TestPki {
        let tmp = tempfile::Builder::new().prefix("lakebase-pki-").tempdir().expect("create PKI temp dir");
        let mut pki = TestPki::in_dir(tmp.path());
        pki._tmp = Some(tmp);
        pki
    }

    fn in_dir(dir: &Path) -> TestPki {
        fs::create_dir_all(dir).expect("create PKI dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A unique name: verifiers look issuers up by name, so two CAs sharing
        // one would turn "unknown issuer" into a confusing "bad signature".
        static CA_SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = CA_SEQ.fetch_add(1, Ordering::Relaxed);
        let cn = format!("lakebase-proxy test CA {}-{seq}", std::process::id());
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        let ca_path = dir.join("ca.crt");
        fs::write(&ca_path, cert.pem()).expect("write CA cert");
        TestPki {
            dir: dir.to_path_buf(),
            _tmp: None,
            ca_path,
            ca_params: params,
            ca_key: key,
            next_leaf: AtomicU32::new(0),
        }
    }

    /// PEM file of the CA certificate.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// A new server/client leaf signed by the CA, valid for `names` (DNS names
    /// or IP addresses). Returns `(cert PEM path, key PEM path)`; the key is 0600.
    pub fn leaf(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let n = self.next_leaf.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.is_ca = IsCa::NoCa;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("leaf key");
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        let cert_path = self.dir.join(format!("leaf-{n}.crt"));
        let key_path = self.dir.join(format!("leaf-{n}.key"));
        fs::write(&cert_path, cert.pem()).expect("write leaf cert");
        // PostgreSQL refuses a private key readable by group/others.
        write_private(&key_path, key.serialize_pem().as_bytes());
        (cert_path, key_path)
    }
}

/// Creates `path` with mode 0600 from the start, so it is never briefly world-readable.
fn write_private(path: &Path, contents: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(contents).expect("write private file");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

const SETUP_SQL: &str = r#"
CREATE ROLE scram_user LOGIN PASSWORD 's3cret-Pw!';
CREATE ROLE clear_user LOGIN PASSWORD 's3cret-Pw!';
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 's3cret-Pw!';
RESET password_encryption;
CREATE DATABASE app OWNER scram_user;
\connect app
GRANT ALL ON SCHEMA public TO scram_user, md5_user, clear_user;
"#;

/// A PostgreSQL server on 127.0.0.1 with TLS and the three password roles.
pub struct PgServer {
    base: PathBuf,
    // `None` for the shared server: only the wrapper deletes its dir.
    _tmp: Option<tempfile::TempDir>,
    port: u16,
    socket_dir: PathBuf,
    ca_path: PathBuf,
    password_file: PathBuf,
    shared: bool,
    child: Mutex<Option<Child>>,
}

impl PgServer {
    /// The server shared by all tests of this process, started on first use
    /// and stopped (and deleted) when the process exits, however it exits.
    /// Use [`PgServer::start`] instead to stop or restart a server.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(|| PgServer::launch(true))
    }

    /// A private server (for tests that stop or restart it); stopped and
    /// deleted on drop.
    pub fn start() -> PgServer {
        PgServer::launch(false)
    }

    fn launch(shared: bool) -> PgServer {
        let tmp = tempfile::Builder::new()
            .prefix("lakebase-pg-")
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir_in("/tmp")
            .expect("create server temp dir");
        let base = tmp.path().to_path_buf();
        // Explicitly, since the umask may have narrowed the mode: when root,
        // postgres must traverse it to reach files we create.
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).expect("chmod base");
        let pki = TestPki::in_dir(&base.join("pki"));
        let (cert, key) = pki.leaf(&["localhost", "127.0.0.1"]);
        let socket_dir = base.join("sock");
        fs::create_dir(&socket_dir).expect("create socket dir");
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = on\n\
             ssl_cert_file = '{}'\nssl_key_file = '{}'\nmax_connections = 400\n\
             password_encryption = 'scram-sha-256'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nshared_buffers = 64MB\nlog_min_messages = warning\n",
            socket_dir.display(),
            cert.display(),
            key.display()
        );
        // First match wins, so the per-user methods must precede the catch-all.
        let hba = "local   all  all                      trust\n\
                   hostssl all  clear_user  127.0.0.1/32 password\n\
                   hostssl all  md5_user    127.0.0.1/32 md5\n\
                   hostssl all  all         127.0.0.1/32 scram-sha-256\n\
                   host    all  all         127.0.0.1/32 reject\n";
        init_cluster(&base, &conf, hba);

        let password_file = base.join("password");
        write_private(&password_file, format!("{PASSWORD}\n").as_bytes());

        let tmp = if shared {
            let _ = tmp.keep();
            None
        } else {
            Some(tmp)
        };
        let mut server = PgServer {
            base,
            _tmp: tmp,
            port: 0,
            socket_dir,
            ca_path: pki.ca_path().to_path_buf(),
            password_file,
            shared,
            child: Mutex::new(None),
        };
        // The port is released before postgres binds it, so another process
        // may grab it in between: retry with a new one.
        for attempt in 1.. {
            server.port = free_port();
            let child = spawn_postgres(&server.base, server.port);
            match server.wait_ready(child) {
                Ok(child) => {
                    *server.child.get_mut().unwrap() = Some(child);
                    break;
                }
                Err(log) if attempt < 5 => eprintln!("postgres start failed, retrying:\n{log}"),
                Err(log) => panic!("postgres failed to start 5 times:\n{log}"),
            }
        }
        server.superuser_sql(SETUP_SQL);
        server
    }

    fn log_path(&self) -> PathBuf {
        self.base.join("postgres.log")
    }

    fn log_tail(&self) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Polls `pg_isready` (bounded); if postgres exits instead, returns the log tail.
    fn wait_ready(&self, mut child: Child) -> Result<Child, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if pg_isready(self.port, &self.socket_dir) {
                return Ok(child);
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                // The background reader only exits once its pipe is closed.
                Self::shut_down(&mut child, true);
                let what = if exited { "exited" } else { "not ready after 30 s" };
                let msg = format!("postgres {what}; log tail:\n{}", self.log_tail());
                // An exit is most likely a port collision, which the caller retries.
                return if exited { Err(msg) } else { panic!("{msg}") };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `keep`: write a line so the wrapper keeps the data dir; otherwise EOF.
    fn shut_down(child: &mut Child, keep: bool) {
        // Dropping stdin closes the pipe (EOF) right after the optional line.
        if let Some(mut stdin) = child.stdin.take()
            && keep
        {
            let _ = stdin.write_all(b"\n");
        }
        let _ = child.wait();
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// CA that signed the server certificate (`localhost`, `127.0.0.1`).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The server's `unix_socket_directories`.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// A file containing [`PASSWORD`] and a newline (mode 0600).
    pub fn password_file(&self) -> PathBuf {
        self.password_file.clone()
    }

    /// Runs `sql` (psql script, may contain `\connect`) as the `postgres`
    /// superuser over the unix socket; panics with stderr on failure and
    /// returns the trimmed, unaligned, tuples-only stdout.
    pub fn superuser_sql(&self, sql: &str) -> String {
        superuser_psql(self.port, &self.socket_dir, sql)
    }

    /// Fast-stops postgres and starts it again on the same data dir and port.
    pub fn restart(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            Self::shut_down(&mut child, true);
        }
        let child = spawn_postgres(&self.base, self.port);
        *guard = Some(
            self.wait_ready(child)
                .unwrap_or_else(|log| panic!("postgres failed to restart on port {}:\n{log}", self.port)),
        );
    }

    /// Fast-stops postgres (idempotent); [`PgServer::restart`] starts it
    /// again. On the shared server this is final and deletes its files.
    pub fn stop(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = guard.take() {
            Self::shut_down(&mut child, !self.shared);
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // EOF: the wrapper deletes the dir too, racing TempDir harmlessly.
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = child.take() {
            Self::shut_down(&mut child, false);
        }
    }
}
