//! The listener: one TCP port serving the HTTP bridge (`/api/...`), the WebSocket upgrade
//! (`/ws`) and the operational endpoints (`/health`, `/ready`, `/metrics`: [`ops`]).
//!
//! Each accepted connection gets its own task; the TLS handshake, the HTTP parse and the
//! WebSocket handshake run there, under `handshake_timeout_ms`, so a slow client never stalls
//! the accept loop. A semaphore bounds the connections held at once, upgraded WebSocket
//! sessions included (a session keeps its connection's [`Slot`]); past it, connections wait
//! in the accept queue. Each client address may hold `max_connections_per_address` of them
//! ([`address`]); a connection past that is refused: answered HTTP 429 (`RATE_LIMITED`), or,
//! for a WebSocket upgrade, accepted and closed with 1013, since a browser page never sees the
//! HTTP status of a refused upgrade but does see a close code and reason. A refused connection
//! takes no place among `max_connections`; refusals in progress are bounded on their own
//! ([`MAX_REFUSING`]) and each gets [`REFUSE_WAIT`] at most, so a flood from one address costs
//! the others nothing. The operational endpoints answer refused connections too.
//! The transport decodes and encodes; what a call means is the dispatcher's business.
//!
//! Shutdown: the listener closes at once (new connections are refused), HTTP connections finish
//! the request in flight, WebSocket sessions finish their calls in flight and close with 1001.
//! All of that gets `shutdown_grace_ms`; what is still open then is dropped ([`Hub::force`]),
//! and [`serve`] returns only once every connection and session task has ended.

pub mod address;
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
use crate::limits::{breach, Limit};

/// What every connection task shares. Cloning is shallow.
#[derive(Clone)]
pub struct Hub {
    pub dispatcher: Dispatcher,
    /// Subscriptions and the delivery of committed changes to them.
    pub fanout: crate::fanout::Fanout,
    pub config: Arc<Config>,
    /// Cancelled when the hub begins to shut down: sessions stop taking new calls.
    pub shutdown: CancellationToken,
    /// HTTP requests per client address (`http_requests_per_s_per_address`).
    pub http_rates: address::Rates,
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

/// What an admitted connection holds while it is open: its place among `max_connections`
/// and among its address's `max_connections_per_address`. Shared by the connection and,
/// after an upgrade, its WebSocket session: both places are given back when both are gone.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    /// `None` when `max_connections_per_address` is 0 (no limit).
    _place: Option<address::Place>,
}

/// Connections being refused at once (over `max_connections_per_address`); more are
/// dropped unanswered until one of them is done.
pub const MAX_REFUSING: usize = 256;

/// The most a refusal takes: the client's request head (after TLS, its handshake), the
/// answer, and for a WebSocket the close handshake. Shorter than `handshake_timeout_ms` if
/// that is shorter.
pub const REFUSE_WAIT: Duration = Duration::from_secs(2);

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
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let addresses = address::Addresses::default();
    let per_address = hub.config.max_connections_per_address;
    let connections = TaskTracker::new();
    if hub.http_rates.is_on() {
        // Forgets addresses that have been quiet for a while, for as long as the hub serves.
        let rates = hub.http_rates.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => rates.sweep(),
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    loop {
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full: the next connection waits in the accept queue until one closes.
                breach(Limit::MaxConnections);
                tokio::select! {
                    p = limit.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = stop.cancelled() => break,
                }
            }
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
        let place = match per_address {
            0 => None,
            n => match addresses.take(peer.ip(), n) {
                Some(place) => Some(place),
                None => {
                    breach(Limit::MaxConnectionsPerAddress);
                    // Refused: it takes no place among max_connections.
                    drop(permit);
                    match refusing.clone().try_acquire_owned() {
                        Ok(refusal) => {
                            let hub = hub.clone();
                            let tls = tls.clone();
                            connections.spawn(async move {
                                refuse(stream, peer, hub, tls).await;
                                drop(refusal);
                            });
                        }
                        Err(_) => tracing::debug!(%peer, "too many refusals at once; dropped"),
                    }
                    continue;
                }
            },
        };
        // Shared by the connection and, after an upgrade, its WebSocket session: released
        // when both are gone.
        let slot = Arc::new(Slot {
            _permit: permit,
            _place: place,
        });
        let hub = hub.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let limit = Duration::from_millis(hub.config.handshake_timeout_ms);
            let Some(acceptor) = tls else {
                return connection(TokioIo::new(stream), peer, hub, Some(slot), limit).await;
            };
            let handshake = tokio::select! {
                r = tokio::time::timeout(limit, acceptor.accept(stream)) => r,
                _ = hub.shutdown.cancelled() => return,
            };
            match handshake {
                Ok(Ok(s)) => connection(TokioIo::new(s), peer, hub, Some(slot), limit).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    breach(Limit::HandshakeTimeout);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
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

/// Refuses a connection whose address holds `max_connections_per_address` already: after
/// the TLS handshake (if any), its request gets HTTP 429 or, for a WebSocket upgrade, close
/// 1013 (see [`route`]). Everything within [`REFUSE_WAIT`] (or the handshake timeout if
/// shorter), and never past a forced stop.
async fn refuse(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    hub: Hub,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let wait = REFUSE_WAIT.min(Duration::from_millis(hub.config.handshake_timeout_ms));
    let force = hub.force.clone();
    let refusal = async move {
        match tls {
            None => connection(TokioIo::new(stream), peer, hub, None, wait).await,
            Some(acceptor) => {
                if let Ok(s) = acceptor.accept(stream).await {
                    connection(TokioIo::new(s), peer, hub, None, wait).await;
                }
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(wait, refusal) => {}
        _ = force.cancelled() => {}
    }
}

/// Serves one connection (plain or TLS) until it ends, the hub shuts down, or the grace
/// runs out. `slot` is `None` for a refused connection (its address holds its limit), which
/// is answered once and closed. `head_timeout` bounds the wait for each request head.
async fn connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    hub: Hub,
    slot: Option<Arc<Slot>>,
    head_timeout: Duration,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // A caller in the metrics until it ends; once upgraded, its WebSocket session counts it.
    let _open = crate::ops::connections::Open::caller();
    let hub2 = hub.clone();
    let refused = slot.is_none();
    let conn_slot = slot.clone();
    // Whether a request came: a head that times out before the first one is a handshake
    // timeout; after one, it is an idle keep-alive connection closing, which is no breach.
    let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = served.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        seen.store(true, std::sync::atomic::Ordering::Relaxed);
        req.extensions_mut().insert(PeerAddr(peer));
        route(req, hub2.clone(), conn_slot.clone())
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout)
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
        if e.is_timeout() && !refused && !served.load(std::sync::atomic::Ordering::Relaxed) {
            breach(Limit::HandshakeTimeout);
        }
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    drop(slot);
}

/// Routes one request. `conn` is the connection's [`Slot`]; `None` on a refused connection,
/// whose WebSocket upgrade is closed with 1013 and whose API calls get 429.
async fn route(
    req: Request<Incoming>,
    hub: Hub,
    conn: Option<Arc<Slot>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let is_api = path.starts_with("/api/") || path == "/api";
    Ok(if path == "/ws" || path == "/ws/" {
        match conn {
            Some(conn) => ws::upgrade(req, hub, conn, ws::Mode::Calls),
            None => ws::refuse(req, hub),
        }
    } else if hub.config.ws_echo_path.as_deref() == Some(path) {
        match conn {
            Some(conn) => ws::upgrade(req, hub, conn, ws::Mode::Echo),
            None => ws::refuse(req, hub),
        }
    } else if ops::PATHS.contains(&path) {
        ops::handle(req, &hub).await
    } else if is_api && conn.is_none() {
        http::too_many_connections(&hub, path)
    } else if is_api {
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        match peer.map(|ip| hub.http_rates.admit(ip)) {
            Some(Err(wait)) => http::too_many_requests(&hub, path, wait),
            _ => http::handle(req, hub).await,
        }
    } else {
        http::not_found(path)
    })
}
