//! One request and its response: choose a backend, send the head, stream the request body while relaying the
//! response, then decide whether either connection can be reused.
//!
//! The request body and the response are driven concurrently: a backend may answer 100 Continue before the
//! body is sent, or answer early (say 413) without reading it. A connect failure is retried once on another
//! backend. An idempotent request without a body whose connection closes before any response byte is retried
//! too (RFC 9110 section 9.2.2): on a fresh connection if the closed one was reused from the pool, else on
//! another backend.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::{timeout, Instant};

use super::access_log::{self, Record};
use super::body::{self, BodyError, Framer};
use super::client::{close_gracefully, Client, Started};
use super::upstream::{self, ConnectError, Upstream};
use super::worker::Worker;
use super::{refusal, splice, tunnel};
use crate::balance::{Backend, InFlight};
use crate::http::request::{Request, RequestBody};
use crate::http::response::{lower_minor_version, parse_response, ResponseBody};
use crate::http::rewrite::{self, Delivery};
use crate::http::{HeadLimits, HttpError, Version};

/// Attempts after the first, as HAProxy's `retries 3`; the connect timeout bounds them all.
const MAX_RETRIES: u32 = 3;

/// What the exchange needs to remember of the request head once its bytes are gone.
pub struct Plan {
    body: RequestBody,
    is_head: bool,
    http10: bool,
    keep_alive: bool,
    upgrade: bool,
    retryable: bool,
    line: Option<String>,
}

impl Plan {
    pub fn new(req: &Request<'_>, keep_line: bool) -> Plan {
        Plan {
            body: req.body,
            is_head: req.is_head(),
            http10: req.version == Version::Http10,
            keep_alive: req.keep_alive,
            upgrade: req.upgrade.is_some(),
            retryable: matches!(req.body, RequestBody::None | RequestBody::Length(0))
                && req.is_idempotent()
                && req.upgrade.is_none(),
            line: keep_line.then(|| req.line()),
        }
    }
}

/// Why a request still without a response was given up (only ever an idempotent one without a body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unanswered {
    /// The backend's host never acknowledged the request's bytes: it is gone or cut off.
    NotAcknowledged,
    /// The host failed a gossip probe meanwhile: it may have gone dark after acknowledging.
    Suspected,
    /// Membership, a health check or an operator took the server out meanwhile.
    TakenOut,
}

impl Unanswered {
    fn reason(self) -> &'static str {
        match self {
            Unanswered::NotAcknowledged => "request not acknowledged by its host: abandoned",
            Unanswered::Suspected => "its host failed a gossip probe while the request waited: abandoned",
            Unanswered::TakenOut => "taken out of rotation while the request waited: abandoned",
        }
    }
}

/// Watches a request that may be sent again while its response has not started, every `every`.
struct Watch<'a> {
    every: Duration,
    backend: &'a Arc<Backend>,
    /// The backend's suspicion count when the request was sent.
    suspicions: u64,
}

impl Watch<'_> {
    fn verdict(&self, worker: &Worker, fd: std::os::fd::RawFd) -> Option<Unanswered> {
        if upstream::unacknowledged(fd) {
            Some(Unanswered::NotAcknowledged)
        } else if self.backend.suspicions() != self.suspicions {
            Some(Unanswered::Suspected)
        } else if !worker.in_rotation(self.backend) {
            Some(Unanswered::TakenOut)
        } else {
            None
        }
    }
}

/// How a transfer failed, deciding the status (if the response has not started) and `%tsc`.
enum Failure {
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
    ClientGone(u16),
    /// The response was under way when the backend failed: the client connection can only be closed.
    AbortedMidResponse([u8; 2], u16),
}

struct Relayed {
    status: u16,
    bytes: u64,
    close_client: bool,
    reuse_upstream: bool,
    upgraded: bool,
}

/// Runs one exchange; returns whether the client connection stays open for another request.
///
/// Attempts that fail before anything could have reached an application are retried on another server:
/// a refused, timed-out or abandoned connect (any method), and for idempotent requests without a body, a
/// connection closed without a response or a request the server's host never acknowledged. A server that
/// failed is ejected (skipped by every thread) until it is back; one that only closed a pooled connection is
/// merely avoided for this request.
pub async fn run(worker: &Rc<Worker>, client: &mut Client, plan: Plan, head: Vec<u8>, started: Started) -> bool {
    let config = &worker.shared.config;
    let mut log =
        LogState { started, server: None, reached_server: false, connected: None, responded: None, retries: 0 };
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut framer = Framer::for_request(plan.body, config.limits.max_header_bytes);
    let connect_deadline = Instant::now() + config.timeouts.connect;
    // Why the last attempt that reached a server failed: the answer if no server is left to retry on.
    let mut last_failure: Option<Failure> = None;
    loop {
        let Some(picked) = worker.pick_backend(&tried) else {
            return match last_failure {
                Some(failure) => fail(worker, client, &plan, &log, failure).await,
                None => answer(worker, client, &plan, &log, 503, *b"SC").await,
            };
        };
        // The only server left already lost a pooled connection for this request: a fresh one, then.
        let fresh_only = tried.iter().any(|t| Arc::ptr_eq(t, &picked));
        let hurry = worker.has_alternative(&picked, &tried);
        // Counted from the pick on, so a draining server is acknowledged only once nothing here uses it.
        let backend = log.server.insert(picked.enter()).backend();
        // A retry starts afresh: the stats and the log describe the attempt that ends the exchange.
        (log.reached_server, log.connected, log.responded) = (false, None, None);
        let attempt = Attempt { hurry, deadline: connect_deadline };
        let mut up = match acquire(worker, backend, fresh_only, !plan.retryable, attempt).await {
            Ok(up) => up,
            Err(e) => {
                let slot = backend.counters.slot(worker.id);
                slot.connect_error();
                let ejected = !matches!(e, ConnectError::TakenOut) && backend.eject();
                let retry = log.retries < MAX_RETRIES && Instant::now() < connect_deadline;
                tracing::warn!(
                    "server {} ({}:{}): {e}{}{}",
                    backend.name(),
                    backend.host,
                    backend.port,
                    if ejected { "; skipped until it answers again" } else { "" },
                    if retry { "; trying another server" } else { "" },
                );
                if retry {
                    slot.retry();
                    log.retries += 1;
                    tried.push(backend.clone());
                    last_failure = None;
                    continue;
                }
                let term = if e.timed_out() { *b"sC" } else { *b"SC" };
                return answer(worker, client, &plan, &log, 503, term).await;
            }
        };
        log.reached_server = true;
        if worker.log_enabled() {
            log.connected = Some(Instant::now());
        }
        let mut up_buf = worker.buffers.get();
        // Only a request that may be sent again is worth watching for an acknowledgement.
        let watch = (plan.retryable && hurry).then(|| Watch {
            every: config.timeouts.attempt,
            backend,
            suspicions: backend.suspicions(),
        });
        let result =
            transfer(worker, client, &plan, &head, &mut framer, &mut up, &mut up_buf, &mut log.responded, watch).await;
        match result {
            Err(failure @ (Failure::NoResponse | Failure::Unanswered(_)))
                if plan.retryable && log.retries < MAX_RETRIES =>
            {
                up_buf.clear();
                worker.buffers.put(up_buf);
                log.retries += 1;
                backend.counters.slot(worker.id).retry();
                // A reused connection may just have timed out at the backend: merely avoid that server for this
                // request. A fresh one that closed without answering, or a host that does not acknowledge,
                // points at a dying backend: eject it.
                let reason = match failure {
                    Failure::Unanswered(why) => why.reason(),
                    _ if up.reused => "closed a pooled connection without a response",
                    _ => "closed a new connection without a response",
                };
                let dying = matches!(failure, Failure::Unanswered(Unanswered::NotAcknowledged))
                    || matches!(failure, Failure::NoResponse) && !up.reused;
                let ejected = dying && backend.eject();
                if !matches!(failure, Failure::NoResponse) || ejected {
                    tracing::warn!(
                        "server {} ({}:{}): {reason}{}; trying another server",
                        backend.name(),
                        backend.host,
                        backend.port,
                        if ejected { "; skipped until it answers again" } else { "" },
                    );
                }
                tried.push(backend.clone());
                last_failure = Some(failure);
                continue;
            }
            Ok(relayed) if relayed.upgraded => {
                let moved = tunnel::run(
                    &mut client.stream,
                    &mut client.buf,
                    &mut up.stream,
                    &mut up_buf,
                    config.timeouts.tunnel,
                    tunnel::Splicing { pipes: &worker.pipes, min: config.limits.splice_min },
                )
                .await;
                log_line(worker, client, &plan, &log, 101, relayed.bytes + moved, *b"--");
                return false;
            }
            Ok(relayed) => {
                up_buf.clear();
                worker.buffers.put(up_buf);
                if relayed.reuse_upstream && !worker.is_shutting_down() {
                    worker.pool.borrow_mut().checkin(up);
                }
                log_line(worker, client, &plan, &log, relayed.status, relayed.bytes, *b"--");
                return !relayed.close_client;
            }
            Err(failure) => {
                up_buf.clear();
                worker.buffers.put(up_buf);
                drop(up);
                return fail(worker, client, &plan, &log, failure).await;
            }
        }
    }
}

/// How long a connect attempt may take.
struct Attempt {
    /// Another usable server exists: give this one only `--timeout-attempt`.
    hurry: bool,
    /// When the connect timeout, shared by every attempt of the request, runs out.
    deadline: Instant,
}

/// A pooled connection to `backend` when one is alive, else a new one, abandoned if the server leaves
/// rotation meanwhile.
///
/// `verify`: the request cannot be retried if a reused connection turns out dead, so a pooled one is checked
/// with the kernel, not only with the reactor's possibly older readiness.
async fn acquire(
    worker: &Worker,
    backend: &Arc<Backend>,
    fresh_only: bool,
    verify: bool,
    attempt: Attempt,
) -> Result<Upstream, ConnectError> {
    if !fresh_only {
        if let Ok(addr) = backend.address(false).await {
            if let Some(up) = worker.pool.borrow_mut().checkout(addr, verify) {
                return Ok(up);
            }
        }
    }
    let left = attempt.deadline.saturating_duration_since(Instant::now());
    let share = worker.shared.config.timeouts.attempt;
    let abandon = attempt.hurry && share < left;
    let limit = if abandon { share } else { left.max(Duration::from_millis(1)) };
    tokio::select! {
        connected = upstream::connect(backend, limit, abandon) => connected,
        _ = worker.taken_out(backend) => Err(ConnectError::TakenOut),
    }
}

#[allow(clippy::too_many_arguments)]
async fn transfer(
    worker: &Worker,
    client: &mut Client,
    plan: &Plan,
    head: &[u8],
    framer: &mut Framer,
    up: &mut Upstream,
    up_buf: &mut BytesMut,
    responded: &mut Option<Instant>,
    watch: Option<Watch<'_>>,
) -> Result<Relayed, Failure> {
    let t = worker.shared.config.timeouts;
    let (mut cr, mut cw) = client.stream.split();
    let cbuf = &mut client.buf;
    let (mut ur, mut uw) = up.stream.split();

    let initial = match framer {
        Framer::Length(left) => {
            let take = (*left).min(cbuf.len() as u64);
            *left -= take;
            take as usize
        }
        _ => 0,
    };
    if body::write_head_and_body(&mut uw, head, &cbuf[..initial], t.server).await.is_err() {
        return Err(Failure::NoResponse);
    }
    cbuf.advance(initial);
    if matches!(framer, Framer::Length(0)) {
        *framer = Framer::Done;
    }

    let request_done = Cell::new(framer.is_done());
    // The status whose head went to the client; 0 until then.
    let response_status = Cell::new(0u16);
    let send_body = async {
        if framer.is_done() {
            return Ok(());
        }
        forward(worker, &mut cr, cbuf, &mut uw, framer, t.client, t.server).await.map(|_| ())
    };
    let relay = relay_response(worker, plan, &mut ur, up_buf, &mut cw, &request_done, &response_status, watch);
    tokio::pin!(send_body, relay);
    let mut body_finished = request_done.get();
    let outcome = loop {
        tokio::select! {
            sent = &mut send_body, if !body_finished => {
                body_finished = true;
                match sent {
                    Ok(()) => request_done.set(true),
                    // The backend stopped reading: it may still have answered early, so keep relaying.
                    Err(BodyError::DstWrite(_) | BodyError::DstTimeout) => {}
                    Err(e) if response_status.get() == 0 => break Err(Failure::RequestBody(e)),
                    Err(_) => break Err(Failure::AbortedMidResponse(*b"CD", response_status.get())),
                }
            }
            relayed = &mut relay => break relayed,
        }
    };
    if worker.log_enabled() && (outcome.is_ok() || response_status.get() != 0) {
        responded.get_or_insert_with(Instant::now);
    }
    outcome
}

/// Streams a body: Content-Length bodies of at least `--splice-min` bytes with splice(2) once the bytes
/// already buffered are sent, everything else through the buffer.
async fn forward(
    worker: &Worker,
    src: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    dst: &mut WriteHalf<'_>,
    framer: &mut Framer,
    src_idle: Duration,
    dst_idle: Duration,
) -> Result<u64, BodyError> {
    let splice_min = worker.shared.config.limits.splice_min;
    if let Framer::Length(left) = framer {
        if splice_min > 0 && *left >= splice_min {
            let take = (*left).min(buf.len() as u64) as usize;
            if take > 0 {
                body::write(dst, &buf[..take], dst_idle).await?;
                buf.advance(take);
                *left -= take as u64;
            }
            let moved =
                splice::forward_length(&worker.pipes, src.as_ref(), dst.as_ref(), *left, src_idle, dst_idle).await?;
            *framer = Framer::Done;
            return Ok(take as u64 + moved);
        }
    }
    body::forward(src, buf, dst, framer, src_idle, dst_idle).await
}

/// Reads response heads (relaying interim 1xx), then the final head and body, to the client.
///
/// `watch`: while no response byte has come, look every so often whether one still can (see [`Watch`]); if
/// not, give up with [`Failure::Unanswered`].
#[allow(clippy::too_many_arguments)]
async fn relay_response(
    worker: &Worker,
    plan: &Plan,
    ur: &mut ReadHalf<'_>,
    up_buf: &mut BytesMut,
    cw: &mut WriteHalf<'_>,
    request_done: &Cell<bool>,
    response_status: &Cell<u16>,
    watch: Option<Watch<'_>>,
) -> Result<Relayed, Failure> {
    use tokio::io::AsyncReadExt;
    let config = &worker.shared.config;
    let t = config.timeouts;
    let limits = HeadLimits { max_head_bytes: config.limits.max_header_bytes, max_headers: config.limits.max_headers };
    let mut continue_relayed = false;
    let mut interim_seen = false;
    loop {
        let parsed = loop {
            lower_minor_version(up_buf);
            match parse_response(up_buf, &limits, plan.is_head) {
                Ok(Some(resp)) => break resp,
                Ok(None) => {}
                Err(e) => return Err(Failure::BadResponse(e)),
            }
            up_buf.reserve(4096);
            let read = match &watch {
                Some(w) if up_buf.is_empty() && !interim_seen => first_read(worker, ur, up_buf, w, t.server).await?,
                _ => timeout(t.server, ur.read_buf(up_buf)).await,
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
                let mut out = Vec::with_capacity(head_len);
                rewrite::client_response(
                    &parsed,
                    &Delivery { close: false, dechunk: false, http10_keep_alive: false, upgrade: false },
                    &mut out,
                );
                continue_relayed |= status == 100;
                drop(parsed);
                write_client(cw, &out, &[], t.client).await?;
            }
            up_buf.advance(head_len);
            continue;
        }
        if status == 101 && !plan.upgrade {
            return Err(Failure::BadResponse(HttpError::Malformed("101 without an upgrade request")));
        }
        let upgraded = status == 101;
        let dechunk = plan.http10 && parsed.body == ResponseBody::Chunked;
        let close_client = !plan.keep_alive
            || upgraded
            || parsed.body == ResponseBody::UntilClose
            || dechunk
            || !request_done.get()
            || worker.is_shutting_down();
        let delivery = Delivery {
            close: close_client,
            dechunk,
            http10_keep_alive: plan.http10 && !close_client,
            upgrade: upgraded,
        };
        let mut out = Vec::with_capacity(head_len + 32);
        rewrite::client_response(&parsed, &delivery, &mut out);
        let server_keeps = parsed.keep_alive;
        let mut framer = Framer::for_response(parsed.body, dechunk, config.limits.max_header_bytes);
        drop(parsed);
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
        write_client(cw, &out, &up_buf[..initial], t.client).await?;
        up_buf.advance(initial);
        if matches!(framer, Framer::Length(0)) {
            framer = Framer::Done;
        }
        let mut bytes = (out.len() + initial) as u64;
        if upgraded {
            return Ok(Relayed { status, bytes, close_client: true, reuse_upstream: false, upgraded });
        }
        match forward(worker, ur, up_buf, cw, &mut framer, t.server, t.client).await {
            Ok(n) => bytes += n,
            Err(BodyError::DstWrite(_) | BodyError::DstTimeout) => return Err(Failure::ClientGone(status)),
            Err(BodyError::SrcTimeout) => return Err(Failure::AbortedMidResponse(*b"sD", status)),
            Err(BodyError::Framing(_)) => return Err(Failure::AbortedMidResponse(*b"PD", status)),
            Err(_) => return Err(Failure::AbortedMidResponse(*b"SD", status)),
        }
        let reuse_upstream = server_keeps && up_buf.is_empty() && request_done.get();
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
) -> Result<Result<std::io::Result<usize>, tokio::time::error::Elapsed>, Failure> {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + limit;
    let fd = std::os::fd::AsRawFd::as_raw_fd((*ur).as_ref());
    let read = ur.read_buf(up_buf);
    tokio::pin!(read);
    loop {
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

async fn write_client<W: tokio::io::AsyncWrite + Unpin>(
    cw: &mut W,
    head: &[u8],
    body: &[u8],
    idle: std::time::Duration,
) -> Result<(), Failure> {
    body::write_head_and_body(cw, head, body, idle).await.map_err(|_| Failure::ClientGone(0))
}

/// Turns a failure into the client's answer (if it can still get one) and a log line.
async fn fail(worker: &Worker, client: &mut Client, plan: &Plan, log: &LogState, failure: Failure) -> bool {
    let server_failed = matches!(
        failure,
        Failure::NoResponse
            | Failure::Unanswered(_)
            | Failure::ServerTimeout
            | Failure::BadResponse(_)
            | Failure::AbortedMidResponse([b'S' | b's' | b'P', _], _)
    );
    if let (true, Some(server)) = (server_failed, &log.server) {
        server.backend().counters.slot(worker.id).response_error();
    }
    let (status, term) = match failure {
        Failure::NoResponse => (502, *b"SH"),
        Failure::Unanswered(_) => (504, *b"sH"),
        Failure::ServerTimeout => (504, *b"sH"),
        Failure::BadResponse(e) => {
            tracing::warn!("bad response from {}: {e}", log.server_name());
            (502, *b"PH")
        }
        Failure::RequestBody(BodyError::Framing(e)) => {
            tracing::info!("refused request body from {}: {e}", client.peer);
            (e.status(), *b"PD")
        }
        Failure::RequestBody(BodyError::SrcTimeout) => (408, *b"cD"),
        // The status a client already received is logged and counted as HAProxy does; the bytes of a cut
        // body are not tracked (logged as 0).
        Failure::RequestBody(_) => {
            log_line(worker, client, plan, log, 0, 0, *b"CD");
            return false;
        }
        Failure::ClientGone(status) => {
            log_line(worker, client, plan, log, status, 0, *b"CD");
            return false;
        }
        Failure::AbortedMidResponse(term, status) => {
            log_line(worker, client, plan, log, status, 0, term);
            return false;
        }
    };
    answer(worker, client, plan, log, status, term).await
}

/// Sends a canned status and closes.
async fn answer(worker: &Worker, client: &mut Client, plan: &Plan, log: &LogState, status: u16, term: [u8; 2]) -> bool {
    let bytes = refusal::response(status);
    use tokio::io::AsyncWriteExt;
    let _ = timeout(worker.shared.config.timeouts.client, client.stream.write_all(bytes)).await;
    log_line(worker, client, plan, log, refusal::status_of(bytes), bytes.len() as u64, term);
    close_gracefully(&mut client.stream).await;
    false
}

/// Times and server for the log line.
struct LogState {
    started: Started,
    /// The server in use, counted as in flight while the exchange holds it.
    server: Option<InFlight>,
    /// A connection to the server was made (counted against it whether or not the log is on).
    reached_server: bool,
    connected: Option<Instant>,
    responded: Option<Instant>,
    retries: u32,
}

impl LogState {
    fn server_name(&self) -> String {
        self.server.as_ref().map_or_else(|| "<NOSRV>".to_string(), |f| f.backend().name().to_string())
    }
}

/// Counts the exchange's outcome and writes its log line: every exchange ends here exactly once.
fn log_line(worker: &Worker, client: &Client, plan: &Plan, log: &LogState, status: u16, bytes: u64, term: [u8; 2]) {
    worker.frontend().response(status, bytes);
    if let (true, Some(server)) = (log.reached_server, &log.server) {
        let slot = server.backend().counters.slot(worker.id);
        slot.session();
        slot.response(status, bytes);
    }
    if !worker.log_enabled() {
        return;
    }
    let ms =
        |from: Instant, to: Option<Instant>| to.map_or(-1, |t| t.saturating_duration_since(from).as_millis() as i64);
    let s = log.started;
    let t_req = ms(s.instant, Some(s.head_done));
    let t_connect = ms(s.head_done, log.connected);
    let t_response = log.connected.map_or(-1, |c| ms(c, log.responded));
    let t_total = ms(s.instant, Some(Instant::now()));
    let name = log.connected.and(log.server.as_ref()).map(|f| f.backend().name());
    let server = name.as_deref().map(String::as_str);
    worker.log(|out| {
        access_log::format(
            &Record {
                client: client.peer,
                accepted: s.at,
                server,
                timers: [t_req, 0, t_connect, t_response, t_total],
                status,
                bytes,
                termination: term,
                active: worker.active_connections(),
                backend_conns: worker.backend_in_flight(),
                server_conns: log.server.as_ref().map_or(0, |f| f.backend().in_flight()),
                retries: log.retries,
                line: plan.line.as_deref(),
            },
            out,
        )
    });
}
