//! A stand-in for Databricks Lakebase, for lakebase-proxy's tests, benchmarks
//! and demo: the workspace HTTP API (OIDC, SCIM Me, `postgres` and `database`
//! resources and credentials) and the Lakebase TLS gateway, which checks minted
//! tokens and relays to a real local PostgreSQL.
//!
//! It follows `LAKEBASE.md` (the project's notes on the real service), not what
//! would be easiest: tokens are bound to a role and an endpoint, expiry is
//! checked only at login, lists are paged (2 items by default), SNI routes.
//!
//! Its wire code (the gateway's SSL negotiation, startup and password parsing, error
//! messages; see `gateway.rs`) is its own on purpose and must stay separate: the fake stands
//! in for Lakebase and must not share code with the proxy it tests, nor with the message
//! encoders of `test-support` that the proxy's tests use, so a bug in shared code cannot hide
//! itself (the proxy and the fake would agree with each other and both be wrong). The one
//! thing it takes from `test-support` is the test CA that signs its certificates, which is
//! not what the tests examine.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use fake_lakebase::{FakeLakebase, FakeLakebaseConfig};
//! let fake = FakeLakebase::start(FakeLakebaseConfig::new("/tmp/pgsock".into(), 5432)).await?;
//! fake.add_user("alice@example.com", "dapi-alice");
//! let host = fake.add_project("demo"); // ep-....lakebase.test, route it to fake.gateway_addr()
//! # let _ = host; Ok(()) }
//! ```

#![warn(missing_docs)]

mod api;
mod gateway;
mod pki;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::state::{InjectedFailure, State};

/// Default DNS suffix of endpoint hosts.
pub const DEFAULT_HOST_SUFFIX: &str = "lakebase.test";

/// Where the real PostgreSQL is, and how endpoint hosts are named.
#[derive(Clone, Debug)]
pub struct FakeLakebaseConfig {
    /// The real PostgreSQL's `unix_socket_directories`; the gateway logs in
    /// there, so its pg_hba.conf must `trust` local connections.
    pub postgres_socket_dir: PathBuf,
    /// The real PostgreSQL's port (names the socket file `.s.PGSQL.<port>`).
    pub postgres_port: u16,
    /// Endpoint hosts are `<endpoint uid>.<host_suffix>`.
    pub host_suffix: String,
}

impl FakeLakebaseConfig {
    /// A config with the default host suffix ([`DEFAULT_HOST_SUFFIX`]).
    pub fn new(postgres_socket_dir: PathBuf, postgres_port: u16) -> FakeLakebaseConfig {
        FakeLakebaseConfig { postgres_socket_dir, postgres_port, host_suffix: DEFAULT_HOST_SUFFIX.to_string() }
    }
}

/// How a suspended (scaled-to-zero) compute answers new connections while it wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeMode {
    /// TCP accepted, then closed at once, before any byte (the TLS front has no compute yet).
    Refuse,
    /// Login goes through TLS and the password, then `FATAL 57P03 the database system is starting up`.
    StartingUp,
}

/// What the fake has seen, for assertions.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Every HTTP request to the workspace API, whatever its path or outcome.
    pub api_calls: u64,
    /// DB tokens minted by either `/credentials` call.
    pub credential_mints: u64,
    /// OAuth access tokens issued by `/oidc/v1/token`.
    pub oidc_tokens_issued: u64,
    /// Gateway logins that reached the real server's ReadyForQuery.
    pub gateway_logins_ok: u64,
    /// Gateway logins answered with an error (insecure, no SNI, bad token,
    /// starting up, too many connections, the real server's own error...).
    pub gateway_logins_failed: u64,
    /// Gateway sessions open now.
    pub active_sessions: u64,
    /// Request counts keyed `"METHOD /path"` (no query string).
    pub calls_by_path: BTreeMap<String, u64>,
}

/// A running fake: workspace API and gateway, both on 127.0.0.1. Dropping it
/// stops both, closes every session and deletes its temp dir.
pub struct FakeLakebase {
    state: Arc<Mutex<State>>,
    api_addr: SocketAddr,
    gateway_addr: SocketAddr,
    tmp_dir: PathBuf,
    ca_pem_path: PathBuf,
    _shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeLakebase {
    /// Generates the PKI, binds 127.0.0.1:0 for the API and the gateway and
    /// starts serving on the current tokio runtime.
    pub async fn start(config: FakeLakebaseConfig) -> std::io::Result<FakeLakebase> {
        let pki = pki::Pki::new(&config.host_suffix)?;
        let tmp_dir =
            std::env::temp_dir().join(format!("fake-lakebase-{}-{}", std::process::id(), state::random_token(6)));
        std::fs::create_dir(&tmp_dir)?;
        let ca_pem_path = tmp_dir.join("ca.pem");
        std::fs::write(&ca_pem_path, &pki.ca_pem)?;

        let api_listener = TcpListener::bind("127.0.0.1:0").await?;
        let gw_listener = TcpListener::bind("127.0.0.1:0").await?;
        let api_addr = api_listener.local_addr()?;
        let gateway_addr = gw_listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::new(config.host_suffix.clone())));
        let (shutdown, shutdown_rx) = watch::channel(false);

        let api = Arc::new(api::Api { state: state.clone(), url: format!("https://{api_addr}") });
        let gw = Arc::new(gateway::Gateway {
            state: state.clone(),
            tls: TlsAcceptor::from(pki.gateway),
            socket_path: config.postgres_socket_dir.join(format!(".s.PGSQL.{}", config.postgres_port)),
        });
        let tasks = vec![
            tokio::spawn(api::serve(api_listener, TlsAcceptor::from(pki.api), api, shutdown_rx.clone())),
            tokio::spawn(gateway::serve(gw_listener, gw, shutdown_rx)),
        ];
        Ok(FakeLakebase { state, api_addr, gateway_addr, tmp_dir, ca_pem_path, _shutdown: shutdown, tasks })
    }

    fn st(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while locked must not cascade into every test.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The workspace host, `https://127.0.0.1:<port>`.
    pub fn api_url(&self) -> String {
        format!("https://{}", self.api_addr)
    }

    /// Where the gateway listens; connect here with SNI = an endpoint host.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway_addr
    }

    /// PEM of the fake's CA, which signs the API certificate (127.0.0.1,
    /// localhost) and the gateway's (`*.<host_suffix>`, `<host_suffix>`).
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// Adds a user (role = `email`) and a PAT that authenticates as them.
    pub fn add_user(&self, email: &str, pat: &str) {
        let mut st = self.st();
        st.ensure_identity(email, false);
        st.pats.insert(pat.to_string(), email.to_string());
    }

    /// Adds a service principal for OAuth M2M (role = `client_id`).
    pub fn add_service_principal(&self, client_id: &str, client_secret: &str) {
        let mut st = self.st();
        st.ensure_identity(client_id, true);
        st.sp_secrets.insert(client_id.to_string(), client_secret.to_string());
    }

    /// Creates a project as Databricks does: default branch `production`
    /// with a read-write endpoint `primary` (ACTIVE). Returns that endpoint's host.
    pub fn add_project(&self, project_id: &str) -> String {
        let mut st = self.st();
        assert!(state::is_resource_id(project_id), "fake-lakebase: bad project id {project_id:?}");
        assert!(!st.projects.contains_key(project_id), "fake-lakebase: project {project_id} already exists");
        st.projects.insert(
            project_id.to_string(),
            state::Project { uid: state::uuid4(), default_branch: "production".to_string(), branches: BTreeMap::new() },
        );
        st.add_branch(project_id, "production");
        st.add_endpoint(project_id, "production", "primary", false)
    }

    /// Adds a (non-default) branch to an existing project.
    pub fn add_branch(&self, project: &str, branch: &str) {
        assert!(state::is_resource_id(branch), "fake-lakebase: bad branch id {branch:?}");
        self.st().add_branch(project, branch);
    }

    /// Adds an endpoint to an existing branch; returns its host.
    pub fn add_endpoint(&self, project: &str, branch: &str, endpoint: &str, read_only: bool) -> String {
        assert!(state::is_resource_id(endpoint), "fake-lakebase: bad endpoint id {endpoint:?}");
        self.st().add_endpoint(project, branch, endpoint, read_only)
    }

    /// Adds a Provisioned instance (AVAILABLE); returns its `read_write_dns`.
    pub fn add_instance(&self, name: &str) -> String {
        self.st().add_instance(name)
    }

    /// The host of an endpoint by full name (`projects/p/branches/b/endpoints/e`).
    pub fn endpoint_host(&self, full_name: &str) -> String {
        let st = self.st();
        let ep = st.endpoint(full_name).unwrap_or_else(|| panic!("fake-lakebase: no endpoint {full_name}"));
        format!("{}.{}", ep.uid, st.host_suffix)
    }

    /// Delay added to every `/api` and `/oidc` call.
    pub fn set_api_latency(&self, latency: Duration) {
        self.st().api_latency = latency;
    }

    /// The next `count` `/api` or `/oidc` calls (after authentication) fail
    /// with `status` in the Databricks error shape; 429 and 503 carry
    /// `Retry-After: <seconds>` when given.
    pub fn fail_next_api_calls(&self, count: usize, status: u16, retry_after: Option<u32>) {
        self.st().fail_next = (count > 0).then_some(InjectedFailure { remaining: count, status, retry_after });
    }

    /// Every PAT and every OAuth access token issued so far stops working
    /// (401). Service principals can still get new OAuth tokens; `add_user`
    /// can add a new PAT.
    pub fn revoke_workspace_tokens(&self) {
        let mut st = self.st();
        st.pats.clear();
        st.oauth_tokens.clear();
    }

    /// DB tokens minted from now on live at most `max`.
    pub fn set_credential_ttl_cap(&self, max: Duration) {
        self.st().ttl_cap = Some(max);
    }

    /// Scale-to-zero: ends every open session now (a suspend stops the
    /// compute), reports ACTIVE endpoints as IDLE, and for `duration`
    /// answers new connections per `mode`. The first login that gets through
    /// afterwards reports its endpoint ACTIVE again. `Duration::ZERO` ends a
    /// suspension early (and still ends the sessions).
    pub fn suspend(&self, duration: Duration, mode: WakeMode) {
        let mut st = self.st();
        st.suspended = Some((Instant::now() + duration, mode));
        st.kill_all_sessions();
        for ep in st.projects.values_mut().flat_map(|p| p.branches.values_mut()).flat_map(|b| b.endpoints.values_mut())
        {
            if ep.state == "ACTIVE" {
                ep.state = "IDLE".to_string();
            }
        }
    }

    /// Sets `status.current_state` reported for an endpoint (ACTIVE, IDLE,
    /// INIT, DEGRADED). Only reporting: logins work whatever the state, and
    /// one that succeeds turns IDLE into ACTIVE (a connection wakes it).
    pub fn set_endpoint_state(&self, full_name: &str, state: &str) {
        self.st().endpoint_mut(full_name).unwrap_or_else(|| panic!("fake-lakebase: no endpoint {full_name}")).state =
            state.to_string();
    }

    /// Closes every relayed session (client and server sockets).
    pub fn kill_all_sessions(&self) {
        self.st().kill_all_sessions();
    }

    /// Beyond `n` open sessions, new logins get `FATAL 53300`.
    pub fn set_max_connections(&self, n: Option<usize>) {
        self.st().max_connections = n;
    }

    /// Sessions older than `age` are closed (checked every 50 ms).
    pub fn set_max_connection_age(&self, age: Option<Duration>) {
        self.st().max_age = age;
    }

    /// Every database token and OAuth access token issued so far, so tests can check that
    /// none of them leaked anywhere.
    pub fn issued_secrets(&self) -> Vec<String> {
        let st = self.st();
        st.db_tokens.keys().chain(st.oauth_tokens.keys()).cloned().collect()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        let st = self.st();
        let mut c = st.counters.clone();
        c.active_sessions = st.sessions.len() as u64;
        c
    }

    /// The last `User-Agent` header the API saw.
    pub fn last_user_agent(&self) -> Option<String> {
        self.st().last_user_agent.clone()
    }

    /// The last `X-Databricks-Workspace-Id` header the API saw.
    pub fn last_workspace_id(&self) -> Option<String> {
        self.st().last_workspace_id.clone()
    }
}

impl Drop for FakeLakebase {
    fn drop(&mut self) {
        // Dropping `_shutdown` (after this) ends connection tasks and sessions;
        // the accept loops are aborted now so the ports close at once.
        for t in &self.tasks {
            t.abort();
        }
        self.st().kill_all_sessions();
        let _ = std::fs::remove_dir_all(&self.tmp_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_can_be_shared_between_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<FakeLakebase>();
        shareable::<Counters>();
    }
}
