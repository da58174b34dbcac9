//! The HTTP bridge: `/api/<application>/<endpoint>/<objectid>` to a [`Request`] and the
//! outcome back to the same envelope, with the HTTP status of the error's class.
//!
//! Call fields come from headers (`Flow-Auth-Token`, `Flow-Request-ObjectId`,
//! `Flow-Request-Namespace`, `Flow-Request-Method`, `Flow-Request-Parameters`,
//! `Flow-Request-Parameter`) or their query-string twins (`token`, `objectid`, `namespace`,
//! `method`, `parameters`, `parameter`); a header wins over the query string (for the
//! parameters, key by key). Header values wrapped in double quotes (as the seed writes them)
//! are unwrapped; header and query-string values are UTF-8 text, and one that is not is
//! refused with `INVALID_REQUEST` rather than ignored. The body is the data.
//!
//! Verbs: GET, POST, PUT, PATCH and DELETE map to Flow methods; any other verb (HEAD,
//! OPTIONS, TRACE, ...) gets `405 Method Not Allowed` with an `Allow` header and the usual
//! envelope (`INVALID_REQUEST`), whatever `Flow-Request-Method` says.
//!
//! Authentication (SPEC 13): `Authorization: Basic` (user and password), `Authorization:
//! Bearer`, `Flow-Auth-Token` or the `token` query parameter; the dispatcher checks them. A
//! `RATE_LIMITED` reply carries `Retry-After`. The OpenAPI documents need a valid login too.
//!
//! Path resolution (`protocol/SPEC.md`, "HTTP bridge"): a trailing `/` means the path names
//! the endpoint only; without one, if an object id came in a header or the query string, the
//! whole path is the endpoint; else, if the whole path names a known endpoint, it is that
//! endpoint; else the last segment is the object id.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method as HttpMethod, Request as HttpRequest, Response, StatusCode};
use serde_json::Value;

use super::Hub;
use crate::dispatch::log_error;
use crate::limits::{breach, Limit};
use crate::protocol::frame::decode;
use crate::protocol::params::normalize;
use crate::protocol::{encode, Encoding, ErrorCode, FlowError, Framing, Method, Outcome, Request};

const MSGPACK: &str = "application/msgpack";

/// A response with a JSON (or other) body.
pub fn json_response(status: u16, body: Bytes) -> Response<Full<Bytes>> {
    response(status, body, "application/json")
}

fn response(status: u16, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The envelope of an error raised before dispatch, logged with its errorid.
pub fn error_response(
    error: FlowError,
    endpoint: &str,
    encoding: Encoding,
) -> Response<Full<Bytes>> {
    let outcome: Outcome = Err(log_error(error, None, endpoint));
    outcome_response(&outcome, encoding)
}

/// `429 RATE_LIMITED` for a request on a connection refused because its address holds
/// `max_connections_per_address` already; the connection closes after it.
pub fn too_many_connections(hub: &Hub, path: &str) -> Response<Full<Bytes>> {
    let mut r = error_response(
        FlowError::new(
            ErrorCode::RateLimited,
            format!(
                "too many connections from this address: it holds {} already (max_connections_per_address); retry once one has closed",
                hub.config.max_connections_per_address
            ),
        ),
        path,
        Encoding::Json,
    );
    r.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    r.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// `429 RATE_LIMITED` for a request from an address over `http_requests_per_s_per_address`;
/// `Retry-After` says when the next one will be taken (whole seconds, at least 1).
pub fn too_many_requests(hub: &Hub, path: &str, wait: Duration) -> Response<Full<Bytes>> {
    breach(Limit::HttpRequestsPerAddress);
    let mut r = error_response(
        FlowError::new(
            ErrorCode::RateLimited,
            format!(
                "too many requests from this address: at most {} a second (http_requests_per_s_per_address); retry in {} ms",
                hub.config.http_requests_per_s_per_address,
                wait.as_millis().max(1)
            ),
        ),
        path,
        Encoding::Json,
    );
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    r
}

/// `404` for paths outside `/api`, `/ws` and the operational endpoints.
pub fn not_found(path: &str) -> Response<Full<Bytes>> {
    error_response(
        FlowError::not_found(format!("no such path {path:?}; the API is under /api/")),
        path,
        Encoding::Json,
    )
}

fn outcome_response(outcome: &Outcome, encoding: Encoding) -> Response<Full<Bytes>> {
    let status = match outcome {
        Ok(_) => 200,
        Err(e) => e.http_status(),
    };
    let body = encode(outcome, Framing::Http, encoding);
    match encoding {
        Encoding::Json => json_response(status, body),
        Encoding::MsgPack => response(status, body, MSGPACK),
    }
}

/// One HTTP call.
pub async fn handle(req: HttpRequest<Incoming>, hub: Hub) -> Response<Full<Bytes>> {
    let reply_encoding = if accepts_msgpack(req.headers()) {
        Encoding::MsgPack
    } else {
        Encoding::Json
    };
    let raw_path = req.uri().path().to_string();
    if !SUPPORTED_VERBS.contains(req.method()) {
        return method_not_allowed(req.method(), &raw_path, reply_encoding);
    }
    let query = match parse_query(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return error_response(e, &raw_path, reply_encoding),
    };
    let segments = match split_path(&raw_path) {
        Ok(s) => s,
        Err(e) => return error_response(e, &raw_path, reply_encoding),
    };
    let creds = match credentials(&req) {
        Ok(c) => c,
        // Open mode ignores credentials, malformed ones too.
        Err(_) if hub.dispatcher.auth().is_open() => crate::auth::Credentials::default(),
        Err(e) => return error_reply(&hub, e, &raw_path, reply_encoding),
    };
    // The OpenAPI descriptions: all in one, or one application's.
    if req.method() == HttpMethod::GET
        && matches!(
            field(req.headers(), &query, "Flow-Request-Method", "method"),
            Ok(None)
        )
    {
        if is_openapi(&segments) {
            let token = match field(req.headers(), &query, "Flow-Auth-Token", "token") {
                Ok(t) => t.or_else(|| bearer(req.headers())),
                Err(e) => return error_response(e, &raw_path, reply_encoding),
            };
            if let Err(e) = hub
                .dispatcher
                .auth()
                .authenticate(token.as_deref(), &creds)
                .await
            {
                return error_reply(&hub, e, &raw_path, reply_encoding);
            }
        }
        if let Some(reply) = openapi(&hub, &segments, &raw_path) {
            return reply;
        }
    }
    let (parts, body) = req.into_parts();
    let request = match build_request(
        &hub,
        &parts.method,
        &parts.headers,
        &query,
        &raw_path,
        segments,
    ) {
        Ok(r) => r,
        Err(e) => return error_response(e, &raw_path, reply_encoding),
    };
    // The body must arrive within the handshake timeout too, so a client that promises a
    // body and never sends it cannot hold a connection slot.
    let limit = Duration::from_millis(hub.config.handshake_timeout_ms);
    let body = match tokio::time::timeout(
        limit,
        Limited::new(body, hub.config.max_body_bytes).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let err = if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                breach(Limit::MaxBodyBytes);
                FlowError::too_large(format!(
                    "request body is larger than {} bytes",
                    hub.config.max_body_bytes
                ))
            } else {
                FlowError::invalid(format!("request body could not be read: {e}"))
            };
            return error_response(err, &request.endpoint, reply_encoding);
        }
        Err(_) => {
            breach(Limit::HandshakeTimeout);
            let err = FlowError::invalid(format!(
                "request body did not arrive within {} ms",
                hub.config.handshake_timeout_ms
            ));
            return error_response(err, &request.endpoint, reply_encoding);
        }
    };
    let mut request = request;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let encoding = if content_type_is(&parts.headers, MSGPACK) {
            Encoding::MsgPack
        } else {
            Encoding::Json
        };
        match decode(&body, encoding, hub.config.max_depth) {
            Ok(v) => request.data = Some(v),
            Err(e) => {
                let e = FlowError::invalid(e.message.replacen("frame", "body", 1));
                return error_response(e, &request.endpoint, reply_encoding);
            }
        }
    }
    if request.token.is_none() {
        request.token = bearer(&parts.headers);
    }
    let outcome = hub
        .dispatcher
        .call_with(request, &crate::protocol::Caller::default(), &creds)
        .await;
    with_retry_after(&hub, outcome_response(&outcome, reply_encoding))
}

/// The `Authorization: Basic` pair and the client's address.
fn credentials<B>(req: &HttpRequest<B>) -> Result<crate::auth::Credentials, FlowError> {
    let basic = match req.headers().get(hyper::header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| FlowError::invalid("header Authorization is not valid text"))?;
            crate::auth::parse_basic(v)?
        }
    };
    Ok(crate::auth::Credentials {
        basic,
        session: None,
        peer: req.extensions().get::<super::PeerAddr>().map(|p| p.0.ip()),
    })
}

/// The token of `Authorization: Bearer`, if that is the header's scheme.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// An error reply before dispatch, with `Retry-After` when it is `RATE_LIMITED`.
fn error_reply(hub: &Hub, e: FlowError, path: &str, encoding: Encoding) -> Response<Full<Bytes>> {
    with_retry_after(hub, error_response(e, path, encoding))
}

/// Adds `Retry-After` (the throttle window) to a 429.
fn with_retry_after(hub: &Hub, mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    if r.status() == StatusCode::TOO_MANY_REQUESTS {
        let secs = hub.dispatcher.auth().retry_after_s();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
    }
    r
}

fn is_openapi(segments: &[String]) -> bool {
    matches!(segments, [doc] | [_, doc] if doc == "openapi.json")
}

/// The HTTP verbs the bridge maps to Flow methods.
const SUPPORTED_VERBS: [HttpMethod; 5] = [
    HttpMethod::GET,
    HttpMethod::POST,
    HttpMethod::PUT,
    HttpMethod::PATCH,
    HttpMethod::DELETE,
];

/// `405` with an `Allow` header for verbs the bridge does not map (HEAD, OPTIONS, TRACE, ...);
/// the body is the usual envelope with `INVALID_REQUEST`.
fn method_not_allowed(verb: &HttpMethod, path: &str, encoding: Encoding) -> Response<Full<Bytes>> {
    let mut r = error_response(
        FlowError::invalid(format!(
            "HTTP {verb} is not supported: use GET, POST, PUT, PATCH or DELETE"
        )),
        path,
        encoding,
    );
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r.headers_mut().insert(
        hyper::header::ALLOW,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
    );
    r
}

/// `GET /api/openapi.json` (every endpoint) and `GET /api/<application>/openapi.json` (one
/// application's; `404` when no endpoint of that application is known).
fn openapi(hub: &Hub, segments: &[String], path: &str) -> Option<Response<Full<Bytes>>> {
    let application = match segments {
        [doc] if doc == "openapi.json" => None,
        [app, doc] if doc == "openapi.json" => Some(app.as_str()),
        _ => return None,
    };
    // The hub's own endpoints (`hub/endpoint`) are described in protocol/SPEC.md, not here.
    let mut endpoints = hub.dispatcher.registry().all();
    endpoints.retain(|e| e.kind != crate::dispatch::registry::Kind::System);
    if let Some(app) = application {
        if !endpoints.iter().any(|e| e.application == app) {
            return Some(error_response(
                FlowError::not_found(format!("no endpoint of application {app:?} is known")),
                path,
                Encoding::Json,
            ));
        }
    }
    let doc = super::openapi::document(&endpoints, application);
    Some(json_response(200, Bytes::from(doc.to_string())))
}

fn accepts_msgpack(headers: &HeaderMap) -> bool {
    headers
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(MSGPACK) || v.contains("application/x-msgpack"))
}

fn content_type_is(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(mime) || v.contains("application/x-msgpack"))
}

/// The percent-decoded segments after `/api/`; the last is empty when the path ends in `/`.
fn split_path(path: &str) -> Result<Vec<String>, FlowError> {
    let rest = path.strip_prefix("/api/").unwrap_or("");
    let mut out = Vec::new();
    for seg in rest.split('/') {
        let s = percent_encoding::percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| {
                FlowError::invalid("the path is not valid UTF-8 after percent-decoding")
            })?;
        out.push(s.into_owned());
    }
    Ok(out)
}

/// The query string's pairs (`+` is a space, `%XX` escapes are decoded); a value that is not
/// UTF-8 after decoding is an error rather than a silently mangled id or namespace.
fn parse_query(query: Option<&str>) -> Result<Vec<(String, String)>, FlowError> {
    let Some(query) = query else {
        return Ok(Vec::new());
    };
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| {
                FlowError::invalid("the query string is not valid UTF-8 after percent-decoding")
            })
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// A header value without the double quotes the seed puts around some of them.
fn unquote(s: &str) -> &str {
    let t = s.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        &t[1..t.len() - 1]
    } else {
        t
    }
}

/// Every value of a header (all occurrences), or, when the header is absent, of its
/// query-string twin: a header wins over the query string. Header values are taken as UTF-8
/// (an id or a namespace may be any text); one that is not is an error, never ignored.
fn values(
    headers: &HeaderMap,
    query: &[(String, String)],
    header: &str,
    key: &str,
) -> Result<Vec<String>, FlowError> {
    let mut out = Vec::new();
    for v in headers.get_all(header) {
        let s = std::str::from_utf8(v.as_bytes())
            .map_err(|_| FlowError::invalid(format!("header {header} is not valid UTF-8")))?;
        out.push(unquote(s).to_string());
    }
    if out.is_empty() {
        out.extend(
            query
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.clone()),
        );
    }
    Ok(out)
}

/// The first non-empty value of a field: the header if present, else the query string.
fn field(
    headers: &HeaderMap,
    query: &[(String, String)],
    header: &str,
    key: &str,
) -> Result<Option<String>, FlowError> {
    Ok(values(headers, query, header, key)?
        .into_iter()
        .find(|s| !s.is_empty()))
}

fn build_request(
    hub: &Hub,
    verb: &HttpMethod,
    headers: &HeaderMap,
    query: &[(String, String)],
    raw_path: &str,
    mut segments: Vec<String>,
) -> Result<Request, FlowError> {
    let objectid_field = field(headers, query, "Flow-Request-ObjectId", "objectid")?;
    let method_field = field(headers, query, "Flow-Request-Method", "method")?;
    if segments.first().is_none_or(String::is_empty) {
        return Err(FlowError::not_found(
            "the path names no application: call /api/<application>/<endpoint>/<objectid>",
        ));
    }
    let application = segments.remove(0);
    let trailing_slash = raw_path.ends_with('/');
    if trailing_slash {
        segments.pop();
    }
    if segments.is_empty() || segments.iter().any(String::is_empty) {
        return Err(FlowError::not_found(format!(
            "the path names no endpoint after application {application:?}: call /api/<application>/<endpoint>/"
        )));
    }
    let whole = segments.join("/");
    let (endpoint, path_objectid) =
        if trailing_slash || objectid_field.is_some() || hub.dispatcher.registry().contains(&whole)
        {
            (whole, None)
        } else {
            let id = segments.pop();
            if segments.is_empty() {
                // `/api/app/x`: one segment that is no known endpoint is the endpoint, not an id.
                (whole, None)
            } else {
                (segments.join("/"), id)
            }
        };
    let objectid = objectid_field.or(path_objectid);
    let method = match method_field {
        Some(m) => Method::parse(&m)?,
        None => match *verb {
            HttpMethod::GET if objectid.is_some() => Method::Open,
            HttpMethod::GET => Method::List,
            HttpMethod::POST if objectid.is_some() => Method::Update,
            HttpMethod::POST => Method::Create,
            HttpMethod::PUT | HttpMethod::PATCH => Method::Update,
            HttpMethod::DELETE => Method::Delete,
            // `handle` answers every other verb with 405 before building a request.
            _ => {
                return Err(FlowError::invalid(format!(
                    "HTTP {verb} is not supported: use GET, POST, PUT, PATCH or DELETE"
                )))
            }
        },
    };
    // Both parameter fields, from the query string first and then from the headers, so that
    // a key given in a header wins over the same key in the query string.
    let mut params = serde_json::Map::new();
    for from_headers in [false, true] {
        for (header, key) in [
            ("Flow-Request-Parameters", "parameters"),
            ("Flow-Request-Parameter", "parameter"),
        ] {
            let raw = if from_headers {
                values(headers, &[], header, key)?
            } else {
                query
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .collect()
            };
            for raw in raw {
                params.extend(normalize(&Value::String(raw))?);
            }
        }
    }
    Ok(Request {
        method,
        endpoint,
        application: Some(application),
        objectid,
        namespace: field(headers, query, "Flow-Request-Namespace", "namespace")?
            .unwrap_or_default(),
        parameters: (!params.is_empty()).then_some(Value::Object(params)),
        data: None,
        token: field(headers, query, "Flow-Auth-Token", "token")?,
        timeout_ms: match field(headers, query, "Flow-Request-Timeout", "timeout")? {
            None => None,
            Some(t) => Some(t.trim().parse::<u64>().map_err(|_| {
                FlowError::invalid(format!(
                    "timeout {t:?} must be a whole number of milliseconds"
                ))
            })?),
        },
    })
}
