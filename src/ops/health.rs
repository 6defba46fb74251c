//! What the probes report: started, ready, draining; and the shutdown request a neighbouring
//! container can make.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::view::ProxyView;

/// Shared health state of the process.
#[derive(Default)]
pub struct Health {
    view: Mutex<Option<Arc<ProxyView>>>,
    draining: AtomicBool,
    quit: Notify,
}

impl Health {
    /// A new, not yet started, state.
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// Marks the proxy started: listeners bound, targets resolved.
    pub fn set_started(&self, view: Arc<ProxyView>) {
        *self.view.lock().unwrap() = Some(view);
    }

    /// Marks the proxy as shutting down: no longer ready.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The running proxy, once started.
    pub fn view(&self) -> Option<Arc<ProxyView>> {
        self.view.lock().unwrap().clone()
    }

    /// `/startup`: the proxy finished starting (it may be draining since).
    pub fn started(&self) -> bool {
        self.view().is_some()
    }

    /// `/readiness`: `Ok` when new clients would be served now, else why not.
    pub fn ready(&self) -> Result<(), String> {
        let observed = self.view().ok_or("starting")?;
        if self.draining.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        if observed.client_slots.available_permits() == 0 {
            return Err("--max-client-connections reached".into());
        }
        for cache in &observed.caches() {
            if !cache.has_usable_credential() {
                let error = cache.status().last_error.unwrap_or_else(|| "not fetched yet".into());
                return Err(format!("no usable credential from {}: {error}", cache.describe()));
            }
        }
        Ok(())
    }

    /// Asks the process to shut down gracefully (`POST /quitquitquit`).
    pub fn request_quit(&self) {
        self.quit.notify_one();
    }

    /// Resolves when a shutdown was requested over HTTP.
    pub async fn quit_requested(&self) {
        self.quit.notified().await
    }
}
