//! Databricks: the workspace login (the SDKs' unified auth), the REST client, and the Lakebase
//! calls the proxy needs. Nothing here knows about PostgreSQL connections.

pub mod auth;
pub mod client;
pub mod config;
pub mod lakebase;
pub mod workspace;

pub use client::{ApiClient, ApiError};
pub use config::{WorkspaceConfig, WorkspaceFlags};
pub use lakebase::{CredentialScope, LakebaseSource, ResolvedResource, Resource};
pub use workspace::Workspace;
