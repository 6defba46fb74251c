//! What the workspace's tests share, so each piece exists once: the tests and benchmarks of
//! lakebase-proxy and the tests of fake-lakebase all use this crate rather than keeping copies
//! that drift apart.
//!
//! - [`postgres`]: a throwaway PostgreSQL cluster, tied to the test process's life.
//! - [`pki`]: the one test certificate authority (fake-lakebase signs its own server
//!   certificates with it at run time too, which is why this crate is one of its dependencies).
//! - [`wire`]: PostgreSQL frontend/backend messages built and read by hand, for tests that must
//!   send what a driver would not (or see what a driver hides).
//! - [`tls`]: a rustls client trusting only a test CA, and the SSLRequest-then-TLS connect.
//! - [`net`]: free TCP ports.
//! - [`wait`]: polling for a condition, with a bound.
//!
//! It depends on external crates only (not on lakebase-proxy, not on fake-lakebase), so it
//! sits below both without a dependency cycle, and its wire encoders are written from the
//! protocol documentation, not taken from the proxy: a test of the proxy's parser against the
//! proxy's own encoder could not catch a bug they share.

#![warn(missing_docs)]

pub mod net;
pub mod pki;
pub mod postgres;
pub mod tls;
pub mod wait;
pub mod wire;
