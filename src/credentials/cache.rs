use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tracing::{debug, warn};

use super::{Credential, CredentialError, CredentialSource, Secret};

/// When cached credentials are refreshed and when they stop being used.
#[derive(Debug, Clone, Copy)]
pub struct RefreshPolicy {
    /// Lifetime assumed for credentials whose source gives no expiry (`--password-ttl`).
    pub assumed_lifetime: Duration,
    /// Stop presenting a credential with a known expiry this long before it.
    pub expiry_margin: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy { assumed_lifetime: Duration::from_secs(600), expiry_margin: Duration::from_secs(30) }
    }
}

/// Background refreshes start after this share of a credential's lifetime (plus up to
/// `REFRESH_JITTER`), leaving time to retry before anyone needs a new one.
const REFRESH_AT: f64 = 0.75;
const REFRESH_JITTER: f64 = 0.1;
/// Background wake-ups are capped so a wall-clock jump (a laptop waking up) is noticed soon:
/// tokio's timers run on the monotonic clock, which stands still during suspend.
const MAX_SLEEP: Duration = Duration::from_secs(30);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

struct Cached {
    credential: Credential,
    fetched_at: SystemTime,
    refresh_at: SystemTime,
    /// After this a client waits for a fetch rather than get this credential.
    stale_at: SystemTime,
}

#[derive(Default)]
struct CacheState {
    current: Option<Cached>,
    /// Successful fetches so far; lets a waiter see that someone else already refreshed.
    generation: u64,
    last_error: Option<CredentialError>,
}

/// A credential source with a cache in front: refreshed ahead of need in the background,
/// fetched at most once at a time, and checked against the wall clock at every use.
pub struct CredentialCache {
    source: Box<dyn CredentialSource>,
    policy: RefreshPolicy,
    state: Mutex<CacheState>,
    fetch_lock: tokio::sync::Mutex<()>,
}

impl CredentialCache {
    /// A cache over `source`; call [`CredentialCache::spawn_refresher`] to keep it warm.
    pub fn new(source: Box<dyn CredentialSource>, policy: RefreshPolicy) -> Arc<CredentialCache> {
        Arc::new(CredentialCache { source, policy, state: Mutex::default(), fetch_lock: tokio::sync::Mutex::new(()) })
    }

    /// What the source is, for logs and errors.
    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// A credential that is valid now, fetching one only when the cache holds none.
    pub async fn get(&self) -> Result<Secret, CredentialError> {
        let generation = {
            let state = self.state.lock().unwrap();
            match &state.current {
                Some(cached) if SystemTime::now() < cached.stale_at => {
                    return Ok(cached.credential.secret.clone());
                }
                _ => state.generation,
            }
        };
        self.refresh(generation).await
    }

    /// Fetches a new credential unless another fetch succeeded since `seen_generation`.
    /// When fetching fails, a credential whose expiry is unknown is still handed out: it may
    /// well work, and failing every client would be worse.
    async fn refresh(&self, seen_generation: u64) -> Result<Secret, CredentialError> {
        let _single_flight = self.fetch_lock.lock().await;
        if let Some(secret) = self.current_if_newer_than(seen_generation) {
            return Ok(secret);
        }
        let result = self.source.fetch().await;
        crate::metrics::credential_refresh(&self.source.describe(), result.is_ok());
        let now = SystemTime::now();
        let mut state = self.state.lock().unwrap();
        match result {
            Ok(credential) => {
                debug!(source = %self.source.describe(), expires_at = ?credential.expires_at, "credential fetched");
                let secret = credential.secret.clone();
                state.current = Some(self.schedule(credential, now));
                state.generation += 1;
                state.last_error = None;
                Ok(secret)
            }
            Err(error) => {
                state.last_error = Some(error.clone());
                match &state.current {
                    Some(cached) if cached.credential.expires_at.is_none() => {
                        warn!(source = %self.source.describe(), %error, "refresh failed; still using the previous password");
                        Ok(cached.credential.secret.clone())
                    }
                    _ => Err(error),
                }
            }
        }
    }

    fn current_if_newer_than(&self, generation: u64) -> Option<Secret> {
        let state = self.state.lock().unwrap();
        let cached = state.current.as_ref()?;
        (state.generation != generation && SystemTime::now() < cached.stale_at)
            .then(|| cached.credential.secret.clone())
    }

    fn schedule(&self, credential: Credential, now: SystemTime) -> Cached {
        let stale_at = match credential.expires_at {
            Some(expiry) => expiry.checked_sub(self.policy.expiry_margin).unwrap_or(expiry),
            None => now + self.policy.assumed_lifetime,
        };
        let lifetime = stale_at.duration_since(now).unwrap_or_default();
        let share = REFRESH_AT + rand::rng().random_range(0.0..REFRESH_JITTER);
        Cached { credential, fetched_at: now, refresh_at: now + lifetime.mul_f64(share), stale_at }
    }

    /// Keeps the cache warm until the returned task is aborted: fetches now, then again ahead
    /// of each credential's expiry, backing off (with jitter) while the source fails.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = BACKOFF_START;
            loop {
                let (due, generation) = {
                    let state = cache.state.lock().unwrap();
                    (state.current.as_ref().map(|c| c.refresh_at), state.generation)
                };
                let wait = due.and_then(|due| due.duration_since(SystemTime::now()).ok()).unwrap_or_default();
                if !wait.is_zero() {
                    tokio::time::sleep(wait.min(MAX_SLEEP)).await;
                    continue;
                }
                if cache.refresh(generation).await.is_ok() && cache.state.lock().unwrap().last_error.is_none() {
                    backoff = BACKOFF_START;
                } else {
                    let jittered = backoff.mul_f64(rand::rng().random_range(0.8..1.2));
                    warn!(source = %cache.describe(), retry_in = ?jittered, "credential refresh failed");
                    tokio::time::sleep(jittered).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        })
    }

    /// Whether a credential that may be presented now is at hand.
    pub fn has_usable_credential(&self) -> bool {
        let state = self.state.lock().unwrap();
        state.current.as_ref().is_some_and(|cached| match cached.credential.expires_at {
            Some(_) => SystemTime::now() < cached.stale_at,
            // Without a known expiry the last one is used even when a refresh failed.
            None => true,
        })
    }

    /// A snapshot for status reports; never includes the secret.
    pub fn status(&self) -> CredentialStatus {
        let state = self.state.lock().unwrap();
        CredentialStatus {
            fetched_at: state.current.as_ref().map(|c| c.fetched_at),
            expires_at: state.current.as_ref().and_then(|c| c.credential.expires_at),
            fetches: state.generation,
            last_error: state.last_error.as_ref().map(ToString::to_string),
        }
    }
}

/// What a cache can say about itself without revealing its secret.
#[derive(Debug, Clone)]
pub struct CredentialStatus {
    /// When the current credential was fetched.
    pub fetched_at: Option<SystemTime>,
    /// When it expires, if known.
    pub expires_at: Option<SystemTime>,
    /// Successful fetches so far.
    pub fetches: u64,
    /// The last fetch's error, if it failed.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::BoxFuture;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts fetches, optionally failing and optionally reporting an expiry.
    struct Counting {
        calls: Arc<AtomicU32>,
        fail: bool,
        lifetime: Option<Duration>,
    }

    impl CredentialSource for Counting {
        fn describe(&self) -> String {
            "counting source".into()
        }
        fn fetch(&self) -> BoxFuture<'_, Result<Credential, CredentialError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::task::yield_now().await;
                if self.fail {
                    return Err(CredentialError::Unavailable("down".into()));
                }
                Ok(Credential {
                    secret: Secret::new(format!("pw-{n}")),
                    expires_at: self.lifetime.map(|l| SystemTime::now() + l),
                })
            })
        }
    }

    fn cache(fail: bool, lifetime: Option<Duration>) -> (Arc<CredentialCache>, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let source = Counting { calls: calls.clone(), fail, lifetime };
        (CredentialCache::new(Box::new(source), RefreshPolicy::default()), calls)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_use_fetches_once() {
        let (cache, calls) = cache(false, None);
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                tokio::spawn({
                    let cache = cache.clone();
                    async move { cache.get().await.unwrap() }
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().expose(), "pw-1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_credential_near_expiry_is_not_handed_out() {
        // Expires within the 30 s margin: every use must fetch anew.
        let (cache, calls) = cache(false, Some(Duration::from_secs(10)));
        assert_eq!(cache.get().await.unwrap().expose(), "pw-1");
        assert_eq!(cache.get().await.unwrap().expose(), "pw-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_surface_when_nothing_is_cached() {
        let (cache, _) = cache(true, None);
        assert!(matches!(cache.get().await, Err(CredentialError::Unavailable(_))));
        assert_eq!(cache.status().last_error.as_deref(), Some("down"));
    }

    #[tokio::test(start_paused = true)]
    async fn background_retries_back_off_exponentially() {
        let (cache, calls) = cache(true, None);
        let refresher = cache.spawn_refresher();
        // Attempts at about 0, 1, 3, 7 and 15 s (each wait doubling, jittered by 20%).
        let mut seen = Vec::new();
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen.push(calls.load(Ordering::SeqCst));
        }
        refresher.abort();
        let first_second_with = |n: u32| seen.iter().position(|&c| c >= n).map(|i| (i + 1) as f64 / 10.0);
        assert_eq!(first_second_with(1), Some(0.1));
        let second = first_second_with(2).unwrap();
        let third = first_second_with(3).unwrap();
        let fourth = first_second_with(4).unwrap();
        assert!((0.8..=1.3).contains(&second), "{second}");
        assert!((2.4..=3.8).contains(&third), "{third}");
        assert!((5.6..=8.8).contains(&fourth), "{fourth}");
        assert!(calls.load(Ordering::SeqCst) <= 6, "no retry storm");
    }

    #[test]
    fn refresh_is_scheduled_ahead_of_staleness() {
        let (cache, _) = cache(false, None);
        let now = SystemTime::now();
        let cached = cache
            .schedule(Credential { secret: Secret::new("x"), expires_at: Some(now + Duration::from_secs(3600)) }, now);
        let refresh_in = cached.refresh_at.duration_since(now).unwrap().as_secs_f64();
        let stale_in = cached.stale_at.duration_since(now).unwrap().as_secs_f64();
        assert_eq!(stale_in, 3570.0);
        assert!((0.75 * 3570.0..=0.85 * 3570.0).contains(&refresh_in), "{refresh_in}");
    }
}
