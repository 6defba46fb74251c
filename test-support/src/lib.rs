//! What the workspace's tests share, so each piece exists once: the tests and benchmarks of
//! lakebase-proxy and the tests of fake-lakebase all use this crate rather than keeping copies
//! that drift apart.
//!
//! - [`postgres`]: a throwaway PostgreSQL cluster, tied to the test process's life.
//! - [`pki`]: the one test certificate authority (fake-lakebase signs its own server
//!   certificates with it at run time too, which is why this crate is one of its dependencies).
//! - [`net`]: free TCP ports.
//!
//! It depends on external crates only (not on lakebase-proxy, not on fake-lakebase), so it
//! sits below both without a dependency cycle.

#![warn(missing_docs)]

pub mod net;
pub mod pki;
pub mod postgres;
