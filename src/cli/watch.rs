//! `flowhub watch`: subscribe to an endpoint, an object or a live query and print every change
//! event as one JSON line, for operators and scripts (like `nats sub`).
//!
//! When the connection drops, it reconnects and resumes from the last position it printed,
//! so nothing is missed or printed twice; if the hub can no longer resume from there
//! (`recovered: false`) it says so and exits with status 3.
//!
//! Exit status: 0 after `--count` events (or when the hub closes the connection for good, as on
//! its shutdown with `--no-reconnect`), 1 when the hub refuses the subscription, 2 when the hub
//! cannot be reached or the arguments are wrong, 3 when changes were missed.

use std::io::Write;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::ClientArgs;

/// Arguments of `flowhub watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The endpoint, e.g. `inventory/device`.
    pub endpoint: String,
    /// Follow one object only.
    #[arg(long, short = 'o')]
    pub objectid: Option<String>,
    /// A live query: the condition tree of LIST (`condition.values`) as JSON, e.g.
    /// '{"items":[{"key":"city","operator":"EQUAL","value":"Envik"}]}'.
    #[arg(long = "where", short = 'w')]
    pub condition: Option<String>,
    /// The namespace.
    #[arg(long, short = 'n', default_value = "")]
    pub namespace: String,
    /// Resume after this position (a `position` printed earlier).
    #[arg(long)]
    pub from: Option<u64>,
    /// The epoch the `--from` position belongs to (refuses to resume into another history).
    #[arg(long)]
    pub epoch: Option<String>,
    /// Print the current state first, as one line `{"type":"snapshot",...}`.
    #[arg(long)]
    pub snapshot: bool,
    /// UPDATE events carry the merge patch instead of the whole object.
    #[arg(long)]
    pub patch: bool,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit when the connection drops instead of reconnecting and resuming.
    #[arg(long)]
    pub no_reconnect: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Why watching stopped.
enum Stop {
    /// `--count` reached.
    Done,
    /// The connection dropped (reconnect and resume).
    Dropped(String),
    /// The subscription was refused.
    Refused(Value),
    /// The hub cannot resume from our position.
    Missed(u64),
}

/// Where the next connection resumes.
struct Resume {
    position: Option<u64>,
    epoch: Option<String>,
    printed: u64,
}

/// Runs the subcommand; returns the process exit status.
pub async fn run(args: WatchArgs) -> i32 {
    let condition = match &args.condition {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("flowhub watch: --where is not valid JSON: {e}");
                return 2;
            }
        },
        None => None,
    };
    let mut resume = Resume {
        position: args.from,
        epoch: args.epoch.clone(),
        printed: 0,
    };
    let mut backoff = Duration::from_millis(100);
    let mut connected_once = false;
    loop {
        match watch_once(&args, condition.as_ref(), &mut resume, connected_once).await {
            Ok(Stop::Done) => return 0,
            Ok(Stop::Refused(reply)) => {
                eprintln!(
                    "flowhub watch: the hub refused the subscription: {} {}",
                    reply["errorcode"].as_str().unwrap_or("?"),
                    reply["message"].as_str().unwrap_or("")
                );
                return 1;
            }
            Ok(Stop::Missed(from)) => {
                eprintln!(
                    "flowhub watch: the hub cannot resume from position {from} (recovered: false): changes were missed; start again (with --snapshot) to reload"
                );
                return 3;
            }
            Ok(Stop::Dropped(why)) => {
                connected_once = true;
                if args.no_reconnect {
                    eprintln!("flowhub watch: {why}");
                    return 0;
                }
                eprintln!("flowhub watch: {why}; reconnecting");
                backoff = Duration::from_millis(100);
            }
            Err(e) if !connected_once || args.no_reconnect => {
                eprintln!("flowhub watch: {e}");
                return 2;
            }
            Err(e) => eprintln!("flowhub watch: {e}; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection: subscribe (resuming if there is a position), then print events until the
/// connection drops or `--count` is reached. `Err`: the hub could not be reached.
async fn watch_once(
    args: &WatchArgs,
    condition: Option<&Value>,
    resume: &mut Resume,
    again: bool,
) -> Result<Stop, String> {
    let url = args.client.ws_url();
    let url = url.as_str();
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| format!("no answer from {url} within 10s"))?
    .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let (mut sink, mut stream) = ws.split();
    let mut frame = json!({
        "type": "subscribe",
        "requestid": 1,
        "subscription": "watch",
        "endpoint": args.endpoint,
        "namespace": args.namespace,
        "patch": args.patch,
    });
    if let Some(id) = &args.objectid {
        frame["objectid"] = json!(id);
    }
    if let Some(c) = condition {
        frame["condition"] = c.clone();
    }
    if let Some(p) = resume.position {
        frame["from"] = json!(p);
        if let Some(e) = &resume.epoch {
            frame["epoch"] = json!(e);
        }
    }
    // A snapshot only on the first subscribe: a resume continues where the output stopped.
    let snapshot = args.snapshot && !again && resume.position.is_none();
    frame["snapshot"] = json!(snapshot);
    if let Some(t) = &args.client.token {
        frame["token"] = json!(t);
    }
    // With a user and password (and no token), log in first; the login's reply comes first.
    if let (None, Some(u), Some(p)) = (&args.client.token, &args.client.user, &args.client.password)
    {
        let login = json!({"type": "login", "requestid": 0, "username": u, "password": p});
        sink.send(Message::text(login.to_string()))
            .await
            .map_err(|e| format!("send failed: {e}"))?;
    }
    sink.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| format!("send failed: {e}"))?;
    let mut out = std::io::stdout().lock();
    while let Some(m) = stream.next().await {
        let value: Value = match m {
            Ok(Message::Text(t)) => serde_json::from_str(&t).map_err(|e| e.to_string())?,
            Ok(Message::Binary(b)) => rmp_serde::from_slice(&b).map_err(|e| e.to_string())?,
            Ok(Message::Close(c)) => {
                let why = match c {
                    Some(c) => format!("the hub closed the connection ({} {})", c.code, c.reason),
                    None => "the hub closed the connection".to_string(),
                };
                return Ok(Stop::Dropped(why));
            }
            Ok(_) => continue,
            Err(e) => return Ok(Stop::Dropped(format!("connection lost: {e}"))),
        };
        match value["type"].as_str() {
            Some("reply") if value["requestid"] == json!(0) && value["success"] != json!(true) => {
                return Ok(Stop::Refused(value));
            }
            Some("reply") if value["requestid"] == json!(0) => {}
            Some("reply") => {
                if value["success"] != json!(true) {
                    return Ok(Stop::Refused(value));
                }
                if let Some(from) = resume.position {
                    if value["recovered"] == json!(false) {
                        return Ok(Stop::Missed(from));
                    }
                }
                if let Some(e) = value["epoch"].as_str() {
                    resume.epoch = Some(e.to_string());
                }
                let position = value["position"].as_u64();
                if resume.position.is_none() {
                    resume.position = position;
                }
                eprintln!(
                    "flowhub watch: watching {} from position {} (epoch {})",
                    args.endpoint,
                    position.unwrap_or(0),
                    resume.epoch.as_deref().unwrap_or("?")
                );
                if snapshot {
                    let mut line =
                        json!({"type": "snapshot", "position": position, "epoch": resume.epoch});
                    line["data"] = value["data"].clone();
                    if let Some(c) = value.get("count") {
                        line["count"] = c.clone();
                    }
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Some("event") => {
                let mut ev = value;
                if let Value::Object(o) = &mut ev {
                    o.shift_remove("subscription");
                }
                if let Some(p) = ev["position"].as_u64() {
                    resume.position = Some(p);
                }
                // A closed standard output (`| head`) ends the watch quietly.
                if writeln!(out, "{ev}").and_then(|()| out.flush()).is_err() {
                    return Ok(Stop::Done);
                }
                resume.printed += 1;
                if args.count.is_some_and(|n| resume.printed >= n) {
                    let _ = sink.close().await;
                    return Ok(Stop::Done);
                }
            }
            _ => {}
        }
    }
    Ok(Stop::Dropped("the connection ended".into()))
}
