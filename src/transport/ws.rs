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
//! WebSocket protocol error, 3008 for a subscriber that fell behind, 4001 for a socket that
//! did not authenticate within `auth.auth_timeout_ms` or whose login token expired or was
//! revoked (SPEC 13.2), 4002 for a socket that sent nothing, not even a pong, for
//! `idle_timeout_ms`, 1013 for an upgrade refused because its address holds
//! `max_connections_per_address` already. Messages over `max_frame_bytes` (but under the hard
//! limit) get a `TOO_LARGE` reply and the socket stays.
//!
//! Keep-alive ([`Idle`]): the reader pings a socket that sent no frame during the last
//! `ping_interval_ms` (every client answers pings by itself, browsers included) and closes one
//! that has sent nothing at all for `idle_timeout_ms`. It costs the reading of a frame two
//! stores into local flags: the clock is read only when the reader goes back to waiting, and
//! the session's one timer ticks every interval without being reset.
//!
//! [`Mode::Echo`], served only at `ws_echo_path` when an operator sets it, runs the very same
//! session (the same tungstenite settings, limits, close codes and queues) but sends every
//! text or binary message back unchanged instead of reading it as a call: WebSocket
//! conformance suites (Autobahn) expect an echo server (`docs/CONFORMANCE.md`).

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
use crate::auth::{Credentials, Session};
use crate::dispatch::{log_error, ReplySink};
use crate::fanout::{Connection, Outgoing, SLOW_CLOSE_CODE};
use crate::limits::{breach, Limit, CLOSE_IDLE, CLOSE_TRY_AGAIN_LATER};
use crate::ops::connections::Kind;
use crate::protocol::frame::{decode, decode_text, parse_call_text, parse_frame, requestid_of};
use crate::protocol::provider::parse_result_text;
use crate::protocol::{encode, Caller, Encoding, FlowError, Frame, Framing, Outcome, Success};
use crate::router::{Link, Outbox, Queued};

/// Numbers the WebSocket connections of this hub run (`caller.connection` in invokes).
static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A provider's frames go into its session's outbound queue, like replies.
struct WsOutbox(mpsc::Sender<Message>);

fn message(frame: Bytes, encoding: Encoding) -> Option<Message> {
    match encoding {
        Encoding::Json => Utf8Bytes::try_from(frame).ok().map(Message::Text),
        Encoding::MsgPack => Some(Message::Binary(frame)),
    }
}

impl Outbox for WsOutbox {
    fn send(
        &self,
        frame: Bytes,
        encoding: Encoding,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ()>> + Send + '_>> {
        Box::pin(async move {
            let msg = message(frame, encoding).ok_or(())?;
            self.0.send(msg).await.map_err(|_| ())
        })
    }
    fn try_send(&self, frame: Bytes, encoding: Encoding) -> Queued {
        use mpsc::error::TrySendError;
        let Some(msg) = message(frame.clone(), encoding) else {
            return Queued::Gone;
        };
        match self.0.try_send(msg) {
            Ok(()) => Queued::Sent,
            Err(TrySendError::Full(_)) => Queued::Full(frame),
            Err(TrySendError::Closed(_)) => Queued::Gone,
        }
    }
}

/// A call's reply, sent from whichever task ends the call (for a routed call, the
/// provider's reader). Holds the call's permit until the reply is queued.
struct WsReply {
    tx: mpsc::Sender<Message>,
    requestid: Option<serde_json::Value>,
    encoding: Encoding,
    permit: OwnedSemaphorePermit,
}

impl ReplySink for WsReply {
    fn send(self: Box<Self>, outcome: Outcome) {
        use mpsc::error::TrySendError;
        let bytes = encode(
            &outcome,
            Framing::Ws {
                requestid: self.requestid.as_ref(),
            },
            self.encoding,
        );
        let Some(msg) = message(bytes, self.encoding) else {
            return;
        };
        if let Err(TrySendError::Full(msg)) = self.tx.try_send(msg) {
            // The client reads slowly: wait for room in a task, still holding the permit. (A
            // write's reply is sent from the sequencer's thread, which has the runtime too.)
            let WsReply { tx, permit, .. } = *self;
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        let _ = tx.send(msg).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    std::thread::spawn(move || {
                        let _ = tx.blocking_send(msg);
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// What a session does with the messages it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Frames are calls and the other frames of the protocol (`/ws`).
    Calls,
    /// Every text or binary message is sent back unchanged (`ws_echo_path`, for conformance
    /// testing of the WebSocket stack only).
    Echo,
}

/// What one session is to the rest of the hub.
struct Peer {
    /// Its calls' identity.
    caller: Caller,
    /// Its side as a provider.
    link: Arc<Link>,
    /// Its authentication: the login, and the client's address for throttling.
    creds: Credentials,
    /// Its place in `flowhub_connections_open` (caller, subscriber or provider).
    open: Arc<crate::ops::connections::Open>,
}

/// How long a slow subscriber's socket is kept (with nothing queued for it any more) for its
/// 3008 close frame to get through what the socket buffers still hold.
const SLOW_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// The `Sec-WebSocket-Accept` value of an upgrade request, or why it is not one.
fn accept_key(req: &Request<Incoming>) -> Result<String, FlowError> {
    let is_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return Err(FlowError::invalid(
            "/ws takes a WebSocket upgrade (Sec-WebSocket-Key missing)",
        ));
    };
    if !is_upgrade {
        return Err(FlowError::invalid("/ws takes a WebSocket upgrade"));
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// The `101 Switching Protocols` response.
fn switching(accept: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// Answers the upgrade request and starts the session once hyper hands the socket over.
///
/// `conn` is the listener's [`super::Slot`] for this connection: the session keeps it, so an
/// upgraded socket counts against `max_connections` and `max_connections_per_address` for as
/// long as it is open.
pub fn upgrade(
    mut req: Request<Incoming>,
    hub: Hub,
    conn: Arc<super::Slot>,
    mode: Mode,
) -> Response<Full<Bytes>> {
    let accept = match accept_key(&req) {
        Ok(a) => a,
        Err(e) => return super::http::error_response(e, "/ws", Encoding::Json),
    };
    let peer = req.extensions().get::<super::PeerAddr>().map(|p| p.0.ip());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = hub.sessions.clone();
    tracker.spawn(async move {
        match on_upgrade.await {
            // A plain TCP connection: the session reads and writes the socket itself rather
            // than through the upgrade's boxed, rewindable wrapper (four layers per read).
            Ok(upgraded) => match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
                Ok(parts) => {
                    let io = parts.io.into_inner();
                    session_with(io, parts.read_buf, hub, peer, mode).await
                }
                Err(upgraded) => {
                    session_with(TokioIo::new(upgraded), Bytes::new(), hub, peer, mode).await
                }
            },
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
        drop(conn);
    });
    switching(&accept)
}

/// Answers the upgrade of a connection refused for its address (it holds
/// `max_connections_per_address` already): the socket is upgraded and closed at once with
/// 1013 (Try Again Later) and a reason, because a browser page sees a close code and reason
/// but never the HTTP status of a refused upgrade. The close handshake gets
/// [`super::REFUSE_WAIT`] at most.
pub fn refuse(mut req: Request<Incoming>, hub: Hub) -> Response<Full<Bytes>> {
    let accept = match accept_key(&req) {
        Ok(a) => a,
        Err(e) => return super::http::error_response(e, "/ws", Encoding::Json),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let reason = format!(
        "too many connections from this address (max_connections_per_address {})",
        hub.config.max_connections_per_address
    );
    let force = hub.force.clone();
    hub.sessions.spawn(async move {
        let close = async {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            let frame = close_frame(CloseCode::from(CLOSE_TRY_AGAIN_LATER), &reason);
            if ws.send(Message::Close(Some(frame))).await.is_err() {
                return;
            }
            // Read until the client's close comes back, so the socket closes cleanly.
            while let Some(Ok(_)) = ws.next().await {}
        };
        tokio::select! {
            _ = tokio::time::timeout(super::REFUSE_WAIT, close) => {}
            _ = force.cancelled() => {}
        }
    });
    switching(&accept)
}

/// Runs one WebSocket session over an upgraded connection.
///
/// The session ends in three steps, whatever stopped the reader (the client closed, the socket
/// broke, the hub is shutting down): calls in flight finish and their replies are queued, the
/// close frame is queued after them, and the writer drains the queue. All three together get
/// at most `shutdown_grace_ms`, and none outlives a forced stop of the hub ([`Hub::force`]):
/// past that the writer is aborted and the socket dropped, so a client that never reads
/// cannot keep a session (and its queued replies) alive.
pub async fn session<S>(io: S, hub: Hub, peer: Option<std::net::IpAddr>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    session_with(io, Bytes::new(), hub, peer, Mode::Calls).await;
}

/// [`session`] in the given mode; `read` holds what was read from `io` past the upgrade
/// request (frames a client sent without waiting for the 101).
async fn session_with<S>(io: S, read: Bytes, hub: Hub, peer: Option<std::net::IpAddr>, mode: Mode)
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
    let ws = if read.is_empty() {
        WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await
    } else {
        WebSocketStream::from_partially_read(io, read.to_vec(), Role::Server, Some(ws_config)).await
    };
    let (sink, mut stream) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(hub.config.outbound_queue);
    let (subscriptions, events) = hub.fanout.connect();
    let subscriptions = Arc::new(subscriptions);
    let in_flight = Arc::new(Semaphore::new(hub.config.max_calls_in_flight));
    let mut writer = tokio::spawn(write_loop(
        sink,
        out_rx,
        events,
        Awaited {
            in_flight: in_flight.clone(),
            max: hub.config.max_calls_in_flight,
        },
    ));

    let connection = NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let peer = Peer {
        caller: Caller {
            connection: Some(connection),
            ..Caller::default()
        },
        link: Link::new(connection, Box::new(WsOutbox(out_tx.clone()))),
        creds: Credentials {
            basic: None,
            session: Some(Session::new()),
            peer,
        },
        open: Arc::new(crate::ops::connections::Open::caller()),
    };
    let close = read_loop(
        &mut stream,
        &hub,
        &out_tx,
        &in_flight,
        &peer,
        &subscriptions,
        mode,
    )
    .await;
    // The client's routed calls stop waiting; as a provider it serves nothing any more, and
    // the calls it was answering fail (or move on) at once.
    let router = hub.dispatcher.router();
    if close.code != CloseCode::Away {
        router.caller_gone(connection);
    }
    router.connection_closed(&peer.link);

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

/// The keep-alive of one session: pings for a quiet socket, a close for a silent one.
///
/// The reader marks every frame it takes in two flags (no clock, no timer touched) and reads
/// the clock when it goes back to waiting, so `last_heard` is the time of the last frame
/// taken, give or take the handling of a burst. The one timer ticks every
/// `ping_interval_ms`; at a tick, a socket that sent nothing but pongs since the tick before
/// gets a ping, and one silent for `idle_timeout_ms` is closed with 4002 — but only if the tick
/// before sent a ping and nothing has come since: a client always has a whole interval to
/// answer, and one that answered is never closed because the hub itself was held up (a
/// stopped process, a starved runtime) and sent no ping for a while.
struct Idle {
    /// Ticks every `ping_interval_ms` (or half the idle timeout if pings are off); `None`
    /// when both are off.
    tick: Option<tokio::time::Interval>,
    /// Whether quiet sockets are pinged.
    ping: bool,
    /// `idle_timeout_ms`; `None`: never closed for silence.
    timeout: Option<Duration>,
    /// When the reader last took a frame (updated when it goes back to waiting).
    last_heard: tokio::time::Instant,
    /// A frame was taken since `last_heard` was updated.
    heard: bool,
    /// A frame other than a pong was taken since the last tick.
    active: bool,
    /// The last tick found the socket quiet and pinged it.
    pinged: bool,
    /// When the last tick ran.
    last_tick: tokio::time::Instant,
}

impl Idle {
    fn new(config: &crate::config::Config) -> Idle {
        let ping = config.ping_interval_ms;
        let idle = config.idle_timeout_ms;
        let period = if ping > 0 { ping } else { idle / 2 };
        let tick = (period > 0).then(|| {
            let period = Duration::from_millis(period);
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        Idle {
            tick,
            ping: ping > 0,
            timeout: (idle > 0).then(|| Duration::from_millis(idle)),
            last_heard: tokio::time::Instant::now(),
            heard: false,
            active: false,
            pinged: false,
            last_tick: tokio::time::Instant::now(),
        }
    }

    /// A frame was taken: two stores, nothing else.
    #[inline]
    fn frame(&mut self, msg: &Message) {
        self.heard = true;
        self.active |= !matches!(msg, Message::Pong(_));
    }

    /// The reader goes back to waiting: the frames it took came just now.
    #[inline]
    fn waiting(&mut self) {
        if self.heard && self.tick.is_some() {
            self.heard = false;
            self.last_heard = tokio::time::Instant::now();
        }
    }

    /// Resolves at the next tick; never without a timer.
    async fn tick(&mut self) {
        match &mut self.tick {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// At a tick: the close frame when the socket has been silent too long, else a ping
    /// queued if it was quiet (skipped when the queue is full: the socket is not reading).
    fn on_tick(&mut self, out_tx: &mpsc::Sender<Message>) -> Option<CloseFrame> {
        self.waiting();
        let now = tokio::time::Instant::now();
        // Nothing came since the last tick (and so since its ping, if it sent one).
        let unanswered = self.last_heard <= self.last_tick;
        self.last_tick = now;
        if let Some(timeout) = self.timeout {
            let silent = now.saturating_duration_since(self.last_heard);
            if silent >= timeout && unanswered && (self.pinged || !self.ping) {
                breach(Limit::IdleTimeout);
                tracing::debug!(
                    silent_ms = silent.as_millis() as u64,
                    "idle WebSocket closed"
                );
                return Some(close_frame(
                    CloseCode::from(CLOSE_IDLE),
                    &format!("idle: nothing received for {} ms", timeout.as_millis()),
                ));
            }
        }
        self.pinged = self.ping && !self.active;
        if self.pinged {
            let _ = out_tx.try_send(Message::Ping(Bytes::new()));
        }
        self.active = false;
        None
    }
}

/// Reads frames and starts one task per call until the client closes, the socket fails, the
/// writer stops or the hub shuts down; returns the close frame to send.
async fn read_loop<S>(
    stream: &mut SplitStream<WebSocketStream<S>>,
    hub: &Hub,
    out_tx: &mpsc::Sender<Message>,
    in_flight: &Arc<Semaphore>,
    peer: &Peer,
    subscriptions: &Arc<Connection>,
    mode: Mode,
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
    // Resolves when the socket must close for want of (valid) authentication.
    let auth = hub.dispatcher.auth();
    let unauthenticated = match &peer.creds.session {
        Some(s) => futures_util::future::Either::Left(auth.guard(s.clone())),
        None => futures_util::future::Either::Right(std::future::pending()),
    };
    tokio::pin!(shutdown, writer_gone, unauthenticated);
    let unauthenticated_close = |reason: String| {
        close_frame(
            CloseCode::Library(crate::auth::CLOSE_UNAUTHENTICATED),
            &reason,
        )
    };
    let mut idle = Idle::new(&hub.config);
    let mut frames: u32 = 0;
    loop {
        // While frames keep coming, the reader takes them without polling the futures that
        // end the session (each poll takes a lock): it checks the cheap flags instead, and
        // polls everything every 64th frame and whenever it would wait.
        frames = frames.wrapping_add(1);
        let fast = !frames.is_multiple_of(64);
        // Asking the shutdown token takes a lock: it is asked every 64th frame here, and
        // whenever the reader waits (the `select!` below polls it).
        if !fast && hub.shutdown.is_cancelled() {
            return away();
        }
        if out_tx.is_closed() {
            return gone();
        }
        // One permit per frame read: a call holds it until its reply is queued, so a client
        // that sends faster than it reads is stopped here, and TCP pushes back on it.
        let ready = match in_flight.clone().try_acquire_owned() {
            Ok(p) if fast => Some(p),
            Ok(p) => {
                drop(p);
                None
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                breach(Limit::MaxCallsInFlight);
                // The hub, not the client, stops reading: that wait is not the client's silence.
                idle.heard = true;
                None
            }
            Err(tokio::sync::TryAcquireError::Closed) => return gone(),
        };
        let permit = match ready {
            Some(p) => p,
            None => tokio::select! {
                biased;
                _ = &mut shutdown => return away(),
                _ = &mut writer_gone => return gone(),
                r = &mut unauthenticated => return unauthenticated_close(r),
                p = in_flight.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return gone(),
                },
            },
        };
        let ready = if fast {
            futures_util::FutureExt::now_or_never(stream.next())
        } else {
            None
        };
        let msg = match ready {
            Some(m) => m,
            None => {
                idle.waiting();
                tokio::select! {
                    biased;
                    _ = &mut shutdown => return away(),
                    _ = &mut writer_gone => return gone(),
                    r = &mut unauthenticated => return unauthenticated_close(r),
                    m = stream.next() => m,
                    _ = idle.tick() => match idle.on_tick(out_tx) {
                        Some(close) => return close,
                        None => continue,
                    },
                }
            }
        };
        if let Some(Ok(m)) = &msg {
            idle.frame(m);
        }
        let (text, bytes, encoding) = match msg {
            None => return gone(),
            Some(Ok(Message::Text(t))) => (Some(t), Bytes::new(), Encoding::Json),
            Some(Ok(Message::Binary(b))) => (None, b, Encoding::MsgPack),
            // tungstenite queues the reply to the client's close frame; the writer sends it.
            Some(Ok(Message::Close(_))) => return close_frame(CloseCode::Normal, ""),
            Some(Ok(_)) => continue, // ping/pong are answered by tungstenite
            Some(Err(WsError::Capacity(e))) => {
                breach(Limit::MaxFrameBytes);
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
        let len = text.as_ref().map_or(bytes.len(), |t| t.len());
        if len > max {
            breach(Limit::MaxFrameBytes);
            let outcome: Outcome = Err(log_error(
                FlowError::too_large(format!("message of {len} bytes is larger than {max} bytes")),
                None,
                "-",
            ));
            reply_later(tx, outcome, None, encoding, permit);
            continue;
        }
        if mode == Mode::Echo {
            let echo = match text {
                Some(t) => Message::Text(t),
                None => Message::Binary(bytes),
            };
            // Queued by the reader itself, so echoes go out in the order the messages came;
            // while the queue is full the reader waits (back-pressure, as for calls).
            match tx.try_send(echo) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(echo)) => tokio::select! {
                    biased;
                    _ = &mut shutdown => return away(),
                    r = tx.send(echo) => if r.is_err() {
                        return gone();
                    },
                },
                Err(mpsc::error::TrySendError::Closed(_)) => return gone(),
            }
            drop(permit);
            continue;
        }
        // A provider's successful result in JSON is read without building a value: its data
        // goes on to the caller as the text it is. Anything else takes the general path.
        if let Some((requestid, callid, answer)) = text
            .as_ref()
            // Result frames name their type early; a frame that does not is read the
            // general way, so large frames are not scanned end to end here.
            .filter(|t| {
                let head = &t.as_bytes()[..t.len().min(128)];
                head.windows(8).any(|w| w == b"\"result\"")
            })
            .and_then(|t| parse_result_text(t.as_str(), hub.config.max_depth))
        {
            let router = hub.dispatcher.router();
            if let Err(e) = router.answer(peer.link.connection, callid, answer) {
                reply_later(
                    tx,
                    Err(log_error(e, None, "-")),
                    requestid,
                    encoding,
                    permit,
                );
            }
            continue;
        }
        // A call in JSON is read straight into its request; any other frame (or a call the
        // fast reader leaves alone, such as a wrong one) is decoded into a value first. A text
        // frame is UTF-8 already; the JSON parser need not check it again.
        let fast = text
            .as_ref()
            .and_then(|t| parse_call_text(t.as_str(), hub.config.max_depth));
        let (frame, requestid) = match fast {
            Some((requestid, request)) => (Ok(Frame::Call { requestid, request }), None),
            None => {
                let decoded = match &text {
                    Some(t) => decode_text(t.as_str(), hub.config.max_depth),
                    None => decode(&bytes, encoding, hub.config.max_depth),
                };
                let value = match decoded {
                    Ok(v) => v,
                    Err(e) => {
                        reply_later(tx, Err(log_error(e, None, "-")), None, encoding, permit);
                        continue;
                    }
                };
                let requestid = requestid_of(&value);
                (parse_frame(value), requestid)
            }
        };
        let router = hub.dispatcher.router();
        match frame {
            Ok(Frame::Call { requestid, request }) => {
                // A call to a provider is answered from the provider's side, a write from the
                // sequencer's (`Dispatcher::call_sink`). Either way the reply holds this
                // frame's permit.
                let sink = WsReply {
                    tx,
                    requestid,
                    encoding,
                    permit,
                };
                hub.dispatcher.call_sink(
                    request,
                    peer.caller.clone(),
                    peer.creds.clone(),
                    Box::new(sink),
                );
            }
            Ok(Frame::Answer {
                requestid,
                callid,
                answer,
            }) => {
                if let Err(e) = router.answer(peer.link.connection, callid, answer) {
                    reply_later(
                        tx,
                        Err(log_error(e, None, "-")),
                        requestid,
                        encoding,
                        permit,
                    );
                }
            }
            Ok(Frame::Provide { requestid, provide }) => {
                let endpoint = provide.endpoint.clone();
                let outcome = may_provide(hub, peer, &provide)
                    .and_then(|()| router.provide(&peer.link, provide, encoding))
                    .inspect(|_| peer.open.became(Kind::Provider))
                    .map(Success::value)
                    .map_err(|e| log_error(e, None, &endpoint));
                reply_later(tx, outcome, requestid, encoding, permit);
            }
            Ok(Frame::Login { requestid, login }) => {
                // Awaited here, before the next frame is read: a client may send its login and
                // its first calls or subscriptions back to back, and those must see the login.
                let creds = &peer.creds;
                let outcome = match &creds.session {
                    Some(s) => hub.dispatcher.auth().login(s, login, creds.peer).await,
                    None => Err(FlowError::internal("no session")),
                }
                .map(Success::value)
                .map_err(|e| log_error(e, None, "login"));
                reply_later(tx, outcome, requestid, encoding, permit);
            }
            Ok(Frame::Publish { requestid, publish }) => {
                let dispatcher = hub.dispatcher.clone();
                let connection = peer.link.connection;
                tokio::spawn(async move {
                    let outcome = dispatcher.publish(connection, publish).await;
                    send(&tx, &outcome, requestid.as_ref(), encoding).await;
                    drop(permit);
                });
            }
            Ok(Frame::Unprovide {
                requestid,
                endpoint,
            }) => {
                let outcome = router
                    .unprovide(peer.link.connection, &endpoint)
                    .map(Success::value)
                    .map_err(|e| log_error(e, None, &endpoint));
                reply_later(tx, outcome, requestid, encoding, permit);
            }
            Ok(Frame::Subscribe {
                requestid,
                subscribe,
            }) => {
                let subs = subscriptions.clone();
                // Subscribing needs the right to, like a call needs the right to call.
                let allowed = may_subscribe(hub, peer, &subscribe);
                let open = peer.open.clone();
                tokio::spawn(async move {
                    let endpoint = subscribe.endpoint.clone();
                    let subscribed = allowed
                        .and_then(|()| subs.subscribe(subscribe, requestid.as_ref(), encoding))
                        .inspect(|()| open.became(Kind::Subscriber));
                    if let Err(e) = subscribed {
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

/// Whether this session may provide the endpoint: by the frame's own token or the login.
fn may_provide(
    hub: &Hub,
    peer: &Peer,
    provide: &crate::protocol::provider::Provide,
) -> Result<(), FlowError> {
    let auth = hub.dispatcher.auth();
    let who = auth.frame_identity(&peer.creds, provide.token.as_deref())?;
    auth.may_provide(&who, &provide.endpoint)
}

/// Whether this session may subscribe: by the frame's own token or the login, its roles must
/// grant `subscribe` on the endpoint in the namespace (SPEC 13).
fn may_subscribe(
    hub: &Hub,
    peer: &Peer,
    subscribe: &crate::protocol::subscribe::Subscribe,
) -> Result<(), FlowError> {
    let auth = hub.dispatcher.auth();
    let who = auth.frame_identity(&peer.creds, subscribe.token.as_deref())?;
    auth.may_subscribe(&who, &subscribe.endpoint, &subscribe.namespace)
}

/// The calls of a session that have not been answered yet: the reader's permits.
struct Awaited {
    in_flight: Arc<Semaphore>,
    max: usize,
}

impl Awaited {
    /// Whether a reply may still come for a call read so far.
    fn any(&self) -> bool {
        self.in_flight.available_permits() < self.max
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
    awaited: Awaited,
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
            // Drain what is queued; then, if calls are still unanswered, let the tasks woken
            // alongside this one queue their replies (those finishing in the same tick) and
            // drain again, so that one write carries many frames: a flush per frame costs a
            // system call per reply. With no call unanswered (a client waiting for this
            // reply before it sends again), the reply goes out without that wait.
            for round in 0..2 {
                if round == 1 {
                    if closing || !awaited.any() {
                        break;
                    }
                    tokio::task::yield_now().await;
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
            }
            if sink.flush().await.is_err() || closing {
                break;
            }
        }
    };
    let slow_consumer = tokio::select! {
        biased;
        _ = slow => true,
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
