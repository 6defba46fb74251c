//! The fake's whole world: identities, resources, minted tokens, faults and
//! live gateway sessions, all behind one `Arc<Mutex<State>>`.
//!
//! Nothing here awaits: callers lock, read or change, and unlock before any I/O.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use rand::Rng as _;
use tokio::sync::oneshot;

use crate::{Counters, WakeMode};

/// Lifetime of a minted DB token when the caller asks for none (Lakebase: 1 h).
pub(crate) const DEFAULT_DB_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Lifetime of an OAuth access token from `/oidc/v1/token`.
pub(crate) const OAUTH_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Who a workspace token authenticates as.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    /// SCIM numeric id (as a string, like the real SCIM API).
    pub id: String,
    /// The Postgres role: a user's email or a service principal's client id.
    pub role: String,
    pub display_name: String,
    pub service_principal: bool,
}

/// What a gateway host name (its first DNS label) routes to, and what a DB
/// token is valid for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Autoscaling endpoint, by full resource name.
    Endpoint(String),
    /// Provisioned instance, by name.
    Instance(String),
}

/// A database password minted by one of the `/credentials` calls.
#[derive(Clone, Debug)]
pub(crate) struct DbToken {
    pub role: String,
    pub targets: Vec<Target>,
    pub expires: SystemTime,
}

pub(crate) struct Project {
    pub uid: String,
    pub default_branch: String,
    pub branches: BTreeMap<String, Branch>,
}

pub(crate) struct Branch {
    pub uid: String,
    pub endpoints: BTreeMap<String, Endpoint>,
}

pub(crate) struct Endpoint {
    pub uid: String,
    pub read_only: bool,
    /// Reported `status.current_state`.
    pub state: String,
}

pub(crate) struct Instance {
    pub uid: String,
}

/// A gateway connection past its checks (relaying, or logging in upstream).
pub(crate) struct Session {
    pub started: Instant,
    /// Taken and fired to make the relay close both sockets; dropping it has
    /// the same effect, so a session removed from the map also ends.
    pub kill: Option<oneshot::Sender<()>>,
    /// The real backend's BackendKeyData body (pid + secret), once seen.
    pub cancel_key: Option<Vec<u8>>,
}

/// A pending injected API failure.
pub(crate) struct InjectedFailure {
    pub remaining: usize,
    pub status: u16,
    pub retry_after: Option<u32>,
}

#[derive(Default)]
pub(crate) struct State {
    pub host_suffix: String,
    /// By role.
    pub identities: BTreeMap<String, Identity>,
    /// PAT → role.
    pub pats: HashMap<String, String>,
    /// Service principal client id → secret.
    pub sp_secrets: HashMap<String, String>,
    /// OAuth access token → (role, expiry).
    pub oauth_tokens: HashMap<String, (String, SystemTime)>,
    pub projects: BTreeMap<String, Project>,
    pub instances: BTreeMap<String, Instance>,
    /// First DNS label of a gateway host → what it routes to.
    pub hosts: HashMap<String, Target>,
    pub db_tokens: HashMap<String, DbToken>,
    pub api_latency: Duration,
    pub fail_next: Option<InjectedFailure>,
    pub ttl_cap: Option<Duration>,
    pub suspended: Option<(Instant, WakeMode)>,
    pub max_connections: Option<usize>,
    pub max_age: Option<Duration>,
    pub sessions: HashMap<u64, Session>,
    pub next_session: u64,
    pub counters: Counters,
    pub last_user_agent: Option<String>,
    pub last_workspace_id: Option<String>,
}

impl State {
    pub fn new(host_suffix: String) -> State {
        State { host_suffix, ..State::default() }
    }

    /// Creates (or returns) the identity for `role`.
    pub fn ensure_identity(&mut self, role: &str, service_principal: bool) -> &Identity {
        self.identities.entry(role.to_string()).or_insert_with(|| Identity {
            id: rand::rng().random_range(1_000_000_000_000_000u64..9_999_999_999_999_999).to_string(),
            role: role.to_string(),
            display_name: if service_principal {
                format!("Service principal {role}")
            } else {
                role.split('@').next().unwrap_or(role).to_string()
            },
            service_principal,
        })
    }

    /// The identity a workspace bearer token authenticates as, if any.
    pub fn identity_for_bearer(&self, token: &str) -> Option<Identity> {
        let role = match self.pats.get(token) {
            Some(role) => role,
            None => {
                let (role, expires) = self.oauth_tokens.get(token)?;
                if *expires <= SystemTime::now() {
                    return None;
                }
                role
            }
        };
        self.identities.get(role).cloned()
    }

    /// Consumes one injected failure, if any is pending.
    pub fn take_failure(&mut self) -> Option<(u16, Option<u32>)> {
        let f = self.fail_next.as_mut()?;
        f.remaining -= 1;
        let out = (f.status, f.retry_after);
        if f.remaining == 0 {
            self.fail_next = None;
        }
        Some(out)
    }

    /// A host label not used yet, built by `make`.
    fn unique_label(&self, make: impl Fn() -> String) -> String {
        loop {
            let label = make();
            if !self.hosts.contains_key(&label) && !self.hosts.contains_key(&format!("{label}-ro")) {
                return label;
            }
        }
    }

    /// Adds an endpoint (creating nothing else) and routes its hosts.
    pub fn add_endpoint(&mut self, project: &str, branch: &str, endpoint: &str, read_only: bool) -> String {
        let uid = self.unique_label(|| neon_style_id("ep"));
        let full = endpoint_name(project, branch, endpoint);
        let br = self
            .projects
            .get_mut(project)
            .unwrap_or_else(|| panic!("fake-lakebase: no project {project:?}"))
            .branches
            .get_mut(branch)
            .unwrap_or_else(|| panic!("fake-lakebase: no branch {project}/{branch}"));
        assert!(!br.endpoints.contains_key(endpoint), "fake-lakebase: endpoint {full} already exists");
        br.endpoints
            .insert(endpoint.to_string(), Endpoint { uid: uid.clone(), read_only, state: "ACTIVE".to_string() });
        self.hosts.insert(uid.clone(), Target::Endpoint(full.clone()));
        // The read-only host of a read-write endpoint reaches the same database
        // here: there are no replicas behind the fake.
        self.hosts.insert(format!("{uid}-ro"), Target::Endpoint(full));
        format!("{uid}.{}", self.host_suffix)
    }

    pub fn add_branch(&mut self, project: &str, branch: &str) {
        let uid = neon_style_id("br");
        let p = self.projects.get_mut(project).unwrap_or_else(|| panic!("fake-lakebase: no project {project:?}"));
        p.branches.entry(branch.to_string()).or_insert(Branch { uid, endpoints: BTreeMap::new() });
    }

    /// Adds a Provisioned instance and routes its two hosts; returns the
    /// read-write one. (Random UUIDs need no collision check.)
    pub fn add_instance(&mut self, name: &str) -> String {
        assert!(!self.instances.contains_key(name), "fake-lakebase: instance {name} already exists");
        let uid = uuid4();
        self.instances.insert(name.to_string(), Instance { uid: uid.clone() });
        let target = Target::Instance(name.to_string());
        self.hosts.insert(format!("instance-{uid}"), target.clone());
        self.hosts.insert(format!("instance-ro-{uid}"), target);
        format!("instance-{uid}.{}", self.host_suffix)
    }

    /// Looks an endpoint up by full resource name.
    pub fn endpoint(&self, full_name: &str) -> Option<&Endpoint> {
        let (p, b, e) = split_endpoint_name(full_name)?;
        self.projects.get(p)?.branches.get(b)?.endpoints.get(e)
    }

    pub fn endpoint_mut(&mut self, full_name: &str) -> Option<&mut Endpoint> {
        let (p, b, e) = split_endpoint_name(full_name)?;
        self.projects.get_mut(p)?.branches.get_mut(b)?.endpoints.get_mut(e)
    }

    /// Mints a DB token for `role` valid on `targets` for `ttl`, capped.
    pub fn mint_db_token(&mut self, role: &str, targets: Vec<Target>, ttl: Duration) -> (String, SystemTime) {
        let ttl = self.ttl_cap.map_or(ttl, |cap| ttl.min(cap));
        let expires = SystemTime::now() + ttl;
        let token = random_token(66);
        self.db_tokens.insert(token.clone(), DbToken { role: role.to_string(), targets, expires });
        self.counters.credential_mints += 1;
        (token, expires)
    }

    /// Sends every session its kill signal.
    pub fn kill_all_sessions(&mut self) {
        for s in self.sessions.values_mut() {
            if let Some(k) = s.kill.take() {
                let _ = k.send(());
            }
        }
    }
}

pub(crate) fn endpoint_name(project: &str, branch: &str, endpoint: &str) -> String {
    format!("projects/{project}/branches/{branch}/endpoints/{endpoint}")
}

/// `projects/p/branches/b/endpoints/e` → `(p, b, e)`.
pub(crate) fn split_endpoint_name(name: &str) -> Option<(&str, &str, &str)> {
    match name.split('/').collect::<Vec<_>>().as_slice() {
        ["projects", p, "branches", b, "endpoints", e] if [p, b, e].iter().all(|s| is_resource_id(s)) => {
            Some((p, b, e))
        }
        _ => None,
    }
}

/// Lakebase resource ids: 1-63 lowercase letters, digits and hyphens.
pub(crate) fn is_resource_id(s: &str) -> bool {
    (1..=63).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An opaque random token: `bytes` random bytes, base64url (4/3 as many chars).
pub(crate) fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A random version-4 UUID string.
pub(crate) fn uuid4() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Neon-style ids (`ep-cool-darkness-a1b2c3d4`), which Lakebase endpoint uids follow.
pub(crate) fn neon_style_id(prefix: &str) -> String {
    const ADJ: &[&str] = &["cool", "quiet", "bold", "misty", "young", "wild", "calm", "still", "proud", "long"];
    const NOUN: &[&str] = &["darkness", "river", "meadow", "sun", "cloud", "forest", "lake", "dew", "frost", "field"];
    let mut rng = rand::rng();
    let a = ADJ[rng.random_range(0..ADJ.len())];
    let n = NOUN[rng.random_range(0..NOUN.len())];
    let suffix: String =
        (0..8).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)])).collect();
    format!("{prefix}-{a}-{n}-{suffix}")
}
