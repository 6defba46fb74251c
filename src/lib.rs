//! lakebase-proxy: a local PostgreSQL endpoint that logs in upstream over verified TLS with
//! credentials it keeps fresh, and pools the upstream connections.
//!
//! Layers, from the wire up, each using only those before it (`scripts/check-layers.py`
//! enforces it): [`protocol`] (framing, the named codes, the few messages the proxy reads or
//! writes), [`sql`] (what a statement does to session state), [`tls`] and [`metrics`];
//! [`credentials`] (password sources and their cache) and [`databricks`]; [`target`] and
//! [`config`]; [`upstream`] (connect, TLS, login, the server connection and what it owes,
//! behind the [`upstream::Connect`] trait); [`pool`]; [`relay`] (moving messages both ways);
//! [`client`] (listeners, handshake, the session's phases) and [`cancel`]; [`ops`];
//! [`proxy`] wires a [`config::Config`] (built by [`cli`]) into running listeners.

#![warn(missing_docs)]

pub mod cancel;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod config_file;
pub mod credentials;
pub mod databricks;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod relay;
pub mod resolve;
pub mod shutdown;
pub mod sql;
pub mod target;
pub mod tls;
pub mod upstream;
