//! Response heads from a backend: parsed in place, framing decided per RFC 9112 section 6.3.

use std::mem::MaybeUninit;

use super::error::HttpError;
use super::fields::{self, ConnectionOptions, Field, FieldIndex, FieldStore, Known};
use super::{HeadLimits, Version, MAX_HEADERS};

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    None,
    Length(u64),
    Chunked,
    /// Read until the backend closes.
    UntilClose,
}

#[derive(Debug)]
pub struct Response<'a> {
    pub version: Version,
    pub status: u16,
    pub reason: &'a str,
    pub headers: Vec<Field<'a>>,
    pub body: ResponseBody,
    /// Transfer-Encoding codings to forward when the body is chunked.
    pub codings: Option<String>,
    pub connection: ConnectionOptions,
    /// The backend keeps the connection open after this response.
    pub keep_alive: bool,
    pub head_len: usize,
    /// A bodiless answer's Content-Length (to HEAD, a 304): the representation's length, checked as any other
    /// and sent on as one value.
    pub declared_length: Option<u64>,
}

/// Rewrites a status line's `HTTP/1.2`..`HTTP/1.9` to `HTTP/1.1` in place, as requests get (RFC 9110
/// section 2.5: a higher minor version is read as the highest one implemented); httparse knows only 1.0 and 1.1.
pub fn lower_minor_version(buf: &mut [u8]) {
    if let [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor @ b'2'..=b'9', b' ', ..] = buf {
        *minor = b'1';
    }
}

/// Parses a response head; `request_is_head` says the request was HEAD, whose answer has no body.
pub fn parse_response<'a>(
    buf: &'a [u8],
    limits: &HeadLimits,
    request_is_head: bool,
) -> Result<Option<Response<'a>>, HttpError> {
    parse_response_with(buf, limits, request_is_head, &mut FieldStore::default())
}

/// [`parse_response`], the fields going into `store`'s vector (hand it back with [`FieldStore::keep`]).
pub fn parse_response_with<'a>(
    buf: &'a [u8],
    limits: &HeadLimits,
    request_is_head: bool,
    store: &mut FieldStore,
) -> Result<Option<Response<'a>>, HttpError> {
    // Left uninitialised, as for requests: no 8 KiB zero-fill per parse.
    let mut storage = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let slots = limits.max_headers.min(MAX_HEADERS);
    let mut resp = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let head_len = match config.parse_response_with_uninit_headers(&mut resp, buf, &mut storage[..slots]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_bytes => return Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(_) => return Err(HttpError::Malformed("invalid response head")),
    };
    let status = resp.code.unwrap_or_default();
    if !(100..=999).contains(&status) {
        return Err(HttpError::Malformed("invalid status"));
    }
    let version = if resp.version == Some(0) { Version::Http10 } else { Version::Http11 };
    let mut headers = store.take();
    headers.reserve(resp.headers.len());
    let mut index = FieldIndex::default();
    for h in resp.headers.iter() {
        // httparse admits only these (request.rs's tests hold it to every byte), so they are not checked again.
        debug_assert!(fields::is_token(h.name.as_bytes()) && fields::is_valid_value(h.value));
        index.note(h.name, h.value);
        headers.push((h.name, h.value));
    }
    let values = |known: Known| index.values(known, &headers);
    let connection = ConnectionOptions::parse(&values(Known::Connection));
    let te = values(Known::TransferEncoding);
    let no_body = request_is_head || (100..200).contains(&status) || status == 204 || status == 304;
    // RFC 9112 section 6.1: Transfer-Encoding on HTTP/1.0 is faulty framing, whatever Content-Length says,
    // and the connection closes after the message (the sender may hold more of it).
    let te_on_http10 = !te.is_empty() && version == Version::Http10;
    if te_on_http10 && !no_body {
        return Err(HttpError::BadTransferEncoding("not allowed on HTTP/1.0"));
    }
    // Content-Length is checked in every answer without Transfer-Encoding (which overrides it), as HAProxy
    // does: a bodiless one's conflicting or invalid value would reach the client as it came.
    let lengths = values(Known::ContentLength);
    let declared_length = if te.is_empty() { fields::content_length(&lengths)? } else { None };
    let (body, codings) = if no_body {
        (ResponseBody::None, None)
    } else if !te.is_empty() {
        // Transfer-Encoding overrides Content-Length in a response (RFC 9112 section 6.3 rule 3).
        let codings = fields::transfer_codings(&te)?;
        if codings.chunked_last {
            (ResponseBody::Chunked, Some(codings.joined))
        } else {
            (ResponseBody::UntilClose, Some(codings.joined))
        }
    } else {
        match declared_length {
            Some(n) => (ResponseBody::Length(n), None),
            None => (ResponseBody::UntilClose, None),
        }
    };
    // Both lengths: framed by Transfer-Encoding, but whoever else reads this connection may frame it by
    // Content-Length (RFC 9112 section 6.3 rule 3: "ought to be handled as an error"); HAProxy closes it after.
    let both_lengths = !te.is_empty() && !lengths.is_empty();
    let keep_alive = body != ResponseBody::UntilClose
        && !te_on_http10
        && !both_lengths
        && match version {
            Version::Http11 => !connection.close,
            Version::Http10 => connection.keep_alive && !connection.close,
        };
    Ok(Some(Response {
        version,
        status,
        reason: resp.reason.unwrap_or_default(),
        headers,
        body,
        codings,
        connection,
        keep_alive,
        head_len,
        declared_length: if no_body { declared_length } else { None },
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn higher_minor_versions_are_read_as_1_1() {
        for (raw, want) in [
            (&b"HTTP/1.2 200 OK\r\n"[..], &b"HTTP/1.1 200 OK\r\n"[..]),
            (b"HTTP/1.10 200 OK\r\n", b"HTTP/1.10 200 OK\r\n"),
            (b"HTTP/2.0 200 OK\r\n", b"HTTP/2.0 200 OK\r\n"),
            (b"HTTP/1.2", b"HTTP/1.2"),
        ] {
            let mut buf = raw.to_vec();
            super::lower_minor_version(&mut buf);
            assert_eq!(buf, want);
        }
    }

    use super::*;

    fn parse(raw: &[u8], head: bool) -> Response<'_> {
        parse_response(raw, &HeadLimits { max_head_bytes: 8192, max_headers: 100 }, head).unwrap().unwrap()
    }

    #[test]
    fn framing() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false).body, ResponseBody::Length(3));
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true).body, ResponseBody::None);
        assert_eq!(parse(b"HTTP/1.1 204 No\r\n\r\n", false).body, ResponseBody::None);
        assert_eq!(parse(b"HTTP/1.1 304 NM\r\nContent-Length: 9\r\n\r\n", false).body, ResponseBody::None);
        assert_eq!(parse(b"HTTP/1.1 100 Continue\r\n\r\n", false).body, ResponseBody::None);
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", false);
        assert_eq!(r.body, ResponseBody::Chunked);
        let r = parse(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(r.body, ResponseBody::UntilClose);
        assert!(!r.keep_alive);
    }

    #[test]
    fn transfer_encoding_on_http_1_0_is_faulty_framing() {
        let limits = HeadLimits { max_head_bytes: 8192, max_headers: 100 };
        for raw in [
            &b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"[..],
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(parse_response(raw, &limits, false).is_err(), "{}", String::from_utf8_lossy(raw));
        }
        // Without a body there is nothing to frame: the answer goes through, and the connection closes after.
        let r = parse(b"HTTP/1.0 204 No\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n", false);
        assert_eq!((r.body, r.keep_alive), (ResponseBody::None, false));
    }

    #[test]
    fn persistence() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false).keep_alive);
        assert!(!parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false).keep_alive);
        assert!(!parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).keep_alive);
        assert!(parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", false).keep_alive);
    }

    #[test]
    fn garbage_is_refused() {
        let l = HeadLimits { max_head_bytes: 8192, max_headers: 100 };
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", &l, false).is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", &l, false).is_err()
        );
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", &l, false).is_err());
    }
}
