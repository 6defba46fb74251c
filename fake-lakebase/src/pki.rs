//! The fake's two server certificates and their rustls configs.
//!
//! rustls (and libpq with `verify-full`) refuse a self-signed leaf, so clients get a CA file
//! and the servers present CA-signed leaves. The CA is the workspace's one test CA,
//! [`test_support::pki::TestCa`], a fresh one per fake; only the server configs are made here.

use std::io;
use std::sync::Arc;

use rustls::ServerConfig;
use test_support::pki::TestCa;

/// ALPN protocol id of PostgreSQL (PG17 direct TLS).
pub(crate) const PG_ALPN: &[u8] = b"postgresql";

pub(crate) struct Pki {
    pub ca_pem: String,
    /// For the workspace API: `127.0.0.1` and `localhost`.
    pub api: Arc<ServerConfig>,
    /// For the gateway: `*.<suffix>` and `<suffix>`, ALPN `postgresql`.
    pub gateway: Arc<ServerConfig>,
}

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("fake-lakebase PKI: {e}"))
}

impl Pki {
    pub fn new(host_suffix: &str) -> io::Result<Pki> {
        // Its own CA per fake: two fakes in one process must not be mistaken for each other.
        let ca = TestCa::new("fake-lakebase test CA").map_err(err)?;
        let server = |names: &[&str], alpn: &[u8]| -> io::Result<Arc<ServerConfig>> {
            let leaf = ca.leaf(names).map_err(err)?;
            let chain = vec![leaf.cert_der(), ca.cert_der()];
            // Explicit provider: the process default is ambiguous if some other crate in the
            // build enables a second one.
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut cfg = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(err)?
                .with_no_client_auth()
                .with_single_cert(chain, leaf.key_der())
                .map_err(err)?;
            cfg.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(cfg))
        };
        let api = server(&["localhost", "127.0.0.1"], b"http/1.1")?;
        let wildcard = format!("*.{host_suffix}");
        let gateway = server(&[&wildcard, host_suffix], PG_ALPN)?;
        Ok(Pki { ca_pem: ca.cert_pem(), api, gateway })
    }
}
