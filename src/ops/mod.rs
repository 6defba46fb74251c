//! Operations: Prometheus metrics, the HTTP admin listener (metrics and Kubernetes-style
//! probes), and the process's health state.

pub mod health;
pub mod http;
pub mod metrics;
pub mod view;
