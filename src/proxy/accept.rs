//! Accepting clients: one loop per listening socket on each data-plane thread, plain or TLS, within the
//! thread's share of `--max-connections`. A TLS handshake runs in the new connection's task with its own timeout.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use super::client;
use super::worker::Worker;
use crate::balance::raise_peak;

/// Client connections open on every thread, by frontend, and the most each frontend has had at once (HAProxy's
/// process `CurrConns`, each frontend's `scur` and `smax`). One cache line, written once per connection, never
/// per request.
#[derive(Debug, Default)]
pub struct OpenConnections {
    plain: AtomicUsize,
    tls: AtomicUsize,
    peak_plain: AtomicUsize,
    peak_tls: AtomicUsize,
}

impl OpenConnections {
    fn counters(&self, tls: bool) -> (&AtomicUsize, &AtomicUsize) {
        if tls {
            (&self.tls, &self.peak_tls)
        } else {
            (&self.plain, &self.peak_plain)
        }
    }

    fn opened(&self, tls: bool) {
        let (open, peak) = self.counters(tls);
        raise_peak(peak, open.fetch_add(1, Ordering::Relaxed) + 1);
    }

    fn closed(&self, tls: bool) {
        self.counters(tls).0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Open now, on both frontends.
    pub fn all(&self) -> usize {
        self.plain.load(Ordering::Relaxed) + self.tls.load(Ordering::Relaxed)
    }

    /// Open now and the peak, on the TLS frontend or the plain one.
    pub fn frontend(&self, tls: bool) -> (usize, usize) {
        let (open, peak) = self.counters(tls);
        (open.load(Ordering::Relaxed), peak.load(Ordering::Relaxed))
    }
}

/// Counts a client connection for as long as it lives, however its task ends.
pub struct ConnectionGuard {
    worker: Rc<Worker>,
    tls: bool,
}

impl ConnectionGuard {
    pub fn worker(&self) -> &Rc<Worker> {
        &self.worker
    }

    pub fn new(worker: Rc<Worker>, tls: bool) -> ConnectionGuard {
        worker.connections.set(worker.connections.get() + 1);
        worker.shared.open.opened(tls);
        ConnectionGuard { worker, tls }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let w = &self.worker;
        w.connections.set(w.connections.get() - 1);
        w.shared.open.closed(self.tls);
        w.connection_closed.notify_waiters();
    }
}

/// Counts an accept loop (see `worker::run`) from its spawning, before it first runs, until it ends or is
/// aborted.
pub struct Running(Rc<Worker>);

impl Running {
    pub fn new(worker: &Rc<Worker>) -> Running {
        worker.accept_loops.set(worker.accept_loops.get() + 1);
        Running(worker.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let w = &self.0;
        w.accept_loops.set(w.accept_loops.get() - 1);
        w.connection_closed.notify_waiters();
    }
}

pub async fn accept_loop(running: Running, listener: TcpListener, tls: bool) {
    let worker = running.0.clone();
    let mut failing = AcceptFailures::default();
    loop {
        let stop = worker.shutdown_started();
        if worker.is_shutting_down() {
            return drain_queue(&worker, &listener, tls).await;
        }
        if worker.connections.get() >= worker.max_connections() {
            let closed = worker.connection_closed.notified();
            tokio::select! {
                _ = closed => continue,
                _ = stop => return drain_queue(&worker, &listener, tls).await,
            }
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop => return drain_queue(&worker, &listener, tls).await,
        };
        match accepted {
            Ok((stream, peer)) => {
                failing.recovered(&listener);
                serve(&worker, stream, peer, tls);
            }
            Err(e) => {
                // Out of descriptors or memory: back off rather than spin; the queue keeps the clients.
                failing.failed(&listener, &e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn serve(worker: &Rc<Worker>, stream: TcpStream, peer: SocketAddr, tls: bool) {
    let _ = stream.set_nodelay(true);
    let guard = ConnectionGuard::new(worker.clone(), tls);
    let local_port = stream.local_addr().map_or(0, |a| a.port());
    if tls {
        tokio::task::spawn_local(serve_tls(guard, stream, peer, local_port));
    } else {
        worker.frontend(false).session();
        tokio::task::spawn_local(plain_connection(guard, stream, peer, local_port));
    }
}

/// The task of one plain connection. Its size is what every idle keep-alive connection costs besides the
/// kernel's socket and tokio's task header: the harness measures it.
pub(super) fn plain_connection(
    guard: ConnectionGuard,
    stream: TcpStream,
    peer: SocketAddr,
    local_port: u16,
) -> impl std::future::Future<Output = ()> {
    client::serve(guard, client::Client::new(stream, peer, local_port))
}

/// How long a stopping listener keeps taking the connections whose handshakes were under way.
const DRAIN_WINDOW: Duration = Duration::from_millis(100);

/// A socket filter that drops TCP segments with SYN set and keeps all others: `ldb [13]` (the flags byte
/// of the TCP header), `jset #0x02`, `ret #0` (drop), `ret #-1` (keep).
const DROP_SYN: [(u16, u8, u8, u32); 4] =
    [(0x30, 0, 0, 13), (0x45, 0, 1, 0x02), (0x06, 0, 0, 0), (0x06, 0, 0, u32::MAX)];

/// Stopping: closing a listener resets the connections the kernel has completed in its queue, and their
/// clients may have sent a request already. So first no new handshake may start (a socket filter drops SYNs
/// to the listener: the client's SYN goes unanswered, and its retry is refused once the listener is
/// closed), while those under way complete; for a short window what reaches the queue is accepted and
/// served (each request answered with `Connection: close`); only then does the caller drop the listener.
pub(super) async fn drain_queue(worker: &Rc<Worker>, listener: &TcpListener, tls: bool) {
    if worker.shared.handed_over.load(Ordering::Acquire) {
        // The socket is the successor's too: its queue is the successor's to serve, and a filter would stop it.
        return;
    }
    let filter = DROP_SYN.map(|(code, jt, jf, k)| socket2::SockFilter::new(code, jt, jf, k));
    if let Err(e) = socket2::SockRef::from(listener).attach_filter(&filter) {
        tracing::debug!("stop: no filter on the listener ({e}); closing it as it is");
        return;
    }
    let mut drained = 0;
    while let Ok(Ok((stream, peer))) = tokio::time::timeout(DRAIN_WINDOW, listener.accept()).await {
        serve(worker, stream, peer, tls);
        drained += 1;
    }
    if drained > 0 {
        tracing::debug!("stop: served {drained} connections that were still in the accept queue");
    }
}

/// Accept errors come in bursts (EMFILE while descriptors are short): logged at most once a second, with how
/// many were held back, and once when accepting works again.
#[derive(Default)]
struct AcceptFailures {
    last_logged: Option<Instant>,
    unlogged: u64,
    since: u64,
    spell_logged: bool,
}

impl AcceptFailures {
    fn failed(&mut self, listener: &TcpListener, e: &std::io::Error) {
        self.since += 1;
        if self.last_logged.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            self.unlogged += 1;
            return;
        }
        let addr = listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        let held = std::mem::take(&mut self.unlogged);
        let more = if held > 0 { format!(" ({held} more since the last line)") } else { String::new() };
        tracing::warn!("accept on {addr}: {e}{more}; backing off, clients wait in the queue");
        self.last_logged = Some(Instant::now());
        self.spell_logged = true;
    }

    /// Said once per failing spell that was logged: descriptors that come and go make accepting flap.
    fn recovered(&mut self, listener: &TcpListener) {
        if std::mem::take(&mut self.spell_logged) {
            let addr = listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
            tracing::info!("accept on {addr} works again after {} failures", self.since);
        }
        self.since = 0;
    }
}

/// Completes the TLS handshake within its own timeout, then serves the connection. A failed handshake is
/// counted and logged at debug: scanners and broken clients must not fill the log or disturb anyone else.
/// A stop lets a handshake under way finish: its client may already be sending a request, which is served
/// with `Connection: close` as a plain client's is.
async fn serve_tls(guard: ConnectionGuard, stream: TcpStream, peer: SocketAddr, local_port: u16) {
    let worker = guard.worker().clone();
    let Some(config) = worker.shared.tls.load_full() else { return };
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let outcome = tokio::time::timeout(worker.config().timeouts.handshake, handshake).await;
    match outcome {
        Ok(Ok(tls)) => {
            worker.frontend(true).session();
            if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                worker.frontend(true).resumed();
            }
            client::serve(guard, client::Client::new(tls, peer, local_port)).await;
        }
        Ok(Err(e)) => {
            worker.frontend(true).handshake_error();
            tracing::debug!("TLS handshake with {peer} failed: {e}");
        }
        Err(_) => {
            worker.frontend(true).handshake_error();
            tracing::debug!("TLS handshake with {peer} timed out");
        }
    }
}
