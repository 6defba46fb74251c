//! The fake's own test CA and the two server certificates it signs.
//!
//! rustls (and libpq with `verify-full`) refuse a self-signed leaf, so clients
//! get a CA file and the servers present CA-signed leaves.

use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

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
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A unique name: verifiers look issuers up by name, and two fakes in
        // one process must not be mistaken for each other.
        let cn = format!("fake-lakebase test CA {}", crate::state::uuid4());
        ca.distinguished_name.push(DnType::CommonName, cn);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().map_err(err)?;
        let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::from_params(&ca, &ca_key);

        let leaf = |names: Vec<String>, alpn: bool| -> io::Result<Arc<ServerConfig>> {
            let mut params = CertificateParams::new(names.clone()).map_err(err)?;
            params.distinguished_name.push(DnType::CommonName, &names[0]);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate().map_err(err)?;
            let cert = params.signed_by(&key, &issuer).map_err(err)?;
            let chain = vec![cert.der().clone(), CertificateDer::from(ca_cert.der().to_vec())];
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            // Explicit provider: the process default is ambiguous if some other
            // crate in the build enables a second one.
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut cfg = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(err)?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(err)?;
            if alpn {
                cfg.alpn_protocols = vec![PG_ALPN.to_vec()];
            } else {
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            }
            Ok(Arc::new(cfg))
        };
        let api = leaf(vec!["localhost".into(), "127.0.0.1".into()], false)?;
        let gateway = leaf(vec![format!("*.{host_suffix}"), host_suffix.to_string()], true)?;
        Ok(Pki { ca_pem: ca_cert.pem(), api, gateway })
    }
}
