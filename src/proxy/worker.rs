//! One data-plane thread: a current-thread tokio runtime with its own listeners, upstream pool, buffers,
//! balancing cursor, log buffer and copy of the configuration. Nothing here is shared with other threads except
//! read-only snapshots; the main thread reaches a worker only through its [`Command`] channel.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::{AbortHandle, LocalSet};

use arc_swap::Cache;

use super::accept::{accept_loop, Running};
use super::buffers::{Buffers, HeadBufs};
use super::clock::Clock;
use super::frames::Frames;
use super::idle::IdleWaits;
use super::listener::Listening;
use super::splice::Pipes;
use super::upstream::Pool;
use super::Shared;
use crate::balance::counters::Slot;
use crate::balance::timings::{Recorder, Sample, Timings};
use crate::balance::{Affinity, Backend, BackendSet, Balancer, Pick, SharedBackends};
use crate::config::ProxyConfig;
use crate::http::fields::FieldStore;

/// What the main thread asks of a data-plane thread.
pub enum Command {
    /// Accept on this socket too (a listener added by a reload).
    Listen(Listening),
    /// Stop accepting on the sockets bound to this address, plain or TLS (a listener removed by a reload; a
    /// reload may move an address from one kind to the other, so both kinds are on it for a moment).
    Unlisten(std::net::SocketAddr, bool),
    /// Stop accepting anywhere: a new process has the listening sockets (a binary upgrade).
    StopAccepting,
}

/// Flush the thread's log buffer at least this often, and whenever it grows past `LOG_BATCH`.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(200);
const LOG_BATCH: usize = 32 * 1024;
/// A log line quotes at most 1 KiB of the request line; the rest of it is well under this.
const LONGEST_LOG_LINE: usize = 2048;
/// Idle pooled connections are swept, and latencies published, this often.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// Free read buffers kept per thread for the next busy connection; beyond this they go back to the allocator.
/// A busy thread's need swings by two per request in flight (the client's and the server's buffer): with 32,
/// 64 keep-alive clients made it allocate, and fault in fresh pages, on most turns. Spares unused for a
/// housekeeping interval are given back all the same.
const IDLE_BUFFERS: usize = 256;
/// A read buffer's starting size: enough for typical heads; it grows for large heads and bodies.
const BUFFER_SIZE: usize = 4096;
/// Spare head vectors kept per thread: one per request in flight (its upstream head) is what a busy thread
/// needs; beyond this they go back to the allocator.
const IDLE_HEADS: usize = 256;
/// Free request-future blocks kept per thread: as many as requests in flight at once on a busy thread.
const IDLE_FRAMES: usize = 128;
/// Free pipes kept per thread for splice(2) transfers (two descriptors each).
const IDLE_PIPES: usize = 16;

pub struct Worker {
    /// This thread's index: its slot in every per-thread counter.
    pub id: usize,
    pub shared: Arc<Shared>,
    /// This thread's copy of the configuration, replaced when it is reloaded. An exchange holds the copy it
    /// started with, so requests in flight finish under the configuration they began with.
    config: RefCell<Rc<ProxyConfig>>,
    pub pool: RefCell<Pool>,
    balancer: RefCell<Balancer>,
    /// This thread's view of the backend set, refreshed only when a new set is published.
    backends: RefCell<Cache<SharedBackends, Arc<BackendSet>>>,
    /// Woken on this thread when a new set is published, so connects to servers that left are abandoned.
    set_changed: Notify,
    pub buffers: Buffers,
    /// The time, read once per poll of a request.
    pub clock: Clock,
    /// Heap blocks the futures of requests in flight live in.
    pub frames: Frames,
    /// Vectors the heads this thread writes are built in.
    pub heads: HeadBufs,
    /// Room for the fields of the head being parsed (never held across an await).
    pub fields: RefCell<FieldStore>,
    /// Connections waiting for their next request.
    pub idle: IdleWaits,
    pub pipes: Pipes,
    log: RefCell<Vec<u8>>,
    /// Latencies recorded on this thread, published every second.
    timings: RefCell<Recorder>,
    pub(super) connections: Cell<usize>,
    /// Accept loops running on this thread: a stopping one is still draining its queue.
    pub(super) accept_loops: Cell<usize>,
    /// A connection closed or an accept loop ended.
    pub(super) connection_closed: Notify,
    shutting_down: Cell<bool>,
    shutdown: Notify,
    /// The accept loops running on this thread, by the address they accept on and whether it is TLS.
    accepting: RefCell<Vec<(std::net::SocketAddr, bool, AbortHandle)>>,
}

impl Worker {
    pub(super) fn new(id: usize, shared: Arc<Shared>) -> Worker {
        let c = Rc::new(ProxyConfig::clone(&shared.config.load()));
        Worker {
            id,
            pool: RefCell::new(Pool::new(c.limits.pool_max_idle, c.timeouts.pool)),
            balancer: RefCell::new(Balancer::new(&c.balance, id, c.balance_options())),
            config: RefCell::new(c),
            backends: RefCell::new(Cache::new(shared.backends.clone())),
            set_changed: Notify::new(),
            buffers: Buffers::new(BUFFER_SIZE, IDLE_BUFFERS),
            clock: Clock::default(),
            frames: Frames::new(IDLE_FRAMES),
            heads: HeadBufs::new(IDLE_HEADS),
            fields: RefCell::default(),
            idle: IdleWaits::default(),
            pipes: Pipes::new(IDLE_PIPES),
            log: RefCell::new(Vec::new()),
            timings: RefCell::new(Recorder::new(&shared.timings.frontends, &shared.timings.backend)),
            connections: Cell::new(0),
            accept_loops: Cell::new(0),
            connection_closed: Notify::new(),
            shutting_down: Cell::new(false),
            shutdown: Notify::new(),
            accepting: RefCell::new(Vec::new()),
            shared,
        }
    }

    /// The configuration as this thread last heard of it.
    pub fn config(&self) -> Rc<ProxyConfig> {
        self.config.borrow().clone()
    }

    /// This thread's share of `--max-connections`: the shares add up to it exactly (the first threads take one
    /// more each when it does not divide); configuration and reload refuse fewer connections than threads, and
    /// a share is never 0 (a thread that may hold none would leave the clients the kernel gives it waiting).
    pub fn max_connections(&self) -> usize {
        let c = self.config.borrow();
        let (share, rest) = (c.limits.max_connections / c.threads, c.limits.max_connections % c.threads);
        (share + usize::from(self.id < rest)).max(1)
    }

    /// Takes a reloaded configuration: the next requests use it, the balancing algorithm and the pool follow.
    async fn follow_config(self: Rc<Self>) {
        let mut changes = self.shared.config_changes.clone();
        while changes.changed().await.is_ok() {
            let new = Rc::new(ProxyConfig::clone(&self.shared.config.load()));
            *self.balancer.borrow_mut() = Balancer::new(&new.balance, self.id, new.balance_options());
            self.pool.borrow_mut().set_limits(new.limits.pool_max_idle, new.timeouts.pool);
            *self.config.borrow_mut() = new;
        }
    }

    /// Runs the main thread's commands.
    async fn obey(self: Rc<Self>, mut commands: mpsc::UnboundedReceiver<Command>) {
        while let Some(command) = commands.recv().await {
            match command {
                Command::Listen(listening) => self.clone().listen(listening),
                Command::Unlisten(addr, tls) => self.accepting.borrow_mut().retain(|(a, t, handle)| {
                    let removed = (*a, *t) == (addr, tls);
                    if removed {
                        handle.abort();
                    }
                    !removed
                }),
                Command::StopAccepting => {
                    for (_, _, handle) in self.accepting.borrow_mut().drain(..) {
                        handle.abort();
                    }
                }
            }
        }
    }

    /// Starts accepting on one more socket.
    fn listen(self: Rc<Self>, Listening { listener, tls }: Listening) {
        let addr = listener.local_addr();
        match (TcpListener::from_std(listener), addr) {
            (Ok(l), Ok(addr)) => {
                let handle = tokio::task::spawn_local(accept_loop(Running::new(&self), l, tls)).abort_handle();
                self.accepting.borrow_mut().push((addr, tls, handle));
            }
            (Err(e), _) | (_, Err(e)) => tracing::error!("thread {}: listener: {e}", self.id),
        }
    }

    /// Requests the backend holds, in flight or queued (HAProxy's `beconn`, `%bc` in the log).
    pub fn backend_sessions(&self) -> usize {
        self.backends.borrow_mut().load().pool.as_ref().map_or(0, |p| p.sessions())
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

    /// The next server for a request with `affinity`, avoiding those in `avoid` (they failed this request)
    /// when another exists.
    pub fn pick_backend(&self, affinity: &Affinity, avoid: &[Arc<Backend>]) -> Option<Pick> {
        let mut cache = self.backends.borrow_mut();
        self.balancer.borrow().pick(cache.load(), affinity, avoid)
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

    /// Whether `backend` still finishes requests (see [`crate::balance::BackendSet::serves`]).
    pub fn serves(&self, backend: &Arc<Backend>) -> bool {
        self.backends.borrow_mut().load().serves(backend)
    }

    /// Whether `backend` still finishes the requests it has (see [`crate::balance::BackendSet::finishes`]).
    pub fn finishes(&self, backend: &Arc<Backend>) -> bool {
        self.backends.borrow_mut().load().finishes(backend)
    }

    /// Resolves once `backend` takes no more requests (membership, a health check or an operator took it out;
    /// a server set to DRAIN still does): what a request not yet sent to it races against.
    pub async fn taken_out(&self, backend: &Arc<Backend>) {
        loop {
            self.set_changed.notified().await;
            if !self.serves(backend) {
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
                set.rotation().iter().filter_map(|&i| set.servers[i].address.cached()).collect()
            };
            self.pool.borrow_mut().retain(|addr| usable.contains(addr));
        }
    }

    /// Records an exchange's times for the frontend (TLS or not) and the server it reached.
    pub fn record_timings(&self, tls: bool, server: Option<&Arc<Timings>>, sample: &Sample) {
        self.timings.borrow_mut().record(usize::from(tls), server, sample);
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
        if buf.capacity() == 0 {
            // Room for a whole batch at once, not grown by doubling: one allocation per batch of lines.
            buf.reserve(LOG_BATCH + LONGEST_LOG_LINE);
        }
        write(&mut buf);
        if buf.len() >= LOG_BATCH {
            drop(buf);
            self.flush_log();
        }
    }

    /// Gives back the spare buffers, head vectors, future blocks and pipes no request took in the last
    /// housekeeping interval: after a burst, an idle thread keeps none of the burst's memory.
    fn trim_spares(&self) {
        self.buffers.trim();
        self.heads.trim();
        self.frames.trim();
        self.pipes.trim();
    }

    fn flush_log(&self) {
        let batch = std::mem::take(&mut *self.log.borrow_mut());
        if let (false, Some(sink)) = (batch.is_empty(), &self.shared.log) {
            sink.send(batch);
        }
    }

    pub fn active_connections(&self) -> usize {
        self.shared.open.all()
    }

    /// Connections open on the plain or the TLS frontend (`%fc`).
    pub fn frontend_connections(&self, tls: bool) -> usize {
        self.shared.open.frontend(tls).0
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
pub fn run(id: usize, shared: Arc<Shared>, listeners: Vec<Listening>, commands: mpsc::UnboundedReceiver<Command>) {
    if shared.config.load().pin_cpus {
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
        tokio::task::spawn_local(worker.clone().follow_config());
        tokio::task::spawn_local(worker.clone().obey(commands));
        for listening in listeners {
            worker.clone().listen(listening);
        }
        let mut signal = worker.shared.shutdown.clone();
        let _ = signal.wait_for(|stop| *stop).await;
        worker.shutting_down.set(true);
        worker.idle.stop();
        worker.shutdown.notify_waiters();
        let grace = worker.config().timeouts.grace;
        // The accept loops too: this future is polled before them, and ending it drops their listeners with
        // whatever is still in the queue.
        let busy = || worker.connections.get() > 0 || worker.accept_loops.get() > 0;
        let drained = async {
            while busy() {
                let closed = worker.connection_closed.notified();
                if !busy() {
                    break;
                }
                closed.await;
            }
        };
        let mut hurry = worker.shared.hurry.clone();
        let hurried = async {
            // No one left to hurry it (the sender gone): the drain runs its course.
            if hurry.wait_for(|now| *now).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            ended = tokio::time::timeout(grace, drained) => if ended.is_err() {
                tracing::warn!("thread {id}: grace period over with {} connections open", worker.connections.get());
            },
            () = hurried => if busy() {
                tracing::warn!("thread {id}: drain cut short with {} connections open", worker.connections.get());
            },
        }
        worker.flush_log();
        worker.timings.borrow_mut().publish();
    });
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
            worker.trim_spares();
            worker.timings.borrow_mut().publish();
            crate::memory::return_freed();
        }
    }
}
