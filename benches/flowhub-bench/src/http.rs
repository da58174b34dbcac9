//! Scenario `http`: OPEN of one object through the HTTP bridge, over keep-alive connections,
//! next to a bare hyper 1.x server (the floor: the same crates as the hub's bridge, no logic)
//! answering the same request with a body of the same bytes.
//!
//! The client is a minimal HTTP/1.1 client on a `TcpStream` (one request in flight per
//! connection, closed loop, `Content-Length` bodies), the same for both servers, so that the
//! client's own cost is small and equal on both sides. Each connection sends the same bytes:
//! `GET /api/bench/bench/http/o1` with `Flow-Request-Method: OPEN`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::child::Server;
use crate::hub::{self, Hub};
use crate::report::{num, times, Table};
use crate::stats::{self, ratio, Acc, Window};
use crate::ws;
use crate::{Plan, Res};

/// The hidden flag that turns the bench binary into the bare hyper server.
pub const FLAG: &str = "--serve-hyper";
const ENDPOINT: &str = "bench/http";
const OBJECT: &str = "o1";
const PATH: &str = "/api/bench/bench/http/o1";
const CONNECTIONS: [usize; 2] = [1, 64];
/// The brief's target: requests/s at least this share of bare hyper's (at 64 connections).
const RATE_TARGET: f64 = 0.6;

fn request_bytes() -> Vec<u8> {
    format!("GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nFlow-Request-Method: OPEN\r\n\r\n")
        .into_bytes()
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Res<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends `request` and reads one response: its status and body.
    pub async fn roundtrip(&mut self, request: &[u8]) -> Res<(u16, &[u8])> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let (head_end, length) = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?;
                let length = head
                    .split("\r\n")
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .ok_or("a response without Content-Length")?;
                break (end + 4, length);
            }
            self.fill().await?;
        };
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let status = std::str::from_utf8(&self.buf[..head_end])?
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("a response without a status")?;
        Ok((status, &self.buf[head_end..head_end + length]))
    }

    async fn fill(&mut self) -> Res<()> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The bare hyper server process: every request gets `200` with the body it was given on its
/// stdin's first line, as `application/json`, over HTTP/1.1 keep-alive; the connection is
/// served as the hub serves its own (hyper's http1 builder with a Tokio timer and a header
/// read timeout).
pub fn serve_main() -> std::process::ExitCode {
    let mut body = String::new();
    if std::io::stdin().read_line(&mut body).is_err() || body.trim().is_empty() {
        eprintln!("hyper baseline: no body on stdin");
        return std::process::ExitCode::from(2);
    }
    let body = Bytes::from(body.trim_end_matches('\n').to_string());
    crate::child::serve_main("hyper-baseline", move |listener| {
        serve_hyper(listener, body)
    })
}

async fn serve_hyper(listener: tokio::net::TcpListener, body: Bytes) -> Res<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move {
                    let mut r = hyper::Response::new(http_body_util::Full::new(body));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One round on `addr`: `connections` keep-alive connections, each a closed loop.
async fn round(
    addr: SocketAddr,
    connections: usize,
    plan: &Plan,
    cpu: impl Fn() -> f64,
) -> Res<stats::Sample> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(addr).await?);
    }
    let window = Window::new(plan.warmup, plan.window);
    let request = request_bytes();
    let mut tasks = Vec::with_capacity(connections);
    for mut c in conns {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut h: Histogram<u64> = stats::histogram();
            while window.running() {
                let began = Instant::now();
                let (status, body) = c.roundtrip(&request).await?;
                if status != 200 || !ws::succeeded(std::str::from_utf8(body)?) {
                    return Err(format!(
                        "OPEN over HTTP: status {status}, body {}",
                        String::from_utf8_lossy(body)
                    )
                    .into());
                }
                window.record(&mut h, began);
            }
            Ok(h)
        }));
    }
    window.collect(tasks, cpu).await
}

pub async fn run(plan: &Plan, bin: &Path) -> Res<Value> {
    println!("== http: OPEN of one object through the HTTP bridge, keep-alive connections");
    let tmp = hub::temp_dir("http")?;
    let hub = Hub::spawn(bin, &tmp.path().join("hub"), &[])?;
    {
        let mut w = ws::connect(hub.addr).await?;
        let mut data = crate::data::addresses(1)[0].json();
        data["id"] = json!(OBJECT);
        let frame = json!({"endpoint": ENDPOINT, "method": "CREATE", "data": data});
        ws::call_ok(&mut w, &frame).await?;
    }
    // The hub's reply body, byte for byte, is what the bare server answers.
    let body = {
        let mut c = Conn::open(hub.addr).await?;
        let (status, body) = c.roundtrip(&request_bytes()).await?;
        if status != 200 {
            return Err(format!(
                "OPEN over HTTP: status {status}: {}",
                String::from_utf8_lossy(body)
            )
            .into());
        }
        String::from_utf8(body.to_vec())?
    };
    let hyper = spawn_hyper(&body)?;

    let mut runs = Vec::new();
    for connections in CONNECTIONS {
        let (mut f, mut b) = (Acc::default(), Acc::default());
        for _ in 0..plan.rounds {
            f.add(round(hub.addr, connections, plan, || hub.cpu()).await?);
            b.add(round(hyper.addr, connections, plan, || hyper.cpu()).await?);
        }
        runs.push((connections, f.figures(), b.figures()));
    }
    hub.terminate().await?;
    drop(hyper);

    println!(
        "GET {PATH} with Flow-Request-Method: OPEN; response body {} B; N keep-alive connections, one request in flight each (closed loop); {} rounds of {:.1} s per system (taking turns), each after {:.1} s warm-up",
        body.len(),
        plan.rounds,
        plan.window.as_secs_f64(),
        plan.warmup.as_secs_f64()
    );
    println!("baseline: a bare hyper 1.x server process (http1, keep-alive) answering every request with the same body; server CPU: utime+stime of the server process per request");
    let mut t = Table::new(
        &[
            "connections",
            "system",
            "requests/s",
            "p50 µs",
            "p99 µs",
            "server CPU µs/req",
        ],
        2,
    );
    let mut targets = Vec::new();
    for (connections, f, b) in &runs {
        for (name, fig) in [("flowhub (hub process)", f), ("baseline: bare hyper", b)] {
            t.row(vec![
                connections.to_string(),
                name.into(),
                num(Some(fig.per_sec())),
                num(Some(fig.p50_us)),
                num(Some(fig.p99_us)),
                num(fig.cpu_us_per_op),
            ]);
        }
        t.note(format!(
            "flowhub/hyper: requests/s {}, CPU per request {}",
            times(ratio(Some(f.per_sec()), Some(b.per_sec()))),
            times(ratio(f.cpu_us_per_op, b.cpu_us_per_op)),
        ));
    }
    t.print();
    for (connections, f, b) in runs.iter().filter(|r| r.0 == 64) {
        let rate_ratio = ratio(Some(f.per_sec()), Some(b.per_sec()));
        let met = rate_ratio.map(|r| r >= RATE_TARGET);
        println!(
            "target ({connections} connections): requests/s ≥ {:.0}% of bare hyper's: {}",
            RATE_TARGET * 100.0,
            match met {
                Some(true) => format!("met ({})", times(rate_ratio)),
                Some(false) => format!("MISSED ({})", times(rate_ratio)),
                None => "not measured".into(),
            }
        );
        targets.push(json!({
            "connections": connections,
            "rate_vs_baseline_at_least": RATE_TARGET,
            "rate_ratio": rate_ratio,
            "met": met,
        }));
    }
    Ok(json!({
        "scenario": "http",
        "what": "OPEN of one object over HTTP/1.1 keep-alive, N connections with one request in flight each (closed loop)",
        "path": PATH,
        "body_bytes": body.len(),
        "window_s": plan.window.as_secs_f64(),
        "rounds": plan.rounds,
        "warmup_s": plan.warmup.as_secs_f64(),
        "baseline": "bare hyper 1.x server process answering the same body",
        "runs": runs.iter().map(|(c, f, b)| json!({
            "connections": c,
            "flowhub": f.json(),
            "baseline": b.json(),
            "ratio_rate_flowhub_to_baseline": ratio(Some(f.per_sec()), Some(b.per_sec())),
            "ratio_cpu_flowhub_to_baseline": ratio(f.cpu_us_per_op, b.cpu_us_per_op),
        })).collect::<Vec<_>>(),
        "target": targets,
    }))
}

/// Starts the bare hyper process and hands it the body on its stdin.
fn spawn_hyper(body: &str) -> Res<Server> {
    Server::spawn_with_input(FLAG, &format!("{body}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_client_reads_content_length_bodies_on_a_kept_alive_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            for body in ["{\"a\":1}", "{\"success\":true}"] {
                let _ = s.read(&mut buf).await.expect("read");
                // Head and body in separate writes: the client must wait for the rest.
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                s.write_all(head.as_bytes()).await.expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
                s.write_all(body.as_bytes()).await.expect("write");
            }
        });
        let mut c = Conn::open(addr).await.expect("connect");
        let (status, body) = c.roundtrip(&request_bytes()).await.expect("first");
        assert_eq!((status, body), (200, &b"{\"a\":1}"[..]));
        let (status, body) = c.roundtrip(&request_bytes()).await.expect("second");
        assert_eq!((status, body), (200, &b"{\"success\":true}"[..]));
    }
}
