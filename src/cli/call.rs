//! `flowhub call`: one call over the WebSocket, the reply printed as JSON.
//!
//! Credentials: `--token` / `FLOWHUB_TOKEN` goes into the call; `--user` and `--password`
//! (`FLOWHUB_USER` / `FLOWHUB_PASSWORD`) log in with a login frame first, and a failed login
//! is printed as the reply.
//!
//! Exit status: 0 when the reply says `success: true`, 1 when it says `false`, 2 when the hub
//! could not be reached or the arguments are wrong.

use std::io::Write;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::ClientArgs;

/// Arguments of `flowhub call`.
#[derive(Debug, Clone, clap::Args)]
pub struct CallArgs {
    /// The endpoint, e.g. `address/address`.
    pub endpoint: String,
    /// LIST, OPEN, UPDATE, DELETE, INDEX, CREATE or RUN.
    pub method: String,
    /// The object id (OPEN, UPDATE, DELETE, INDEX, RUN; CREATE with a chosen id).
    #[arg(long, short = 'o')]
    pub objectid: Option<String>,
    /// The namespace.
    #[arg(long, short = 'n', default_value = "")]
    pub namespace: String,
    /// Parameters: JSON or key=value pairs joined by `&`.
    #[arg(long, short = 'p')]
    pub parameters: Option<String>,
    /// Data: JSON text, `@file` to read a file, or `-` to read standard input.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// Send the call as MessagePack instead of JSON.
    #[arg(long)]
    pub msgpack: bool,
    /// Print the reply on one line instead of indented.
    #[arg(long)]
    pub compact: bool,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the subcommand; returns the process exit status.
pub async fn run(args: CallArgs) -> i32 {
    match call(&args).await {
        Ok(reply) => {
            let text = if args.compact {
                reply.to_string()
            } else {
                serde_json::to_string_pretty(&reply).unwrap_or_else(|_| reply.to_string())
            };
            // A closed standard output (`| head -c0`) is not worth a panic; the exit status
            // still says how the call went.
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            if reply.get("success") == Some(&Value::Bool(true)) {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("flowhub call: {e}");
            2
        }
    }
}

fn read_data(spec: &str) -> Result<Value, String> {
    let text = if spec == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("cannot read standard input: {e}"))?
    } else if let Some(path) = spec.strip_prefix('@') {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?
    } else {
        spec.to_string()
    };
    serde_json::from_str(&text).map_err(|e| format!("--data is not valid JSON: {e}"))
}

/// Sends the call and returns the reply without its frame fields.
pub async fn call(args: &CallArgs) -> Result<Value, String> {
    let mut frame = json!({
        "type": "call",
        "requestid": 1,
        "endpoint": args.endpoint,
        "method": args.method,
        "namespace": args.namespace,
    });
    if let Some(id) = &args.objectid {
        frame["objectid"] = json!(id);
    }
    if let Some(p) = &args.parameters {
        frame["parameters"] = serde_json::from_str::<Value>(p).unwrap_or_else(|_| json!(p));
    }
    if let Some(d) = &args.data {
        frame["data"] = read_data(d)?;
    }
    if let Some(t) = &args.client.token {
        frame["token"] = json!(t);
    }
    let limit = Duration::from_secs(args.timeout);
    let (mut ws, _) = tokio::time::timeout(
        limit,
        tokio_tungstenite::connect_async(args.client.ws_url()),
    )
    .await
    .map_err(|_| {
        format!(
            "no answer from {} within {}s",
            args.client.ws_url(),
            args.timeout
        )
    })?
    .map_err(|e| format!("cannot connect to {}: {e}", args.client.ws_url()))?;
    // With a user and password (and no token), log in first: the call then needs no token.
    let login = match (&args.client.token, &args.client.user, &args.client.password) {
        (None, Some(u), Some(p)) => {
            Some(json!({"type": "login", "requestid": 0, "username": u, "password": p}))
        }
        _ => None,
    };
    let mut reply = Value::Null;
    for (id, frame) in login.iter().map(|l| (0, l)).chain([(1, &frame)]) {
        let msg = if args.msgpack {
            Message::Binary(
                rmp_serde::to_vec_named(frame)
                    .map_err(|e| e.to_string())?
                    .into(),
            )
        } else {
            Message::text(frame.to_string())
        };
        ws.send(msg)
            .await
            .map_err(|e| format!("send failed: {e}"))?;
        reply = tokio::time::timeout(limit, async {
            while let Some(m) = ws.next().await {
                let value: Value = match m.map_err(|e| format!("receive failed: {e}"))? {
                    Message::Text(t) => serde_json::from_str(&t).map_err(|e| e.to_string())?,
                    Message::Binary(b) => rmp_serde::from_slice(&b).map_err(|e| e.to_string())?,
                    Message::Close(c) => {
                        return Err(format!("the hub closed the connection: {c:?}"))
                    }
                    _ => continue,
                };
                if value.get("requestid") == Some(&json!(id)) || value.get("requestid").is_none() {
                    return Ok(value);
                }
            }
            Err("the hub closed the connection".to_string())
        })
        .await
        .map_err(|_| format!("no reply within {}s", args.timeout))??;
        if reply.get("success") != Some(&json!(true)) {
            break;
        }
    }
    // Close cleanly: send the close frame and wait (briefly) for the hub's answer to it.
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let mut reply = reply;
    if let Value::Object(o) = &mut reply {
        o.shift_remove("type");
        o.shift_remove("requestid");
    }
    Ok(reply)
}
