//! Draining shutdown: sessions learn that the proxy is stopping and by when they must be gone.

use tokio::sync::watch;
use tokio::time::Instant;

/// The sending side, held by the proxy.
pub struct ShutdownTrigger(watch::Sender<Option<Instant>>);

/// The receiving side, cloned into every session.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<Option<Instant>>);

/// A connected trigger and receiver.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(None);
    (ShutdownTrigger(sender), Shutdown(receiver))
}

impl ShutdownTrigger {
    /// Asks every session to finish by `deadline`.
    pub fn begin(&self, deadline: Instant) {
        let _ = self.0.send(Some(deadline));
    }
}

impl Shutdown {
    /// Resolves with the deadline once a shutdown has begun; never if the proxy is dropped
    /// without one.
    pub async fn requested(&mut self) -> Instant {
        // The borrow guard must be gone before any further await.
        let deadline = self.0.wait_for(Option::is_some).await.ok().and_then(|deadline| *deadline);
        match deadline {
            Some(deadline) => deadline,
            None => std::future::pending().await,
        }
    }
}
