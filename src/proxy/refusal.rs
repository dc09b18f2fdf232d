//! The short responses the proxy answers with itself. Each tells the client the connection closes.

/// The whole response for `status`; an unknown status is answered as 500.
pub fn response(status: u16) -> &'static [u8] {
    match status {
        400 => b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\n400 Bad Request\n",
        408 => b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\n408 Request Timeout\n",
        414 => b"HTTP/1.1 414 URI Too Long\r\nContent-Type: text/plain\r\nContent-Length: 17\r\nConnection: close\r\n\r\n414 URI Too Long\n",
        431 => b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nContent-Length: 36\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large\n",
        500 => b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 26\r\nConnection: close\r\n\r\n500 Internal Server Error\n",
        501 => b"HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\n501 Not Implemented\n",
        502 => b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\n502 Bad Gateway\n",
        503 => b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 24\r\nConnection: close\r\n\r\n503 Service Unavailable\n",
        504 => b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\n504 Gateway Timeout\n",
        505 => b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\nContent-Length: 31\r\nConnection: close\r\n\r\n505 HTTP Version Not Supported\n",
        _ => response(500),
    }
}

/// The canned response for `status` as an answer to HEAD: the head alone (RFC 9110 section 9.3.2), its
/// Content-Length the length a GET's body would have.
pub fn response_to(status: u16, head: bool) -> &'static [u8] {
    let full = response(status);
    match full.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) if head => &full[..end + 4],
        _ => full,
    }
}

/// The status code of a canned response, for log lines.
pub fn status_of(bytes: &[u8]) -> u16 {
    std::str::from_utf8(&bytes[9..12]).ok().and_then(|s| s.parse().ok()).unwrap_or(500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_bodies() {
        for code in [400, 408, 414, 431, 500, 501, 502, 503, 504, 505, 999] {
            let raw = response(code);
            let text = std::str::from_utf8(raw).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let declared: usize =
                head.split("Content-Length: ").nth(1).unwrap().split("\r\n").next().unwrap().parse().unwrap();
            assert_eq!(declared, body.len(), "{code}");
            assert_eq!(status_of(raw), if code == 999 { 500 } else { code });
            assert_eq!(response_to(code, true), format!("{head}\r\n\r\n").as_bytes());
            assert_eq!(response_to(code, false), raw);
        }
    }
}
