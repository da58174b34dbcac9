//! WebSocket sessions: the upgrade at `/ws`, then one reader and one writer per socket.
//!
//! The reader decodes frames (text: JSON, binary: MessagePack) and runs each call in its own
//! task, so many calls are in flight and replies go out in completion order, each carrying its
//! call's `requestid` and encoded like the call. A per-socket semaphore bounds the calls in
//! flight; when it is exhausted the reader stops reading, which pushes back on the client
//! through TCP. The writer drains a bounded queue into the socket.
//!
//! Every reply, error replies included, is queued by a task that holds one of the reader's
//! permits, so what one socket can make the hub hold is bounded by `max_calls_in_flight`
//! replies waiting for queue space plus `outbound_queue` replies queued, whatever the client
//! sends and however slowly it reads. When either task stops, the other follows: the reader
//! stops when the writer's queue closes, and the writer drains what is queued, ends with the
//! close frame and is aborted if that takes longer than the shutdown grace.
//!
//! Subscriptions (`subscribe`, `unsubscribe`) are handled by the connection's
//! [`crate::fanout::Connection`]; their replies and events come through a second queue, the
//! fan-out's outbox, bounded in bytes (`max_outbound_bytes`), which the writer drains next
//! to the replies' queue. A connection whose outbox passes the bound is closed with 3008.
//!
//! Close codes: 1000 when the client closes, 1001 when the hub shuts down, 1009 for a message
//! over four times `max_frame_bytes`, 1007 for a text frame that is not UTF-8, 1002 for another
//! WebSocket protocol error, 3008 for a subscriber that fell behind. Messages over
//! `max_frame_bytes` (but under the hard limit) get a `TOO_LARGE` reply and the socket stays.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::Hub;
use crate::dispatch::log_error;
use crate::fanout::{Connection, Outgoing, SLOW_CLOSE_CODE};
use crate::protocol::frame::{decode, parse_frame, requestid_of};
use crate::protocol::{encode, Encoding, FlowError, Frame, Framing, Outcome};

/// How long a slow subscriber's socket is kept (with nothing queued for it any more) for its
/// 3008 close frame to get through what the socket buffers still hold.
const SLOW_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Answers the upgrade request and starts the session once hyper hands the socket over.
///
/// `conn` is the listener's permit for this connection: the session keeps it, so an upgraded
/// socket counts against `max_connections` for as long as it is open.
pub fn upgrade(
    mut req: Request<Incoming>,
    hub: Hub,
    conn: Arc<OwnedSemaphorePermit>,
) -> Response<Full<Bytes>> {
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
        drop(conn);
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
///
/// The session ends in three steps, whatever stopped the reader (the client closed, the socket
/// broke, the hub is shutting down): calls in flight finish and their replies are queued, the
/// close frame is queued after them, and the writer drains the queue. All three together get
/// at most `shutdown_grace_ms`, and none outlives a forced stop of the hub ([`Hub::force`]):
/// past that the writer is aborted and the socket dropped, so a client that never reads
/// cannot keep a session (and its queued replies) alive.
pub async fn session<S>(io: S, hub: Hub)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let max = hub.config.max_frame_bytes;
    let hard_limit = max.saturating_mul(4);
    let mut ws_config = WebSocketConfig::default();
    ws_config.max_message_size = Some(hard_limit);
    ws_config.max_frame_size = Some(hard_limit);
    // tungstenite zero-fills its read buffer before every read: 128 KiB by default cost 8% of
    // the hub's CPU on small calls, and that much per idle socket. Larger messages still
    // arrive whole; the buffer is only the unit of reading.
    ws_config.read_buffer_size = 8 * 1024;
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
    let (sink, mut stream) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(hub.config.outbound_queue);
    let (subscriptions, events) = hub.fanout.connect();
    let subscriptions = Arc::new(subscriptions);
    let mut writer = tokio::spawn(write_loop(sink, out_rx, events));

    let in_flight = Arc::new(Semaphore::new(hub.config.max_calls_in_flight));
    let close = read_loop(&mut stream, &hub, &out_tx, &in_flight, &subscriptions).await;

    let all = u32::try_from(hub.config.max_calls_in_flight).unwrap_or(u32::MAX);
    let grace = Duration::from_millis(hub.config.shutdown_grace_ms);
    let drain = async {
        // Let the calls in flight answer before the close frame goes out; once the writer is
        // gone their replies have nowhere to go, so there is nothing to wait for.
        tokio::select! {
            _ = in_flight.acquire_many(all) => {}
            _ = out_tx.closed() => {}
        }
        let _ = out_tx.send(Message::Close(Some(close))).await;
        let _ = (&mut writer).await;
    };
    let drained = tokio::select! {
        r = tokio::time::timeout(grace, drain) => r.is_ok(),
        _ = hub.force.cancelled() => false,
    };
    if !drained {
        tracing::debug!("WebSocket session did not drain in time; dropping the socket");
        writer.abort();
        let _ = writer.await;
    }
}

/// Reads frames and starts one task per call until the client closes, the socket fails, the
/// writer stops or the hub shuts down; returns the close frame to send.
async fn read_loop<S>(
    stream: &mut SplitStream<WebSocketStream<S>>,
    hub: &Hub,
    out_tx: &mpsc::Sender<Message>,
    in_flight: &Arc<Semaphore>,
    subscriptions: &Arc<Connection>,
) -> CloseFrame
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let max = hub.config.max_frame_bytes;
    let away = || close_frame(CloseCode::Away, "the hub is shutting down");
    // The writer stopped: the socket is broken or closing; a close frame can no longer go out.
    let gone = || close_frame(CloseCode::Normal, "");
    // Made once, not per frame: each registers a waiter the first time it is polled.
    let shutdown = hub.shutdown.cancelled();
    let writer_gone = out_tx.closed();
    tokio::pin!(shutdown, writer_gone);
    loop {
        // One permit per frame read: a call holds it until its reply is queued, so a client
        // that sends faster than it reads is stopped here, and TCP pushes back on it.
        let permit = tokio::select! {
            biased;
            _ = &mut shutdown => return away(),
            _ = &mut writer_gone => return gone(),
            p = in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return gone(),
            },
        };
        let msg = tokio::select! {
            biased;
            _ = &mut shutdown => return away(),
            _ = &mut writer_gone => return gone(),
            m = stream.next() => m,
        };
        let (bytes, encoding) = match msg {
            None => return gone(),
            Some(Ok(Message::Text(t))) => (Bytes::from(t), Encoding::Json),
            Some(Ok(Message::Binary(b))) => (b, Encoding::MsgPack),
            // tungstenite queues the reply to the client's close frame; the writer sends it.
            Some(Ok(Message::Close(_))) => return close_frame(CloseCode::Normal, ""),
            Some(Ok(_)) => continue, // ping/pong are answered by tungstenite
            Some(Err(WsError::Capacity(e))) => {
                return close_frame(CloseCode::Size, &format!("message too large: {e}"));
            }
            Some(Err(WsError::Utf8)) => {
                return close_frame(CloseCode::Invalid, "text frame is not valid UTF-8");
            }
            Some(Err(
                WsError::ConnectionClosed
                | WsError::AlreadyClosed
                | WsError::Io(_)
                | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            )) => return gone(),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket read failed");
                return close_frame(CloseCode::Protocol, "WebSocket protocol error");
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
            reply_later(tx, outcome, None, encoding, permit);
            continue;
        }
        let value = match decode(&bytes, encoding, hub.config.max_depth) {
            Ok(v) => v,
            Err(e) => {
                reply_later(tx, Err(log_error(e, None, "-")), None, encoding, permit);
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
            Ok(Frame::Subscribe {
                requestid,
                subscribe,
            }) => {
                let subs = subscriptions.clone();
                tokio::spawn(async move {
                    let endpoint = subscribe.endpoint.clone();
                    if let Err(e) = subs.subscribe(subscribe, requestid.as_ref(), encoding) {
                        let outcome = Err(log_error(e, None, &endpoint));
                        send(&tx, &outcome, requestid.as_ref(), encoding).await;
                    }
                    drop(permit);
                });
            }
            Ok(Frame::Unsubscribe {
                requestid,
                subscription,
            }) => match subscriptions.unsubscribe(&subscription, requestid.as_ref(), encoding) {
                Ok(()) => drop(permit),
                Err(e) => reply_later(
                    tx,
                    Err(log_error(e, None, "-")),
                    requestid,
                    encoding,
                    permit,
                ),
            },
            Err(e) => reply_later(
                tx,
                Err(log_error(e, None, "-")),
                requestid,
                encoding,
                permit,
            ),
        }
    }
}

/// Drains the outbound queue and the fan-out's events into the socket, batching what is
/// ready into one flush (replies first when both are ready). Stops after the close frame,
/// when the queue closes, or when the socket fails; the queue is closed before the socket
/// is, so the reader and pending replies see at once that the writer is gone. A subscriber
/// that fell behind (its events passed `max_outbound_bytes`) has its queued events dropped
/// and gets close code 3008, if the socket takes it within [`SLOW_CLOSE_WAIT`].
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut out_rx: mpsc::Receiver<Message>,
    mut events: Outgoing,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let slow = events.slow();
    let run = async {
        'outer: loop {
            let msg = tokio::select! {
                biased;
                m = out_rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                e = events.recv() => e,
            };
            let mut closing = matches!(msg, Message::Close(_));
            if sink.feed(msg).await.is_err() {
                break;
            }
            while !closing {
                let more = match out_rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => match events.try_recv() {
                        Some(m) => m,
                        None => break,
                    },
                };
                closing = matches!(more, Message::Close(_));
                if sink.feed(more).await.is_err() {
                    break 'outer;
                }
            }
            if sink.flush().await.is_err() || closing {
                break;
            }
        }
    };
    let slow_consumer = tokio::select! {
        biased;
        _ = slow.cancelled() => true,
        _ = run => false,
    };
    drop(out_rx);
    if slow_consumer {
        events.discard();
        let frame = close_frame(
            CloseCode::from(SLOW_CLOSE_CODE),
            "slow consumer: outbound queue over max_outbound_bytes",
        );
        let _ = tokio::time::timeout(SLOW_CLOSE_WAIT, sink.send(Message::Close(Some(frame)))).await;
        return;
    }
    // Sends the close frame (or the reply to the client's) if it is still pending.
    let _ = sink.close().await;
}

/// Queues an error reply from its own task, holding the frame's permit until it is queued,
/// so that the reader never waits for queue space and a flood of bad frames is bounded like
/// a flood of calls.
fn reply_later(
    tx: mpsc::Sender<Message>,
    outcome: Outcome,
    requestid: Option<serde_json::Value>,
    encoding: Encoding,
    permit: OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        send(&tx, &outcome, requestid.as_ref(), encoding).await;
        drop(permit);
    });
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
