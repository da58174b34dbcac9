//! The routed-RPC baseline: a bare WebSocket relay, the floor of this machine for forwarding a
//! call to a provider and its answer back, built from the hub's own crates (tokio,
//! tokio-tungstenite) with no logic beyond the correlation any relay needs.
//!
//! It runs as its own process (the bench binary started with `--serve-relay`), so that its CPU
//! time is read from `/proc/<pid>/stat` exactly as the hub's. It speaks the frames of the hub's
//! provider protocol, byte for byte where it can, without parsing JSON:
//!
//! - a socket whose first frame is `{"type":"provide",...}` is a provider; it gets a success
//!   reply and from then on every frame it sends is a `result`;
//! - every frame of any other socket is a call: the relay gives it a `callid`, picks the next
//!   provider in turn and sends `{"type":"invoke","callid":N,"call":<the call frame>}`;
//! - a `result` is matched to its call by `callid`, and the caller gets the hub's reply frame
//!   `{"type":"reply","requestid":<the call's>,"status":0,"success":true,"data":<the
//!   result's>,"dataType":"JSON"}`.
//!
//! The session is built like the hub's: one reader and one writer task per socket, a bounded
//! outbound queue, what is ready batched into one flush, the same 8 KiB read buffer. Unlike the
//! hub, the reader forwards each frame itself instead of starting a task per call.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::Res;

/// The hidden flag that turns the bench binary into the relay.
pub const FLAG: &str = "--serve-relay";
/// Frames a socket's outbound queue holds before a sender waits (as the hub's queue does).
const OUTBOUND_QUEUE: usize = 1024;

/// A running relay process.
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl Relay {
    /// Starts `<this binary> --serve-relay` and reads its address from its first line.
    pub fn spawn() -> Res<Relay> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg(FLAG)
            // The relay exits when its stdin closes, so it never outlives the bench.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = child.id();
        let mut line = String::new();
        let out = child.stdout.take().ok_or("no stdout pipe")?;
        BufReader::new(out).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("relay listening ")
            .and_then(|a| a.parse().ok());
        match addr {
            Some(addr) => Ok(Relay { child, addr, pid }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("the relay did not start (it printed {line:?})").into())
            }
        }
    }

    /// The relay's CPU time so far (all threads), in seconds.
    pub fn cpu(&self) -> f64 {
        crate::hub::cpu_seconds(&format!("/proc/{}/stat", self.pid)).unwrap_or(f64::NAN)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The relay process's `main`: a multi-threaded runtime with the default number of workers,
/// as the hub's.
pub fn serve_main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // Stop when the bench goes away (its end of our stdin closes).
    let _ = std::thread::Builder::new()
        .name("relay-stdin".into())
        .spawn(|| {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            std::process::exit(0);
        });
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay: {e}");
            ExitCode::from(1)
        }
    }
}

/// Call ids are small consecutive integers: hashing them is the identity.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A call forwarded to a provider and not answered yet: where the answer goes.
struct Pending {
    caller: mpsc::Sender<Message>,
    /// The call's `requestid` as it was written (`17`, `"c-17"`), or empty.
    requestid: Box<str>,
}

struct Provider {
    tx: mpsc::Sender<Message>,
    pending: Mutex<HashMap<u64, Pending, BuildHasherDefault<IdHasher>>>,
}

#[derive(Default)]
struct State {
    providers: RwLock<Vec<Arc<Provider>>>,
    turn: AtomicUsize,
    next_callid: AtomicU64,
}

async fn serve() -> Res<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("relay listening {}", listener.local_addr()?);
    let state = Arc::new(State::default());
    loop {
        let (socket, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = session(socket, state).await {
                eprintln!("relay: session: {e}");
            }
        });
    }
}

async fn session(socket: TcpStream, state: Arc<State>) -> Res<()> {
    socket.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let ws = tokio_tungstenite::accept_async_with_config(socket, Some(config)).await?;
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel::<Message>(OUTBOUND_QUEUE);
    let writer = tokio::spawn(write_loop(sink, rx));
    let Some(first) = next_text(&mut stream).await else {
        return Ok(());
    };
    if first.starts_with(r#"{"type":"provide""#) {
        let provider = Arc::new(Provider {
            tx: tx.clone(),
            pending: Mutex::new(HashMap::default()),
        });
        let count = {
            let mut all = state.providers.write().map_err(|_| "poisoned")?;
            all.push(provider.clone());
            all.len()
        };
        let reply = format!(
            r#"{{"type":"reply","requestid":{},"status":0,"success":true,"data":{{"providers":{count}}},"dataType":"JSON"}}"#,
            field(first.as_str(), "requestid").unwrap_or("null")
        );
        let _ = tx.send(Message::text(reply)).await;
        provider_loop(&mut stream, &provider).await;
        if let Ok(mut all) = state.providers.write() {
            all.retain(|p| !Arc::ptr_eq(p, &provider));
        }
    } else {
        let mut frame = Some(first);
        while let Some(call) = frame {
            forward(&state, &tx, call.as_str()).await;
            frame = next_text(&mut stream).await;
        }
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// The next text frame, or `None` when the socket is done.
async fn next_text(stream: &mut SplitStream<WebSocketStream<TcpStream>>) -> Option<Utf8Bytes> {
    loop {
        match stream.next().await? {
            Ok(Message::Text(t)) => return Some(t),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// A call: to the next provider in turn, under a fresh call id.
async fn forward(state: &State, caller: &mpsc::Sender<Message>, call: &str) {
    let provider = {
        let Ok(all) = state.providers.read() else {
            return;
        };
        if all.is_empty() {
            None
        } else {
            let i = state.turn.fetch_add(1, Ordering::Relaxed) % all.len();
            Some(all[i].clone())
        }
    };
    let requestid: Box<str> = field(call, "requestid").unwrap_or("").into();
    let Some(provider) = provider else {
        let reply = format!(
            r#"{{"type":"reply","requestid":{},"status":0,"success":false,"message":"no provider","errorcode":"NO_PROVIDER","dataType":"JSON"}}"#,
            if requestid.is_empty() {
                "null"
            } else {
                &requestid
            }
        );
        let _ = caller.send(Message::text(reply)).await;
        return;
    };
    let callid = state.next_callid.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut pending) = provider.pending.lock() {
        pending.insert(
            callid,
            Pending {
                caller: caller.clone(),
                requestid,
            },
        );
    }
    let mut invoke = String::with_capacity(call.len() + 48);
    invoke.push_str(r#"{"type":"invoke","callid":"#);
    invoke.push_str(itoa(callid).as_str());
    invoke.push_str(r#","call":"#);
    invoke.push_str(call);
    invoke.push('}');
    let _ = provider.tx.send(Message::text(invoke)).await;
}

/// A provider's results: each back to its caller as the hub's reply frame.
async fn provider_loop(stream: &mut SplitStream<WebSocketStream<TcpStream>>, provider: &Provider) {
    while let Some(result) = next_text(stream).await {
        let result = result.as_str();
        let Some(callid) = field(result, "callid").and_then(|c| c.parse::<u64>().ok()) else {
            continue;
        };
        let Some(pending) = provider
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&callid))
        else {
            continue;
        };
        // `"data":` is the result's last field; the frame ends with the object's `}`.
        let data = result
            .find(r#""data":"#)
            .and_then(|at| result.get(at + 7..result.len() - 1))
            .unwrap_or("null");
        let mut reply = String::with_capacity(data.len() + 96);
        reply.push_str(r#"{"type":"reply","requestid":"#);
        reply.push_str(if pending.requestid.is_empty() {
            "null"
        } else {
            &pending.requestid
        });
        reply.push_str(r#","status":0,"success":true,"data":"#);
        reply.push_str(data);
        reply.push_str(r#","dataType":"JSON"}"#);
        let _ = pending.caller.send(Message::text(reply)).await;
    }
    // The provider is gone: its calls have nowhere to go (the bench closes providers last).
    if let Ok(mut p) = provider.pending.lock() {
        p.clear();
    }
}

/// Drains the outbound queue into the socket, batching what is ready into one flush (as the
/// hub's writer does).
async fn write_loop(
    mut sink: SplitSink<WebSocketStream<TcpStream>, Message>,
    mut rx: mpsc::Receiver<Message>,
) {
    'outer: while let Some(msg) = rx.recv().await {
        if sink.feed(msg).await.is_err() {
            break;
        }
        while let Ok(more) = rx.try_recv() {
            if sink.feed(more).await.is_err() {
                break 'outer;
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}

/// The raw value of a top-level number or string field written as `"name":value`: the bytes
/// up to the next `,` or `}` (enough for the ids the bench writes; no JSON parsing).
pub fn field<'a>(frame: &'a str, name: &str) -> Option<&'a str> {
    let bytes = frame.as_bytes();
    let key_len = name.len() + 3;
    let mut from = 0;
    while let Some(at) = frame[from..].find(name) {
        let start = from + at;
        from = start + name.len();
        if start == 0
            || bytes[start - 1] != b'"'
            || bytes.get(start + name.len()) != Some(&b'"')
            || bytes.get(start + name.len() + 1) != Some(&b':')
        {
            continue;
        }
        let value = &frame[start - 1 + key_len..];
        let end = value.find([',', '}']).unwrap_or(value.len());
        return Some(value[..end].trim());
    }
    None
}

/// A `u64` as decimal text without going through `fmt`.
fn itoa(mut n: u64) -> ItoaBuf {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    ItoaBuf { buf, start: i }
}

struct ItoaBuf {
    buf: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_without_parsing() {
        let f = r#"{"type":"result","callid":17,"success":true,"data":{"requestid":1}}"#;
        assert_eq!(field(f, "callid"), Some("17"));
        assert_eq!(field(f, "type"), Some(r#""result""#));
        assert_eq!(
            field(r#"{"requestid":"c-1"}"#, "requestid"),
            Some(r#""c-1""#)
        );
        assert_eq!(field(r#"{"xcallid":1}"#, "callid"), None);
        assert_eq!(itoa(0).as_str(), "0");
        assert_eq!(itoa(1234567).as_str(), "1234567");
    }
}
