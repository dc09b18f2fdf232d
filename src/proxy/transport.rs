//! What the client side of the data plane runs over: plain TCP or TLS, and whatever comes next. HTTP/1 framing
//! needs only `AsyncRead + AsyncWrite`; the proxy needs three more things from a transport, gathered here:
//!
//! - to split into halves driven at once (a request body streams up while the response is relayed down);
//! - to wait for the next request without holding a buffer (an idle keep-alive connection costs little);
//! - to say whether a raw TCP socket lies underneath, since splice(2) moves bytes between sockets only.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{tcp, TcpStream};
use tokio_rustls::server::TlsStream;

/// A client connection's byte stream.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    type Read<'a>: AsyncRead + Unpin + RawTcp
    where
        Self: 'a;
    type Write<'a>: AsyncWrite + Unpin + RawTcp
    where
        Self: 'a;

    /// Whether bytes are encrypted on the wire (`X-Forwarded-Proto: https`, the TLS frontend's counters).
    const TLS: bool;

    fn split(&mut self) -> (Self::Read<'_>, Self::Write<'_>);

    /// Ready once a read would make progress (data, end of stream or an error), without reading. A poll, not
    /// a future: the wait then adds nothing to an idle connection's state.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Reads what is there without waiting: `WouldBlock` if nothing is. Through `poll_read` even for TCP:
    /// tokio's `try_read_buf` leaves the socket marked readable after a short read, so the wait for the next
    /// request would return at once and cost a read that would block (a quarter of small GETs did).
    fn read_now(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        match pin!(self.read_buf(buf)).poll(&mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// The TCP socket a half reads from or writes to directly, if bytes are not transformed on the way.
pub trait RawTcp {
    fn raw_tcp(&self) -> Option<&TcpStream>;
}

impl RawTcp for tcp::ReadHalf<'_> {
    fn raw_tcp(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl RawTcp for tcp::WriteHalf<'_> {
    fn raw_tcp(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl<T> RawTcp for tokio::io::ReadHalf<T> {
    fn raw_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl<T> RawTcp for tokio::io::WriteHalf<T> {
    fn raw_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl Transport for TcpStream {
    type Read<'a> = tcp::ReadHalf<'a>;
    type Write<'a> = tcp::WriteHalf<'a>;
    const TLS: bool = false;

    fn split(&mut self) -> (tcp::ReadHalf<'_>, tcp::WriteHalf<'_>) {
        TcpStream::split(self)
    }

    /// The socket's own read-readiness slot, which nothing else uses while the connection waits.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl Transport for TlsStream<TcpStream> {
    type Read<'a> = tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>;
    type Write<'a> = tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>;
    const TLS: bool = true;

    fn split(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        tokio::io::split(self)
    }

    /// Records already received may hold the next request, decrypted or not: they need no socket readiness.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (socket, session) = self.get_mut();
        match session.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => socket.poll_read_ready(cx),
            // Data, a close_notify, or a protocol error that the next read reports.
            _ => Poll::Ready(Ok(())),
        }
    }
}
