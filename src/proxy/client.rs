//! One client connection: read each request head within the head timeout, refuse what is malformed, and hand
//! each request to [`exchange`] in turn, so pipelined requests are answered in order.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use super::accept::ConnectionGuard;
use super::access_log::{self, Record};
use super::exchange::{self, Plan};
use super::refusal;
use super::transport::Transport;
use super::worker::Worker;
use crate::balance::{key_hash, Affinity};
use crate::config::value::Balance;
use crate::config::ProxyConfig;
use crate::http::cookie;
use crate::http::request::{lower_minor_version, parse_request_with, Request};
use crate::http::rewrite::{self, Forwarded};
use crate::http::HeadLimits;

/// Closing with unread client bytes (a refusal, an early answer) first drains them for at most this long and
/// this much, as nginx's lingering close, so the answer is not lost to a reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 32 << 20;

pub struct Client<T> {
    pub stream: T,
    pub peer: SocketAddr,
    pub local_port: u16,
    /// Bytes read but not yet consumed; empty (and unallocated) while the connection is idle.
    pub buf: BytesMut,
}

/// When a request began, for the log timers and the latency histograms.
#[derive(Clone, Copy)]
pub struct Started {
    pub instant: Instant,
    pub head_done: Instant,
}

impl Started {
    /// The wall-clock time the request began, for the log: read only when a line is written.
    pub fn wall_clock(&self, now: Instant) -> SystemTime {
        SystemTime::now() - now.saturating_duration_since(self.instant)
    }
}

enum Head<'w> {
    Ready(Plan<'w>, Started),
    /// A plain request under --redirect-https: answered with a 301 to this location (the request line for
    /// the log).
    Redirect(String, String, Started),
    Refuse(u16, String, Started),
    /// The client went away or stayed silent; nothing to answer.
    Gone,
}

impl<T> Client<T> {
    /// A client connection over `stream`, accepted on local port `local_port`.
    pub fn new(stream: T, peer: SocketAddr, local_port: u16) -> Client<T> {
        Client { stream, peer, local_port, buf: BytesMut::new() }
    }
}

/// Serves the requests of one client connection, counted by `guard` until it closes.
///
/// An async block, not an async fn: an async fn copies its arguments into locals and keeps both, so every
/// idle connection would hold its client twice (the size is checked in `harness`'s tests).
#[allow(clippy::manual_async_fn)]
pub fn serve<T: Transport>(guard: ConnectionGuard, mut client: Client<T>) -> impl Future<Output = ()> {
    async move {
        let worker = guard.worker();
        let mut first = true;
        loop {
            // The first request's head must be whole within --timeout-head of the connection's start (after
            // the TLS handshake over TLS), its first byte included; later ones wait --timeout-idle for a first
            // byte, then --timeout-head.
            let head_since = if client.buf.is_empty() {
                let wait = match worker.config().timeouts {
                    t if first => t.head,
                    t => t.idle,
                };
                let Some(waited_since) = next_bytes(worker, &mut client, wait).await else { break };
                first.then_some(waited_since)
            } else {
                None
            };
            first = false;
            // On the heap: the head, the exchange and their state (several KiB of nested futures) exist only
            // while a request is in flight; an idle connection's task holds only the client and its wait.
            if !worker.clock.per_poll(worker.frames.pin(|| one_request(worker, &mut client, head_since))).await
                || worker.is_shutting_down() && !request_behind(&mut client)
            {
                break;
            }
        }
        client.buf.clear();
        worker.buffers.put(std::mem::take(&mut client.buf));
    }
}

/// Stopping after an answer whose head went out before the stop (without `Connection: close`): whether the
/// client already sent another request. It is answered, with the close, rather than dropped unread, which
/// would reset the connection and could take the end of the last answer with it.
fn request_behind<T: Transport>(client: &mut Client<T>) -> bool {
    !client.buf.is_empty() || client.stream.read_now(&mut client.buf).is_ok_and(|n| n > 0)
}

/// Reads one request head (whole by `head_since` + `--timeout-head` if given) and answers it: forwarded,
/// refused or redirected. False: close the connection.
async fn one_request<T: Transport>(worker: &Rc<Worker>, client: &mut Client<T>, head_since: Option<Instant>) -> bool {
    match read_head(worker, client, head_since).await {
        Head::Gone => false,
        Head::Refuse(status, reason, started) => {
            refuse(worker, client, status, &reason, started).await;
            false
        }
        Head::Redirect(location, line, started) => {
            redirect(worker, client, &location, &line, started).await;
            false
        }
        Head::Ready(plan, started) => exchange::run(worker, client, plan, started).await,
    }
}

/// Waits for the first bytes of the next request without holding a buffer, then reads them into one; when the
/// wait began. None: close the connection (it ended, broke, or stayed quiet for `wait`).
///
/// A new socket reads as ready before any byte came (tokio assumes readiness until a read would block): a
/// read that would block gives the buffer back and waits again, so a connection that sends nothing holds no
/// buffer.
fn next_bytes<'a, T: Transport>(
    worker: &'a Worker,
    client: &'a mut Client<T>,
    wait: Duration,
) -> impl Future<Output = Option<Instant>> + 'a {
    let started = Instant::now();
    async move {
        loop {
            worker.buffers.put(std::mem::take(&mut client.buf));
            if !worker.idle.wait(started, wait, |cx| client.stream.poll_readable(cx)).await {
                return None;
            }
            client.buf = worker.buffers.get();
            match client.stream.read_now(&mut client.buf) {
                Ok(0) => return None,
                Ok(_) => return Some(started),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            }
        }
    }
}

async fn read_head<'w, T: Transport>(worker: &'w Worker, client: &mut Client<T>, since: Option<Instant>) -> Head<'w> {
    let config = worker.config();
    let limits = HeadLimits { max_head_bytes: config.limits.max_header_bytes, max_headers: config.limits.max_headers };
    let mut started: Option<Started> = None;
    // The clock is read once for a head that comes in one piece (the usual case): the request began when the
    // wait for it ended, and its head was complete at the first read (the caller's, which `reads` leaves out).
    let entered = worker.clock.now();
    let mut deadline = since.unwrap_or(entered) + config.timeouts.head;
    let mut reads = 0u32;
    loop {
        if !client.buf.is_empty() {
            let s = *started.get_or_insert_with(|| {
                let now = if reads == 0 { entered } else { worker.clock.now() };
                deadline = since.unwrap_or(now) + config.timeouts.head;
                Started { instant: now, head_done: now }
            });
            lower_minor_version(&mut client.buf);
            let parsed = parse_request_with(&client.buf, &limits, &mut worker.fields.borrow_mut());
            match parsed {
                Ok(Some(req)) => {
                    let head_done = if reads == 0 { s.instant } else { worker.clock.now() };
                    let started = Started { head_done, ..s };
                    let https_port = worker.shared.https_port.load(std::sync::atomic::Ordering::Relaxed);
                    if !T::TLS && config.redirect_https && https_port != 0 {
                        return Head::Redirect(https_location(&req, https_port), req.line(), started);
                    }
                    let client_ip = client.peer.ip().to_canonical();
                    let sticky = config.sticky_cookie.as_deref();
                    let fwd = Forwarded { client_ip, port: client.local_port, tls: T::TLS, strip_cookie: sticky };
                    let mut head = worker.heads.get(req.head_len + 128);
                    rewrite::upstream_request(&req, &fwd, &mut head);
                    let plan = Plan::new(&req, head, affinity(&req, &config, client_ip));
                    let len = req.head_len;
                    worker.fields.borrow_mut().keep(req.headers);
                    client.buf.advance(len);
                    return Head::Ready(plan, started);
                }
                Ok(None) => {}
                Err(e) => return Head::Refuse(e.status(), e.to_string(), s),
            }
        }
        client.buf.reserve(4096);
        reads += 1;
        match timeout_at(deadline, client.stream.read_buf(&mut client.buf)).await {
            Err(_) => {
                return match started {
                    Some(s) => Head::Refuse(408, "request head not received in time".into(), s),
                    None => Head::Gone,
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Gone,
            Ok(Ok(_)) => {}
        }
    }
}

/// What the balancing algorithm may use of a request: the server its sticky cookie names, and the hash of
/// its key under a hashing algorithm (the client's address, the path before `?`, or a header's value).
fn affinity(req: &Request<'_>, config: &ProxyConfig, client_ip: std::net::IpAddr) -> Affinity {
    let header = |name: &str| req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
    let cookie = config.sticky_cookie.as_deref().and_then(|name| {
        let values = req.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("cookie"));
        values.filter_map(|(_, v)| cookie::find(v, name)).find_map(cookie::server_id)
    });
    let hash = match &config.balance {
        Balance::Source => Some(match client_ip {
            std::net::IpAddr::V4(ip) => key_hash(&ip.octets()),
            std::net::IpAddr::V6(ip) => key_hash(&ip.octets()),
        }),
        Balance::Uri => Some(key_hash(req.target.split('?').next().unwrap_or("").as_bytes())),
        // As HAProxy's `hdr(NAME)`: a header absent or without a value goes round robin.
        Balance::Header(name) => header(name).filter(|v| !v.trim_ascii().is_empty()).map(key_hash),
        _ => None,
    };
    Affinity { cookie, hash }
}

/// `https://HOST[:PORT]/PATH` for a plain request: its Host without the port, the TLS listener's port unless
/// it is 443, and the path of its target.
fn https_location(req: &Request<'_>, port: u16) -> String {
    let host = req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")).map_or(&b""[..], |(_, v)| *v);
    let host = String::from_utf8_lossy(host);
    let name = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => &host[..],
    };
    let path = match req.target.find("://") {
        Some(i) => req.target[i + 3..].find('/').map_or("/", |j| &req.target[i + 3 + j..]),
        None if req.target.starts_with('/') => req.target,
        None => "/",
    };
    match port {
        443 => format!("https://{name}{path}"),
        p => format!("https://{name}:{p}{path}"),
    }
}

/// Answers a plain request with a redirect to https, logs it, and closes.
async fn redirect<T: Transport>(worker: &Worker, client: &mut Client<T>, location: &str, line: &str, started: Started) {
    let answer = format!(
        "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let frontend = worker.frontend(T::TLS);
    frontend.response(301, answer.len() as u64);
    frontend.received(client.buf.len() as u64);
    frontend.intercepted();
    local_log_line(worker, client, 301, answer.len() as u64, *b"LR", started, Some(line));
    let idle = worker.config().timeouts.client;
    let _ = timeout(idle, client.stream.write_all(answer.as_bytes())).await;
    close_gracefully(&mut client.stream, idle).await;
}

/// The log line of a request answered by the proxy itself.
fn local_log_line<T: Transport>(
    worker: &Worker,
    client: &Client<T>,
    status: u16,
    bytes: u64,
    term: [u8; 2],
    started: Started,
    line: Option<&str>,
) {
    let elapsed = started.instant.elapsed().as_millis() as i64;
    worker.log(|out| {
        access_log::format(
            &Record {
                client: client.peer,
                tls: T::TLS,
                accepted: started.wall_clock(Instant::now()),
                routed: false,
                server: None,
                timers: [-1, -1, -1, -1, elapsed],
                status,
                bytes,
                termination: term,
                active: worker.active_connections(),
                frontend_conns: worker.frontend_connections(T::TLS),
                backend_conns: 0,
                server_conns: 0,
                retries: 0,
                redispatched: false,
                server_queue: 0,
                line: line.map(str::as_bytes),
            },
            out,
        )
    });
}

/// Answers with a canned status, logs it, and closes without losing the answer.
async fn refuse<T: Transport>(worker: &Worker, client: &mut Client<T>, status: u16, reason: &str, started: Started) {
    tracing::info!("refused request from {}: {status} {reason}", client.peer);
    // Refused before or after its head was parsed: a HEAD is known by its first bytes either way.
    let bytes = refusal::response_to(status, client.buf.starts_with(b"HEAD "));
    let frontend = worker.frontend(T::TLS);
    frontend.refused();
    frontend.response(status, bytes.len() as u64);
    frontend.received(client.buf.len() as u64);
    let term = if status == 408 { *b"cR" } else { *b"PR" };
    local_log_line(worker, client, status, bytes.len() as u64, term, started, None);
    let timeouts = worker.config().timeouts;
    let _ = timeout(timeouts.client, client.stream.write_all(bytes)).await;
    close_gracefully(&mut client.stream, timeouts.client).await;
}

/// Half-closes and drains what the peer still sends, briefly: closing with unread bytes would send a reset that
/// can destroy the response before the client reads it. Over TLS the half-close first flushes what the TLS
/// layer still holds, which waits on the client's reads: a client that stopped reading gets `idle` for it.
pub async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, idle: Duration) {
    let _ = timeout(idle, stream.shutdown()).await;
    let drain = async {
        // On the heap (an array would sit inside every connection's future) and never zero-filled.
        let mut sink = BytesMut::with_capacity(64 << 10);
        let mut total = 0usize;
        while total < LINGER_BYTES {
            sink.clear();
            match stream.read_buf(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A server and a client configuration for one self-signed certificate for `localhost`.
    fn tls_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = made.cert.der().clone();
        let key = rustls_pki_types::PrivatePkcs8KeyDer::from(made.key_pair.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.into())
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    #[test]
    fn closing_a_tls_connection_whose_client_stopped_reading_gives_up_after_idle() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            // Small buffers on both ends (the proxy's send side and the client's receive side), so they fill.
            let (proxy_side, client_side) = crate::proxy::body::tests::narrow_pair().await;
            let (server_config, client_config) = tls_configs();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let (accepted, connected) = tokio::join!(
                tokio_rustls::TlsAcceptor::from(server_config).accept(proxy_side),
                tokio_rustls::TlsConnector::from(client_config).connect(name, client_side)
            );
            let (mut server, _client_that_never_reads) = (accepted.unwrap(), connected.unwrap());
            // The socket fills, then the TLS layer's own buffer: a write is taken until both are full.
            let piece = vec![b'x'; 16 << 10];
            while let Ok(Ok(_)) = timeout(Duration::from_millis(200), server.write(&piece)).await {}
            let closed =
                timeout(Duration::from_secs(20), close_gracefully(&mut server, Duration::from_millis(300))).await;
            assert!(closed.is_ok(), "the close waited on a client that does not read for longer than its idle time");
        });
    }
}
