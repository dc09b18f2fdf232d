//! llhttp's own request and response test cases (nodejs/llhttp 9.4.2, MIT, in `tests/data/llhttp`) run through
//! shoal's parsers. For every case llhttp runs in strict mode, shoal must agree on how many messages are
//! complete and on whether the next one is refused, except for the divergences listed in [`DIVERGENCES`], each
//! with its reason. A listed case that stops diverging fails the test too, so the list stays true.
//!
//! One difference is systematic and handled rather than listed: llhttp does not require `Host`, shoal does
//! (see [`with_host`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use shoal::http::chunked::{ChunkedDecoder, Emit};
use shoal::http::request::{lower_minor_version, parse_request, RequestBody};
use shoal::http::response::{parse_response, ResponseBody};
use shoal::http::{HeadLimits, HttpError};

/// Cases where shoal, a proxy, deliberately answers differently from llhttp, a parser; by "file: heading".
const DIVERGENCES: &[(&str, &str)] = &[
    // Methods: llhttp knows a fixed list; RFC 9110 section 9.1 makes methods open-ended, and a proxy forwards
    // any token (HAProxy and nginx do too).
    ("request/invalid.md: HTTP protocol and ANNOUNCE method", "any token method is forwarded"),
    ("request/invalid.md: Invalid method", "MKCOLA is a valid token, so a valid method"),
    // CONNECT is not proxied (501); llhttp pauses to hand the connection over.
    ("request/method.md: CONNECT request", "CONNECT answered 501"),
    ("request/method.md: CONNECT request with CAPS", "CONNECT answered 501"),
    ("request/method.md: CONNECT with body", "CONNECT answered 501"),
    ("request/uri.md: Underscore in hostname", "CONNECT answered 501"),
    // Only HTTP/1.x: the asterisk form is OPTIONS-only (RFC 9112 section 3.2.4); RTSP, ICE, HTTP/0.9 and the
    // HTTP/2 preface are other protocols.
    ("request/method.md: M-SEARCH request", "asterisk-form target is for OPTIONS only: 400"),
    ("request/method.md: SOURCE request with ICE", "ICE/1.0 is not HTTP: 400"),
    ("request/method.md: OPTIONS request with RTSP", "RTSP/1.0 is not HTTP: 400"),
    ("request/method.md: ANNOUNCE request with RTSP", "RTSP/1.0 is not HTTP: 400"),
    ("request/method.md: PRI request HTTP2", "the HTTP/2 preface is refused: 400"),
    ("request/sample.md: No HTTP version", "HTTP/0.9 is refused: 400"),
    ("response/sample.md: RTSP response", "RTSP/1.0 is not HTTP: 502 to the client"),
    ("response/sample.md: ICE response", "ICE/1.0 is not HTTP: 502 to the client"),
    ("response/sample.md: HTTP version 0.9", "HTTP/0.9 is refused: 502 to the client"),
    // A bare LF ends a line (RFC 9112 section 2.2 allows it; HAProxy and nginx do the same). It cannot cause a
    // desync: shoal writes every head it forwards again with CRLF, so the next hop sees the lines shoal saw.
    ("request/invalid.md: Missing CR between headers", "bare LF ends a line; forwarded with CRLF"),
    ("request/invalid.md: Headers separated by LF", "bare LF ends a line; forwarded with CRLF"),
    ("request/invalid.md: Empty headers separated by LF", "bare LF ends a line; forwarded with CRLF"),
    ("response/invalid.md: Only LFs present and no body", "bare LF ends a line; forwarded with CRLF"),
    ("response/invalid.md: Only LFs present", "bare LF ends a line; forwarded with CRLF"),
    ("response/sample.md: No carriage ret", "bare LF ends a line; forwarded with CRLF"),
    // A response whose transfer codings shoal cannot frame is refused (502) rather than relayed until close:
    // a backend sending them is broken, and a client would have to guess as well.
    ("response/transfer-encoding.md: `chunked` before other transfer-encoding", "chunked not last: 502"),
    (
        "response/transfer-encoding.md: multiple transfer-encoding where chunked is not the last one",
        "chunked not last: 502",
    ),
    (
        "response/transfer-encoding.md: `chunkedchunked` transfer-encoding does not enable chunked enconding",
        "unknown transfer coding: 502",
    ),
];

const LIMITS: HeadLimits = HeadLimits { max_head_bytes: 64 * 1024, max_headers: 256 };

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Response { skip_body: bool },
}

struct Case {
    id: String,
    kind: Kind,
    input: Vec<u8>,
    /// Messages llhttp completes.
    complete: usize,
    /// llhttp's error after them, if any: `(code, reason)`.
    error: Option<(u32, String)>,
}

/// How shoal's reading of the input ends, after `complete` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Every byte belonged to complete messages.
    Consumed,
    /// The next message is not complete yet.
    Waiting,
    /// The next message is refused with this status.
    Refused(u16),
    /// A message asked for a protocol upgrade: what follows is not HTTP.
    Upgraded,
    /// The last message closes the connection: what follows is never read.
    Closed,
    /// A response delimited by the connection's close: it is complete only at EOF.
    UntilClose,
}

#[test]
fn shoal_agrees_with_llhttp_strict_mode() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llhttp");
    let mut cases = Vec::new();
    for dir in ["request", "response"] {
        let mut files: Vec<_> = fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let name = format!("{dir}/{}", file.file_name().unwrap().to_string_lossy());
            cases.extend(read_cases(&name, &fs::read_to_string(&file).unwrap()));
        }
    }
    assert!(cases.len() > 150, "only {} cases read: is tests/data/llhttp complete?", cases.len());

    let listed: BTreeMap<&str, &str> = DIVERGENCES.iter().copied().collect();
    let mut unexpected = Vec::new();
    let mut stale = Vec::new();
    for case in &cases {
        let read = |input: &[u8]| match case.kind {
            Kind::Request => read_requests(input),
            Kind::Response { skip_body } => read_responses(input, skip_body),
        };
        let (complete, mut end) = read(&case.input);
        // llhttp refuses a field as soon as it is read; shoal judges whole heads. Where the input stops before
        // the head does, end it: the message must then be refused.
        if case.error.is_some() && end == End::Waiting {
            end = read(&[&case.input[..], b"\r\n\r\n"].concat()).1;
        }
        let agrees = complete == case.complete && agrees(case, end);
        let report = format!(
            "{}: llhttp {} complete, {:?}; shoal {complete} complete, {end:?}",
            case.id, case.complete, case.error
        );
        match (agrees, listed.contains_key(case.id.as_str())) {
            (false, false) => unexpected.push(report),
            (true, true) => stale.push(report),
            _ => {}
        }
    }
    let known: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    let missing: Vec<&&str> = listed.keys().filter(|id| !known.contains(id)).collect();
    assert!(
        unexpected.is_empty() && stale.is_empty() && missing.is_empty(),
        "{} cases read.\nunexplained divergences:\n  {}\nlisted but agreeing now:\n  {}\nlisted but not in the corpus: {missing:?}",
        cases.len(),
        unexpected.join("\n  "),
        stale.join("\n  ")
    );
}

/// Whether shoal's end matches llhttp's verdict after the same number of complete messages.
fn agrees(case: &Case, end: End) -> bool {
    match &case.error {
        // 21-23: llhttp pauses on CONNECT and Upgrade; the bytes after are another protocol's.
        Some((21..=23, _)) => end == End::Upgraded,
        // Refusing, or never reading what follows a closing message: the bad bytes are not forwarded.
        Some(_) => matches!(end, End::Refused(_) | End::Closed),
        None => matches!(end, End::Consumed | End::Waiting | End::UntilClose | End::Closed),
    }
}

/// Reads requests the way the client connection does: head, body, next head.
fn read_requests(input: &[u8]) -> (usize, End) {
    let mut rest = input;
    let mut complete = 0;
    loop {
        if rest.is_empty() {
            return (complete, End::Consumed);
        }
        let mut buf = rest.to_vec();
        lower_minor_version(&mut buf);
        let mut added = 0;
        if let Err(HttpError::MissingHost) = parse_request(&buf, &LIMITS) {
            added = with_host(&mut buf);
        }
        let req = match parse_request(&buf, &LIMITS) {
            Err(e) => return (complete, End::Refused(e.status())),
            Ok(None) => return (complete, End::Waiting),
            Ok(Some(req)) => req,
        };
        let after = &rest[req.head_len - added..];
        let body = match req.body {
            RequestBody::None => Ok(Some(0)),
            RequestBody::Length(n) => Ok((after.len() as u64 >= n).then_some(n as usize)),
            RequestBody::Chunked => chunked(after),
        };
        match body {
            Err(status) => return (complete, End::Refused(status)),
            Ok(None) => return (complete, End::Waiting),
            Ok(Some(n)) => rest = &after[n..],
        }
        complete += 1;
        if req.upgrade.is_some() {
            return (complete, End::Upgraded);
        }
        if !req.keep_alive {
            return (complete, if rest.is_empty() { End::Consumed } else { End::Closed });
        }
    }
}

/// Adds a Host field after the request line; returns its length.
///
/// llhttp does not require Host, but shoal answers an HTTP/1.1 request without one with 400 (RFC 9112 section
/// 3.2): most of llhttp's request cases have none, and adding it lets them test the rest of the framing. For
/// an absolute-form target the Host is its authority, which shoal requires it to be.
fn with_host(buf: &mut Vec<u8>) -> usize {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(0);
    let line_end = buf[start..].iter().position(|&b| b == b'\n').map_or(buf.len(), |i| start + i + 1);
    let line = String::from_utf8_lossy(&buf[start..line_end]).into_owned();
    let target = line.split(' ').nth(1).unwrap_or_default();
    let authority = target.split_once("://").map(|(_, rest)| {
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        authority.rsplit_once('@').map_or(authority, |(_, a)| a).to_string()
    });
    let host = format!("Host: {}\r\n", authority.as_deref().unwrap_or("llhttp.test"));
    buf.splice(line_end..line_end, host.bytes());
    host.len()
}

/// Reads responses the way the exchange does.
fn read_responses(input: &[u8], skip_body: bool) -> (usize, End) {
    let mut rest = input;
    let mut complete = 0;
    loop {
        if rest.is_empty() {
            return (complete, End::Consumed);
        }
        let resp = match parse_response(rest, &LIMITS, skip_body) {
            Err(e) => return (complete, End::Refused(e.status())),
            Ok(None) => return (complete, End::Waiting),
            Ok(Some(resp)) => resp,
        };
        let after = &rest[resp.head_len..];
        let body = match resp.body {
            ResponseBody::None => Ok(Some(0)),
            ResponseBody::Length(n) => Ok((after.len() as u64 >= n).then_some(n as usize)),
            ResponseBody::Chunked => chunked(after),
            ResponseBody::UntilClose => return (complete, End::UntilClose),
        };
        match body {
            Err(status) => return (complete, End::Refused(status)),
            Ok(None) => return (complete, End::Waiting),
            Ok(Some(n)) => rest = &after[n..],
        }
        complete += 1;
        if resp.status == 101 {
            return (complete, End::Upgraded);
        }
        if !resp.keep_alive {
            return (complete, if rest.is_empty() { End::Consumed } else { End::Closed });
        }
    }
}

/// The length of the chunked body at the start of `bytes`, `None` while incomplete, or the refusal status.
fn chunked(bytes: &[u8]) -> Result<Option<usize>, u16> {
    let mut decoder = ChunkedDecoder::new(Emit::Chunked, 16 * 1024);
    let n = decoder.feed(bytes, &mut Vec::new()).map_err(|e| e.status())?;
    Ok(decoder.is_done().then_some(n))
}

/// The cases of one Markdown file that llhttp runs in strict mode with default settings.
fn read_cases(file: &str, text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut heading = String::new();
    let mut meta = String::new();
    let mut lines = text.lines();
    let mut input: Option<Vec<u8>> = None;
    while let Some(line) = lines.next() {
        if let Some(h) = line.strip_prefix('#') {
            heading = h.trim_start_matches('#').trim().to_string();
        } else if let Some(m) = line.strip_prefix("<!-- meta=") {
            meta = m.to_string();
        } else if line == "```http" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            input = Some(decode_input(&block.join("\n")));
        } else if line == "```log" {
            let log: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            let Some(bytes) = input.take() else { continue };
            let Some(kind) = kind_of(&meta) else { continue };
            cases.push(Case {
                id: format!("{file}: {heading}"),
                kind,
                input: bytes,
                complete: log.iter().filter(|l| l.ends_with("message complete")).count(),
                error: log.iter().find_map(|l| error_of(l)),
            });
        }
    }
    cases
}

/// Request or response for the default strict parser; `None` for lenient flags, loose mode, pauses, harness
/// callbacks and the end-of-input (`-finish`) variants, which describe settings shoal does not have.
fn kind_of(meta: &str) -> Option<Kind> {
    let compact: String = meta.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.contains("\"mode\":\"loose\"") || compact.contains("\"pause\"") {
        return None;
    }
    if compact.contains("\"type\":\"request\"") || compact.contains("\"type\":\"request-only\"") {
        // skipBody on a request is a callback's choice in llhttp's harness, not something a request can say.
        (!compact.contains("\"skipBody\":true")).then_some(Kind::Request)
    } else if compact.contains("\"type\":\"response\"") || compact.contains("\"type\":\"response-only\"") {
        Some(Kind::Response { skip_body: compact.contains("\"skipBody\":true") })
    } else {
        None
    }
}

/// `off=N error code=C reason="R"`.
fn error_of(line: &str) -> Option<(u32, String)> {
    let rest = line.split_once("error code=")?.1;
    let (code, reason) = rest.split_once(' ')?;
    Some((code.parse().ok()?, reason.trim_start_matches("reason=").trim_matches('"').to_string()))
}

/// The input bytes as llhttp's test runner builds them: a backslash at a line's end joins it to the next, every
/// other newline is CRLF, and `\r \n \t \f \xHH \ooo` are escapes.
fn decode_input(block: &str) -> Vec<u8> {
    let joined = block.replace("\\\n", "");
    let text = joined.replace('\n', "\r\n");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' || i + 1 == bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let next = bytes[i + 1];
        let (byte, used) = match next {
            b'r' => (b'\r', 2),
            b'n' => (b'\n', 2),
            b't' => (b'\t', 2),
            b'f' => (0x0c, 2),
            b'x' => {
                let hex: Vec<u8> = bytes[i + 2..].iter().take(2).copied().take_while(u8::is_ascii_hexdigit).collect();
                (u8::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap(), 2 + hex.len())
            }
            b'0'..=b'7' => {
                let oct: Vec<u8> =
                    bytes[i + 1..].iter().take(3).copied().take_while(|b| (b'0'..=b'7').contains(b)).collect();
                (u32::from_str_radix(std::str::from_utf8(&oct).unwrap(), 8).unwrap() as u8, 1 + oct.len())
            }
            _ => (b'\\', 1),
        };
        out.push(byte);
        i += used;
    }
    out
}
