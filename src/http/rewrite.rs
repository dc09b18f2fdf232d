//! Writes the heads each hop receives: hop-by-hop fields removed, framing written from the decided framing,
//! forwarding fields added last so nothing a peer sends can remove them.

use std::io::Write;
use std::net::IpAddr;

use super::cookie;
use super::fields;
use super::request::{Request, RequestBody};
use super::response::{Response, ResponseBody};
use super::Version;

/// Facts about the client connection that the backend is told in X-Forwarded-* fields.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    /// The port the client connected to (HAProxy's `%[dst_port]`).
    pub port: u16,
    /// The client connected over TLS: `X-Forwarded-Proto: https`.
    pub tls: bool,
    /// The sticky-session cookie, removed from `Cookie` before the request reaches the app.
    pub strip_cookie: Option<&'a str>,
}

/// The head sent to the backend for `req`.
pub fn upstream_request(req: &Request<'_>, fwd: &Forwarded<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.version.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &req.headers {
        let n = name.as_bytes();
        let named_by_connection = req.connection.names(n) && !fields::is_protected(n);
        if fields::is_hop_by_hop(n) || named_by_connection || claims_the_connection(n) {
            continue;
        }
        if let (Some(sticky), true) = (fwd.strip_cookie, n.eq_ignore_ascii_case(b"cookie")) {
            if let Some(rest) = cookie::without(value, sticky) {
                field(out, n, &rest);
            }
            continue;
        }
        field(out, n, value);
    }
    match req.body {
        RequestBody::None => {}
        RequestBody::Length(n) => content_length(out, n),
        RequestBody::Chunked => {
            field(out, b"Transfer-Encoding", req.codings.as_deref().unwrap_or("chunked").as_bytes())
        }
    }
    if let Some(protocol) = req.upgrade {
        field(out, b"Upgrade", protocol);
        field(out, b"Connection", b"upgrade");
    } else if req.version == Version::Http10 {
        field(out, b"Connection", b"keep-alive");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    ip_address(out, fwd.client_ip);
    out.extend_from_slice(if fwd.tls { b"\r\nX-Forwarded-Proto: https" } else { b"\r\nX-Forwarded-Proto: http" });
    out.extend_from_slice(b"\r\nX-Forwarded-Port: ");
    decimal(out, fwd.port);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Whether a trailer field is passed on. Trailers are not headers (RFC 9110 section 6.5.1: a recipient must
/// not merge them in), but some servers do: one may claim nothing a head may not, nor frame or route.
pub fn kept_in_trailers(name: &[u8]) -> bool {
    !(fields::is_hop_by_hop(name) || fields::is_protected(name) || claims_the_connection(name))
}

/// A field that tells the app about the client's connection, which only this proxy knows: the client's own
/// is dropped (X-Forwarded-Proto and -Port are then written by the proxy; X-Forwarded-For is the one a client's
/// may precede, appended to as HAProxy does). `Forwarded` and `X-Forwarded-Host` / `-Ssl` / `-Scheme` would
/// let a client claim https, another client address or another host to frameworks that read them first
/// (Rack); an underscore spelling (`X_Forwarded_Proto`) reads the same to a CGI-style server.
fn claims_the_connection(name: &[u8]) -> bool {
    // Most fields are none of these: told apart by their first byte and length before any comparison.
    match (name.first(), name.len()) {
        (Some(b'x' | b'X'), 15..=18) | (Some(b'f' | b'F'), 9) => {}
        _ => return false,
    }
    let spelled = |want: &[u8]| {
        name.len() == want.len()
            && name.iter().zip(want).all(|(&a, &w)| a.to_ascii_lowercase() == w || (a == b'_' && w == b'-'))
    };
    const OWNED: [&[u8]; 6] = [
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-host",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"forwarded",
    ];
    OWNED.iter().any(|w| spelled(w)) || (name.contains(&b'_') && spelled(b"x-forwarded-for"))
}

/// `n` in decimal, without going through `fmt` (heads and log lines are written on every request).
pub fn decimal(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An address as text: IPv4 dotted without `fmt`, IPv6 through `Display`.
pub fn ip_address(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                decimal(out, octet);
            }
        }
        IpAddr::V6(ip) => {
            let _ = write!(out, "{ip}");
        }
    }
}

fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// How the response is delivered to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The client connection closes after this response.
    pub close: bool,
    /// Chunked framing is removed (an HTTP/1.0 client); the body then ends when the connection closes.
    pub dechunk: bool,
    /// The client is HTTP/1.0 and the connection stays open, so it must be told so.
    pub http10_keep_alive: bool,
    /// A 101 that starts a tunnel: Upgrade is kept.
    pub upgrade: bool,
    /// `NAME=VALUE` of a sticky-session cookie to set.
    pub set_cookie: Option<&'a str>,
}

/// The head sent to the client for `resp`.
pub fn client_response(resp: &Response<'_>, delivery: &Delivery<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    decimal(out, resp.status);
    out.push(b' ');
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    // A bodiless answer to HEAD or a 304 still describes the representation's length.
    let keep_length = resp.body == ResponseBody::None && !(100..200).contains(&resp.status) && resp.status != 204;
    if let (true, Some(n)) = (keep_length, resp.declared_length) {
        content_length(out, n);
    }
    for (name, value) in &resp.headers {
        let n = name.as_bytes();
        if delivery.upgrade && n.eq_ignore_ascii_case(b"upgrade") {
            field(out, n, value);
            continue;
        }
        if fields::is_hop_by_hop(n) || resp.connection.names(n) {
            continue;
        }
        field(out, n, value);
    }
    match resp.body {
        ResponseBody::Length(n) => content_length(out, n),
        ResponseBody::Chunked if !delivery.dechunk => {
            field(out, b"Transfer-Encoding", resp.codings.as_deref().unwrap_or("chunked").as_bytes());
        }
        ResponseBody::UntilClose => {
            if let Some(codings) = resp.codings.as_deref() {
                field(out, b"Transfer-Encoding", codings.as_bytes());
            }
        }
        ResponseBody::Chunked | ResponseBody::None => {}
    }
    if let Some(cookie) = delivery.set_cookie {
        let _ = write!(out, "Set-Cookie: {cookie}; Path=/; HttpOnly\r\n");
        // A shared cache must not hand this cookie to others (HAProxy's `nocache`), unless the response is
        // already kept out of shared caches.
        let private = resp.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("cache-control") && {
                let v = String::from_utf8_lossy(v).to_ascii_lowercase();
                v.contains("private") || v.contains("no-store")
            }
        });
        if !private {
            field(out, b"Cache-Control", b"no-cache=\"Set-Cookie\"");
        }
    }
    if delivery.upgrade {
        field(out, b"Connection", b"upgrade");
    } else if delivery.close {
        field(out, b"Connection", b"close");
    } else if delivery.http10_keep_alive {
        field(out, b"Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_request;
    use crate::http::response::parse_response;
    use crate::http::HeadLimits;

    const LIMITS: HeadLimits = HeadLimits { max_head_bytes: 8192, max_headers: 100 };

    fn rewrite_request(raw: &[u8]) -> String {
        let req = parse_request(raw, &LIMITS).unwrap().unwrap();
        let mut out = Vec::new();
        upstream_request(
            &req,
            &Forwarded { client_ip: "10.0.0.9".parse().unwrap(), port: 80, tls: false, strip_cookie: None },
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strips_hop_by_hop_and_named_fields_but_not_protected_ones() {
        let out = rewrite_request(
            b"GET / HTTP/1.1\nHost: a\nConnection: keep-alive, X-Secret, X-Forwarded-For, Host\n\
              Keep-Alive: 5\nX-Secret: 1\nTE: trailers\nProxy-Connection: x\nX-Forwarded-Proto: https\n\
              X-Forwarded-For: 1.2.3.4\n\n",
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 10.0.0.9\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Port: 80\r\n\r\n"
        );
    }

    #[test]
    fn writes_framing_from_the_decision() {
        let out = rewrite_request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 003\r\n\r\n");
        assert!(out.contains("Content-Length: 3\r\n"), "{out}");
        let out = rewrite_request(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(out.contains("Transfer-Encoding: gzip, chunked\r\n"), "{out}");
        let out = rewrite_request(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(out.contains("Upgrade: websocket\r\nConnection: upgrade\r\n"), "{out}");
        let out = rewrite_request(b"GET / HTTP/1.0\r\n\r\n");
        assert!(out.starts_with("GET / HTTP/1.0\r\nConnection: keep-alive\r\n"), "{out}");
    }

    fn rewrite_response(raw: &[u8], head: bool, d: Delivery) -> String {
        let resp = parse_response(raw, &LIMITS, head).unwrap().unwrap();
        let mut out = Vec::new();
        client_response(&resp, &d, &mut out);
        String::from_utf8(out).unwrap()
    }

    const KEEP: Delivery =
        Delivery { close: false, dechunk: false, http10_keep_alive: false, upgrade: false, set_cookie: None };

    #[test]
    fn response_rewrites() {
        let out =
            rewrite_response(b"HTTP/1.1 200 OK\r\nConnection: X-A\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n", false, KEEP);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
        let out = rewrite_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, KEEP);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n");
        let dechunk = Delivery { close: true, dechunk: true, ..KEEP };
        let out = rewrite_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, dechunk);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let up = Delivery { upgrade: true, ..KEEP };
        let out =
            rewrite_response(b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", false, up);
        assert_eq!(out, "HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n");
    }
}
