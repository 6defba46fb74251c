//! The HTTP admin listener: `/metrics` (Prometheus), `/startup`, `/readiness`, `/liveness`
//! (Kubernetes probes) and `POST /quitquitquit` (graceful shutdown from a neighbouring
//! container, as the Cloud SQL Auth Proxy offers).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use super::health::Health;
use crate::metrics;

/// Binds the admin listener and serves it in the background.
pub async fn serve(address: SocketAddr, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    info!(listen = %bound, "HTTP admin listener ready");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let health = health.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| route(request, health.clone()));
                if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    debug!(%error, "admin HTTP connection failed");
                }
            });
        }
    });
    Ok(bound)
}

async fn route(request: Request<Incoming>, health: Arc<Health>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    let probe = |ok: Result<(), String>| match ok {
        Ok(()) => reply(StatusCode::OK, "ok\n".into()),
        Err(reason) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    };
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let text = match health.view() {
                Some(view) => view.render_metrics(),
                None => metrics::install().render(),
            };
            let mut response = reply(StatusCode::OK, text);
            response.headers_mut().insert("content-type", "text/plain; version=0.0.4".parse().expect("a valid header"));
            response
        }
        (&Method::GET, "/startup") => probe(if health.started() { Ok(()) } else { Err("starting".into()) }),
        (&Method::GET, "/readiness") => probe(health.ready()),
        // Answering at all is the liveness signal: the runtime is not wedged.
        (&Method::GET, "/liveness") => probe(Ok(())),
        (&Method::POST, "/quitquitquit") => {
            health.request_quit();
            reply(StatusCode::OK, "shutting down\n".into())
        }
        (_, "/quitquitquit") => reply(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "not found: try /metrics, /startup, /readiness, /liveness\n".into()),
    };
    Ok(response)
}
