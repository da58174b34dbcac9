//! WebSocket sessions: the upgrade at `/ws`, then one reader and one writer per socket.
//!
//! The reader decodes frames (text: JSON, binary: MessagePack) and runs each call in its own
//! task, so many calls are in flight and replies go out in completion order, each carrying its
//! call's `requestid` and encoded like the call. A per-socket semaphore bounds the calls in
//! flight; when it is exhausted the reader stops reading, which pushes back on the client
//! through TCP. The writer drains a bounded queue into the socket.
//!
//! Close codes: 1000 when the client closes, 1001 when the hub shuts down, 1009 for a message
//! over four times `max_frame_bytes`, 1002 for a WebSocket protocol error. Messages over
//! `max_frame_bytes` (but under the hard limit) get a `TOO_LARGE` reply and the socket stays.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::Hub;
use crate::dispatch::log_error;
use crate::protocol::frame::{decode, parse_frame, requestid_of};
use crate::protocol::{encode, Encoding, FlowError, Frame, Framing, Outcome};

/// Answers the upgrade request and starts the session once hyper hands the socket over.
pub fn upgrade(mut req: Request<Incoming>, hub: Hub) -> Response<Full<Bytes>> {
    let is_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        return super::http::error_response(
            FlowError::invalid("/ws takes a WebSocket upgrade (Sec-WebSocket-Key missing)"),
            "/ws",
            Encoding::Json,
        );
    };
    if !is_upgrade {
        return super::http::error_response(
            FlowError::invalid("/ws takes a WebSocket upgrade"),
            "/ws",
            Encoding::Json,
        );
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = hub.sessions.clone();
    tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => session(TokioIo::new(upgraded), hub).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// Runs one WebSocket session over an upgraded connection.
pub async fn session<S>(io: S, hub: Hub)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let max = hub.config.max_frame_bytes;
    let hard_limit = max.saturating_mul(4);
    let mut ws_config = WebSocketConfig::default();
    ws_config.max_message_size = Some(hard_limit);
    ws_config.max_frame_size = Some(hard_limit);
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(hub.config.outbound_queue);

    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            let closing = matches!(msg, Message::Close(_));
            if sink.feed(msg).await.is_err() {
                break;
            }
            // Batch whatever else is ready into the same flush.
            while let Ok(more) = out_rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let in_flight = Arc::new(Semaphore::new(hub.config.max_calls_in_flight));
    let mut close: Option<CloseFrame> = None;
    loop {
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = hub.shutdown.cancelled() => { close = Some(close_frame(CloseCode::Away, "the hub is shutting down")); break }
        };
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = hub.shutdown.cancelled() => { close = Some(close_frame(CloseCode::Away, "the hub is shutting down")); break }
        };
        let (bytes, encoding) = match msg {
            None => break,
            Some(Ok(Message::Text(t))) => (Bytes::from(t), Encoding::Json),
            Some(Ok(Message::Binary(b))) => (b, Encoding::MsgPack),
            Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => continue, // ping/pong are answered by tungstenite
            Some(Err(WsError::Capacity(e))) => {
                close = Some(close_frame(
                    CloseCode::Size,
                    &format!("message too large: {e}"),
                ));
                break;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket read failed");
                close = Some(close_frame(CloseCode::Protocol, "WebSocket protocol error"));
                break;
            }
        };
        let tx = out_tx.clone();
        if bytes.len() > max {
            let outcome: Outcome = Err(log_error(
                FlowError::too_large(format!(
                    "message of {} bytes is larger than {max} bytes",
                    bytes.len()
                )),
                None,
                "-",
            ));
            send(&tx, &outcome, None, encoding).await;
            continue;
        }
        let value = match decode(&bytes, encoding, hub.config.max_depth) {
            Ok(v) => v,
            Err(e) => {
                send(&tx, &Err(log_error(e, None, "-")), None, encoding).await;
                continue;
            }
        };
        let requestid = requestid_of(&value);
        match parse_frame(value) {
            Ok(Frame::Call { requestid, request }) => {
                let dispatcher = hub.dispatcher.clone();
                tokio::spawn(async move {
                    let outcome = dispatcher.call(request).await;
                    send(&tx, &outcome, requestid.as_ref(), encoding).await;
                    drop(permit);
                });
            }
            Err(e) => {
                send(
                    &tx,
                    &Err(log_error(e, None, "-")),
                    requestid.as_ref(),
                    encoding,
                )
                .await
            }
        }
    }
    // Let the calls in flight answer before the close frame goes out.
    let all = u32::try_from(hub.config.max_calls_in_flight).unwrap_or(u32::MAX);
    let grace = std::time::Duration::from_millis(hub.config.shutdown_grace_ms);
    let _ = tokio::time::timeout(grace, in_flight.acquire_many(all)).await;
    let _ = out_tx
        .send(Message::Close(
            close.or(Some(close_frame(CloseCode::Normal, ""))),
        ))
        .await;
    drop(out_tx);
    let _ = writer.await;
}

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    // Close reasons are limited to 123 bytes by the WebSocket protocol.
    let mut reason = reason.to_string();
    while reason.len() > 120 {
        reason.pop();
    }
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

async fn send(
    tx: &mpsc::Sender<Message>,
    outcome: &Outcome,
    requestid: Option<&serde_json::Value>,
    encoding: Encoding,
) {
    let bytes = encode(outcome, Framing::Ws { requestid }, encoding);
    let msg = match encoding {
        // The envelope encoder writes only valid UTF-8 JSON.
        Encoding::Json => match Utf8Bytes::try_from(bytes) {
            Ok(s) => Message::Text(s),
            Err(_) => return,
        },
        Encoding::MsgPack => Message::Binary(bytes),
    };
    // A closed queue means the socket is gone; the reply has nowhere to go.
    let _ = tx.send(msg).await;
}
