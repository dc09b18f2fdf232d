//! Streams a message body from one socket to another, framed as decided from the head.

use std::cell::Cell;
use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use crate::http::chunked::{ChunkedDecoder, Emit};
use crate::http::request::RequestBody;
use crate::http::response::ResponseBody;
use crate::http::HttpError;
use crate::proxy::clock::Clock;
use crate::proxy::transport::RawTcp;

/// Largest read while streaming a body: large reads matter for big responses.
const BODY_READ: usize = 64 * 1024;
/// The first read of a body from a source that cannot say when bytes are waiting (TLS): see [`forward`].
const FIRST_READ: usize = 4096;
/// A read shorter than this means the body trickles in: its buffer is given back between reads.
const TRICKLE: usize = 4096;

/// Where the body ends.
pub enum Framer {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl Framer {
    pub fn for_request(body: RequestBody, max_trailer_bytes: usize) -> Framer {
        match body {
            RequestBody::None | RequestBody::Length(0) => Framer::Done,
            RequestBody::Length(n) => Framer::Length(n),
            RequestBody::Chunked => Framer::Chunked(ChunkedDecoder::new(Emit::Chunked, max_trailer_bytes)),
        }
    }

    pub fn for_response(body: ResponseBody, dechunk: bool, max_trailer_bytes: usize) -> Framer {
        let emit = if dechunk { Emit::Payload } else { Emit::Chunked };
        match body {
            ResponseBody::None | ResponseBody::Length(0) => Framer::Done,
            ResponseBody::Length(n) => Framer::Length(n),
            ResponseBody::Chunked => Framer::Chunked(ChunkedDecoder::new(emit, max_trailer_bytes)),
            ResponseBody::UntilClose => Framer::UntilClose,
        }
    }

    /// Checks the framing of body bytes that arrived with the head, consuming nothing: a body already known
    /// to be malformed is refused before any server sees the request. What arrives later is checked as it
    /// streams.
    pub fn check_buffered(&self, buffered: &[u8]) -> Result<(), HttpError> {
        match self {
            Framer::Chunked(decoder) if !buffered.is_empty() => {
                decoder.clone().feed(buffered, &mut Vec::new()).map(drop)
            }
            _ => Ok(()),
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            Framer::Done => true,
            Framer::Chunked(d) => d.is_done(),
            _ => false,
        }
    }
}

/// Which side failed, so the caller can answer with the right status and termination state.
#[derive(Debug, Error)]
pub enum BodyError {
    #[error("source read: {0}")]
    SrcRead(io::Error),
    #[error("source closed before the body ended")]
    SrcClosed,
    #[error("source timed out")]
    SrcTimeout,
    #[error("destination write: {0}")]
    DstWrite(io::Error),
    #[error("destination timed out")]
    DstTimeout,
    #[error("{0}")]
    Framing(HttpError),
}

/// What a forwarding tells the rest of the exchange as it goes.
pub struct Progress<'c> {
    /// When the destination last took bytes (the start of the poll in which it took them).
    pub at: Cell<Instant>,
    /// Bytes the destination took.
    pub bytes: Cell<u64>,
    /// Bytes taken from the source for them: more than `bytes` when a chunked body is re-framed (its
    /// extensions and trailers dropped), the same otherwise. The CSV's `bin` counts these.
    pub source: Cell<u64>,
    clock: &'c Clock,
}

impl Progress<'_> {
    pub fn new(clock: &Clock) -> Progress<'_> {
        Progress { at: Cell::new(clock.now()), bytes: Cell::new(0), source: Cell::new(0), clock }
    }

    /// `n` bytes moved as they came.
    pub fn add(&self, n: usize) {
        self.moved(n, n);
    }

    /// `written` bytes went to the destination for `consumed` taken from the source.
    pub fn moved(&self, written: usize, consumed: usize) {
        if written > 0 {
            self.at.set(self.clock.now());
            self.bytes.set(self.bytes.get() + written as u64);
        }
        self.source.set(self.source.get() + consumed as u64);
    }
}

/// Bytes of `buf` that belong to the body are forwarded first; then the source is read until the framer ends.
/// Bytes beyond the body stay in `buf` (a pipelined request, or a backend's protocol fault).
///
/// Memory follows the data, not the wait: from a TCP socket, the read buffer is reserved only once bytes are
/// there (a full `BODY_READ`, so a bulk body moves in few system calls), and a body that trickles in (a slow
/// upload) gives its buffer back before it waits again. A source that cannot say when bytes are waiting (TLS)
/// starts with small reads that grow while they come back full. `progress` follows every write, so a cut body
/// still tells how much went through.
pub async fn forward<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    framer: &mut Framer,
    idle: (Duration, Duration),
    progress: Option<&Progress<'_>>,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin + RawTcp,
    W: AsyncWrite + Unpin,
{
    let (src_idle, dst_idle) = idle;
    let mut sent = 0u64;
    let mut scratch = Vec::new();
    let waits_unbuffered = src.raw_tcp().is_some();
    let mut read_size = if waits_unbuffered { BODY_READ } else { FIRST_READ };
    let mut trickling = false;
    loop {
        if !buf.is_empty() {
            let (consumed, out): (usize, &[u8]) = match framer {
                Framer::Done => return Ok(sent),
                Framer::Length(left) => {
                    let take = (*left).min(buf.len() as u64) as usize;
                    *left -= take as u64;
                    (take, &buf[..take])
                }
                Framer::UntilClose => (buf.len(), &buf[..]),
                Framer::Chunked(decoder) => {
                    scratch.clear();
                    let n = decoder.feed(buf, &mut scratch).map_err(BodyError::Framing)?;
                    (n, &scratch[..])
                }
            };
            if !out.is_empty() {
                write(dst, out, dst_idle).await?;
                sent += out.len() as u64;
            }
            if let Some(p) = progress {
                p.moved(out.len(), consumed);
            }
            buf.advance(consumed);
            if matches!(framer, Framer::Length(0)) {
                *framer = Framer::Done;
            }
        }
        if framer.is_done() {
            return Ok(sent);
        }
        let want = match framer {
            Framer::Length(left) => (*left).min(read_size as u64) as usize,
            _ => read_size,
        };
        if trickling && buf.is_empty() && buf.capacity() > TRICKLE {
            *buf = BytesMut::new();
        }
        let before = buf.len();
        let read = timeout(src_idle, async {
            if let Some(socket) = src.raw_tcp() {
                socket.readable().await?;
            }
            buf.reserve(want.max(1));
            src.read_buf(buf).await
        })
        .await;
        let got = buf.len() - before;
        trickling = waits_unbuffered && got < TRICKLE;
        if got >= read_size {
            read_size = (read_size * 2).min(BODY_READ);
        }
        match read {
            Err(_) => return Err(BodyError::SrcTimeout),
            Ok(Err(e)) => return Err(BodyError::SrcRead(e)),
            Ok(Ok(0)) if matches!(framer, Framer::UntilClose) => {
                *framer = Framer::Done;
                let _ = timeout(dst_idle, dst.flush()).await;
                return Ok(sent);
            }
            Ok(Ok(0)) => return Err(BodyError::SrcClosed),
            Ok(Ok(_)) => {}
        }
    }
}

/// Writes all of `bytes`, failing if the destination takes none of them for `idle`: the timeout is on
/// inactivity, as HAProxy's, so a slow reader that keeps reading is served however long the whole takes.
pub async fn write<W: AsyncWrite + Unpin>(dst: &mut W, mut bytes: &[u8], idle: Duration) -> Result<(), BodyError> {
    while !bytes.is_empty() {
        match timeout(idle, dst.write(bytes)).await {
            Err(_) => return Err(BodyError::DstTimeout),
            Ok(Err(e)) => return Err(BodyError::DstWrite(e)),
            Ok(Ok(0)) => return Err(BodyError::DstWrite(io::ErrorKind::WriteZero.into())),
            Ok(Ok(n)) => bytes = &bytes[n..],
        }
    }
    Ok(())
}

/// Writes `head` then `body` with as few system calls as the kernel allows (one, usually). On a raw TCP
/// socket that is send(2) or sendmsg(2): writev(2) reaches the same TCP code through the file layer, and
/// costs the kernel more (strace: HAProxy sends, and spent less system time per request). Each send may
/// wait `idle` for the destination to take bytes, the first counted from `now` (the caller's cached clock).
pub async fn write_head_and_body<W: AsyncWrite + Unpin + RawTcp>(
    dst: &mut W,
    head: &[u8],
    body: &[u8],
    now: Instant,
    idle: Duration,
) -> Result<(), BodyError> {
    let (mut h, mut b) = (head, body);
    let mut deadline = now + idle;
    while !h.is_empty() || !b.is_empty() {
        let send = async {
            match dst.raw_tcp() {
                Some(tcp) => send_two(tcp, h, b).await,
                None => dst.write_vectored(&[io::IoSlice::new(h), io::IoSlice::new(b)]).await,
            }
        };
        let n = match timeout_at(deadline, send).await {
            Err(_) => return Err(BodyError::DstTimeout),
            Ok(Err(e)) => return Err(BodyError::DstWrite(e)),
            Ok(Ok(0)) => return Err(BodyError::DstWrite(io::ErrorKind::WriteZero.into())),
            Ok(Ok(n)) => n,
        };
        let from_head = n.min(h.len());
        h = &h[from_head..];
        b = &b[n - from_head..];
        if h.is_empty() && b.is_empty() {
            break;
        }
        deadline = Instant::now() + idle;
    }
    Ok(())
}

/// One send of `a` then `b` (either may be empty) once the socket takes bytes; how many it took.
async fn send_two(tcp: &tokio::net::TcpStream, a: &[u8], b: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    loop {
        let sent = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            // SAFETY: the buffers outlive the call; the kernel only reads them.
            let n = unsafe {
                match (a.is_empty(), b.is_empty()) {
                    (_, true) => libc::send(fd, a.as_ptr().cast(), a.len(), libc::MSG_NOSIGNAL),
                    (true, false) => libc::send(fd, b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL),
                    (false, false) => {
                        let mut iov = [
                            libc::iovec { iov_base: a.as_ptr() as *mut _, iov_len: a.len() },
                            libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() },
                        ];
                        let mut msg: libc::msghdr = std::mem::zeroed();
                        msg.msg_iov = iov.as_mut_ptr();
                        msg.msg_iovlen = 2;
                        libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
                    }
                }
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
            other => return other,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpSocket, TcpStream};

    /// A loopback connection whose writing end holds 8 KiB and reading end 4 KiB, so that what is written
    /// waits on the reader instead of vanishing into loopback's megabytes of buffer.
    pub(in crate::proxy) async fn narrow_pair() -> (TcpStream, TcpStream) {
        let listening = TcpSocket::new_v4().unwrap();
        listening.set_recv_buffer_size(4096).unwrap();
        listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listening.listen(1).unwrap();
        let connecting = TcpSocket::new_v4().unwrap();
        connecting.set_send_buffer_size(8192).unwrap();
        let writer = connecting.connect(listener.local_addr().unwrap()).await.unwrap();
        let (reader, _) = listener.accept().await.unwrap();
        (writer, reader)
    }

    /// Reads 4 KiB every 40 ms until `total` bytes have come; how many came.
    async fn read_slowly(mut reader: TcpStream, total: usize) -> usize {
        let mut got = 0;
        let mut piece = [0u8; 4096];
        while got < total {
            match reader.read(&mut piece).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        got
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    // 192 KiB at about 100 KiB/s takes about 2 s, twice the idle timeout; the reader takes bytes every 40 ms,
    // so the writer waits about 80 ms at a time for room.
    const SLOW_TOTAL: usize = 192 << 10;
    const IDLE: Duration = Duration::from_secs(1);

    #[test]
    fn slow_readers_that_keep_reading_get_everything() {
        runtime().block_on(async {
            let (mut writer, reader) = narrow_pair().await;
            let reading = tokio::spawn(read_slowly(reader, SLOW_TOTAL));
            let written = write(&mut writer, &vec![b'x'; SLOW_TOTAL], IDLE).await;
            assert!(written.is_ok(), "write: the idle timeout counts from the last progress: {written:?}");
            assert_eq!(reading.await.unwrap(), SLOW_TOTAL);

            let (mut writer, reader) = narrow_pair().await;
            let reading = tokio::spawn(read_slowly(reader, SLOW_TOTAL));
            let (head, body) = (vec![b'h'; 4096], vec![b'b'; SLOW_TOTAL - 4096]);
            let (_, mut half) = writer.split();
            let written = write_head_and_body(&mut half, &head, &body, Instant::now(), IDLE).await;
            assert!(written.is_ok(), "head and body: the idle timeout counts from the last progress: {written:?}");
            assert_eq!(reading.await.unwrap(), SLOW_TOTAL);
        });
    }

    #[test]
    fn a_write_to_a_reader_that_stopped_times_out() {
        runtime().block_on(async {
            let (mut writer, _reader) = narrow_pair().await;
            let idle = Duration::from_millis(200);
            let written = write(&mut writer, &vec![b'x'; SLOW_TOTAL], idle).await;
            assert!(matches!(written, Err(BodyError::DstTimeout)), "{written:?}");
            // Through the generic path (a TLS stream's) as well as send(2).
            let (_, mut generic) = tokio::io::split(writer);
            let written =
                write_head_and_body(&mut generic, b"head", &vec![b'x'; SLOW_TOTAL], Instant::now(), idle).await;
            assert!(matches!(written, Err(BodyError::DstTimeout)), "{written:?}");
        });
    }
}
