//! Waiting for something a test cannot be told about (a background reset, a listener that
//! appears, a log line): poll, and fail with a useful message after a bound, never hang.

use std::time::{Duration, Instant};

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(20);

/// Checks `done` until it holds, sleeping between checks; panics with `why()` once `timeout`
/// has passed.
pub fn until(timeout: Duration, mut done: impl FnMut() -> bool, why: impl FnOnce() -> String) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(POLL);
    }
}

/// [`until`] on a tokio runtime: the sleeps do not block the thread.
pub async fn until_async(timeout: Duration, mut done: impl FnMut() -> bool, why: impl FnOnce() -> String) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        tokio::time::sleep(POLL).await;
    }
}
