//! The listener: one TCP port serving the HTTP bridge (`/api/...`), the WebSocket upgrade
//! (`/ws`) and the operational endpoints (`/health`, `/ready`, `/metrics`: [`ops`]).
//!
//! Each accepted connection gets its own task; the HTTP parse and the WebSocket handshake run
//! there, under a timeout, so a slow client never stalls the accept loop. A semaphore bounds
//! the connections held at once, upgraded WebSocket sessions included (a session keeps its
//! connection's permit). The transport decodes and encodes; what a call means is the
//! dispatcher's business.
//!
//! Shutdown: the listener closes at once (new connections are refused), HTTP connections finish
//! the request in flight, WebSocket sessions finish their calls in flight and close with 1001.
//! All of that gets `shutdown_grace_ms`; what is still open then is dropped ([`Hub::force`]),
//! and [`serve`] returns only once every connection and session task has ended.

pub mod http;
pub mod openapi;
pub mod ops;
pub mod recovering;
pub mod tls;
pub mod ws;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dispatch::Dispatcher;

/// What every connection task shares. Cloning is shallow.
#[derive(Clone)]
pub struct Hub {
    pub dispatcher: Dispatcher,
    /// Subscriptions and the delivery of committed changes to them.
    pub fanout: crate::fanout::Fanout,
    pub config: Arc<Config>,
    /// Cancelled when the hub begins to shut down: sessions stop taking new calls.
    pub shutdown: CancellationToken,
    /// Tracks upgraded WebSocket sessions, which hyper no longer tracks.
    pub sessions: TaskTracker,
    /// Cancelled when the shutdown grace has run out: connections and sessions still open are
    /// dropped without waiting further.
    pub force: CancellationToken,
}

/// The client's address, put in every request's extensions for the HTTP bridge and the
/// WebSocket upgrade (login throttling per address).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Accepts connections until `stop` is cancelled, then waits (at most the configured grace)
/// for calls in flight to finish, drops what is left and returns once every connection and
/// session task has ended. With `tls`, every connection speaks TLS (HTTPS, WSS).
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    stop: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let limit = Arc::new(Semaphore::new(hub.config.max_connections));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        crate::ops::series().connections_accepted.increment(1);
        let _ = stream.set_nodelay(true);
        // Shared by the connection and, after an upgrade, its WebSocket session: released
        // when both are gone.
        let permit = Arc::new(permit);
        let hub = hub.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let Some(acceptor) = tls else {
                return connection(TokioIo::new(stream), peer, hub, permit).await;
            };
            let limit = Duration::from_millis(hub.config.handshake_timeout_ms);
            let handshake = tokio::select! {
                r = tokio::time::timeout(limit, acceptor.accept(stream)) => r,
                _ = hub.shutdown.cancelled() => return,
            };
            match handshake {
                Ok(Ok(s)) => connection(TokioIo::new(s), peer, hub, permit).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; finishing calls in flight");
    hub.shutdown.cancel();
    hub.sessions.close();
    connections.close();
    let grace = Duration::from_millis(hub.config.shutdown_grace_ms);
    let finished = tokio::time::timeout(grace, async {
        connections.wait().await;
        hub.sessions.wait().await;
    })
    .await;
    match finished {
        Ok(()) => tracing::info!("all connections finished"),
        Err(_) => {
            tracing::warn!(
                grace_ms = hub.config.shutdown_grace_ms,
                "shutdown grace ran out; closing the rest"
            );
            hub.force.cancel();
            connections.wait().await;
            hub.sessions.wait().await;
        }
    }
}

/// Serves one connection (plain or TLS) until it ends, the hub shuts down, or the grace
/// runs out.
async fn connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    hub: Hub,
    permit: Arc<OwnedSemaphorePermit>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // A caller in the metrics until it ends; once upgraded, its WebSocket session counts it.
    let _open = crate::ops::connections::Open::caller();
    let hub2 = hub.clone();
    let conn_permit = permit.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        route(req, hub2.clone(), conn_permit.clone())
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_millis(hub.config.handshake_timeout_ms))
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = hub.shutdown.cancelled() => {
            // Finish the request in flight, then close; upgraded sockets are gone
            // from hyper already and drain in their own sessions. A request that is
            // still not done when the grace runs out is dropped.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = hub.force.cancelled() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    drop(permit);
}

async fn route(
    req: Request<Incoming>,
    hub: Hub,
    conn: Arc<OwnedSemaphorePermit>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    Ok(if path == "/ws" || path == "/ws/" {
        ws::upgrade(req, hub, conn)
    } else if ops::PATHS.contains(&path) {
        ops::handle(req, &hub).await
    } else if path.starts_with("/api/") || path == "/api" {
        http::handle(req, hub).await
    } else {
        http::not_found(path)
    })
}
