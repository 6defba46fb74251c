//! What both pool modes do the same way around a session: the context sessions of one target
//! share, a checkout that tells a waiting client why it waits, and a greeting from the pool's
//! cached parameters when no server connection is attached yet.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::ClientStream;
use super::error::SessionError;
use super::request::{SessionRequest, canonical_setting, write_ready};
use crate::cancel::CancelRegistry;
use crate::ops::view::{ClientEntry, ClientRegistry, ProxyView};
use crate::pool::{Lease, Pool, Pools};
use crate::protocol::messages::{ErrorFields, Severity};
use crate::protocol::sqlstate;
use crate::protocol::{CancelKey, StartupParams};
use crate::shutdown::Shutdown;
use crate::target::Target;

/// What sessions of one target share.
pub struct TargetContext {
    /// The target.
    pub target: Target,
    /// Its pools.
    pub pools: Arc<Pools>,
    /// Cancel routing, shared by all targets.
    pub cancels: Arc<CancelRegistry>,
    /// TLS toward clients, when configured.
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// Greet clients before attaching an upstream.
    pub lazy_attach: bool,
    /// Limit for the handshake.
    pub startup_timeout: Duration,
    /// Tells sessions when the proxy is stopping.
    pub shutdown: Shutdown,
    /// Every session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// `--max-client-connections`, shared by every listener.
    pub client_slots: Arc<Semaphore>,
    /// Connected clients, for the admin console.
    pub clients: Arc<ClientRegistry>,
    /// The whole proxy, for the admin console.
    pub view: Arc<ProxyView>,
}

/// Completes a client's login without a server connection: (AuthenticationOk, if
/// `authenticate`,) the pool's cached parameters with the values the client asked for, a
/// proxy-issued cancel key, ReadyForQuery. Returns the key and the parameters as greeted.
pub(super) async fn greet_from_cache(
    client: &mut ClientStream,
    request: &SessionRequest,
    greeting_params: &[(String, String)],
    authenticate: bool,
) -> Result<(CancelKey, Vec<(String, String)>), SessionError> {
    let key = CancelKey { pid: rand::rng().random_range(1..i32::MAX), secret: rand::rng().random() };
    // The values the client asked for, as the server will report them once they are SET.
    let greeted: Vec<(String, String)> = greeting_params
        .iter()
        .map(|(name, value)| {
            let asked = request.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
            (name.clone(), asked.map(|v| canonical_setting(name, v)).unwrap_or_else(|| value.clone()))
        })
        .collect();
    let mut greeting = BytesMut::new();
    if authenticate {
        request.write_authentication(&mut greeting);
    }
    write_ready(&mut greeting, greeted.iter().map(|(n, v)| (n.as_str(), v.as_str())), key);
    write_flush(client, &greeting).await?;
    Ok((key, greeted))
}

pub(super) async fn write_flush(client: &mut ClientStream, bytes: &[u8]) -> Result<(), SessionError> {
    client.write_all(bytes).await.map_err(SessionError::ClientIo)?;
    client.flush().await.map_err(SessionError::ClientIo)
}

/// A checkout slower than this earns the client a notice saying why it waits.
const NOTICE_AFTER: Duration = Duration::from_secs(1);

/// Checks out a connection carrying `settings`; if that takes a while (a compute waking up, a
/// full pool), tells the client once with a NoticeResponse rather than leave it wondering.
/// `owed` holds what the client is to receive before any notice; it is sent (and cleared) only
/// if a notice is due.
pub(super) async fn checkout_with_notice(
    client: &mut ClientStream,
    pool: &Arc<Pool>,
    settings: &StartupParams,
    entry: &ClientEntry,
    owed: &mut BytesMut,
) -> Result<Lease, SessionError> {
    entry.update(|info| info.state = "waiting");
    let _waiting = pool.upstream().checkout_metrics.waiting();
    let checkout = pool.checkout(settings);
    tokio::pin!(checkout);
    // Most checkouts find an idle connection at once (every transaction, in transaction
    // mode): those need no timer.
    let at_once = std::future::poll_fn(|cx| Poll::Ready(checkout.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = at_once {
        return Ok(result?);
    }
    if let Ok(result) = tokio::time::timeout(NOTICE_AFTER, &mut checkout).await {
        return Ok(result?);
    }
    let mut notice = std::mem::take(owed);
    ErrorFields::new(
        Severity::Notice,
        sqlstate::SUCCESSFUL_COMPLETION,
        "lakebase-proxy: still connecting to the database (it may be waking up from scale-to-zero, or the pool is busy)",
    )
    .write_notice(&mut notice);
    write_flush(client, &notice).await?;
    Ok(checkout.await?)
}
