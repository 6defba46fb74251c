//! Upstream passwords: where they come from and how they are kept fresh.
//!
//! Every source implements [`CredentialSource`]; a [`CredentialCache`] in front of it refreshes
//! ahead of expiry in the background, so a client only ever waits for a fetch when no valid
//! password is at hand (first use, or after the machine slept through a refresh).

mod cache;
mod command;
mod file;
mod secret;

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

pub use cache::{CredentialCache, RefreshPolicy};
pub use command::CommandSource;
pub use file::FileSource;
pub use secret::Secret;

/// A password (or token used as one) and, when the source knows it, when it stops working.
#[derive(Clone, Debug)]
pub struct Credential {
    /// The secret itself.
    pub secret: Secret,
    /// When the upstream stops accepting it; `None` when the source cannot tell.
    pub expires_at: Option<SystemTime>,
}

/// Why a credential could not be obtained. Messages never contain the secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    /// The source failed in a way that may pass (I/O, a command's failure, an API's 5xx).
    #[error("{0}")]
    Unavailable(String),
    /// The source refused, and asking again will not help until someone acts.
    #[error("{0}")]
    Refused(String),
}

/// A boxed future, so sources can be held as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that can produce a fresh credential.
pub trait CredentialSource: Send + Sync + 'static {
    /// A short description for logs and errors, e.g. `password file /run/secrets/pg`.
    fn describe(&self) -> String;
    /// Fetches a fresh credential.
    fn fetch(&self) -> BoxFuture<'_, Result<Credential, CredentialError>>;
}
