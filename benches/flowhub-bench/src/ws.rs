//! The WebSocket side of the load generator: protocol v1 call frames as JSON text.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Res;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to the hub, with Nagle off like any latency-minded client.
///
/// The read buffer is 8 KiB instead of tungstenite's 128 KiB: tungstenite 0.26 zero-fills the
/// whole free capacity of its read buffer before every read from the socket, so with small
/// frames a 128 KiB buffer costs a 128 KiB memset per read, and the client shares the cores
/// with the hub it measures. Larger frames still arrive whole (the buffer grows for them).
pub async fn connect(addr: SocketAddr) -> Res<Ws> {
    let url = format!("ws://{addr}/ws");
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
        .await
        .map_err(|e| format!("WebSocket connect to {url}: {e}"))?;
    Ok(ws)
}

/// Opens a WebSocket to any URL, configured like [`connect`].
pub async fn connect_url(url: &str) -> Res<Ws> {
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| format!("WebSocket connect to {url}: {e}"))?;
    Ok(ws)
}

/// The next text or binary frame's payload; an error when the hub closed the socket.
pub async fn recv(ws: &mut Ws) -> Res<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Binary(_))) => return Err("unexpected binary frame".into()),
            Some(Ok(Message::Close(c))) => {
                return Err(format!("the hub closed the socket: {c:?}").into())
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("WebSocket: {e}").into()),
            None => return Err("the hub closed the socket".into()),
        }
    }
}

/// Whether a reply frame says `success: true`; the hub writes the envelope's fields in a fixed
/// order, so a byte search suffices in the measured loops.
pub fn succeeded(reply: &str) -> bool {
    reply.contains("\"success\":true")
}

/// An error for a failed reply, with the hub's message.
pub fn failure(what: &str, reply: &str) -> Box<dyn std::error::Error + Send + Sync> {
    let v: Value = serde_json::from_str(reply).unwrap_or(Value::Null);
    format!(
        "{what} failed: {} {} (reply {})",
        v["errorcode"].as_str().unwrap_or("?"),
        v["message"].as_str().unwrap_or("?"),
        reply.chars().take(300).collect::<String>()
    )
    .into()
}

/// Sends one call and waits for its reply (the socket has nothing else in flight).
pub async fn call(ws: &mut Ws, frame: String) -> Res<String> {
    ws.send(Message::text(frame)).await?;
    recv(ws).await
}

/// Like [`call`], parsed, and failing unless the reply is a success.
pub async fn call_ok(ws: &mut Ws, frame: &Value) -> Res<Value> {
    let reply = call(ws, frame.to_string()).await?;
    if !succeeded(&reply) {
        return Err(failure("call", &reply));
    }
    Ok(serde_json::from_str(&reply)?)
}

/// Sends every frame of `frames` on one socket with at most `window` calls in flight, and
/// waits for every reply; fails on the first unsuccessful one.
pub async fn pipeline(addr: SocketAddr, frames: Vec<String>, window: usize) -> Res<()> {
    let total = frames.len();
    let ws = connect(addr).await?;
    let (mut sink, mut stream) = ws.split();
    let permits = Arc::new(Semaphore::new(window));
    let sender_permits = permits.clone();
    let sender = tokio::spawn(async move {
        for frame in frames {
            match sender_permits.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => {
                    sink.flush().await?;
                    sender_permits.acquire().await?.forget();
                }
            }
            sink.feed(Message::text(frame)).await?;
        }
        sink.flush().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(sink)
    });
    let mut done = 0;
    while done < total {
        let reply = match stream.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                return Err(format!("the hub closed the socket: {c:?}").into())
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("WebSocket: {e}").into()),
            None => return Err("the hub closed the socket".into()),
        };
        if !succeeded(reply.as_str()) {
            return Err(failure("a pipelined call", reply.as_str()));
        }
        done += 1;
        permits.add_permits(1);
    }
    let mut sink = sender.await??;
    let _ = sink.close().await;
    Ok(())
}
