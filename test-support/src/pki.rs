//! The workspace's one test certificate authority.
//!
//! rustls (and libpq with `verify-full`) refuse a self-signed certificate used as a leaf, so
//! tests need a real CA → leaf chain rather than one self-signed certificate. [`TestCa`] holds
//! such a CA in memory; fake-lakebase uses it at run time for its API and gateway
//! certificates. [`TestPki`] keeps one in a directory as PEM files, for what reads files:
//! PostgreSQL's `ssl_cert_file`, the proxy's `--ca-file` and `--client-cert`, libpq's
//! `sslrootcert`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use rcgen::Error;

/// A certificate authority in memory, with a name no other CA in this process (or, in
/// practice, on this machine) shares.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh CA whose common name starts with `label` (say, who made it).
    pub fn new(label: &str) -> Result<TestCa, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A unique name: verifiers look issuers up by name, so two CAs sharing one would turn
        // "unknown issuer" into a confusing "bad signature".
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let cn = format!("{label} {}-{seq}-{nanos:09}", std::process::id());
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        Ok(TestCa { issuer: CertifiedIssuer::self_signed(params, key)? })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER (to append to a server's chain).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A new leaf signed by the CA, valid for `names` (DNS names, wildcards or IP addresses)
    /// as a server and as a client; its common name is the first name.
    pub fn leaf(&self, names: &[&str]) -> Result<Leaf, Error> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        params.is_ca = IsCa::NoCa;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &*self.issuer)?;
        Ok(Leaf { cert, key })
    }
}

/// A leaf certificate and its private key.
pub struct Leaf {
    cert: Certificate,
    key: KeyPair,
}

impl Leaf {
    /// The certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The private key, PKCS#8 DER, as rustls takes it.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// A [`TestCa`] whose files live in a directory: `ca.crt`, then `leaf-N.crt` and `leaf-N.key`
/// for each leaf asked for.
pub struct TestPki {
    dir: PathBuf,
    // Only `Some` for `new()`: a PKI made with `in_dir` lives as long as its directory.
    _tmp: Option<tempfile::TempDir>,
    ca_path: PathBuf,
    ca: TestCa,
    next_leaf: AtomicU32,
}

impl Default for TestPki {
    fn default() -> TestPki {
        TestPki::new()
    }
}

impl TestPki {
    /// A fresh CA in a new temporary directory (removed when dropped).
    pub fn new() -> TestPki {
        let tmp = tempfile::Builder::new().prefix("lakebase-pki-").tempdir().expect("create PKI temp dir");
        let mut pki = TestPki::in_dir(tmp.path());
        pki._tmp = Some(tmp);
        pki
    }

    /// A fresh CA in `dir` (created if missing), which the caller cleans up.
    pub fn in_dir(dir: &Path) -> TestPki {
        fs::create_dir_all(dir).expect("create PKI dir");
        let ca = TestCa::new("lakebase-proxy test CA").expect("generate test CA");
        let ca_path = dir.join("ca.crt");
        fs::write(&ca_path, ca.cert_pem()).expect("write CA cert");
        TestPki { dir: dir.to_path_buf(), _tmp: None, ca_path, ca, next_leaf: AtomicU32::new(0) }
    }

    /// PEM file of the CA certificate.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// A new server/client leaf signed by the CA, valid for `names` (DNS names or IP
    /// addresses). Returns `(cert PEM path, key PEM path)`; the key is 0600.
    pub fn leaf(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let n = self.next_leaf.fetch_add(1, Ordering::Relaxed);
        let leaf = self.ca.leaf(names).expect("sign leaf");
        let cert_path = self.dir.join(format!("leaf-{n}.crt"));
        let key_path = self.dir.join(format!("leaf-{n}.key"));
        fs::write(&cert_path, leaf.cert_pem()).expect("write leaf cert");
        // PostgreSQL refuses a private key readable by group/others.
        write_private(&key_path, leaf.key_pem().as_bytes());
        (cert_path, key_path)
    }
}

/// Creates (or truncates) `path` with mode 0600 from the start, so it is never briefly
/// readable by others: private keys, password files.
pub fn write_private(path: &Path, contents: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(contents).expect("write private file");
}
