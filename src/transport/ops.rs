//! The operational endpoints, beside the API on the one listener: `GET /health`,
//! `GET /ready` and `GET /metrics`. They take no credentials (docs/OPERATIONS.md says why)
//! and never collide with a call: every call's path starts with `/api/`.
//!
//! - `/health`: 200 `{"status":"ok"}` whenever the process answers at all.
//! - `/ready`: 200 `{"status":"ready"}` when the log is recovered (the hub listens only
//!   after that) and takes writes; 503 `{"status":"unavailable","reason":…}` while the
//!   last log append failed (writes get `UNAVAILABLE` until one succeeds again).
//! - `/metrics`: every series in the Prometheus text format (version 0.0.4).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::Hub;

/// The paths this module answers.
pub const PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers one of [`PATHS`].
pub async fn handle(req: Request<Incoming>, hub: &Hub) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = super::http::json_response(
            405,
            Bytes::from_static(b"{\"status\":\"error\",\"reason\":\"only GET is allowed here\"}"),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = match req.uri().path() {
        "/health" => super::http::json_response(200, Bytes::from_static(b"{\"status\":\"ok\"}")),
        "/ready" => ready(hub),
        _ => metrics(hub).await,
    };
    if head {
        *r.body_mut() = Full::new(Bytes::new());
    }
    r
}

fn ready(hub: &Hub) -> Response<Full<Bytes>> {
    match hub.dispatcher.store().log_failure() {
        None => super::http::json_response(200, Bytes::from_static(b"{\"status\":\"ready\"}")),
        Some(error) => {
            let body = serde_json::json!({
                "status": "unavailable",
                "reason": format!("the log refused the last write ({error}); writes get UNAVAILABLE until one succeeds"),
            });
            super::http::json_response(503, Bytes::from(body.to_string()))
        }
    }
}

async fn metrics(hub: &Hub) -> Response<Full<Bytes>> {
    // Sums over every subscription and collection: off the async workers.
    let (fanout, store) = (hub.fanout.clone(), hub.dispatcher.store().clone());
    let rendered = tokio::task::spawn_blocking(move || {
        crate::ops::render(crate::ops::Totals {
            subscriptions: fanout.subscriptions(),
            outbound_queue_bytes: fanout.queued_bytes(),
            store_objects: store.objects(),
        })
    })
    .await;
    match rendered {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "rendering the metrics failed");
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}
