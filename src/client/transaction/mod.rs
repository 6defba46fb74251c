//! Transaction mode: a client holds a server connection only from the first message of a
//! transaction (or of a statement outside one) to the ReadyForQuery that ends it idle with
//! nothing in flight; in between it holds nothing upstream.
//!
//! The session is a loop of two phases: idle (greeted from the pool's cached parameters,
//! waiting for the client's next bytes, no server connection) and attached (a checkout, then
//! the relay with a [`TransactionHook`] until the session is idle again, then the connection
//! goes back to the pool as it is, statements and settings kept). A client whose SQL ties it
//! to its server (LISTEN, SQL PREPARE, session advisory locks, temporary tables, WITH HOLD
//! cursors, SET) is pinned: it keeps that connection until it leaves, and the connection is
//! reset before anyone else gets it.

mod hook;
mod names;
mod settings;
mod view;

use std::future::Future;
use std::sync::Arc;

use bytes::BytesMut;
use tracing::debug;

use super::ClientStream;
use super::error::{SessionEnd, SessionError};
use super::phases::{TargetContext, checkout_with_notice, greet_from_cache, write_flush};
use super::request::SessionRequest;
use crate::cancel::{CancelRoute, CancelWait};
use crate::metrics;
use crate::ops::view::ClientEntry;
use crate::pool::{Lease, Pool};
use crate::protocol::frame::{FrameHeader, HEADER_LEN};
use crate::protocol::messages::{ErrorFields, Severity};
use crate::protocol::{CancelKey, TransactionStatus, backend, frontend, messages, sqlstate};
use crate::relay::{Relay, RelayEnd};
use hook::TransactionHook;
use view::ParamView;

/// Serves a transaction-mode client after its login, greeting it from the pool's cached
/// parameters (or, for the pool's first client, from a connection it checks out first).
pub(super) async fn serve(
    client: &mut ClientStream,
    id: u64,
    request: &SessionRequest,
    early: BytesMut,
    pool: &Arc<Pool>,
    ctx: &TargetContext,
    entry: &ClientEntry,
) -> Result<SessionEnd, SessionError> {
    let mut lease = None;
    let mut authenticated = false;
    let greeting = match pool.greeting() {
        Some(greeting) => greeting,
        None => {
            let mut owed = BytesMut::new();
            request.write_authentication(&mut owed);
            let mut first = Box::pin(checkout_with_notice(client, pool, &request.params, entry, &mut owed)).await?;
            // A slow checkout sent AuthenticationOk ahead of its notice.
            authenticated = owed.is_empty();
            let params = first.connection().server_params().into();
            lease = Some(first);
            params
        }
    };
    // Boxed, as every phase but waiting: the session's task then holds only what an idle
    // client needs (the phases' futures take kilobytes, and only one runs at a time).
    let (key, greeted) = Box::pin(greet_from_cache(client, request, &greeting, !authenticated)).await?;
    let mut view = ParamView::new(greeting, &greeted);
    drop(greeted);
    let hook = TransactionHook::new(id, pool.clone(), request.params.clone(), entry.handle());
    let mut relay = Relay::with_hook(hook);
    let mut pending = early;
    let mut shutdown = ctx.shutdown.clone();
    let ended = async {
        loop {
            if lease.is_none() && pending.is_empty() {
                entry.update(|info| {
                    info.state = "idle";
                    info.upstream_pid = None;
                });
                pending = tokio::select! {
                    read = client.read_some() => read.map_err(SessionError::ClientIo)?,
                    // An idle client holds nothing worth waiting for.
                    _ = shutdown.requested() => return Err(SessionError::ShuttingDown),
                };
                if pending.first().is_none_or(|&tag| tag == frontend::TERMINATE) {
                    return Ok(SessionEnd::ClientDone);
                }
                if pool.would_wait()
                    && let Some(answer) = answer_without_server(relay.hook(), &pending)
                {
                    write_flush(client, &answer).await?;
                    pending = BytesMut::new();
                    continue;
                }
            }
            let mut lease = match lease.take() {
                Some(lease) => lease,
                None => {
                    let wanted = relay.hook().settings.wanted().clone();
                    let mut owed = BytesMut::new();
                    let checkout = Box::pin(checkout_with_notice(client, pool, &wanted, entry, &mut owed));
                    // A client that will wait can cancel what it waits with.
                    let waits = pool.would_wait().then(|| ctx.cancels.waiting(key));
                    match cancellable(checkout, waits.as_ref(), &pending).await {
                        Ok(lease) => lease?,
                        Err((answer, consumed)) => {
                            // The client cancelled what it waits with: answered, never run.
                            write_flush(client, &answer).await?;
                            let _ = pending.split_to(consumed);
                            continue;
                        }
                    }
                }
            };
            Box::pin(tell_changed_parameters(client, &mut lease, &mut view)).await?;
            relay.hook().names.attached();
            let (end, stopping) = Box::pin(attach(client, &mut relay, &mut lease, key, &pending, ctx, entry)).await?;
            // Nothing kept between transactions that an idle client does not need.
            pending = BytesMut::new();
            relay.release_buffers();
            let pinned = relay.hook().pinned();
            match end {
                RelayEnd::Idle if !stopping && pinned.is_none() => {
                    // What the client was told of the server's parameters is what it reported.
                    view.update(lease.connection().server_params());
                    release_shared(lease, relay.hook());
                }
                RelayEnd::Idle => {
                    lease.release(true);
                    return Err(SessionError::ShuttingDown);
                }
                RelayEnd::ClientTerminated | RelayEnd::ClientGone(_) => {
                    if pinned.is_some() {
                        lease.release(true)
                    } else {
                        release_shared(lease, relay.hook())
                    }
                    return Ok(SessionEnd::ClientDone);
                }
                RelayEnd::UpstreamGone(error) => {
                    let explained = lease.connection().protocol().last_message_type() == backend::ERROR_RESPONSE;
                    lease.release(true);
                    return if explained {
                        Ok(SessionEnd::UpstreamEnded)
                    } else {
                        Err(SessionError::UpstreamLost(error))
                    };
                }
                RelayEnd::ClientProtocolViolation(error) => {
                    lease.release(true);
                    return Err(SessionError::ClientProtocol(error));
                }
                RelayEnd::UpstreamProtocolViolation(error) => {
                    lease.release(true);
                    return Err(SessionError::UpstreamProtocol(error));
                }
            }
        }
    }
    .await;
    // Counted once per session, not per transaction.
    let (to_upstream, to_client, round_trips) = relay.traffic();
    metrics::session_traffic(&ctx.pools.upstream().label, to_upstream, to_client, round_trips);
    ended
}

/// Waits for `checkout`, unless a cancel for the client comes first and its first queued
/// request can be answered as cancelled: then that answer, and how many bytes it consumed.
async fn cancellable<F: Future>(
    checkout: F,
    wait: Option<&CancelWait>,
    queued: &[u8],
) -> Result<F::Output, (BytesMut, usize)> {
    let Some(wait) = wait else { return Ok(checkout.await) };
    tokio::pin!(checkout);
    loop {
        tokio::select! {
            lease = &mut checkout => return Ok(lease),
            () = wait.cancelled() => {
                if let Some(answered) = answer_cancelled(queued) {
                    return Err(answered);
                }
            }
        }
    }
}

/// PostgreSQL's answer to the client's first request (a Query, or a batch up to its Sync)
/// cancelled before it ran: `57014` and ReadyForQuery (the client waits between transactions,
/// so idle). `None` when the bytes hold no whole request.
fn answer_cancelled(queued: &[u8]) -> Option<(BytesMut, usize)> {
    let mut at = 0;
    while let Ok(Some(header)) = FrameHeader::parse(&queued[at..]) {
        at += HEADER_LEN + header.body_len;
        if at > queued.len() {
            return None;
        }
        if matches!(header.tag, frontend::QUERY | frontend::SYNC | frontend::FUNCTION_CALL) {
            let mut answer = BytesMut::new();
            ErrorFields::new(Severity::Error, sqlstate::QUERY_CANCELED, "canceling statement due to user request")
                .write_error(&mut answer);
            messages::ready_for_query(&mut answer, TransactionStatus::Idle);
            return Some((answer, at));
        }
    }
    None
}

/// Gives back a connection that served an unpinned client: as it is, carrying the client's
/// settings (which the next client with the same ones takes without a round trip).
fn release_shared(mut lease: Lease, hook: &mut TransactionHook) {
    let carried = hook.settings.carried(lease.connection().startup_params());
    lease.connection().set_settings(carried);
    lease.release(false);
}

/// Answers a batch of nothing but Parse messages and its Sync (a driver preparing statements
/// before it uses them, such as libpq's `PQprepare`) without a server connection, when none
/// is free: a client that waits for that answer before it does anything else (pgbench, which
/// serves all its clients from one thread) would otherwise stall everyone while the pool is
/// busy. Outside a transaction a Parse changes nothing but the client's names, so the answer
/// is PostgreSQL's, except that an error in the statement itself (its syntax, a missing
/// table) is reported where the statement is first used rather than here. `None` when the
/// bytes are anything else.
fn answer_without_server(hook: &mut TransactionHook, bytes: &[u8]) -> Option<BytesMut> {
    let mut messages_in = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let header = FrameHeader::parse(rest).ok()??;
        let body = rest.get(HEADER_LEN..HEADER_LEN + header.body_len)?;
        messages_in.push((header.tag, body));
        rest = &rest[HEADER_LEN + header.body_len..];
    }
    let only_parses = messages_in.split_last().is_some_and(|((last, _), parses)| {
        *last == frontend::SYNC && !parses.is_empty() && parses.iter().all(|(tag, _)| *tag == frontend::PARSE)
    });
    if !only_parses {
        return None;
    }
    let mut answer = BytesMut::new();
    let mut failed = false;
    for (tag, body) in messages_in {
        if tag == frontend::SYNC {
            hook.names.synced();
            messages::ready_for_query(&mut answer, TransactionStatus::Idle);
        } else if !failed {
            match hook.parse_without_server(body) {
                Ok(()) => answer.extend_from_slice(&hook::reply(backend::PARSE_COMPLETE)),
                Err(error) => {
                    error.write_error(&mut answer);
                    failed = true;
                }
            }
        }
    }
    Some(answer)
}

/// Relays between the client and the leased connection until the session is idle (or ends).
/// Returns how it ended and whether the proxy is shutting down.
async fn attach(
    client: &mut ClientStream,
    relay: &mut Relay<TransactionHook>,
    lease: &mut Lease,
    client_key: CancelKey,
    client_bytes: &[u8],
    ctx: &TargetContext,
    entry: &ClientEntry,
) -> Result<(RelayEnd, bool), SessionError> {
    let connection = lease.connection();
    let server_key = connection.key();
    entry.update(|info| {
        info.state = "active";
        info.upstream_pid = Some(server_key.pid);
    });
    // Cancels reach this connection only while the client has it; a late one finds no route.
    let _cancel_route = ctx.cancels.register(
        client_key,
        CancelRoute {
            connector: ctx.pools.upstream().connector.clone(),
            key: server_key,
            gate: connection.cancel_gate(),
        },
    );
    let leftover = connection.take_leftover();
    relay.preload(connection, client_bytes, &leftover).map_err(SessionError::ClientProtocol)?;
    let mut shutdown = ctx.shutdown.clone();
    let (end, stopping) = tokio::select! {
        end = relay.run(client, connection) => (end, false),
        deadline = shutdown.requested() => {
            // Let the transaction in progress finish, up to the deadline.
            relay.detach_when_idle = true;
            (tokio::time::timeout_at(deadline, relay.run(client, connection)).await.unwrap_or(RelayEnd::Idle), true)
        }
    };
    debug!(?end, "detached");
    Ok((end, stopping))
}

/// Tells the client of parameters whose value on this connection differs from what it was
/// told last, as a server would after a SET.
async fn tell_changed_parameters(
    client: &mut ClientStream,
    lease: &mut Lease,
    view: &mut ParamView,
) -> Result<(), SessionError> {
    let current = lease.connection().server_params();
    let differences = view.differences(current);
    if differences.is_empty() {
        return Ok(());
    }
    let mut changes = BytesMut::new();
    for (name, value) in differences {
        messages::parameter_status(&mut changes, name, value);
    }
    view.update(current);
    write_flush(client, &changes).await
}
