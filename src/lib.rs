//! lakebase-proxy
pub mod credentials;
pub mod error;
pub mod protocol;
pub mod relay;
pub mod target;
pub mod tls;
pub mod upstream;
