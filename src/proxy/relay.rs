//! HTTP/1 over a client transport and a backend connection: send the request head and stream its body while
//! relaying the response (interim 1xx included), framed as the heads say. No policy lives here: which server,
//! whether to retry, what to log and count is [`super::exchange`]'s; this module reports how a transfer went.
//!
//! The request body and the response are driven concurrently: a backend may answer 100 Continue before the
//! body is sent, or answer early (say 413) without reading it.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::ReadHalf;
use tokio::time::Instant;

use super::body::{self, BodyError, Framer};
use super::client::Client;
use super::exchange::Plan;
use super::splice;
use super::transport::{RawTcp, Transport};
use super::upstream::{self, Upstream};
use super::worker::Worker;
use crate::balance::Backend;
use crate::http::response::{lower_minor_version, parse_response_with, ResponseBody};
use crate::http::rewrite::{self, Delivery};
use crate::http::{HeadLimits, HttpError};

/// Why a request still without a response was given up (only ever an idempotent one without a body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// The backend's host never acknowledged the request's bytes: it is gone or cut off.
    NotAcknowledged,
    /// The host failed a gossip probe meanwhile: it may have gone dark after acknowledging.
    Suspected,
    /// Membership, a health check or an operator took the server out meanwhile.
    TakenOut,
}

impl Unanswered {
    pub fn reason(self) -> &'static str {
        match self {
            Unanswered::NotAcknowledged => "request not acknowledged by its host: abandoned",
            Unanswered::Suspected => "its host failed a gossip probe while the request waited: abandoned",
            Unanswered::TakenOut => "server DOWN or gone while the request waited: abandoned",
        }
    }
}

/// Watches a request that may be sent again while its response has not started, every `every`.
pub struct Watch<'a> {
    pub every: Duration,
    pub backend: &'a Arc<Backend>,
    /// The backend's suspicion count when the request was sent.
    pub suspicions: u64,
}

impl Watch<'_> {
    fn verdict(&self, worker: &Worker, fd: std::os::fd::RawFd) -> Option<Unanswered> {
        if upstream::unacknowledged(fd) {
            Some(Unanswered::NotAcknowledged)
        } else if self.backend.suspicions() != self.suspicions {
            Some(Unanswered::Suspected)
        } else if !worker.finishes(self.backend) {
            Some(Unanswered::TakenOut)
        } else {
            None
        }
    }
}

/// What an attempt asks of the transfer beyond moving the bytes.
pub struct Asks<'a> {
    /// Give the request up early if it turns out unanswerable (idempotent requests only).
    pub watch: Option<Watch<'a>>,
    /// `NAME=VALUE` of a sticky-session cookie for the response.
    pub set_cookie: Option<&'a str>,
}

/// How a transfer failed, deciding the status (if the response has not started) and `%tsc`.
pub enum Failure {
    /// The backend closed or reset before sending a byte of response.
    NoResponse,
    /// No response byte came, and there is reason to think none will (see [`Unanswered`]).
    Unanswered(Unanswered),
    ServerTimeout,
    BadResponse(HttpError),
    /// The client's request body was malformed, cut or too slow.
    RequestBody(BodyError),
    /// Writing to the client failed: nobody to answer.
    /// The status sent, or 0 if none reached the client.
    ClientGone(u16, u64),
    /// The response was under way when the backend failed: the client connection can only be closed. With
    /// the status and the bytes the client got.
    AbortedMidResponse([u8; 2], u16, u64),
}

pub struct Relayed {
    pub status: u16,
    pub bytes: u64,
    pub close_client: bool,
    pub reuse_upstream: bool,
    pub upgraded: bool,
}

#[allow(clippy::too_many_arguments)]
pub async fn transfer<T: Transport>(
    worker: &Worker,
    client: &mut Client<T>,
    plan: &Plan<'_>,
    framer: &mut Framer,
    up: &mut Upstream,
    up_buf: &mut BytesMut,
    responded: &mut Option<Instant>,
    asks: Asks<'_>,
) -> Result<Relayed, Failure> {
    let config = worker.config();
    let t = &config.timeouts;
    let (mut cr, mut cw) = client.stream.split();
    let cbuf = &mut client.buf;
    let up_fd = std::os::fd::AsRawFd::as_raw_fd(&up.stream);
    let (mut ur, mut uw) = up.stream.split();

    let initial = match framer {
        Framer::Length(left) => {
            let take = (*left).min(cbuf.len() as u64);
            *left -= take;
            take as usize
        }
        _ => 0,
    };
    if body::write_head_and_body(&mut uw, plan.head(), &cbuf[..initial], worker.clock.now(), t.server).await.is_err() {
        return Err(Failure::NoResponse);
    }
    cbuf.advance(initial);
    if matches!(framer, Framer::Length(0)) {
        *framer = Framer::Done;
    }

    let request_done = Cell::new(framer.is_done());
    // When the server last took request-body bytes: its timeout counts inactivity, as HAProxy's does, so a
    // slow upload that keeps moving is not cut.
    let progress = body::Progress::new(&worker.clock);
    // What reached the client, counted even when the response is cut.
    let delivered = body::Progress::new(&worker.clock);
    // The status whose head went to the client; 0 until then.
    let response_status = Cell::new(0u16);
    // When the final response head came (HAProxy's `Tr` ends there).
    let head_at = Cell::new(None);
    let send_body = async {
        if framer.is_done() {
            return Ok(());
        }
        forward(worker, &mut cr, cbuf, &mut uw, framer, (t.client, t.server), Some(&progress)).await.map(|_| ())
    };
    let sent = Sent { done: &request_done, progress: &progress.at };
    let relay =
        relay_response(worker, plan, &mut ur, up_buf, &mut cw, sent, (&response_status, &delivered, &head_at), asks);
    tokio::pin!(send_body, relay);
    let mut body_finished = request_done.get();
    // The server was told the client stopped sending the body after the answer began (`c`: it timed out,
    // `C`: it closed): what becomes of the answer after that is the client's doing.
    let mut told_server: Option<u8> = None;
    // While the answer still moves, a client that only timed out sending may be reading it: the server is
    // told once both directions have been idle for --timeout-client (HAProxy's client timeout), not before.
    let mut tell_server_at: Option<Instant> = None;
    let tell_server = || {
        // SAFETY: shutdown on the upstream socket, open for as long as `up` lives.
        unsafe { libc::shutdown(up_fd, libc::SHUT_WR) };
    };
    // The 101 that came before the request's body was all sent.
    let mut switched: Option<Relayed> = None;
    let outcome = loop {
        tokio::select! {
            sent = &mut send_body, if !body_finished => {
                body_finished = true;
                if let Some(relayed) = switched.take() {
                    break match sent {
                        Ok(()) => {
                            request_done.set(true);
                            Ok(relayed)
                        }
                        Err(e) => {
                            tracing::info!("request body before the switch of protocols: {e}");
                            Err(Failure::AbortedMidResponse(*b"CD", relayed.status, delivered.bytes.get()))
                        }
                    };
                }
                match sent {
                    Ok(()) => request_done.set(true),
                    // The backend stopped reading: it may still have answered early, so keep relaying.
                    Err(BodyError::DstWrite(_) | BodyError::DstTimeout) => {}
                    Err(e) if response_status.get() == 0 => break Err(Failure::RequestBody(e)),
                    // An answer is under way (an early one, which the client may have taken as a reason not to
                    // send the body): it goes on to its end, and the connection closes after it. A server still
                    // waiting for the rest of the body is told there is none, so it ends its answer rather than
                    // wait for --timeout-server.
                    Err(BodyError::SrcClosed) => {
                        tell_server();
                        told_server = Some(b'C');
                    }
                    Err(BodyError::SrcTimeout) => tell_server_at = Some(delivered.at.get() + t.client),
                    Err(_) => {
                        break Err(Failure::AbortedMidResponse(*b"CD", response_status.get(), delivered.bytes.get()))
                    }
                }
            }
            _ = tokio::time::sleep_until(tell_server_at.unwrap_or_else(Instant::now)), if tell_server_at.is_some() => {
                let due = delivered.at.get() + t.client;
                if Instant::now() >= due {
                    tell_server();
                    told_server = Some(b'c');
                    tell_server_at = None;
                } else {
                    tell_server_at = Some(due);
                }
            }
            relayed = &mut relay, if switched.is_none() => match relayed {
                // A switch of protocols takes effect once the request is whole (RFC 9110 section 7.8): the rest
                // of its body goes first, or the piece being written when the 101 came would go again through
                // the tunnel.
                Ok(relayed) if relayed.upgraded && !body_finished => switched = Some(relayed),
                relayed => break relayed,
            },
        }
    };
    *responded = head_at.get();
    plan.body_in.set(initial as u64 + progress.source.get());
    match (outcome, told_server) {
        // The server cut or stalled an answer whose request the client never finished: the client's doing.
        (Err(Failure::AbortedMidResponse([b'S' | b's', phase], status, bytes)), Some(who)) => {
            Err(Failure::AbortedMidResponse([who, phase], status, bytes))
        }
        (outcome, _) => outcome,
    }
}

/// Streams a body: Content-Length bodies of at least `--splice-min` bytes with splice(2) once the bytes
/// already buffered are sent, everything else through the buffer.
async fn forward<R, W>(
    worker: &Worker,
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    framer: &mut Framer,
    idle: (Duration, Duration),
    progress: Option<&body::Progress<'_>>,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin + RawTcp,
    W: AsyncWrite + Unpin + RawTcp,
{
    let dst_idle = idle.1;
    let splice_min = worker.config().limits.splice_min;
    let both_tcp = src.raw_tcp().is_some() && dst.raw_tcp().is_some();
    if let (Framer::Length(left), true) = (&mut *framer, both_tcp) {
        // Without a pipe (no descriptor left for one, say) the body is copied instead.
        let pipe = (splice_min > 0 && *left >= splice_min).then(|| worker.pipes.get().ok()).flatten();
        if let Some(pipe) = pipe {
            let take = (*left).min(buf.len() as u64) as usize;
            if take > 0 {
                body::write(dst, &buf[..take], dst_idle).await?;
                buf.advance(take);
                *left -= take as u64;
                if let Some(p) = progress {
                    p.add(take);
                }
            }
            let (Some(from), Some(to)) = (src.raw_tcp(), dst.raw_tcp()) else { unreachable!("checked above") };
            let moved = splice::forward_length(&worker.pipes, pipe, from, to, *left, idle, progress).await?;
            *framer = Framer::Done;
            return Ok(take as u64 + moved);
        }
    }
    body::forward(src, buf, dst, framer, idle, progress).await
}

/// Reads response heads (relaying interim 1xx), then the final head and body, to the client.
///
/// `watch`: while no response byte has come, look every so often whether one still can (see [`Watch`]); if
/// not, give up with [`Failure::Unanswered`].
#[allow(clippy::too_many_arguments)]
async fn relay_response(
    worker: &Worker,
    plan: &Plan<'_>,
    ur: &mut ReadHalf<'_>,
    up_buf: &mut BytesMut,
    cw: &mut (impl AsyncWrite + Unpin + RawTcp),
    sent: Sent<'_>,
    (response_status, delivered, head_at): (&Cell<u16>, &body::Progress<'_>, &Cell<Option<Instant>>),
    asks: Asks<'_>,
) -> Result<Relayed, Failure> {
    use tokio::io::AsyncReadExt;
    let watch = asks.watch;
    let config = worker.config();
    let t = &config.timeouts;
    let limits = HeadLimits { max_head_bytes: config.limits.max_header_bytes, max_headers: config.limits.max_headers };
    let mut continue_relayed = false;
    let mut interim_seen = false;
    loop {
        let parsed = loop {
            lower_minor_version(up_buf);
            let parsed = parse_response_with(up_buf, &limits, plan.is_head, &mut worker.fields.borrow_mut());
            match parsed {
                Ok(Some(resp)) => break resp,
                Ok(None) => {}
                Err(e) => return Err(Failure::BadResponse(e)),
            }
            up_buf.reserve(4096);
            let read = match &watch {
                Some(w) if up_buf.is_empty() && !interim_seen => {
                    first_read(worker, ur, up_buf, w, t.server, sent.progress).await?
                }
                _ => while_active(ur.read_buf(up_buf), worker.clock.now(), t.server, sent.progress).await,
            };
            match read {
                Err(_) => return Err(Failure::ServerTimeout),
                Ok(Ok(0)) | Ok(Err(_)) if up_buf.is_empty() && !interim_seen => return Err(Failure::NoResponse),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Failure::BadResponse(HttpError::Malformed("closed mid-head"))),
                Ok(Ok(_)) => {}
            }
        };
        let status = parsed.status;
        let head_len = parsed.head_len;
        if (100..200).contains(&status) && status != 101 {
            interim_seen = true;
            // 1xx are for HTTP/1.1 clients only, and one 100 Continue is enough.
            let repeated_continue = status == 100 && continue_relayed;
            if !plan.http10 && !repeated_continue {
                let mut out = worker.heads.get(head_len);
                rewrite::client_response(
                    &parsed,
                    &Delivery {
                        close: false,
                        dechunk: false,
                        http10_keep_alive: false,
                        upgrade: false,
                        set_cookie: None,
                    },
                    &mut out,
                );
                continue_relayed |= status == 100;
                worker.fields.borrow_mut().keep(parsed.headers);
                write_client(cw, &out, &[], worker.clock.now(), t.client).await?;
                flush_client(cw, t.client).await.map_err(|_| Failure::ClientGone(0, 0))?;
            }
            up_buf.advance(head_len);
            continue;
        }
        if status == 101 && !plan.upgrade {
            return Err(Failure::BadResponse(HttpError::Malformed("101 without an upgrade request")));
        }
        // HTTP/1.0 has no transfer codings (RFC 9112 section 6.1): chunked is undone for such a client, but
        // another coding (gzip, say) cannot be, and dropping its name would hand over bytes nobody can read.
        if plan.http10 && parsed.codings.as_deref().is_some_and(|c| c != "chunked") {
            return Err(Failure::BadResponse(HttpError::BadTransferEncoding(
                "a coding an HTTP/1.0 client cannot take",
            )));
        }
        let upgraded = status == 101;
        let dechunk = plan.http10 && parsed.body == ResponseBody::Chunked;
        let close_client = !plan.keep_alive
            || upgraded
            || parsed.body == ResponseBody::UntilClose
            || dechunk
            || !sent.done.get()
            || worker.is_shutting_down();
        let delivery = Delivery {
            close: close_client,
            dechunk,
            http10_keep_alive: plan.http10 && !close_client,
            upgrade: upgraded,
            set_cookie: asks.set_cookie.filter(|_| !upgraded),
        };
        let mut out = worker.heads.get(head_len + 32);
        rewrite::client_response(&parsed, &delivery, &mut out);
        let server_keeps = parsed.keep_alive;
        let mut framer = Framer::for_response(parsed.body, dechunk, config.limits.max_header_bytes);
        worker.fields.borrow_mut().keep(parsed.headers);
        up_buf.advance(head_len);

        let initial = match &mut framer {
            Framer::Length(left) => {
                let take = (*left).min(up_buf.len() as u64);
                *left -= take;
                take as usize
            }
            _ => 0,
        };
        response_status.set(status);
        let now = worker.clock.now();
        head_at.set(Some(now));
        // A client gone before the head reached it is logged with the status it was to get, as HAProxy does.
        write_client(cw, &out, &up_buf[..initial], now, t.client)
            .await
            .map_err(|_| Failure::ClientGone(status, delivered.bytes.get()))?;
        delivered.add(out.len() + initial);
        up_buf.advance(initial);
        if matches!(framer, Framer::Length(0)) {
            framer = Framer::Done;
        }
        let mut bytes = (out.len() + initial) as u64;
        if upgraded {
            return Ok(Relayed { status, bytes, close_client: true, reuse_upstream: false, upgraded });
        }
        let cut = |term| Failure::AbortedMidResponse(term, status, delivered.bytes.get());
        let forwarded = match forward(worker, ur, up_buf, cw, &mut framer, (t.server, t.client), Some(delivered)).await
        {
            Ok(n) => flush_client(cw, t.client).await.map(|()| n),
            Err(e) => Err(e),
        };
        match forwarded {
            Ok(n) => bytes += n,
            Err(BodyError::DstWrite(_) | BodyError::DstTimeout) => {
                return Err(Failure::ClientGone(status, delivered.bytes.get()))
            }
            Err(BodyError::SrcTimeout) => return Err(cut(*b"sD")),
            Err(BodyError::Framing(_)) => return Err(cut(*b"PD")),
            Err(_) => return Err(cut(*b"SD")),
        }
        let reuse_upstream = server_keeps && up_buf.is_empty() && sent.done.get();
        return Ok(Relayed { status, bytes, close_client, reuse_upstream, upgraded: false });
    }
}

/// The first read of a response, asking `watch` every so often whether to give up waiting.
async fn first_read(
    worker: &Worker,
    ur: &mut ReadHalf<'_>,
    up_buf: &mut BytesMut,
    watch: &Watch<'_>,
    limit: Duration,
    progress: &Cell<Instant>,
) -> Result<Result<std::io::Result<usize>, tokio::time::error::Elapsed>, Failure> {
    use tokio::io::AsyncReadExt;
    let start = worker.clock.now();
    let fd = std::os::fd::AsRawFd::as_raw_fd((*ur).as_ref());
    let read = ur.read_buf(up_buf);
    tokio::pin!(read);
    loop {
        let deadline = progress.get().max(start) + limit;
        let step = (Instant::now() + watch.every).min(deadline);
        match tokio::time::timeout_at(step, &mut read).await {
            Ok(done) => return Ok(Ok(done)),
            Err(elapsed) if Instant::now() >= deadline => return Ok(Err(elapsed)),
            Err(_) => {
                if let Some(why) = watch.verdict(worker, fd) {
                    return Err(Failure::Unanswered(why));
                }
            }
        }
    }
}

/// `read`, under the server timeout counted from the later of `start` (the caller's now) and the server's last
/// progress on the request body.
async fn while_active<F: std::future::Future>(
    read: F,
    start: Instant,
    limit: Duration,
    progress: &Cell<Instant>,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::pin!(read);
    loop {
        let deadline = progress.get().max(start) + limit;
        match tokio::time::timeout_at(deadline, &mut read).await {
            Ok(done) => return Ok(done),
            Err(elapsed) if progress.get().max(start) + limit <= Instant::now() => return Err(elapsed),
            Err(_) => {}
        }
    }
}

/// How the request body is going, for the response side.
#[derive(Clone, Copy)]
struct Sent<'a> {
    /// All of it reached the server.
    done: &'a Cell<bool>,
    /// When the server last took some.
    progress: &'a Cell<Instant>,
}

/// Pushes out what a TLS layer still holds of a complete message: tokio-rustls counts a write done once the
/// plaintext is taken, even if the socket could not take the records yet, and a keep-alive connection next
/// only reads, so the end of a response would wait for the client's next request or the idle timeout. Raw
/// TCP holds nothing back.
async fn flush_client<W: tokio::io::AsyncWrite + Unpin + RawTcp>(cw: &mut W, idle: Duration) -> Result<(), BodyError> {
    use tokio::io::AsyncWriteExt;
    if cw.raw_tcp().is_some() {
        return Ok(());
    }
    match tokio::time::timeout(idle, cw.flush()).await {
        Err(_) => Err(BodyError::DstTimeout),
        Ok(r) => r.map_err(BodyError::DstWrite),
    }
}

async fn write_client<W: tokio::io::AsyncWrite + Unpin + RawTcp>(
    cw: &mut W,
    head: &[u8],
    body: &[u8],
    now: Instant,
    idle: Duration,
) -> Result<(), Failure> {
    body::write_head_and_body(cw, head, body, now, idle).await.map_err(|_| Failure::ClientGone(0, 0))
}
