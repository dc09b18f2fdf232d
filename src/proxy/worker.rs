//! One data-plane thread: a current-thread tokio runtime with its own listeners, upstream pool, buffers,
//! balancing cursor and log buffer. Nothing here is shared with other threads except read-only snapshots.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::LocalSet;

use arc_swap::Cache;

use super::buffers::Buffers;
use super::listener::Listening;
use super::splice::Pipes;
use super::upstream::Pool;
use super::{client, Shared};
use crate::balance::counters::Slot;
use crate::balance::{Backend, BackendSet, Balancer, SharedBackends};

/// Flush the thread's log buffer at least this often, and whenever it grows past `LOG_BATCH`.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(200);
const LOG_BATCH: usize = 32 * 1024;
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// Free read buffers kept per thread for the next busy connection; beyond this they go back to the allocator.
const IDLE_BUFFERS: usize = 32;
/// A read buffer's starting size: enough for typical heads; it grows for large heads and bodies.
const BUFFER_SIZE: usize = 4096;
/// Free pipes kept per thread for splice(2) transfers (two descriptors each).
const IDLE_PIPES: usize = 16;

pub struct Worker {
    /// This thread's index: its slot in every per-thread counter.
    pub id: usize,
    pub shared: Arc<Shared>,
    pub pool: RefCell<Pool>,
    balancer: Balancer,
    /// This thread's view of the backend set, refreshed only when a new set is published.
    backends: RefCell<Cache<SharedBackends, Arc<BackendSet>>>,
    /// Woken on this thread when a new set is published, so connects to servers that left are abandoned.
    set_changed: Notify,
    pub buffers: Buffers,
    pub pipes: Pipes,
    log: RefCell<Vec<u8>>,
    connections: Cell<usize>,
    max_connections: usize,
    connection_closed: Notify,
    shutting_down: Cell<bool>,
    shutdown: Notify,
}

impl Worker {
    fn new(id: usize, shared: Arc<Shared>) -> Worker {
        let c = &shared.config;
        Worker {
            id,
            pool: RefCell::new(Pool::new(c.limits.pool_max_idle, c.timeouts.pool)),
            balancer: Balancer::new(c.balance, id),
            backends: RefCell::new(Cache::new(shared.backends.clone())),
            set_changed: Notify::new(),
            buffers: Buffers::new(BUFFER_SIZE, IDLE_BUFFERS),
            pipes: Pipes::new(IDLE_PIPES),
            log: RefCell::new(Vec::new()),
            connections: Cell::new(0),
            max_connections: c.limits.max_connections.div_ceil(c.threads),
            connection_closed: Notify::new(),
            shutting_down: Cell::new(false),
            shutdown: Notify::new(),
            shared,
        }
    }

    /// Requests in flight to the servers of the current set, from every thread (`%bc`).
    pub fn backend_in_flight(&self) -> usize {
        self.backends.borrow_mut().load().servers.iter().map(|b| b.in_flight()).sum()
    }

    /// This thread's slot of the plain or the TLS frontend's counters.
    pub fn frontend(&self, tls: bool) -> &Slot {
        if tls {
            self.shared.frontend_tls.slot(self.id)
        } else {
            self.shared.frontend.slot(self.id)
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Resolves when shutdown starts. Create it before checking [`Worker::is_shutting_down`] to miss nothing.
    pub fn shutdown_started(&self) -> tokio::sync::futures::Notified<'_> {
        self.shutdown.notified()
    }

    /// The next server by the balancing algorithm, avoiding those in `avoid` (they failed this request)
    /// when another exists.
    pub fn pick_backend(&self, avoid: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let mut cache = self.backends.borrow_mut();
        self.balancer.pick(cache.load(), avoid)
    }

    /// Whether a server other than `current` and those in `avoid` is in rotation and not ejected: an attempt
    /// on `current` may then be given up early for it.
    pub fn has_alternative(&self, current: &Arc<Backend>, avoid: &[Arc<Backend>]) -> bool {
        let mut cache = self.backends.borrow_mut();
        let set = cache.load();
        set.rotation()
            .iter()
            .map(|&i| &set.servers[i])
            .any(|b| !Arc::ptr_eq(b, current) && !b.is_ejected() && !avoid.iter().any(|a| Arc::ptr_eq(a, b)))
    }

    pub fn in_rotation(&self, backend: &Arc<Backend>) -> bool {
        let mut cache = self.backends.borrow_mut();
        let set = cache.load();
        set.rotation().iter().any(|&i| Arc::ptr_eq(&set.servers[i], backend))
    }

    /// Resolves once `backend` is no longer in rotation (membership, a health check or an operator took it
    /// out): what an attempt to reach it races against.
    pub async fn taken_out(&self, backend: &Arc<Backend>) {
        loop {
            self.set_changed.notified().await;
            if !self.in_rotation(backend) {
                return;
            }
        }
    }

    /// Follows published sets: wakes the attempts racing [`Worker::taken_out`] and drops idle pooled
    /// connections to servers that left rotation.
    async fn follow_set_changes(self: Rc<Self>) {
        let mut changes = self.shared.set_changes.clone();
        while changes.changed().await.is_ok() {
            self.set_changed.notify_waiters();
            let usable: Vec<std::net::SocketAddr> = {
                let mut cache = self.backends.borrow_mut();
                let set = cache.load();
                set.rotation().iter().filter_map(|&i| set.servers[i].cached_address()).collect()
            };
            self.pool.borrow_mut().retain(|addr| usable.contains(addr));
        }
    }

    pub fn log_enabled(&self) -> bool {
        self.shared.log.is_some()
    }

    /// Appends a line through `write` and sends the batch once it is large.
    pub fn log(&self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.shared.log.is_none() {
            return;
        }
        let mut buf = self.log.borrow_mut();
        write(&mut buf);
        if buf.len() >= LOG_BATCH {
            drop(buf);
            self.flush_log();
        }
    }

    fn flush_log(&self) {
        let batch = std::mem::take(&mut *self.log.borrow_mut());
        if let (false, Some(sink)) = (batch.is_empty(), &self.shared.log) {
            sink.send(batch);
        }
    }

    pub fn active_connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

/// Counts a client connection for as long as it lives, however its task ends.
struct ConnectionGuard(Rc<Worker>);

impl ConnectionGuard {
    fn new(worker: Rc<Worker>) -> ConnectionGuard {
        worker.connections.set(worker.connections.get() + 1);
        worker.shared.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(worker)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let w = &self.0;
        w.connections.set(w.connections.get() - 1);
        w.shared.connections.fetch_sub(1, Ordering::Relaxed);
        w.connection_closed.notify_waiters();
    }
}

/// Pins the calling thread to the `id`-th CPU this process may run on.
fn pin_to_cpu(id: usize) {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity/sched_setaffinity read and write only the set we pass,
    // and pid 0 means the calling thread.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return tracing::warn!("thread {id}: cannot read CPU affinity");
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &allowed)).collect();
        let Some(&cpu) = cpus.get(id % cpus.len().max(1)) else { return };
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) == 0 {
            tracing::info!("thread {id} pinned to CPU {cpu}");
        } else {
            tracing::warn!("thread {id}: cannot pin to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
}

/// Runs one data-plane thread until shutdown has drained its connections (or the grace period ends).
pub fn run(id: usize, shared: Arc<Shared>, listeners: Vec<Listening>) {
    if shared.config.pin_cpus {
        pin_to_cpu(id);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("thread {id}: cannot start runtime: {e}");
            return;
        }
    };
    let local = LocalSet::new();
    local.block_on(&runtime, async move {
        let worker = Rc::new(Worker::new(id, shared));
        tokio::task::spawn_local(housekeeping(worker.clone()));
        tokio::task::spawn_local(worker.clone().follow_set_changes());
        for Listening { listener, tls } in listeners {
            match TcpListener::from_std(listener) {
                Ok(l) => {
                    tokio::task::spawn_local(accept_loop(worker.clone(), l, tls));
                }
                Err(e) => tracing::error!("thread {id}: listener: {e}"),
            }
        }
        let mut signal = worker.shared.shutdown.clone();
        let _ = signal.wait_for(|stop| *stop).await;
        worker.shutting_down.set(true);
        worker.shutdown.notify_waiters();
        let grace = worker.shared.config.timeouts.grace;
        let drained = async {
            while worker.connections.get() > 0 {
                let closed = worker.connection_closed.notified();
                if worker.connections.get() == 0 {
                    break;
                }
                closed.await;
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!("thread {id}: grace period over with {} connections open", worker.connections.get());
        }
        worker.flush_log();
    });
}

async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, tls: bool) {
    loop {
        let stop = worker.shutdown_started();
        if worker.is_shutting_down() {
            return;
        }
        if worker.connections.get() >= worker.max_connections {
            let closed = worker.connection_closed.notified();
            tokio::select! {
                _ = closed => continue,
                _ = stop => return,
            }
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let guard = ConnectionGuard::new(worker.clone());
                let local_port = stream.local_addr().map_or(0, |a| a.port());
                if tls {
                    tokio::task::spawn_local(async move {
                        serve_tls(&guard.0, stream, peer, local_port).await;
                        drop(guard);
                    });
                } else {
                    worker.frontend(false).session();
                    tokio::task::spawn_local(async move {
                        client::serve(&guard.0, stream, peer, local_port).await;
                        drop(guard);
                    });
                }
            }
            Err(e) => {
                // Out of descriptors or memory: back off rather than spin; the queue keeps the clients.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Completes the TLS handshake within its own timeout, then serves the connection. A failed handshake is
/// counted and logged at debug: scanners and broken clients must not fill the log or disturb anyone else.
async fn serve_tls(worker: &Rc<Worker>, stream: tokio::net::TcpStream, peer: std::net::SocketAddr, local_port: u16) {
    let Some(config) = worker.shared.tls.as_ref().map(|c| c.load_full()) else { return };
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let stop = worker.shutdown_started();
    let outcome = tokio::select! {
        done = tokio::time::timeout(worker.shared.config.timeouts.handshake, handshake) => done,
        _ = stop => return,
    };
    match outcome {
        Ok(Ok(tls)) => {
            worker.frontend(true).session();
            client::serve(worker, tls, peer, local_port).await;
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

async fn housekeeping(worker: Rc<Worker>) {
    let mut ticks = 0u32;
    loop {
        tokio::time::sleep(LOG_FLUSH_EVERY).await;
        worker.flush_log();
        ticks += 1;
        if ticks * (LOG_FLUSH_EVERY.as_millis() as u32) >= HOUSEKEEPING_EVERY.as_millis() as u32 {
            ticks = 0;
            worker.pool.borrow_mut().sweep();
        }
    }
}
