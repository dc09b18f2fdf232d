//! HTTP/1.1 framing and header rules (RFC 9112), independent of sockets.
//!
//! Heads are parsed in place with httparse, checked by the small rule functions in [`fields`], and written
//! again with CRLF by [`rewrite`]; bodies are delimited by [`request::RequestBody`] / [`response::ResponseBody`]
//! and chunked bodies go through [`chunked::ChunkedDecoder`].

pub mod check;
pub mod chunked;
pub mod cookie;
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
