//! The listener while the hub reads its log back at start: probes get an answer instead of
//! a refused connection, and nothing else is served yet.
//!
//! `GET /health` is `200` (the process is alive), `GET /ready` is `503`
//! `{"status":"recovering",…}`, and every other request gets `503 UNAVAILABLE` with
//! `Retry-After: 1` (a WebSocket upgrade too). Every response closes its connection, so no
//! client stays on a connection that will never serve the API. [`Recovering::finish`] stops
//! accepting and hands the listener back for [`super::serve`]; connections accepted
//! meanwhile finish their one response (each within the handshake timeout) on their own.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, RETRY_AFTER};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::protocol::{Encoding, ErrorCode, FlowError};

/// The responder running on a listener; [`Recovering::finish`] takes the listener back.
pub struct Recovering {
    listener: Arc<TcpListener>,
    stop: CancellationToken,
    accepting: tokio::task::JoinHandle<()>,
}

/// Starts answering `listener` with the recovery responses (over TLS with `tls`).
/// `timeout`: how long a connection may take to send its request.
pub fn start(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    timeout: Duration,
) -> Recovering {
    let listener = Arc::new(listener);
    let stop = CancellationToken::new();
    let accepting = tokio::spawn(accept(listener.clone(), tls, timeout, stop.clone()));
    Recovering {
        listener,
        stop,
        accepting,
    }
}

impl Recovering {
    /// Stops accepting and returns the listener.
    pub async fn finish(self) -> TcpListener {
        self.stop.cancel();
        let _ = self.accepting.await;
        match Arc::try_unwrap(self.listener) {
            Ok(l) => l,
            // The accept task has ended, and it held the only other reference.
            Err(_) => unreachable!("the recovery responder still holds the listener"),
        }
    }
}

async fn accept(
    listener: Arc<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    timeout: Duration,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, async move {
                match tls {
                    None => answer(TokioIo::new(stream)).await,
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            answer(TokioIo::new(s)).await;
                        }
                    }
                }
            })
            .await;
        });
    }
}

async fn answer<I>(io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(respond);
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, service)
        .await;
}

async fn respond(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let mut r = match path {
        "/health" => super::http::json_response(200, Bytes::from_static(b"{\"status\":\"ok\"}")),
        "/ready" => super::http::json_response(
            503,
            Bytes::from_static(
                b"{\"status\":\"recovering\",\"reason\":\"the hub is reading its log back\"}",
            ),
        ),
        _ => {
            let mut r = super::http::error_response(
                FlowError::new(
                    ErrorCode::Unavailable,
                    "the hub is starting: it is reading its log back; try again shortly",
                ),
                path,
                Encoding::Json,
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    };
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(r)
}
