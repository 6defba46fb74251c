//! Places under a pool's size limit, and the queue of clients waiting for one.
//!
//! A [`Slot`] is an owned place: held by a connection being opened, lent to a client, or being
//! reset. Dropping it (a checkout or fill whose future was dropped half-way, a failed login, a
//! connection closed) gives the place back by itself, so no path can leak one. A freed place,
//! or a connection going idle, is handed straight to the longest-waiting client; a newcomer
//! never barges past a woken waiter, and idle connections exist only while nobody waits.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Idle, Pool};
use crate::protocol::StartupParams;

#[derive(Default)]
pub(super) struct PoolState {
    /// Idle connections, most recently used last. Not empty only while nobody waits.
    pub(super) idle: Vec<Idle>,
    /// Places held by [`Slot`]s: connections opening, lent, or resetting.
    pub(super) busy: usize,
    /// Clients waiting for a place, oldest first.
    pub(super) waiters: VecDeque<Waiter>,
    next_waiter: u64,
}

pub(super) struct Waiter {
    id: u64,
    handoff: oneshot::Sender<Grant>,
}

/// What a waiting client is handed: a place, with the connection that freed it if that one is
/// reusable (the waiter decides whether it fits).
pub(super) struct Grant {
    pub(super) slot: Slot,
    pub(super) connection: Option<Idle>,
}

/// One place under the pool's size limit; dropping it gives the place back.
pub(super) struct Slot {
    pool: Option<Arc<Pool>>,
}

impl Slot {
    /// Puts `idle` in the pool (or in the hands of the oldest waiter) with this place.
    pub(super) fn into_idle(mut self, idle: Idle) {
        let pool = self.pool.take().expect("a slot is given back once");
        pool.give_back(Some(idle));
    }

    /// The pool the place belongs to.
    pub(super) fn pool(&self) -> &Arc<Pool> {
        self.pool.as_ref().expect("a slot holds its pool until given back")
    }

    /// Forgets the place without giving it back: it passes on to someone else as it is.
    fn disarm(mut self) {
        self.pool = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(None);
        }
    }
}

/// What a pool has for a client right now.
// Lives for one match on the checkout's stack; boxing the connection would cost an
// allocation per checkout for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Admission {
    /// A place, with an idle connection opened with parameters the client's include (to take
    /// as it is or adjust), or none (open one).
    Now(Slot, Option<Idle>),
    /// Wait for a [`Grant`].
    Queued(Queued),
}

/// A place in the queue; dropping it leaves the queue.
pub(super) struct Queued {
    pool: Arc<Pool>,
    id: u64,
    /// Where the grant arrives.
    pub(super) handoff: oneshot::Receiver<Grant>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock().unwrap();
        // Waiters are queued in id order; one that was served is not there any more.
        if let Ok(index) = state.waiters.binary_search_by_key(&self.id, |waiter| waiter.id) {
            state.waiters.remove(index);
        }
        drop(state);
        // A grant sent before the receiver closed drops here and gives its place back.
        self.handoff.close();
    }
}

impl Pool {
    /// Reserves a place for a client asking for `params`: an idle connection that already
    /// carries them (most recently used first), else one opened with a subset of them, else a
    /// free place; when the pool is full of connections opened for other parameters, the
    /// oldest is closed to make room. Otherwise the client joins the queue.
    pub(super) fn admit(self: &Arc<Self>, params: &StartupParams) -> Admission {
        let mut state = self.state.lock().unwrap();
        if state.waiters.is_empty() {
            if let Some(idle) = take_idle(&mut state.idle, params) {
                state.busy += 1;
                return Admission::Now(self.slot(), Some(idle));
            }
            if state.idle.len() + state.busy < self.upstream.max_pool_size() {
                state.busy += 1;
                return Admission::Now(self.slot(), None);
            }
            if !state.idle.is_empty() {
                // The place passes from the closed connection to the one about to be opened.
                let victim = state.idle.remove(0);
                tracing::debug!(
                    connection = victim.connection.id(),
                    "closing an idle connection opened for other settings"
                );
                state.busy += 1;
                return Admission::Now(self.slot(), None);
            }
        }
        let (handoff, receiver) = oneshot::channel();
        let id = state.next_waiter;
        state.next_waiter += 1;
        state.waiters.push_back(Waiter { id, handoff });
        Admission::Queued(Queued { pool: self.clone(), id, handoff: receiver })
    }

    /// With a place already held, takes another idle connection fit for `params`, if any.
    pub(super) fn take_idle(&self, params: &StartupParams) -> Option<Idle> {
        take_idle(&mut self.state.lock().unwrap().idle, params)
    }

    /// Reserves a place for a warm connection if the pool has fewer than `target` idle ones,
    /// room, and nobody waiting.
    pub(super) fn reserve_for_fill(self: &Arc<Self>, target: usize) -> Option<Slot> {
        let mut state = self.state.lock().unwrap();
        let full = state.idle.len() + state.busy >= self.upstream.max_pool_size();
        if state.idle.len() >= target || full || !state.waiters.is_empty() {
            return None;
        }
        state.busy += 1;
        Some(self.slot())
    }

    /// Hands the room a pool has beyond its places in use to waiting clients, oldest first
    /// (after its limit grew).
    pub(super) fn serve_waiters(self: &Arc<Self>) {
        loop {
            {
                let mut state = self.state.lock().unwrap();
                if state.waiters.is_empty() || state.idle.len() + state.busy >= self.upstream.max_pool_size() {
                    return;
                }
                state.busy += 1;
            }
            // The new place goes to the oldest waiter, or is freed again if none is left.
            self.give_back(None);
        }
    }

    fn slot(self: &Arc<Self>) -> Slot {
        Slot { pool: Some(self.clone()) }
    }

    /// A place comes back, with an idle connection or without: the oldest waiter gets both,
    /// else the connection goes idle and the place is freed.
    fn give_back(self: &Arc<Self>, mut connection: Option<Idle>) {
        loop {
            let waiter = {
                let mut state = self.state.lock().unwrap();
                match state.waiters.pop_front() {
                    Some(waiter) => waiter,
                    None => {
                        state.busy -= 1;
                        state.idle.extend(connection);
                        return;
                    }
                }
            };
            // Sent outside the lock: a grant that cannot be delivered must not give its place
            // back (that would take the lock again); it goes to the next waiter instead.
            match waiter.handoff.send(Grant { slot: self.slot(), connection }) {
                Ok(()) => return,
                Err(undelivered) => {
                    connection = undelivered.connection;
                    undelivered.slot.disarm();
                }
            }
        }
    }
}

/// Removes and returns the idle connection that suits `params` best: opened with exactly them
/// (or carrying them now), else opened with a subset of them.
fn take_idle(idle: &mut Vec<Idle>, params: &StartupParams) -> Option<Idle> {
    let exact = idle.iter().rposition(|p| same_params(p.connection.settings(), params));
    let index = exact.or_else(|| idle.iter().rposition(|p| is_subset(p.connection.startup_params(), params)))?;
    Some(idle.remove(index))
}

/// Whether a connection carrying `carried` serves a client asking for `wanted` as it is.
pub(super) fn same_params(carried: &StartupParams, wanted: &StartupParams) -> bool {
    carried.iter().count() == wanted.iter().count() && is_subset(carried, wanted)
}

/// Whether a connection opened with `opened_with` can be brought to `wanted` with SETs.
pub(super) fn is_subset(opened_with: &StartupParams, wanted: &StartupParams) -> bool {
    opened_with.iter().all(|(name, value)| wanted.get(name) == Some(value))
}
