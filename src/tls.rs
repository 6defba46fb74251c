//! TLS configuration for both sides, always on the aws-lc-rs provider.
//!
//! Upstream: full verification (chain and host name) against the OS trust store (which also
//! honours `SSL_CERT_FILE` / `SSL_CERT_DIR`) or an explicit CA file, SNI, and ALPN
//! `postgresql`. Toward clients: an optional server certificate for clients that ask for TLS.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN protocol name PostgreSQL servers (17 and later, and Lakebase) expect.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Where upstream certificates are verified against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TrustRoots {
    /// The operating system's store.
    System,
    /// Only the CAs in this PEM file.
    CaFile(PathBuf),
}

/// A TLS configuration that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file held no usable PEM item of the expected kind.
    #[error("{path} holds no PEM {what}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider used everywhere, passed explicitly so no other provider can sneak in.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Client configuration for upstream connections.
pub fn upstream_config(roots: &TrustRoots) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut config = verifying_config(roots)?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// Client configuration for the Databricks API: the same trust as upstream connections
/// (corporate TLS interception on laptops makes a private CA common), no ALPN.
pub fn api_config(roots: &TrustRoots) -> Result<ClientConfig, TlsSetupError> {
    verifying_config(roots)
}

fn verifying_config(roots: &TrustRoots) -> Result<ClientConfig, TlsSetupError> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    Ok(match roots {
        TrustRoots::System => {
            let verifier = rustls_platform_verifier::Verifier::new(provider())?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
        TrustRoots::CaFile(path) => {
            let mut store = RootCertStore::empty();
            for cert in read_certificates(path)? {
                store.add(cert)?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
    })
}

/// Server configuration for clients that send SSLRequest, from PEM certificate chain and key.
pub fn client_facing_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let chain = read_certificates(cert)?;
    let pem = fs::read(key).map_err(|source| TlsSetupError::Read { path: key.to_owned(), source })?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| TlsSetupError::Empty { path: key.to_owned(), what: "private key" })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    // Clients that send ALPN must send `postgresql`; older ones send none, which is allowed.
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = fs::read(path).map_err(|source| TlsSetupError::Read { path: path.to_owned(), source })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsSetupError::Empty { path: path.to_owned(), what: "certificate" });
    }
    Ok(certs)
}

/// Explains a failed TLS handshake in words a user can act on, from the rustls error inside
/// the I/O error tokio-rustls returns.
pub fn describe_handshake_error(error: &io::Error) -> String {
    let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return error.to_string();
    };
    match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { expected, presented }) => {
            format!("the certificate is not valid for {expected:?} (it names {})", presented.join(", "))
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            "the certificate is not signed by a trusted CA (use sslrootcert= or SSL_CERT_FILE for a private CA)"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired) => {
            "the certificate has expired".to_owned()
        }
        rustls::Error::InvalidCertificate(other) => format!("invalid certificate: {other:?}"),
        other => other.to_string(),
    }
}

/// The hash PostgreSQL's `tls-server-end-point` channel binding uses for this certificate:
/// the certificate's own signature hash, with MD5 and SHA-1 raised to SHA-256 (RFC 5929).
/// `None` for signature algorithms without a hash (Ed25519), where channel binding is not
/// defined.
pub fn server_end_point_hash(cert_der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    let algorithm = signature_algorithm_oid(cert_der)?;
    const SHA384: [&[u8]; 2] =
        [&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]];
    const SHA512: [&[u8]; 2] =
        [&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04]];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    const ED448: &[u8] = &[0x2b, 0x65, 0x71];
    if algorithm == ED25519 || algorithm == ED448 {
        None
    } else if SHA384.contains(&algorithm) {
        Some(sha2::Sha384::digest(cert_der).to_vec())
    } else if SHA512.contains(&algorithm) {
        Some(sha2::Sha512::digest(cert_der).to_vec())
    } else {
        Some(sha2::Sha256::digest(cert_der).to_vec())
    }
}

/// The OID of `Certificate.signatureAlgorithm`: SEQUENCE { tbsCertificate, signatureAlgorithm
/// SEQUENCE { OID, ... }, signature }. Just enough DER to find it.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(der, 0x30)?;
    let (_tbs, rest) = der_element(certificate, 0x30)?;
    let (algorithm, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    Some(oid)
}

/// Splits one DER element with the expected tag into (contents, remainder).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (length, &rest[count..])
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walk_finds_the_signature_algorithm() {
        // A minimal shape: SEQ { SEQ {}, SEQ { OID 1.2.840.10045.4.3.3 }, BIT STRING }.
        let cert = [
            0x30, 0x10, 0x30, 0x00, 0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03, 0x03, 0x00,
        ];
        assert_eq!(signature_algorithm_oid(&cert), Some(&cert[8..16]));
        assert_eq!(server_end_point_hash(&cert).map(|h| h.len()), Some(48));
        assert!(signature_algorithm_oid(&cert[..5]).is_none());
    }
}
