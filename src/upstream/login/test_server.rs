//! The server side of a SCRAM-SHA-256 exchange (RFC 5802, RFC 7677), for the login tests: real
//! server-first and server-final messages, and the checks a server makes of the client's
//! channel binding and proof, so a test exercises the client's whole exchange.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Appended to the client's nonce; any printable text without commas will do.
const SERVER_NONCE: &str = "3rfcNHYJY1ZVvWVs7j";

/// The role's salt, as PostgreSQL stores it beside the keys.
const SALT: &[u8] = b"lakebase-salt-16";

/// Fewer rounds than PostgreSQL's default 4096 (the count is the server's choice): unoptimised
/// test builds take about 90 ms for 4096 on each side, and the tests run a dozen exchanges.
const ITERATIONS: u32 = 64;

/// One exchange, server side.
pub(super) struct ScramServer {
    /// Base64, as it goes in server-first.
    salt: String,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    /// The tls-server-end-point hash of the certificate this server presents.
    certificate_hash: Option<Vec<u8>>,
    /// Set by [`ScramServer::first`]: the client's GS2 header, the combined nonce and the
    /// AuthMessage so far (client-first-bare, server-first).
    gs2_header: String,
    nonce: String,
    transcript: String,
}

impl ScramServer {
    /// A server whose role has `password` (ASCII, which SASLprep leaves alone), stored as
    /// PostgreSQL stores it: salt, iterations, StoredKey and ServerKey.
    pub(super) fn new(password: &str, certificate_hash: Option<Vec<u8>>) -> ScramServer {
        let salted_password = hi(password.as_bytes(), SALT, ITERATIONS);
        let client_key = hmac(&salted_password, b"Client Key");
        ScramServer {
            salt: STANDARD.encode(SALT),
            iterations: ITERATIONS,
            stored_key: Sha256::digest(&client_key).to_vec(),
            server_key: hmac(&salted_password, b"Server Key"),
            certificate_hash,
            gs2_header: String::new(),
            nonce: String::new(),
            transcript: String::new(),
        }
    }

    /// The GS2 header the client sent: `n,,`, `y,,` or `p=tls-server-end-point,,`.
    pub(super) fn gs2_header(&self) -> &str {
        &self.gs2_header
    }

    /// Answers client-first with server-first: the nonce extended, the salt, the iterations.
    pub(super) fn first(&mut self, client_first: &str) -> String {
        // gs2-header = cbind-flag "," [authzid] ","; the client sends no authzid.
        let header_len = client_first.match_indices(',').nth(1).expect("a GS2 header").0 + 1;
        let (header, bare) = client_first.split_at(header_len);
        let client_nonce = attribute(bare, "r=").expect("a client nonce");
        self.gs2_header = header.to_owned();
        self.nonce = format!("{client_nonce}{SERVER_NONCE}");
        let server_first = format!("r={},s={},i={}", self.nonce, self.salt, self.iterations);
        self.transcript = format!("{bare},{server_first}");
        server_first
    }

    /// Checks client-final (channel binding, nonce, proof) and answers server-final with this
    /// server's signature; the error says what a real server would refuse.
    pub(super) fn last(&self, client_final: &str) -> Result<String, &'static str> {
        let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or("no proof")?;
        let mut binding = self.gs2_header.as_bytes().to_vec();
        if self.gs2_header.starts_with("p=") {
            binding.extend(self.certificate_hash.as_ref().ok_or("binding without a certificate")?);
        }
        if attribute(without_proof, "c=") != Some(STANDARD.encode(binding).as_str()) {
            return Err("channel binding mismatch");
        }
        if attribute(without_proof, "r=") != Some(self.nonce.as_str()) {
            return Err("nonce mismatch");
        }
        let auth_message = format!("{},{without_proof}", self.transcript);
        // ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage), and StoredKey = H(ClientKey).
        let proof = STANDARD.decode(proof).map_err(|_| "proof is not base64")?;
        let signature = hmac(&self.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if Sha256::digest(&client_key).as_slice() != self.stored_key {
            return Err("wrong proof");
        }
        Ok(format!("v={}", STANDARD.encode(hmac(&self.server_key, auth_message.as_bytes()))))
    }
}

fn attribute<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.split(',').find_map(|attribute| attribute.strip_prefix(prefix))
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Hi() of RFC 5802: PBKDF2 with HMAC-SHA-256 and one output block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut block = hmac(password, &[salt, &1u32.to_be_bytes()].concat());
    let mut result = block.clone();
    for _ in 1..iterations {
        block = hmac(password, &block);
        result.iter_mut().zip(&block).for_each(|(r, b)| *r ^= b);
    }
    result
}
