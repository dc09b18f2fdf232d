//! Request heads: parsed in place with httparse, then checked against every framing rule.

use std::mem::MaybeUninit;

use super::error::HttpError;
use super::fields::{self, ConnectionOptions, Field, FieldIndex, FieldStore, Known};
use super::{HeadLimits, Version, MAX_HEADERS};

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head borrowing from the read buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub version: Version,
    /// Every field in arrival order.
    pub headers: Vec<Field<'a>>,
    pub body: RequestBody,
    /// The Transfer-Encoding codings to forward when the body is chunked.
    pub codings: Option<String>,
    pub connection: ConnectionOptions,
    /// The Upgrade value, when the client asked for one on HTTP/1.1 with `Connection: upgrade`.
    pub upgrade: Option<&'a [u8]>,
    pub expect_continue: bool,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// Bytes of the buffer the head took.
    pub head_len: usize,
}

impl Request<'_> {
    /// Idempotent methods may be retried on a fresh connection when a reused one fails before answering.
    pub fn is_idempotent(&self) -> bool {
        matches!(self.method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The request line as HAProxy's `%r` prints it.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.method, self.target, self.version.as_str())
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet and `buf` is still within the limits.
pub fn parse_request<'a>(buf: &'a [u8], limits: &HeadLimits) -> Result<Option<Request<'a>>, HttpError> {
    parse_request_with(buf, limits, &mut FieldStore::default())
}

/// [`parse_request`], the fields going into `store`'s vector (hand it back with [`FieldStore::keep`]).
pub fn parse_request_with<'a>(
    buf: &'a [u8],
    limits: &HeadLimits,
    store: &mut FieldStore,
) -> Result<Option<Request<'a>>, HttpError> {
    // Left uninitialised: zero-filling 256 slots (8 KiB) on every parse cost more than parsing a small head.
    let mut storage = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let slots = limits.max_headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut storage[..slots]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < limits.max_head_bytes => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(too_large(buf, limits)),
        Err(e) => return Err(classify_parse_error(e, buf)),
    };
    if head_len > limits.max_head_bytes {
        return Err(too_large(&buf[..head_len], limits));
    }
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let version = if req.version == Some(0) { Version::Http10 } else { Version::Http11 };
    check_method(method)?;
    check_target(method, target)?;

    let mut headers = store.take();
    headers.reserve(req.headers.len());
    let mut index = FieldIndex::default();
    for h in req.headers.iter() {
        // httparse admits only these (a test below holds it to every byte), so they are not checked again.
        debug_assert!(fields::is_token(h.name.as_bytes()) && fields::is_valid_value(h.value));
        if is_framing_in_disguise(h.name) {
            return Err(HttpError::Malformed("Content_Length or Transfer_Encoding"));
        }
        index.note(h.name, h.value);
        headers.push((h.name, h.value));
    }
    let values = |known: Known| index.values(known, &headers);

    match index.count(Known::Host) {
        0 if version == Version::Http11 => return Err(HttpError::MissingHost),
        0 | 1 => {}
        _ => return Err(HttpError::RepeatedHost),
    }
    if let Some(host) = index.first(Known::Host) {
        check_host(fields::trim_ows(host), target)?;
    }

    let te = values(Known::TransferEncoding);
    let cl = values(Known::ContentLength);
    let (body, codings) = if !te.is_empty() {
        if version == Version::Http10 {
            return Err(HttpError::BadTransferEncoding("not allowed on HTTP/1.0"));
        }
        if !cl.is_empty() {
            return Err(HttpError::LengthAndTransferEncoding);
        }
        let codings = fields::transfer_codings(&te)?;
        if !codings.chunked_last {
            return Err(HttpError::BadTransferEncoding("last coding is not chunked"));
        }
        (RequestBody::Chunked, Some(codings.joined))
    } else {
        match fields::content_length(&cl)? {
            None => (RequestBody::None, None),
            Some(n) => (RequestBody::Length(n), None),
        }
    };

    let connection = ConnectionOptions::parse(&values(Known::Connection));
    let keep_alive = match version {
        Version::Http11 => !connection.close,
        Version::Http10 => connection.keep_alive && !connection.close,
    };
    let upgrade = match &*values(Known::Upgrade) {
        [value] if connection.upgrade && version == Version::Http11 => Some(*value),
        _ => None,
    };
    let expect_continue = version == Version::Http11
        && values(Known::Expect).iter().any(|v| fields::trim_ows(v).eq_ignore_ascii_case(b"100-continue"));

    Ok(Some(Request {
        method,
        target,
        version,
        headers,
        body,
        codings,
        connection,
        upgrade,
        expect_continue,
        keep_alive,
        head_len,
    }))
}

/// A head over the limit: 414 when the request line alone is (RFC 9110 section 15.5.15), 431 otherwise,
/// however the bytes arrived (one read with the whole head, or pieces).
fn too_large(head: &[u8], limits: &HeadLimits) -> HttpError {
    let line_fits = head.iter().take(limits.max_head_bytes).any(|&b| b == b'\n');
    if line_fits {
        HttpError::HeadTooLarge
    } else {
        HttpError::UriTooLong
    }
}

/// Rewrites a request line's `HTTP/1.2`..`HTTP/1.9` to `HTTP/1.1` in place, once the line is complete.
///
/// RFC 9110 section 2.5: a higher minor version of a major version we implement is processed as the highest
/// minor version we implement (nginx and HAProxy do the same); httparse knows only 1.0 and 1.1, so the digit
/// is changed before it parses. Anything else is left for the parser to accept or refuse.
pub fn lower_minor_version(buf: &mut [u8]) {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    let Some(line_len) = buf[start..].iter().position(|&b| b == b'\n') else { return };
    let line = &mut buf[start..start + line_len];
    let line = match line {
        [rest @ .., b'\r'] => rest,
        _ => line,
    };
    if let [.., b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor @ b'2'..=b'9'] = line {
        *minor = b'1';
    }
}

/// `Content_Length` and `Transfer_Encoding` are valid names, but CGI-style backends (WSGI, PHP, ...) read
/// `_` and `-` alike, so a server would see a second framing header this proxy did not: refused, as
/// gunicorn's `header_map = refuse` does (nginx drops every name with `_` by default).
fn is_framing_in_disguise(name: &str) -> bool {
    name.contains('_')
        && ["content-length", "transfer-encoding"].iter().any(|framing| {
            name.len() == framing.len()
                && name
                    .bytes()
                    .zip(framing.bytes())
                    .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
        })
}

/// Tells an unsupported version (505) apart from plain garbage (400).
fn classify_parse_error(e: httparse::Error, buf: &[u8]) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Token => HttpError::BadMethod,
        httparse::Error::Version if looks_like_other_version(buf) => HttpError::UnsupportedVersion,
        httparse::Error::Version => HttpError::Malformed("invalid version"),
        httparse::Error::HeaderName => HttpError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HttpError::Malformed("invalid header value"),
        httparse::Error::NewLine => HttpError::Malformed("invalid line ending"),
        _ => HttpError::Malformed("invalid request line"),
    }
}

/// True when the request line is `METHOD SP TARGET SP HTTP/d.d` with a version other than 1.0 or 1.1.
fn looks_like_other_version(buf: &[u8]) -> bool {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    let rest = &buf[start..];
    let line_end = rest.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(rest.len());
    let parts: Vec<&[u8]> = rest[..line_end].split(|&b| b == b' ').collect();
    match parts.as_slice() {
        [_, _, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]] => {
            major.is_ascii_digit() && minor.is_ascii_digit() && !(*major == b'1' && (*minor == b'0' || *minor == b'1'))
        }
        _ => false,
    }
}

fn check_method(method: &str) -> Result<(), HttpError> {
    if !fields::is_token(method.as_bytes()) {
        return Err(HttpError::BadMethod);
    }
    if method == "CONNECT" {
        return Err(HttpError::MethodNotImplemented);
    }
    Ok(())
}

/// origin-form, absolute-form, or `*` for OPTIONS; visible ASCII only.
/// Bytes a Host value may not hold (control bytes other than tab never reach here: the parser refuses them).
const NOT_IN_AUTHORITY: [bool; 256] = {
    let mut table = [false; 256];
    let bad = b" \t@/\\?#\x7f";
    let mut i = 0;
    while i < bad.len() {
        table[bad[i] as usize] = true;
        i += 1;
    }
    table
};

/// A Host value is an authority, `host[:port]` (RFC 9110 section 7.2): no spaces, user info, path or
/// backslash, which a server or a redirect built from it would read differently. With an absolute-form
/// target the server takes the authority from the target and ignores Host (RFC 9112 section 3.2.2), while
/// this proxy balances, redirects and logs by Host: the two must agree, as HAProxy requires.
fn check_host(host: &[u8], target: &str) -> Result<(), HttpError> {
    if host.iter().any(|&b| NOT_IN_AUTHORITY[usize::from(b)]) {
        return Err(HttpError::BadHost("not an authority"));
    }
    if target.starts_with('/') {
        return Ok(());
    }
    if let Some(i) = target.find("://") {
        let (scheme, rest) = (&target[..i], &target[i + 3..]);
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        // `http://a:80/` with `Host: a`, or the reverse, name the same authority, as HAProxy accepts.
        let (authority, host) =
            (without_default_port(authority.as_bytes(), scheme), without_default_port(host, scheme));
        if !authority.eq_ignore_ascii_case(host) {
            return Err(HttpError::BadHost("does not match the request target's authority"));
        }
    }
    Ok(())
}

/// `authority` without a port that is `scheme`'s default (or empty, which means the default).
fn without_default_port<'a>(authority: &'a [u8], scheme: &str) -> &'a [u8] {
    let default: &[u8] = if scheme.eq_ignore_ascii_case("http") {
        b":80"
    } else if scheme.eq_ignore_ascii_case("https") {
        b":443"
    } else {
        return authority;
    };
    authority.strip_suffix(default).or_else(|| authority.strip_suffix(b":")).unwrap_or(authority)
}

fn check_target(method: &str, target: &str) -> Result<(), HttpError> {
    let bytes = target.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(HttpError::BadTarget);
    }
    let ok = match bytes[0] {
        b'/' => true,
        b'*' => bytes.len() == 1 && method == "OPTIONS",
        _ => match target.find("://") {
            Some(i) if i > 0 => target[..i].bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)),
            _ => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(HttpError::BadTarget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits { max_head_bytes: 8192, max_headers: 100 }
    }

    fn parse(raw: &[u8]) -> Result<Option<Request<'_>>, HttpError> {
        parse_request(raw, &limits())
    }

    #[test]
    fn simple_get() {
        let r = parse(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert_eq!((r.method, r.target, r.version), ("GET", "/a?b", Version::Http11));
        // An absolute-form target whose authority is the Host (any case); authorities with ports and IPv6.
        for head in [
            &b"GET http://A.example:8080/x?y HTTP/1.1\r\nHost: a.example:8080\r\n\r\n"[..],
            b"GET http://user@a.example HTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        ] {
            assert!(parse(head).unwrap().is_some(), "{}", String::from_utf8_lossy(head));
        }
        assert_eq!(r.body, RequestBody::None);
        assert!(r.keep_alive);
    }

    #[test]
    fn partial_and_limits() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let small = HeadLimits { max_head_bytes: 16, max_headers: 100 };
        assert_eq!(parse_request(b"GET /aaaaaaaaaaaaaaaaaaaaaaa", &small).unwrap_err(), HttpError::UriTooLong);
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: xxxxxxxx", &small).unwrap_err(), HttpError::HeadTooLarge);
        // Whole in one read, the same answers: the line alone over the limit is 414, not 431.
        assert_eq!(
            parse_request(b"GET /aaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n", &small).unwrap_err(),
            HttpError::UriTooLong
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: xxxxxxxxxx\r\n\r\n", &small).unwrap_err(),
            HttpError::HeadTooLarge
        );
        let few = HeadLimits { max_head_bytes: 8192, max_headers: 2 };
        let many = b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(parse_request(many, &few).unwrap_err(), HttpError::TooManyHeaders);
    }

    #[test]
    fn framing_choices() {
        let r = parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.body, RequestBody::Length(5));
        let r = parse(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.body, RequestBody::Chunked);
        assert_eq!(r.codings.as_deref(), Some("gzip, chunked"));
    }

    #[test]
    fn higher_minor_versions_are_read_as_1_1() {
        let cases: &[(&str, &str)] = &[
            ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("\r\nGET / HTTP/1.9\nHost: a\n\n", "\r\nGET / HTTP/1.1\nHost: a\n\n"),
            // Not HTTP/1.x with one minor digit, or the line is not complete: untouched.
            ("GET / HTTP/1.10\r\nHost: a\r\n\r\n", "GET / HTTP/1.10\r\nHost: a\r\n\r\n"),
            ("GET / HTTP/2.0\r\n\r\n", "GET / HTTP/2.0\r\n\r\n"),
            ("GET / HTTP/1.2", "GET / HTTP/1.2"),
            ("GET /HTTP/1.2\r\n", "GET /HTTP/1.2\r\n"),
            ("GET / HTTP/1.1\r\nX: HTTP/1.2\r\n\r\n", "GET / HTTP/1.1\r\nX: HTTP/1.2\r\n\r\n"),
        ];
        for (raw, want) in cases {
            let mut buf = raw.as_bytes().to_vec();
            lower_minor_version(&mut buf);
            assert_eq!(String::from_utf8_lossy(&buf), *want, "{raw:?}");
        }
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET http://internal.example/admin HTTP/1.1\r\nHost: public.example\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x@y\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x/y\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\ntransfer_encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus, chunked\r\n\r\n", 501),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
            (b"GET nope HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
            (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            let err = parse(raw).expect_err(&String::from_utf8_lossy(raw));
            assert_eq!(err.status(), *status, "{}", String::from_utf8_lossy(raw));
        }
    }

    /// Names and values are not checked again after httparse (it costs a pass over every byte of every head):
    /// this holds httparse to the field rules for every byte, in a name and in a value.
    #[test]
    fn the_parser_admits_exactly_the_names_and_values_the_field_rules_allow() {
        for b in 0..=255u8 {
            let mut name = b"GET / HTTP/1.1\r\nHost: x\r\nX-".to_vec();
            name.extend([b, b'Y', b':', b' ', b'v', b'\r', b'\n', b'\r', b'\n']);
            let mut value = b"GET / HTTP/1.1\r\nHost: x\r\nX: a".to_vec();
            value.extend([b, b'b', b'\r', b'\n', b'\r', b'\n']);
            // A colon ends the name: the rest of the line is its value.
            if b != b':' {
                assert_eq!(parse(&name).is_ok(), fields::is_tchar(b), "byte {b:#04x} in a name");
            }
            assert_eq!(parse(&value).is_ok(), fields::is_valid_value(&[b]), "byte {b:#04x} in a value");
            let mut response_name = b"HTTP/1.1 200 OK\r\nX-".to_vec();
            response_name.extend_from_slice(&name[b"GET / HTTP/1.1\r\nHost: x\r\nX-".len()..]);
            let mut response_value = b"HTTP/1.1 200 OK\r\nX: a".to_vec();
            response_value.extend_from_slice(&value[b"GET / HTTP/1.1\r\nHost: x\r\nX: a".len()..]);
            let response = |raw: &[u8]| crate::http::response::parse_response(raw, &limits(), false).is_ok();
            if b != b':' {
                assert_eq!(response(&response_name), fields::is_tchar(b), "byte {b:#04x} in a response's name");
            }
            assert_eq!(response(&response_value), fields::is_valid_value(&[b]), "byte {b:#04x} in a response's value");
        }
    }

    #[test]
    fn connection_semantics() {
        let r = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let r = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().unwrap();
        assert!(r.keep_alive);
        let r = parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let r =
            parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.upgrade, Some(&b"websocket"[..]));
        let r =
            parse(b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n").unwrap().unwrap();
        assert!(r.expect_continue);
    }
}
