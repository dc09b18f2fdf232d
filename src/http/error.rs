//! Why a message was refused, and the status a client gets for it.

use thiserror::Error;

/// A framing or syntax fault in a request or response head or body.
///
/// Each variant maps to exactly one status so the refusal a client sees is decided in one place.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndTransferEncoding,
    #[error("Transfer-Encoding: {0}")]
    BadTransferEncoding(&'static str),
    #[error("unknown transfer coding")]
    UnknownTransferCoding,
    #[error("missing Host header")]
    MissingHost,
    #[error("repeated Host header")]
    RepeatedHost,
    #[error("Host header: {0}")]
    BadHost(&'static str),
    #[error("invalid request target")]
    BadTarget,
    #[error("invalid method")]
    BadMethod,
    #[error("request line too long")]
    UriTooLong,
    #[error("head larger than the configured limit")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    #[error("method not supported by this proxy")]
    MethodNotImplemented,
    #[error("bad chunk: {0}")]
    BadChunk(&'static str),
}

impl HttpError {
    /// The status a client receives when its request fails this way.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::UriTooLong => 414,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::UnknownTransferCoding | HttpError::MethodNotImplemented => 501,
            HttpError::UnsupportedVersion => 505,
            _ => 400,
        }
    }
}
