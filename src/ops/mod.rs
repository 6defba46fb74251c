//! Operations: the HTTP admin listener (Prometheus metrics and Kubernetes-style probes), the
//! process's health state, and the read-only view of the proxy they and the admin console show.

pub mod health;
pub mod http;
pub mod view;
