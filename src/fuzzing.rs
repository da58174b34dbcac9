//! Entry points for the fuzz targets in `fuzz/` (see `docs/FUZZING.md`): the parts of the
//! hub that read untrusted bytes, reachable without a running hub. Not an API: nothing else
//! may depend on it.
//!
//! Most decoders are public already (`protocol::frame`, `protocol::params`, `query`,
//! `log::format`); what lives here is the HTTP bridge's resolution of a request, which in
//! the hub needs the registry only to ask whether a path names a known endpoint.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method as HttpMethod, Request as HttpRequest, Uri};
use serde_json::Value;

use crate::protocol::frame::decode;
use crate::protocol::{Encoding, FlowError, Request};
use crate::transport::http;

/// What [`http_request`] made of a request: what `transport::http::handle` hands the
/// dispatcher, or the error it answers with before dispatch.
#[derive(Debug)]
pub enum HttpOutcome {
    /// hyper itself refuses the request line or a header: the bridge never sees it.
    NotHttp,
    /// A verb the bridge does not map: `405`.
    MethodNotAllowed,
    /// An error reply before dispatch.
    Refused(FlowError),
    /// The call the dispatcher gets.
    Call(Box<Request>),
}

/// Resolves an HTTP request the way `transport::http::handle` does before dispatch: verb,
/// query string, path, `Authorization`, the `Flow-*` headers and their query-string twins,
/// the parameters, and the body decoded within `max_depth`. `known` says whether a path
/// names a registered endpoint.
pub fn http_request(
    verb: &[u8],
    uri: &str,
    headers: &[(&[u8], &[u8])],
    body: &[u8],
    max_depth: usize,
    known: &dyn Fn(&str) -> bool,
) -> HttpOutcome {
    let Ok(verb) = HttpMethod::from_bytes(verb) else {
        return HttpOutcome::NotHttp;
    };
    let Ok(uri) = uri.parse::<Uri>() else {
        return HttpOutcome::NotHttp;
    };
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            return HttpOutcome::NotHttp;
        };
        map.append(name, value);
    }
    let mut req = HttpRequest::new(());
    *req.method_mut() = verb;
    *req.uri_mut() = uri;
    *req.headers_mut() = map;
    match resolve(&req, body, max_depth, known) {
        Ok(Some(r)) => HttpOutcome::Call(Box::new(r)),
        Ok(None) => HttpOutcome::MethodNotAllowed,
        Err(e) => HttpOutcome::Refused(e),
    }
}

fn resolve(
    req: &HttpRequest<()>,
    body: &[u8],
    max_depth: usize,
    known: &dyn Fn(&str) -> bool,
) -> Result<Option<Request>, FlowError> {
    let raw_path = req.uri().path();
    if !http::SUPPORTED_VERBS.contains(req.method()) {
        return Ok(None);
    }
    let query = http::parse_query(req.uri().query())?;
    let segments = http::split_path(raw_path)?;
    http::credentials(req)?;
    let mut request = http::build_request(
        known,
        req.method(),
        req.headers(),
        &query,
        raw_path,
        segments,
    )?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let encoding = if http::content_type_is(req.headers(), http::MSGPACK) {
            Encoding::MsgPack
        } else {
            Encoding::Json
        };
        request.data = Some(decode(body, encoding, max_depth)?);
    }
    if request.token.is_none() {
        request.token = http::bearer(req.headers());
    }
    Ok(Some(request))
}

/// The checks of a call that the dispatcher makes before it looks at any state: its shape,
/// its parameters in every accepted form, and what LIST, UPDATE and DELETE read from them.
pub fn admit(request: &Request) -> Result<(), FlowError> {
    request.validate()?;
    let params = match &request.parameters {
        Some(p) => crate::protocol::params::normalize(p)?,
        None => serde_json::Map::new(),
    };
    crate::protocol::params::list_query(&params)?;
    crate::protocol::params::expected_version(&params)?;
    if let Some(Value::Object(patch)) = &request.data {
        // UPDATE merges the data into the stored object (RFC 7386).
        crate::store::merge::merge_patch(&mut serde_json::Map::new(), patch);
    }
    Ok(())
}
