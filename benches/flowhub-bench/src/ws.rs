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

/// A minimal WebSocket client for the measured write loops: one call in flight, text frames
/// written with one `write_all` and read into a reused buffer, like the RESP client that
/// drives Redis ([`crate::redis::Redis::writers`]). Both peers are then driven by clients of
/// the same leanness, so neither loses cores to its client library. Frames follow RFC 6455:
/// masked from the client, unmasked from the hub; a ping is answered, a close ends the loop.
pub struct Lean {
    stream: TcpStream,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// Bytes of `buf` read but not yet used.
    filled: usize,
    /// The last reply's frame, at the start of `buf`, to drop before the next call.
    replied: usize,
    mask: u32,
}

impl Lean {
    pub async fn connect(addr: SocketAddr) -> Res<Lean> {
        use tokio::io::AsyncWriteExt;
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        // Any 16 bytes, base64: the hub's answer is not checked beyond its status line.
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut lean = Lean {
            stream,
            out: Vec::with_capacity(512),
            buf: vec![0; 8 * 1024],
            filled: 0,
            replied: 0,
            mask: 0x9e37_79b9 ^ addr.port() as u32,
        };
        let end = loop {
            if let Some(at) = lean.buf[..lean.filled]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                break at + 4;
            }
            lean.fill().await?;
        };
        if !lean.buf.starts_with(b"HTTP/1.1 101") {
            return Err(format!(
                "WebSocket upgrade refused: {}",
                String::from_utf8_lossy(&lean.buf[..end])
            )
            .into());
        }
        lean.consume(end);
        Ok(lean)
    }

    /// Reads more bytes into the buffer (growing it when full).
    async fn fill(&mut self) -> Res<()> {
        use tokio::io::AsyncReadExt;
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            return Err("the hub closed the socket".into());
        }
        self.filled += n;
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        if n > 0 {
            self.buf.copy_within(n..self.filled, 0);
            self.filled -= n;
        }
    }

    /// Writes one frame with `opcode` (masked, as a client must).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Res<()> {
        use tokio::io::AsyncWriteExt;
        // xorshift: a new masking key per frame.
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        let key = self.mask.to_be_bytes();
        self.out.clear();
        self.out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => self.out.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                self.out.push(0x80 | 126);
                self.out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        self.out.extend_from_slice(&key);
        self.out
            .extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    /// Ends the session with a close frame (1000, normal closure).
    pub async fn close(mut self) -> Res<()> {
        self.send(0x8, &1000u16.to_be_bytes()).await
    }

    /// Sends one call and returns the payload of the next text frame (the reply: nothing else
    /// is in flight on this socket).
    pub async fn call(&mut self, frame: &str) -> Res<&str> {
        let replied = std::mem::take(&mut self.replied);
        self.consume(replied);
        self.send(0x1, frame.as_bytes()).await?;
        loop {
            // A whole frame in the buffer: FIN, opcode, length (7, 16 or 64 bits), payload.
            let header = if self.filled >= 2 {
                let short = (self.buf[1] & 0x7f) as usize;
                match short {
                    126 if self.filled >= 4 => {
                        Some((4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize))
                    }
                    127 if self.filled >= 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&self.buf[2..10]);
                        Some((10, u64::from_be_bytes(n) as usize))
                    }
                    126 | 127 => None,
                    n => Some((2, n)),
                }
            } else {
                None
            };
            let Some((head, len)) = header.filter(|(h, n)| self.filled >= h + n) else {
                self.fill().await?;
                continue;
            };
            let (fin, opcode) = (self.buf[0] & 0x80 != 0, self.buf[0] & 0x0f);
            if self.buf[1] & 0x80 != 0 || !fin {
                return Err("unexpected masked or fragmented frame from the hub".into());
            }
            match opcode {
                0x1 => {
                    // The reply stays in the buffer until the next call.
                    self.replied = head + len;
                    return std::str::from_utf8(&self.buf[head..head + len]).map_err(|e| e.into());
                }
                0x9 => {
                    let ping = self.buf[head..head + len].to_vec();
                    self.consume(head + len);
                    self.send(0xA, &ping).await?;
                }
                0x8 => return Err("the hub closed the socket".into()),
                _ => self.consume(head + len),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lean client against tungstenite's server side: the upgrade, masked frames of each
    /// length encoding both ways, a ping answered in the middle of a reply, and a close.
    #[tokio::test]
    async fn the_lean_client_speaks_websocket_to_a_standard_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let mut pongs = 0;
            while let Some(msg) = ws.next().await {
                match msg.unwrap() {
                    Message::Text(t) => {
                        // A ping first, then the reply: the text reversed.
                        ws.send(Message::Ping(vec![1, 2, 3].into())).await.unwrap();
                        let reply: String = t.as_str().chars().rev().collect();
                        ws.send(Message::text(reply)).await.unwrap();
                    }
                    Message::Pong(p) => {
                        assert_eq!(&p[..], &[1, 2, 3]);
                        pongs += 1;
                    }
                    Message::Close(_) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            pongs
        });
        let mut lean = Lean::connect(addr).await.unwrap();
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 200_000] {
            let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let reply = lean.call(&text).await.unwrap();
            assert_eq!(reply.len(), len);
            assert_eq!(reply, text.chars().rev().collect::<String>());
        }
        lean.close().await.unwrap();
        assert_eq!(
            server.await.unwrap(),
            8,
            "every ping answered with its payload"
        );
    }
}
