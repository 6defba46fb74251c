//! One client session as a straight chain of phases:
//! handshake -> local auth -> pool checkout (now, or at the first message with
//! `--lazy-attach`) -> greeting -> relay -> release.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, debug, info, info_span};

use super::admin;
use super::error::{SessionEnd, SessionError};
use super::handshake::{Handshake, negotiate};
use super::phases::{TargetContext, checkout_with_notice, greet_from_cache, write_flush};
use super::request::{SessionRequest, write_ready};
use super::transaction;
use super::{ClientStream, Peer};
use crate::cancel::CancelRoute;
use crate::error::UserFacing;
use crate::metrics;
use crate::ops::view::{ClientEntry, ClientInfo};
use crate::pool::{Lease, Pool};
use crate::protocol::messages;
use crate::protocol::{CancelKey, backend, frontend};
use crate::relay::{Relay, RelayEnd};
use crate::target::PoolMode;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one client connection to completion.
/// `_slot` is the session's place under `--max-client-connections`, held until it ends.
pub async fn serve(mut client: ClientStream, peer: Peer, ctx: Arc<TargetContext>, _slot: OwnedSemaphorePermit) {
    let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("client", id, %peer, target = %ctx.target, user = tracing::field::Empty, database = tracing::field::Empty, upstream_pid = tracing::field::Empty);
    async move {
        let _active = metrics::ActiveClient::new(&ctx.pools.upstream().label);
        let entry = ctx.clients.register(
            id,
            ClientInfo {
                peer: peer.to_string(),
                target: ctx.pools.upstream().label.clone(),
                user: String::new(),
                database: String::new(),
                state: "startup",
                upstream_pid: None,
                pinned: None,
                connected_at: SystemTime::now(),
            },
        );
        match run(&mut client, id, &peer, &ctx, &entry).await {
            Ok(SessionEnd::NoStartup) => debug!("closed before a startup message"),
            Ok(end) => info!(?end, "session ended"),
            Err(error) => {
                info!(%error, "session failed");
                if let Some(reason) = error.refusal() {
                    metrics::client_refused(reason);
                }
                let mut buf = BytesMut::new();
                error.to_client().write_error(&mut buf);
                // Best effort: the client may already be gone.
                let _ = client.write_all(&buf).await;
            }
        }
        // TLS clients get a close_notify; a plain socket's close sends the FIN by itself.
        if matches!(client, ClientStream::Tls(_)) {
            let _ = client.shutdown().await;
        }
    }
    .instrument(span)
    .await
}

async fn run(
    client: &mut ClientStream,
    id: u64,
    peer: &Peer,
    ctx: &TargetContext,
    entry: &ClientEntry,
) -> Result<SessionEnd, SessionError> {
    let handshake = tokio::time::timeout(ctx.startup_timeout, negotiate(client, ctx.client_tls.as_ref()))
        .await
        .map_err(|_| SessionError::StartupTimeout(ctx.startup_timeout))??;
    let (startup, early) = match handshake {
        None => return Ok(SessionEnd::NoStartup),
        Some(Handshake::Cancel(key)) => {
            ctx.cancels.cancel(key).await;
            return Ok(SessionEnd::Cancel);
        }
        Some(Handshake::Session { startup, early }) => (startup, early),
    };
    if !peer.is_trusted() {
        return Err(SessionError::UntrustedPeer(peer.to_string()));
    }
    if startup.params.get("database") == Some(admin::ADMIN_DATABASE) {
        entry.update(|info| info.state = "console");
        return admin::serve_console(client, &startup, early, &ctx.view).await;
    }
    let request = SessionRequest::new(startup, &ctx.target)?;
    let span = tracing::Span::current();
    span.record("user", request.key.user.as_str());
    span.record("database", request.key.database.as_str());
    entry.update(|info| {
        info.user = request.key.user.clone();
        info.database = request.key.database.clone();
    });
    let pool = ctx.pools.get(&request.key);
    if pool.upstream().settings().mode == PoolMode::Transaction {
        return Box::pin(transaction::serve(client, id, &request, early, &pool, ctx, entry)).await;
    }
    match (ctx.lazy_attach, pool.greeting()) {
        (true, Some(greeting)) => lazy_session(client, &request, early, &pool, &greeting, ctx, entry).await,
        // The first client of a pool in lazy mode attaches at once: its login teaches the
        // pool what to greet later clients with.
        _ => Box::pin(eager_session(client, &request, &early, &pool, ctx, entry)).await,
    }
}

/// Default mode: attach now and greet with the upstream's own parameters and cancel key, so
/// the session is indistinguishable from a direct one.
async fn eager_session(
    client: &mut ClientStream,
    request: &SessionRequest,
    early: &[u8],
    pool: &Arc<Pool>,
    ctx: &TargetContext,
    entry: &ClientEntry,
) -> Result<SessionEnd, SessionError> {
    // With a warm pool the whole greeting goes out in one write; a slow checkout sends
    // AuthenticationOk ahead, as a server whose backend is still starting would.
    let mut greeting = BytesMut::new();
    request.write_authentication(&mut greeting);
    let mut lease = checkout_with_notice(client, pool, &request.params, entry, &mut greeting).await?;
    let connection = lease.connection();
    let key = connection.key();
    write_ready(&mut greeting, connection.server_params().iter().map(|(n, v)| (n.as_str(), v.as_str())), key);
    write_flush(client, &greeting).await?;
    attach(client, lease, key, early, ctx, entry).await
}

/// `--lazy-attach`: greet from the pool's cached parameters with a proxy-issued cancel key and
/// attach an upstream only when the client first sends something.
async fn lazy_session(
    client: &mut ClientStream,
    request: &SessionRequest,
    early: BytesMut,
    pool: &Arc<Pool>,
    greeting_params: &[(String, String)],
    ctx: &TargetContext,
    entry: &ClientEntry,
) -> Result<SessionEnd, SessionError> {
    let (key, greeted) = greet_from_cache(client, request, greeting_params, true).await?;
    entry.update(|info| info.state = "idle");
    let mut shutdown = ctx.shutdown.clone();
    let first = if !early.is_empty() {
        early
    } else {
        tokio::select! {
            first = client.read_some() => first.map_err(SessionError::ClientIo)?,
            // An idle lazy client holds nothing worth waiting for.
            _ = shutdown.requested() => return Err(SessionError::ShuttingDown),
        }
    };
    if first.first().is_none_or(|&tag| tag == frontend::TERMINATE) {
        return Ok(SessionEnd::ClientDone);
    }
    // Boxed: an idle lazy session's task then holds only what waiting needs, not the space
    // the checkout and the relay take (see BENCHMARKS.md, idle clients).
    let mut lease = Box::pin(checkout_with_notice(client, pool, &request.params, entry, &mut BytesMut::new())).await?;
    // Where the server's own values differ from what the greeting guessed (DateStyle written
    // another way, a setting reported differently), tell the client now, as a server would
    // after a SET.
    let mut corrections = BytesMut::new();
    for (name, value) in lease.connection().server_params() {
        if greeted.iter().any(|(n, v)| n == name && v != value) {
            messages::parameter_status(&mut corrections, name, value);
        }
    }
    if !corrections.is_empty() {
        write_flush(client, &corrections).await?;
    }
    Box::pin(attach(client, lease, key, &first, ctx, entry)).await
}

/// Relays between the client and a leased upstream connection, then gives the connection
/// back (to the pool if it is clean, closed otherwise).
async fn attach(
    client: &mut ClientStream,
    mut lease: Lease,
    client_key: CancelKey,
    client_bytes: &[u8],
    ctx: &TargetContext,
    entry: &ClientEntry,
) -> Result<SessionEnd, SessionError> {
    let connection = lease.connection();
    tracing::Span::current().record("upstream_pid", connection.key().pid);
    entry.update(|info| {
        info.state = "active";
        info.upstream_pid = Some(connection.key().pid);
    });
    let _cancel_route = ctx.cancels.register(
        client_key,
        CancelRoute {
            connector: ctx.pools.upstream().connector.clone(),
            key: connection.key(),
            gate: connection.cancel_gate(),
        },
    );
    let mut relay = Relay::default();
    let leftover = connection.take_leftover();
    relay.preload(connection, client_bytes, &leftover).map_err(SessionError::ClientProtocol)?;
    let mut shutdown = ctx.shutdown.clone();
    let end = tokio::select! {
        end = relay.run(client, connection) => end,
        deadline = shutdown.requested() => {
            // Let a transaction in progress finish, up to the deadline, then end the session
            // at its next idle point.
            relay.detach_when_idle = true;
            tokio::time::timeout_at(deadline, relay.run(client, connection)).await.unwrap_or(RelayEnd::Idle)
        }
    };
    // The server explained itself (a FATAL) if its last word was an error.
    let explained = connection.protocol().last_message_type() == backend::ERROR_RESPONSE;
    lease.release(relay.used());
    let (to_upstream, to_client, round_trips) = relay.traffic();
    metrics::session_traffic(&ctx.pools.upstream().label, to_upstream, to_client, round_trips);
    match end {
        RelayEnd::ClientTerminated | RelayEnd::ClientGone(_) => Ok(SessionEnd::ClientDone),
        RelayEnd::Idle => Err(SessionError::ShuttingDown),
        RelayEnd::UpstreamGone(_) if explained => Ok(SessionEnd::UpstreamEnded),
        RelayEnd::UpstreamGone(error) => Err(SessionError::UpstreamLost(error)),
        RelayEnd::ClientProtocolViolation(error) => Err(SessionError::ClientProtocol(error)),
        RelayEnd::UpstreamProtocolViolation(error) => Err(SessionError::UpstreamProtocol(error)),
    }
}
