//! One request and its response, as policy: choose a server, retry what failed before anything could reach an
//! application, eject servers that fail, decide whether either connection can be reused, and count and log
//! the outcome. The HTTP/1 mechanics of one attempt are [`super::relay`]'s.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, Instant};

use super::access_log::{self, Record};
use super::body::{BodyError, Framer};
use super::buffers::HeadBuf;
use super::client::{close_gracefully, Client, Started};
use super::relay::{self, Failure, Unanswered, Watch};
use super::transport::Transport;
use super::upstream::{self, ConnectError, Upstream};
use super::worker::Worker;
use super::{refusal, tunnel};
use crate::balance::timings::Sample;
use crate::balance::{Affinity, Backend, InFlight, Pick, QueueError};
use crate::http::request::{Request, RequestBody};
use crate::http::Version;

/// Attempts after the first, as HAProxy's `retries 3`; the connect timeout bounds them all.
const MAX_RETRIES: u32 = 3;

/// What the exchange needs to remember of the request head once its bytes are gone.
pub struct Plan<'w> {
    /// The head as it goes to the server. It begins with the client's request line, which the log quotes.
    head: HeadBuf<'w>,
    line_len: usize,
    /// The client's head as it came, and the body bytes forwarded (set once the body moved): `bin`.
    head_len: usize,
    pub body_in: Cell<u64>,
    body: RequestBody,
    /// The sticky cookie and key hash the algorithm may use.
    pub affinity: Affinity,
    pub is_head: bool,
    pub http10: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    retryable: bool,
}

impl<'w> Plan<'w> {
    /// The plan for `req`, whose upstream head `head` is (written by [`crate::http::rewrite::upstream_request`]).
    pub fn new(req: &Request<'_>, head: HeadBuf<'w>, affinity: Affinity) -> Plan<'w> {
        let line_len = req.method.len() + req.target.len() + req.version.as_str().len() + 2;
        debug_assert!(head[line_len..].starts_with(b"\r\n"), "the head begins with the request line");
        Plan {
            head,
            line_len,
            head_len: req.head_len,
            body_in: Cell::new(0),
            body: req.body,
            affinity,
            is_head: req.is_head(),
            http10: req.version == Version::Http10,
            keep_alive: req.keep_alive,
            upgrade: req.upgrade.is_some(),
            retryable: matches!(req.body, RequestBody::None | RequestBody::Length(0))
                && req.is_idempotent()
                && req.upgrade.is_none(),
        }
    }

    /// The head as it goes to the server.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The request line as the client sent it (HAProxy's `%r`).
    fn line(&self) -> &[u8] {
        &self.head[..self.line_len]
    }
}

/// Runs one exchange; returns whether the client connection stays open for another request.
///
/// Attempts that fail before anything could have reached an application are retried on another server:
/// a refused, timed-out or abandoned connect (any method), and for idempotent requests without a body, a
/// connection closed without a response or a request the server's host never acknowledged. A server that
/// failed is ejected (skipped by every thread) until it is back; one that only closed a pooled connection is
/// merely avoided for this request.
pub async fn run<T: Transport>(worker: &Rc<Worker>, client: &mut Client<T>, plan: Plan<'_>, started: Started) -> bool {
    let config = worker.config();
    let mut log = LogState {
        started,
        server: None,
        reached_server: false,
        queued: None,
        entered: None,
        connected: None,
        responded: None,
        retries: 0,
        redispatched: false,
        queue_position: 0,
        waited_for: None,
    };
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut framer = Framer::for_request(plan.body, config.limits.max_header_bytes);
    if let Err(e) = framer.check_buffered(&client.buf) {
        tracing::info!("refused request body from {}: {e}", client.peer);
        worker.frontend(T::TLS).refused();
        return answer(worker, client, &plan, log, 400, *b"PD").await;
    }
    // --timeout-connect is spent only while connecting: not in a server's queue, nor waiting for the answer of
    // a server that took the request and failed it.
    let mut connect_left = config.timeouts.connect;
    // Why the last attempt that reached a server failed: the answer if no server is left to retry on.
    let mut last_failure: Option<Failure> = None;
    // The server whose connect failed in the attempt just before, if that was how it ended, and how.
    let mut refused_by: Option<(Arc<Backend>, [u8; 2])> = None;
    loop {
        let Some(Pick { backend: picked, mut keeps_cookie }) = worker.pick_backend(&plan.affinity, &tried) else {
            return match last_failure {
                Some(failure) => fail(worker, client, &plan, log, failure).await,
                // The request gives up: a connection error of the server that refused it last, or of the
                // backend's own when there was no server to try (none, or the last taken out), as HAProxy counts
                // them and names the server (`<NOSRV>` for the backend's).
                None => match refused_by {
                    Some((server, term)) => {
                        server.counters.slot(worker.id).connect_error();
                        answer(worker, client, &plan, log, 503, term).await
                    }
                    None => {
                        worker.shared.backend.slot(worker.id).connect_error();
                        log.server = None;
                        answer(worker, client, &plan, log, 503, *b"SC").await
                    }
                },
            };
        };
        refused_by = None;
        // Counted once the next server is known, as HAProxy does: a retry on the same server, or a redispatch
        // to another, counted on the one it leaves (never both).
        if let Some(last) = tried.last() {
            let slot = last.counters.slot(worker.id);
            if Arc::ptr_eq(last, &picked) {
                slot.retry();
            } else {
                slot.redispatch();
                log.redispatched = true;
            }
        }
        // The only server left already lost a pooled connection for this request: a fresh one, then.
        let mut fresh_only = tried.iter().any(|t| Arc::ptr_eq(t, &picked));
        let mut hurry = worker.has_alternative(&picked, &tried);
        // A retry gives back the slot of the attempt before it first: with maxconn it would otherwise wait in
        // the queue for its own slot (the only server), or hold one server full while queued for another.
        log.server = None;
        // A retry starts afresh: the stats and the log describe the attempt that ends the exchange, even if it
        // ends in a queue.
        (log.reached_server, log.connected, log.responded) = (false, None, None);
        // Counted from the pick on, so a draining server is acknowledged only once nothing here uses it. A
        // server at its maxconn makes the request wait in its queue.
        let entered = match picked.try_enter() {
            Some(entered) => entered,
            None => {
                let queued = Instant::now();
                log.queue_position = picked.queued();
                // One --timeout-queue for the request, however many queues it passes through.
                let left = config.timeouts.queue.saturating_sub(log.queued.unwrap_or_default());
                // A server taken out meanwhile (DOWN, MAINT, gone) will not serve its queue: the request goes
                // to another, as HAProxy's redispatch moves it. Not a retry: nothing was sent, and `tried`
                // bounds the moves by the servers there are.
                // Boxed: a rare path, kept out of every request's future (and its memory per connection).
                let waited = Box::pin(wait_in_queue(worker, &picked, left, &plan.affinity, &tried)).await;
                let waited = match waited {
                    Queued::Own(waited) => Some(waited),
                    Queued::Moved(entered, keeps) => {
                        // A server this request has not tried: any connection to it will do.
                        (keeps_cookie, fresh_only) = (keeps, false);
                        hurry = worker.has_alternative(entered.backend(), &tried);
                        Some(Ok(entered))
                    }
                    Queued::TakenOut => None,
                };
                log.queued = Some(log.queued.unwrap_or_default() + queued.elapsed());
                match waited {
                    None => {
                        tracing::info!(
                            "server {}: taken out while a request waited in its queue: trying another",
                            picked.name()
                        );
                        tried.push(picked.clone());
                        continue;
                    }
                    Some(Ok(entered)) => entered,
                    // A full queue: another server's may have room (HAProxy redispatches it).
                    Some(Err(QueueError::Full)) if worker.has_alternative(&picked, &tried) => {
                        tracing::debug!("server {}: queue full: trying another", picked.name());
                        tried.push(picked.clone());
                        continue;
                    }
                    Some(Err(e)) => {
                        tracing::warn!("server {}: {e}: request answered 503", picked.name());
                        // A queue that is full or timed out is a failed connection, to HAProxy as well. Named
                        // in the log, not counted in flight: it never was.
                        picked.counters.slot(worker.id).connect_error();
                        if matches!(e, QueueError::Full) {
                            log.queue_position = 0;
                        }
                        log.waited_for = Some(picked);
                        return answer(worker, client, &plan, log, 503, *b"sQ").await;
                    }
                }
            }
        };
        let backend = log.server.insert(entered).backend();
        // A first attempt that did not queue began when the head was read: no clock read needed.
        let first = log.retries == 0 && log.queued.is_none();
        log.entered = Some(if first { log.started.head_done } else { worker.clock.now() });
        let attempt = Attempt::new(hurry, connect_left, config.timeouts.attempt);
        let acquired = acquire(worker, backend, fresh_only, !plan.retryable, attempt).await;
        // What this attempt spent connecting comes off the budget; read only if another attempt follows.
        let began = log.entered.unwrap_or(log.started.head_done);
        let mut up = match acquired {
            Ok(up) => up,
            Err(e) => {
                connect_left = connect_left.saturating_sub(worker.clock.now().saturating_duration_since(began));
                // A connect cut short by the little budget left proves nothing against the server.
                let fair = !e.timed_out() || attempt.limit >= config.timeouts.attempt.min(config.timeouts.connect);
                let ejected = (fair && !matches!(e, ConnectError::TakenOut))
                    .then(|| backend.eject(worker.clock.now().into_std()))
                    .flatten();
                let retry = log.retries < MAX_RETRIES && !connect_left.is_zero();
                tracing::warn!(
                    "server {} ({}:{}): {e}{}{}",
                    backend.name(),
                    backend.host,
                    backend.port,
                    Ejected(ejected),
                    if retry { "; trying another server" } else { "" },
                );
                let term = if e.timed_out() { *b"sC" } else { *b"SC" };
                // A server taken out (MAINT, DOWN, gone) while the request connected to it proves nothing
                // against it: if nothing else is left, the backend had no server for the request.
                let taken_out = matches!(e, ConnectError::TakenOut);
                if retry {
                    log.retries += 1;
                    tried.push(backend.clone());
                    refused_by = (!taken_out).then(|| (backend.clone(), term));
                    last_failure = None;
                    continue;
                }
                // Counted once the request gives up, as HAProxy does: an attempt retried elsewhere shows as
                // the server's `wretr` or `wredis`, not its `econ`.
                if taken_out {
                    worker.shared.backend.slot(worker.id).connect_error();
                    log.server = None;
                } else {
                    backend.counters.slot(worker.id).connect_error();
                }
                return answer(worker, client, &plan, log, 503, term).await;
            }
        };
        log.reached_server = true;
        log.connected = Some(worker.clock.now());
        let mut up_buf = worker.buffers.get();
        // Only a request that may be sent again is worth watching for an acknowledgement.
        let watch = (plan.retryable && hurry).then(|| Watch {
            every: config.timeouts.attempt,
            backend,
            suspicions: backend.suspicions(),
        });
        // A response from a server other than the one the request's cookie named sets the cookie anew, unless
        // that server is only ejected for a while.
        let set_cookie = match (&config.sticky_cookie, keeps_cookie) {
            (Some(name), false) => Some(format!("{name}={}", backend.cookie())),
            _ => None,
        };
        let asks = relay::Asks { watch, set_cookie: set_cookie.as_deref() };
        let result =
            relay::transfer(worker, client, &plan, &mut framer, &mut up, &mut up_buf, &mut log.responded, asks).await;
        if let (true, Some(connected), Some(responded)) = (config.latency_aware, log.connected, log.responded) {
            let us = responded.saturating_duration_since(connected).as_micros() as u64;
            backend.record_latency(us);
        }
        match result {
            Err(failure @ (Failure::NoResponse | Failure::Unanswered(_)))
                if plan.retryable && log.retries < MAX_RETRIES =>
            {
                up_buf.clear();
                worker.buffers.put(up_buf);
                log.retries += 1;
                let connected = log.connected.unwrap_or(began);
                connect_left = connect_left.saturating_sub(connected.saturating_duration_since(began));
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
                let ejected = dying.then(|| backend.eject(worker.clock.now().into_std())).flatten();
                if !matches!(failure, Failure::NoResponse) || ejected.is_some() {
                    tracing::warn!(
                        "server {} ({}:{}): {reason}{}; trying another server",
                        backend.name(),
                        backend.host,
                        backend.port,
                        Ejected(ejected),
                    );
                }
                tried.push(backend.clone());
                last_failure = Some(failure);
                continue;
            }
            Ok(relayed) if relayed.upgraded => {
                let tunneled = tunnel::run(
                    &mut client.stream,
                    &mut client.buf,
                    &mut up.stream,
                    &mut up_buf,
                    config.timeouts.tunnel,
                    tunnel::Splicing { pipes: &worker.pipes, min: config.limits.splice_min },
                )
                .await;
                plan.body_in.set(plan.body_in.get() + tunneled.to_server);
                // Closed by either peer: `--`; idle past --timeout-tunnel: `cD`, a client abort, as HAProxy.
                let term = if tunneled.idled_out { *b"cD" } else { *b"--" };
                log_line(worker, client, &plan, &log, 101, relayed.bytes + tunneled.to_client, term);
                return false;
            }
            Ok(relayed) => {
                up_buf.clear();
                worker.buffers.put(up_buf);
                if relayed.reuse_upstream && !worker.is_shutting_down() {
                    worker.pool.borrow_mut().checkin(up, worker.clock.now());
                } else {
                    // Closed now, not after the client's lingering close: a server waiting for the rest of an
                    // upload it answered early is told at once, as its slot is given back below.
                    drop(up);
                }
                log_line(worker, client, &plan, &log, relayed.status, relayed.bytes, *b"--");
                // The server is done with this request: leastconn and maxconn must not count the client's
                // lingering close below against it.
                log.server = None;
                // Unread request bytes (an early answer, say 413, or a request already on its way that the
                // kernel holds and this side has not read) would make the close a reset, which can wipe the
                // answer before the client reads it.
                if relayed.close_client {
                    close_gracefully(&mut client.stream, config.timeouts.client).await;
                }
                return !relayed.close_client;
            }
            Err(failure) => {
                up_buf.clear();
                worker.buffers.put(up_buf);
                drop(up);
                return fail(worker, client, &plan, log, failure).await;
            }
        }
    }
}

/// What a warning says of a server it ejected: how long before it is probed (see `balance::ejection`).
struct Ejected(Option<Duration>);

impl std::fmt::Display for Ejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(out) => write!(f, "; skipped for {} ms, then until it answers again", out.as_millis()),
            None => Ok(()),
        }
    }
}

/// How long a connect attempt may take.
#[derive(Clone, Copy)]
struct Attempt {
    limit: Duration,
    /// Given only `--timeout-attempt` because another usable server exists: abandoned, not failed, at the end.
    abandon: bool,
}

impl Attempt {
    /// With `left` of the request's connect budget: all of it, or only `share` if another server could take
    /// the request (`hurry`).
    fn new(hurry: bool, left: Duration, share: Duration) -> Attempt {
        let abandon = hurry && share < left;
        Attempt { limit: if abandon { share } else { left.max(Duration::from_millis(1)) }, abandon }
    }
}

/// How a wait in a full server's queue ended.
enum Queued {
    /// With a slot of the server's, or with its queue full or timed out.
    Own(Result<InFlight, QueueError>),
    /// With a slot of another server's, freed and not taken by that server's own queue (HAProxy's backend queue
    /// is served by whichever server frees a slot first); and whether the response keeps the sticky cookie.
    Moved(InFlight, bool),
    /// The server was taken out (DOWN, MAINT, gone): it will not serve its queue.
    TakenOut,
}

/// Waits at most `left` in `picked`'s queue, or for a slot another server frees meanwhile.
async fn wait_in_queue(
    worker: &Rc<Worker>,
    picked: &Arc<Backend>,
    left: Duration,
    affinity: &Affinity,
    tried: &[Arc<Backend>],
) -> Queued {
    let in_queue = picked.enter_queued(left);
    let taken_out = worker.taken_out(picked);
    tokio::pin!(in_queue, taken_out);
    // In the queue (counted, and in line for the semaphore) before the first look, so a slot freed after
    // the look is either seen by it or announced to this request.
    tokio::select! {
        biased;
        waited = &mut in_queue => return Queued::Own(waited),
        () = std::future::ready(()) => {}
    }
    loop {
        // Listening before looking: a slot freed between the look and the wait is not missed.
        let freed = picked.slot_freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if !worker.serves(picked) {
            return Queued::TakenOut;
        }
        if let Some(other) = worker.pick_backend(affinity, tried) {
            let known = |b: &Arc<Backend>| Arc::ptr_eq(b, &other.backend);
            if !known(picked) && !tried.iter().any(known) {
                if let Some(entered) = other.backend.try_enter() {
                    return Queued::Moved(entered, other.keeps_cookie);
                }
            }
        }
        // Biased: a slot of its own server's, once the semaphore gave it, is taken rather than dropped.
        tokio::select! {
            biased;
            waited = &mut in_queue => return Queued::Own(waited),
            () = &mut taken_out => return Queued::TakenOut,
            () = freed => {}
        }
    }
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
    let counters = backend.counters.slot(worker.id);
    if !fresh_only {
        if let Some(addr) = backend.address.cached() {
            if let Some(up) = worker.pool.borrow_mut().checkout(addr, verify, worker.clock.now()) {
                counters.reuse();
                return Ok(up);
            }
        }
    }
    counters.connect();
    tokio::select! {
        connected = upstream::connect(backend, attempt.limit, attempt.abandon) => connected,
        _ = worker.taken_out(backend) => Err(ConnectError::TakenOut),
    }
}

/// Turns a failure into the client's answer (if it can still get one) and a log line.
async fn fail<T: Transport>(
    worker: &Worker,
    client: &mut Client<T>,
    plan: &Plan<'_>,
    log: LogState,
    failure: Failure,
) -> bool {
    let server_failed = matches!(
        failure,
        Failure::NoResponse
            | Failure::Unanswered(_)
            | Failure::ServerTimeout
            | Failure::BadResponse(_)
            | Failure::AbortedMidResponse([b'S' | b's' | b'P', _], _, _)
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
            worker.frontend(T::TLS).refused();
            (e.status(), *b"PD")
        }
        Failure::RequestBody(BodyError::SrcTimeout) => (408, *b"cD"),
        // The status a client already received is logged and counted as HAProxy does, with the bytes it got.
        Failure::RequestBody(_) => {
            log_line(worker, client, plan, &log, 0, 0, *b"CD");
            return false;
        }
        Failure::ClientGone(status, bytes) => {
            log_line(worker, client, plan, &log, status, bytes, *b"CD");
            return false;
        }
        Failure::AbortedMidResponse(term, status, bytes) => {
            log_line(worker, client, plan, &log, status, bytes, term);
            return false;
        }
    };
    answer(worker, client, plan, log, status, term).await
}

/// Sends a canned status and closes. The server's slot (maxconn, leastconn's count) is given back before the
/// client's lingering close, as after a response.
async fn answer<T: Transport>(
    worker: &Worker,
    client: &mut Client<T>,
    plan: &Plan<'_>,
    log: LogState,
    status: u16,
    term: [u8; 2],
) -> bool {
    let bytes = refusal::response_to(status, plan.is_head);
    use tokio::io::AsyncWriteExt;
    let idle = worker.config().timeouts.client;
    let _ = timeout(idle, client.stream.write_all(bytes)).await;
    log_line(worker, client, plan, &log, refusal::status_of(bytes), bytes.len() as u64, term);
    drop(log);
    close_gracefully(&mut client.stream, idle).await;
    false
}

/// Times and server for the log line.
struct LogState {
    started: Started,
    /// The server in use, counted as in flight while the exchange holds it.
    server: Option<InFlight>,
    /// A connection to the server was made (counted against it whether or not the log is on).
    reached_server: bool,
    /// How long the request waited in a full server's queue (`%Tw`).
    queued: Option<Duration>,
    /// When the attempt that ends the exchange began: `Tc` counts from there.
    entered: Option<Instant>,
    connected: Option<Instant>,
    /// When the response head came.
    responded: Option<Instant>,
    retries: u32,
    /// An attempt went to another server than the one before (`%rc`'s `+`).
    redispatched: bool,
    /// Requests ahead of this one in the last server queue it joined (`%sq`), 0 if it never queued.
    queue_position: u32,
    /// The server whose queue the request left unserved (full, or timed out): named in the log.
    waited_for: Option<Arc<Backend>>,
}

impl LogState {
    /// The server the exchange ended on: in flight to it, or left unserved in its queue.
    fn last_server(&self) -> Option<&Arc<Backend>> {
        self.server.as_ref().map(|f| f.backend()).or(self.waited_for.as_ref())
    }

    fn server_name(&self) -> String {
        self.last_server().map_or_else(|| "<NOSRV>".to_string(), |b| b.name().to_string())
    }
}

/// Counts the exchange's outcome and writes its log line: every exchange ends here exactly once.
fn log_line<T: Transport>(
    worker: &Worker,
    client: &Client<T>,
    plan: &Plan<'_>,
    log: &LogState,
    status: u16,
    bytes: u64,
    term: [u8; 2],
) {
    // The real clock, not the poll's: the total ends once the response's last bytes were handed over, and the
    // poll that wrote them may have begun earlier.
    let now = Instant::now();
    let s = log.started;
    let bytes_in = (plan.head_len as u64).saturating_add(plan.body_in.get());
    let frontend = worker.frontend(T::TLS);
    frontend.response(status, bytes);
    frontend.received(bytes_in);
    let reached = log.server.as_ref().filter(|_| log.reached_server).map(|f| f.backend());
    // A request no server took is still the backend's (its `stot`, `req_tot` and `hrsp_*`, as HAProxy counts
    // every stream routed to a backend), though not a server's session (`lbtot`).
    let backend_own = worker.shared.backend.slot(worker.id);
    let slot = match reached {
        Some(server) => {
            let slot = server.counters.slot(worker.id);
            slot.session();
            slot
        }
        None => backend_own,
    };
    // A server's `req_tot` and `hrsp_*` count the answers it gave; the proxy's own (a 502 or 504 after it
    // failed, no answer at all) are the backend's, as HAProxy 2.6 counts them.
    let answered_by = if log.responded.is_some() { slot } else { backend_own };
    answered_by.response(status, bytes);
    slot.received(bytes_in);
    // HAProxy's cli_abrt and srv_abrt: data transfers cut by either side, or by its timeout.
    match term {
        [b'C' | b'c', b'D'] => slot.client_abort(),
        [b'S' | b's', b'D'] => slot.server_abort(),
        _ => {}
    }
    let us = |from: Instant, to: Instant| to.saturating_duration_since(from).as_micros() as u64;
    let sample = Sample([
        reached.map(|_| log.queued.map_or(0, |q| q.as_micros() as u64)),
        log.entered.zip(log.connected).map(|(e, c)| us(e, c)),
        log.connected.zip(log.responded).map(|(c, r)| us(c, r)),
        Some(us(s.instant, now)),
    ]);
    worker.record_timings(T::TLS, reached.map(|b| &b.timings), &sample);
    if !worker.log_enabled() {
        return;
    }
    let ms =
        |from: Instant, to: Option<Instant>| to.map_or(-1, |t| t.saturating_duration_since(from).as_millis() as i64);
    let t_req = ms(s.instant, Some(s.head_done));
    // HAProxy's Tc leaves out Tw, the wait in a server's queue.
    let queued_ms = log.queued.map_or(0, |q| q.as_millis() as i64);
    // -1: no server was picked, so the request never reached a queue.
    let t_wait = if log.server.is_some() || log.queued.is_some() { queued_ms } else { -1 };
    let t_connect = log.connected.map_or(-1, |c| (ms(s.head_done, Some(c)) - queued_ms).max(0));
    let t_response = log.connected.map_or(-1, |c| ms(c, log.responded));
    let t_total = ms(s.instant, Some(now));
    // The last attempt's server, connected or not: a connect failure or a queue timeout names it, as HAProxy's.
    let name = log.last_server().map(|b| b.name());
    let server = name.as_deref().map(String::as_str);
    // `%bc` and `%sc` leave this exchange out, as HAProxy's do (2.6, measured: a lone request logs `0/0`): it
    // logs once the stream has let its server go, and this exchange still holds its slot here.
    let itself = usize::from(log.server.is_some());
    let server_conns = log.last_server().map_or(0, |b| b.in_flight()).saturating_sub(itself);
    worker.log(|out| {
        access_log::format(
            &Record {
                client: client.peer,
                tls: T::TLS,
                accepted: s.wall_clock(now),
                routed: true,
                server,
                timers: [t_req, t_wait, t_connect, t_response, t_total],
                status,
                bytes,
                termination: term,
                active: worker.active_connections(),
                frontend_conns: worker.frontend_connections(T::TLS),
                backend_conns: worker.backend_sessions().saturating_sub(itself),
                server_conns,
                retries: log.retries,
                redispatched: log.redispatched,
                server_queue: log.queue_position,
                line: Some(plan.line()),
            },
            out,
        )
    });
}
