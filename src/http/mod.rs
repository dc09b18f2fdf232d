//! HTTP/1.1 framing and header rules (RFC 9112), independent of sockets.
//!
//! Heads are parsed in place with httparse, checked by the small rule functions in [`fields`], and written
//! again with CRLF by [`rewrite`]; bodies are delimited by [`request::RequestBody`] / [`response::ResponseBody`]
//! and chunked bodies go through [`chunked::ChunkedDecoder`].

pub mod chunked;
pub mod error;
pub mod fields;
pub mod request;
pub mod response;
pub mod rewrite;

pub use error::HttpError;

/// Header slots on the stack per parse; the configured limit may not exceed it.
pub const MAX_HEADERS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// Size limits for one head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

/// Random HTTP-shaped input must never panic a parser (a smoke test; cargo-fuzz belongs to the hardening work).
#[cfg(test)]
mod no_panic {
    use super::chunked::{ChunkedDecoder, Emit};
    use super::request::parse_request;
    use super::response::parse_response;
    use super::HeadLimits;

    const PIECES: &[&[u8]] = &[
        b"GET ",
        b"POST ",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b":",
        b";",
        b"=",
        b"\"",
        b",",
        b"/",
        b"Host: a",
        b"Content-Length: ",
        b"Transfer-Encoding: ",
        b"chunked",
        b"gzip",
        b"Connection: ",
        b"close",
        b"upgrade",
        b"Upgrade: websocket",
        b"Expect: 100-continue",
        b"0",
        b"5",
        b"ff",
        b"18446744073709551616",
        b"\x00",
        b"\x7f",
        b"\xff",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 101 S",
        b"\r\n\r\n",
    ];

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn parsers_survive_random_input() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let limits = HeadLimits { max_head_bytes: 512, max_headers: 8 };
        for _ in 0..200_000 {
            let mut input = Vec::new();
            for _ in 0..rng.below(24) {
                if rng.below(4) == 0 {
                    input.push(rng.next() as u8);
                } else {
                    input.extend_from_slice(PIECES[rng.below(PIECES.len())]);
                }
            }
            let _ = parse_request(&input, &limits);
            let _ = parse_response(&input, &limits, rng.below(2) == 0);
            let emit = if rng.below(2) == 0 { Emit::Chunked } else { Emit::Payload };
            let mut decoder = ChunkedDecoder::new(emit, 256);
            let mut out = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let take = 1 + rng.below(rest.len());
                match decoder.feed(&rest[..take], &mut out) {
                    Ok(n) if n <= take => rest = &rest[n.max(1).min(take)..],
                    Ok(n) => panic!("consumed {n} of {take}"),
                    Err(_) => break,
                }
            }
        }
    }
}
