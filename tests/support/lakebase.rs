//! A fake Databricks workspace and Lakebase gateway in front of the shared PostgreSQL, for
//! tests that run the real binary against it.

use std::process::{Command, Output};
use std::sync::OnceLock;

use fake_lakebase::{FakeLakebase, FakeLakebaseConfig};

use super::PgServer;
use super::binary::ProxyProcess;

pub const USER: &str = "alice@example.com";
pub const PAT: &str = "dapi-test-pat-0123456789";
pub const SP_ID: &str = "7c1f2a9e-5b4d-4c3e-9f1a-2b3c4d5e6f70";
pub const SP_SECRET: &str = "dose-sp-secret-value";
pub const ENDPOINT: &str = "projects/app/branches/production/endpoints/primary";

/// A fake workspace in front of the shared PostgreSQL, with its own runtime (the tests
/// themselves are synchronous: they drive processes).
pub struct World {
    /// Runs the fake; tests use it for async clients too.
    pub runtime: tokio::runtime::Runtime,
    /// The fake, for setup, faults and counters.
    pub fake: FakeLakebase,
    /// An empty HOME, so no real ~/.databrickscfg is read.
    pub home: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        let pg = PgServer::shared();
        prepare_database(pg);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let fake = runtime
            .block_on(FakeLakebase::start(FakeLakebaseConfig::new(pg.socket_dir().to_owned(), pg.port())))
            .unwrap();
        fake.add_user(USER, PAT);
        fake.add_service_principal(SP_ID, SP_SECRET);
        fake.add_project("app");
        World { runtime, fake, home: tempfile::tempdir().unwrap() }
    }

    /// `connect-to` for the gateway, since `*.lakebase.test` does not resolve.
    pub fn via_gateway(&self, name: &str) -> String {
        format!("{name}?connect-to={}", self.fake.gateway_addr())
    }

    /// Environment for a process: a clean HOME (no ~/.databrickscfg) and `vars`.
    pub fn env<'a>(&'a self, vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, String)> {
        let mut env = vec![("HOME", self.home.path().display().to_string())];
        env.extend(vars.iter().map(|(k, v)| (*k, v.to_string())));
        env
    }

    pub fn pat_env(&self) -> Vec<(&str, String)> {
        let mut env = self.env(&[("DATABRICKS_TOKEN", PAT)]);
        env.push(("DATABRICKS_HOST", self.fake.api_url()));
        env
    }

    pub fn proxy(&self, target: &str, extra: &[&str], env: &[(&str, String)]) -> ProxyProcess {
        let mut args = vec![target.to_owned(), format!("--ca-file={}", self.fake.ca_pem_path().display())];
        args.extend(extra.iter().map(|a| a.to_string()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ProxyProcess::spawn(&args, &env)
    }

    /// `lakebase-proxy --run-connection-test` with `target` and `env`.
    pub fn connection_test(&self, target: &str, extra: &[&str], env: &[(&str, String)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lakebase-proxy"))
            .arg(target)
            .arg(format!("--ca-file={}", self.fake.ca_pem_path().display()))
            .args(extra)
            .arg("--run-connection-test")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    }
}

/// Roles for the fake identities and Lakebase's default database, once per process.
fn prepare_database(pg: &PgServer) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        pg.superuser_sql(&format!(
            "CREATE ROLE \"{USER}\" LOGIN; CREATE ROLE \"{SP_ID}\" LOGIN; CREATE DATABASE databricks_postgres; \
             GRANT ALL ON DATABASE databricks_postgres TO \"{USER}\", \"{SP_ID}\"; \\connect databricks_postgres\n\
             GRANT ALL ON SCHEMA public TO \"{USER}\", \"{SP_ID}\";"
        ));
    });
}
