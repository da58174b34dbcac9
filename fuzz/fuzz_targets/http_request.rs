//! The HTTP bridge before dispatch: verb, path resolution, query string, the `Flow-*`
//! headers and their query-string twins, `Authorization`, the body; then the checks the
//! dispatcher makes before it looks at any state, and the error reply.
#![no_main]

use arbitrary::Arbitrary;
use flowhub::fuzzing::{admit, http_request, HttpOutcome};
use flowhub::protocol::{encode, Encoding, ErrorReply, Framing, Outcome};
use libfuzzer_sys::fuzz_target;

const VERBS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "BREW",
];
const FIELDS: [(&str, &str); 8] = [
    ("Flow-Auth-Token", "token"),
    ("Flow-Request-ObjectId", "objectid"),
    ("Flow-Request-Namespace", "namespace"),
    ("Flow-Request-Method", "method"),
    ("Flow-Request-Parameters", "parameters"),
    ("Flow-Request-Parameter", "parameter"),
    ("Flow-Request-Timeout", "timeout"),
    ("Authorization", "authorization"),
];

#[derive(Arbitrary, Debug)]
enum Name {
    Field(u8),
    ContentType,
    Accept,
    Free(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    verb: u8,
    /// Under `/api/` or not.
    api: bool,
    segments: Vec<String>,
    trailing_slash: bool,
    /// Percent-encode what the URI grammar does not allow, or send it as it is.
    escape: bool,
    query: Vec<(Name, String)>,
    headers: Vec<(Name, Vec<u8>)>,
    msgpack: bool,
    body: Vec<u8>,
    /// Whether the whole path names a known endpoint.
    known: bool,
}

fn escape(s: &str, on: bool) -> String {
    if !on {
        return s.to_string();
    }
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn name(n: &Name, header: bool) -> String {
    match n {
        Name::Field(i) => {
            let (h, q) = FIELDS[usize::from(*i) % FIELDS.len()];
            if header { h } else { q }.to_string()
        }
        Name::ContentType => "content-type".into(),
        Name::Accept => "accept".into(),
        Name::Free(s) => s.clone(),
    }
}

fuzz_target!(|input: Input| {
    let mut uri = String::from(if input.api { "/api/" } else { "/" });
    let segments: Vec<String> = input
        .segments
        .iter()
        .map(|s| escape(s, input.escape))
        .collect();
    uri.push_str(&segments.join("/"));
    if input.trailing_slash {
        uri.push('/');
    }
    if !input.query.is_empty() {
        uri.push('?');
        let pairs: Vec<String> = input
            .query
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    escape(&name(k, false), input.escape),
                    escape(v, input.escape)
                )
            })
            .collect();
        uri.push_str(&pairs.join("&"));
    }
    let names: Vec<Vec<u8>> = input
        .headers
        .iter()
        .map(|(n, _)| name(n, true).into_bytes())
        .collect();
    let mut headers: Vec<(&[u8], &[u8])> = names
        .iter()
        .zip(&input.headers)
        .map(|(n, (_, v))| (n.as_slice(), v.as_slice()))
        .collect();
    if input.msgpack {
        headers.push((b"content-type", b"application/msgpack"));
    }
    let verb = VERBS[usize::from(input.verb) % VERBS.len()];
    let known = |_: &str| input.known;
    match http_request(verb.as_bytes(), &uri, &headers, &input.body, 32, &known) {
        HttpOutcome::Call(request) => {
            if let Err(e) = admit(&request) {
                let reply: Outcome = Err(ErrorReply::new(e));
                encode(&reply, Framing::Http, Encoding::Json);
            }
        }
        HttpOutcome::Refused(e) => {
            let reply: Outcome = Err(ErrorReply::new(e));
            encode(&reply, Framing::Http, Encoding::MsgPack);
        }
        HttpOutcome::NotHttp | HttpOutcome::MethodNotAllowed => {}
    }
});
