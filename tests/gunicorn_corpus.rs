//! gunicorn's request fixtures (gunicorn 23.0.0, MIT, converted by `tests/data/gunicorn/convert.py`) replayed
//! through the running proxy, as a client would send them. For a valid case shoal either refuses it or
//! forwards requests a strict parser reads as the same messages: the same method, target, body and header
//! values (hop-by-hop fields aside). An invalid case must be refused before anything reaches the server.
//! Disagreements are listed in [`DIVERGENCES`] with their reason; a listed case that stops diverging fails
//! the test too, so the list stays true.
//!
//! One difference is systematic and handled rather than listed: gunicorn does not require `Host` in HTTP/1.1
//! requests, shoal does (RFC 9112 section 3.2, as nginx): valid cases get one (see [`with_host`]).

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use base64::Engine;
use common::{Backend, Proxy};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    bytes: String,
    settings: BTreeMap<String, String>,
    error: Option<String>,
    requests: Option<Vec<Expected>>,
}

#[derive(Deserialize)]
struct Expected {
    method: String,
    uri: String,
    version: [u8; 2],
    headers: Vec<(String, String)>,
    body: String,
}

/// Cases where shoal, a proxy in front of any server, answers differently from gunicorn, one server.
const DIVERGENCES: &[(&str, &str)] = &[
    // Requests the RFCs tell a proxy to refuse, which gunicorn accepts (some only under an option).
    ("valid/009.http", "`Transfer-Encoding: identity`: not a transfer coding since RFC 7230; 400"),
    ("valid/029.http", "`identity` before `chunked`: an unknown coding, 501 (HAProxy and nginx refuse it too)"),
    ("valid/030.http", "`identity` before `chunked`: an unknown coding, 501"),
    ("valid/027.http", "a raw UTF-8 byte in the target: targets are ASCII (RFC 9112 section 3.2), 400"),
    ("valid/028.http", "whitespace before the colon: RFC 9112 section 5.1 says MUST reject (gunicorn option)"),
    ("valid/compat_obs_fold.http", "obsolete line folding: refused (RFC 9112 section 5.2 allows it; gunicorn option)"),
    ("valid/compat_obs_fold_huge.http", "obsolete line folding: refused"),
    ("valid/pp_01.http", "a PROXY protocol line: shoal does not take it from clients (gunicorn option)"),
    ("valid/pp_02.http", "a PROXY protocol line: shoal does not take it from clients"),
    ("valid/031compat.http", "methods are case-sensitive (RFC 9110 section 9.1): forwarded as sent, not casefolded"),
    // `Content_Length` / `Transfer_Encoding`: gunicorn drops them by default, or passes them under an option;
    // shoal refuses the request (400), since CGI-style servers read them as framing headers.
    ("valid/040.http", "`Content_Length`/`Transfer_Encoding` refused (gunicorn drops them)"),
    (
        "valid/040_compat.http",
        "`Content_Length`/`Transfer_Encoding` refused (gunicorn passes them with header_map = dangerous)",
    ),
    // Limits: shoal's are HAProxy's (16 KiB heads, 100 fields), larger than gunicorn's defaults; both are
    // configurable (`--max-header-bytes`, `--max-headers`).
    ("valid/024.http", "a 16 KiB request line with gunicorn's limits off: over --max-header-bytes, 414/431"),
    ("invalid/006.http", "a 4 KiB request line: over gunicorn's limit, within shoal's 16 KiB"),
    ("invalid/007.http", "an 8 KiB field: over gunicorn's limit, within shoal's"),
    ("invalid/008.http", "an 8 KiB field: over gunicorn's limit, within shoal's"),
    ("invalid/011.http", "gunicorn configured for 2 fields"),
    ("invalid/012.http", "gunicorn configured for 98-byte fields"),
    // The fixture itself.
    ("valid/099.http", "truncated fixture: 8,599 of the 17,914 body bytes its Content-Length announces"),
];

/// Fields a proxy answers for itself or rewrites: they are not compared.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
];

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Sends the case's bytes on a new connection, half-closes, and reads what comes back until the proxy closes;
/// `None` when it neither closes nor resets the connection within 5 s (a hang is no refusal).
fn replay(proxy: &Proxy, bytes: &[u8]) -> Option<String> {
    let mut c = TcpStream::connect(proxy.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The proxy may refuse and close before taking all the bytes: a failed write is part of some cases.
    let _ = c.write_all(bytes);
    let _ = c.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    match c.read_to_end(&mut out) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        _ => Some(String::from_utf8_lossy(&out).into_owned()),
    }
}

/// The case's bytes with `Host: gunicorn` after the request line of each HTTP/1.1 request gunicorn reads
/// without one.
fn with_host(case: &Case) -> Vec<u8> {
    let bytes = b64(&case.bytes);
    let Some(expected) = &case.requests else { return bytes };
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut rest = &bytes[..];
    for request in expected {
        if request.version != [1, 1] || request.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            continue;
        }
        // Its request line, matched without case (gunicorn may casefold the method).
        let line = format!("{} {} HTTP/1.1\r\n", request.method, request.uri).to_ascii_lowercase().into_bytes();
        let Some(at) = common::find(&rest.to_ascii_lowercase(), &line) else { break };
        let end = at + line.len();
        out.extend_from_slice(&rest[..end]);
        out.extend_from_slice(b"Host: gunicorn\r\n");
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    out
}

/// What happened to a case, or `None` when shoal behaved as the case asks.
fn disagreement(case: &Case, proxy: &Proxy, backend: &Backend) -> Option<String> {
    backend.clear();
    let Some(answer) = replay(proxy, &with_host(case)) else {
        return Some("shoal neither answered nor closed the connection within 5 s".into());
    };
    let status: u16 = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let got = backend.requests();
    if let Some(error) = &case.error {
        // Refused: an error status, or (bytes ending mid-head) a close with nothing forwarded.
        return match (got.is_empty(), status) {
            (true, 0 | 400..=599) => None,
            (true, s) => Some(format!("gunicorn raises {error}; shoal answered {s} without forwarding")),
            (false, _) => Some(format!("gunicorn raises {error}; shoal forwarded {:?}", got[0].head)),
        };
    }
    let expected = case.requests.as_ref().unwrap();
    if got.is_empty() {
        return Some(format!("valid for gunicorn; shoal refused it with {status}"));
    }
    for (i, (want, sent)) in expected.iter().zip(&got).enumerate() {
        let line = format!("{} {} ", want.method, want.uri);
        if !sent.start_line().starts_with(&line) {
            return Some(format!("request {i}: forwarded {:?}, gunicorn reads {line:?}", sent.start_line()));
        }
        if sent.body != b64(&want.body) {
            return Some(format!("request {i}: the body differs: {:?}", sent.body_str()));
        }
        for (name, value) in &want.headers {
            if HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str()) {
                continue;
            }
            if !sent.headers(name).iter().any(|v| v == value.trim()) {
                return Some(format!("request {i}: {name}: {value:?} not forwarded as such: {:?}", sent.head));
            }
        }
    }
    if got.len() != expected.len() {
        return Some(format!("{} requests forwarded, gunicorn reads {}", got.len(), expected.len()));
    }
    None
}

#[test]
fn gunicorn_request_fixtures_through_the_proxy() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gunicorn/cases.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 98);
    let backend = Backend::http(|_| common::ok("ok"));
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--access-log", "off"]);
    let mut unexpected = Vec::new();
    let mut stale = Vec::new();
    for case in &cases {
        let listed = DIVERGENCES.iter().find(|(name, _)| *name == case.name);
        match (disagreement(case, &proxy, &backend), listed) {
            (None, None) => {}
            (Some(why), None) => unexpected.push(format!("{} {:?}: {why}", case.name, case.settings)),
            (None, Some(_)) => stale.push(case.name.clone()),
            (Some(_), Some(_)) => {}
        }
    }
    assert!(unexpected.is_empty(), "{} unexplained disagreements:\n{}", unexpected.len(), unexpected.join("\n"));
    assert!(stale.is_empty(), "listed as divergences but now agreeing: {stale:?}");
}
