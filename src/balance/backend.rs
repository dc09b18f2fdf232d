//! One backend server and the address it currently resolves to.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::address::Address;
use super::counters::PerThread;
use super::ejection::Ejection;
use super::hash::key_hash;
use super::health::CheckHealth;
use crate::agent::health::CheckReport;
use crate::config::BackendSpec;

/// Raises `peak` to `now` if it is higher: a plain load on the way, a read-modify-write only for a new peak.
pub fn raise_peak(peak: &AtomicUsize, now: usize) {
    if now > peak.load(Ordering::Relaxed) {
        peak.fetch_max(now, Ordering::Relaxed);
    }
}

/// What the servers of one proxy share: how many data-plane threads count their requests, and the requests in
/// flight on all of them together (HAProxy's backend `served`), the load bounded hashing compares a server
/// with.
#[derive(Debug, Clone)]
pub struct Pool {
    threads: usize,
    in_flight: Arc<AtomicUsize>,
    /// The most there have been at once (the backend's `smax`); written only on a new peak, so it stays
    /// cached on every core.
    peak: Arc<AtomicUsize>,
    /// Requests waiting in any server's queue, and the most at once (the backend's `qcur` and `qmax`).
    queued: Arc<AtomicUsize>,
    peak_queued: Arc<AtomicUsize>,
    /// Told when a server gives back a `maxconn` slot while requests wait: one waiting in the queue of a server
    /// still full may take it (HAProxy's backend queue, which whichever server frees a slot serves).
    freed: Arc<Notify>,
}

impl Pool {
    /// Requests in flight on all the servers (HAProxy's backend `served`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests waiting in any server's queue (the backend's `qcur`).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Requests the backend holds, in flight or queued (HAProxy's `beconn`: the BACKEND row's `scur`, `%bc`).
    pub fn sessions(&self) -> usize {
        self.in_flight() + self.queued()
    }

    /// The most requests the backend has held at once, in flight or queued (its `smax`, HAProxy's maximum of
    /// `beconn`).
    pub fn peak_in_flight(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// The most requests waiting in all servers' queues at once (the backend's `qmax`).
    pub fn peak_queued(&self) -> usize {
        self.peak_queued.load(Ordering::Relaxed)
    }

    pub fn new(threads: usize) -> Pool {
        Pool {
            threads,
            in_flight: Arc::default(),
            peak: Arc::default(),
            queued: Arc::default(),
            peak_queued: Arc::default(),
            freed: Arc::default(),
        }
    }
}

/// A server's `maxconn` slots and the requests waiting for one.
#[derive(Debug)]
struct Slots {
    maxconn: u32,
    free: Arc<Semaphore>,
    waiting: AtomicU32,
    /// The most there have been waiting at once (`qmax`).
    peak_waiting: AtomicU32,
    maxqueue: u32,
}

/// Why a request could not get a slot on a full server.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    #[error("the server's queue is full")]
    Full,
    #[error("no slot freed within the queue timeout")]
    Timeout,
}

/// What the stats show of a server the proxy checks.
#[derive(Debug, Clone)]
pub struct Checked {
    pub report: CheckReport,
    pub health: CheckHealth,
    /// Failed checks, as HAProxy's `chkfail` counts them.
    pub failed: u64,
}

/// A server requests can be sent to.
///
/// The host is resolved lazily and again after a failed connect, because compose service names may resolve
/// only once their container is up, and to a new address after a restart (see [`Address`]).
#[derive(Debug)]
pub struct Backend {
    /// What the stats, the runtime API and the log call it. Names come from gossip and can move: when two
    /// live members share one, the newest takes it (see `Publisher`), so it is swapped, not fixed.
    name: ArcSwap<String>,
    pub host: String,
    pub port: u16,
    pub address: Address,
    /// Skipped by every thread after a failed connect (or a request its host never acknowledged), until a
    /// probe connect succeeds or membership says it is back.
    ejected: AtomicBool,
    /// When it may be probed, and how long the next ejection lasts (a lock taken only on failures and probes).
    ejection: parking_lot::Mutex<Ejection>,
    /// Gossip probes of this server's node that failed: a request waiting on it may be given up.
    suspicions: AtomicU64,
    /// Requests currently using this server, on any thread, and the most there have been at once.
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    /// What every server of the pool shares: the requests in flight on all of them, and their peak.
    pool: Pool,
    /// Recent response time in microseconds, peak-sensitive (see `record_latency`); 0 before any, or the
    /// set's mean until the first (`seed_latency`).
    latency_us: AtomicU64,
    /// A response time was recorded: until then `latency_us` is a stand-in the first sample replaces.
    sampled: AtomicBool,
    /// `maxconn`, when the server has one.
    slots: Option<Slots>,
    /// What the sticky cookie says for this server, and where it sits on the hash ring: a hash of its name,
    /// the same on every proxy and across restarts, which says nothing about its address. Follows renames,
    /// so two servers never share one.
    cookie_id: AtomicU64,
    /// What happened to requests sent here, per data-plane thread.
    pub counters: PerThread,
    /// What a member of the same name counted before it went away and came back (a restart): its totals
    /// go on under this one.
    carried: super::counters::Totals,
    /// Its requests' queue, connect, response and total times, shared with the members of the same name
    /// before and after it.
    pub timings: Arc<super::timings::Timings>,
    /// The proxy's last health check of it (static servers with `--backend-check-path`) and its health after,
    /// and how many failed.
    last_check: parking_lot::Mutex<Option<(CheckReport, CheckHealth)>>,
    failed_checks: AtomicU64,
}

impl Backend {
    /// A server of `pool`.
    pub fn new(spec: &BackendSpec, pool: &Pool) -> Backend {
        Backend {
            name: ArcSwap::from_pointee(spec.name.clone()),
            host: spec.host.clone(),
            port: spec.port,
            address: Address::new(&spec.host, spec.port),
            ejected: AtomicBool::new(false),
            ejection: parking_lot::Mutex::default(),
            suspicions: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            pool: pool.clone(),
            latency_us: AtomicU64::new(0),
            sampled: AtomicBool::new(false),
            slots: (spec.maxconn > 0).then(|| Slots {
                maxconn: spec.maxconn,
                free: Arc::new(Semaphore::new(spec.maxconn as usize)),
                waiting: AtomicU32::new(0),
                peak_waiting: AtomicU32::new(0),
                maxqueue: spec.maxqueue,
            }),
            cookie_id: AtomicU64::new(cookie_id(&spec.name)),
            counters: PerThread::new(pool.threads),
            carried: super::counters::Totals::default(),
            timings: Arc::default(),
            last_check: parking_lot::Mutex::new(None),
            failed_checks: AtomicU64::new(0),
        }
    }

    /// Whether `spec` sets the limits this server has (`maxconn`, and `maxqueue` with it).
    pub fn limits_are(&self, spec: &BackendSpec) -> bool {
        match &self.slots {
            None => spec.maxconn == 0,
            Some(s) => (s.maxconn, s.maxqueue) == (spec.maxconn, spec.maxqueue),
        }
    }

    /// A server that takes over the counts of `predecessor` (a node back under the same name, or a static
    /// server whose limits a reload changed).
    pub fn succeeding(spec: &BackendSpec, pool: &Pool, predecessor: &Backend) -> Backend {
        Backend {
            carried: predecessor.totals(),
            timings: predecessor.timings.clone(),
            peak_in_flight: AtomicUsize::new(predecessor.peak_in_flight()),
            last_check: parking_lot::Mutex::new(predecessor.last_check.lock().clone()),
            failed_checks: AtomicU64::new(predecessor.failed_checks.load(Ordering::Relaxed)),
            ..Backend::new(spec, pool)
        }
    }

    /// Records a health check's result and the health it left, for the stats; `counted`: a failure HAProxy
    /// would count in `chkfail`.
    pub fn checked(&self, report: CheckReport, health: CheckHealth, counted: bool) {
        if counted {
            self.failed_checks.fetch_add(1, Ordering::Relaxed);
        }
        *self.last_check.lock() = Some((report, health));
    }

    /// The last health check, if the proxy checks this server.
    pub fn last_check(&self) -> Option<Checked> {
        let (report, health) = self.last_check.lock().clone()?;
        Some(Checked { report, health, failed: self.failed_checks.load(Ordering::Relaxed) })
    }

    /// Everything counted under this server's name, its predecessors' included.
    pub fn totals(&self) -> super::counters::Totals {
        let mut t = self.counters.sum();
        t += self.carried;
        t
    }

    /// The sticky cookie's value for this server.
    pub fn cookie(&self) -> String {
        format!("{:016x}", self.cookie_id())
    }

    /// Whether every `maxconn` slot is taken.
    pub fn is_full(&self) -> bool {
        self.slots.as_ref().is_some_and(|s| s.free.available_permits() == 0)
    }

    /// Counts a request against this server if it has room for it now (always, without `maxconn`).
    pub fn try_enter(self: &Arc<Self>) -> Option<InFlight> {
        let permit = match &self.slots {
            None => None,
            Some(s) => Some(s.free.clone().try_acquire_owned().ok()?),
        };
        Some(self.clone().counted(permit))
    }

    /// Waits for a slot on a full server, in its queue, at most `limit`. Dropped while it waits (the server
    /// taken out, the client gone), it leaves the queue and its counts.
    pub async fn enter_queued(self: &Arc<Self>, limit: Duration) -> Result<InFlight, QueueError> {
        let Some(s) = &self.slots else { return Ok(self.clone().counted(None)) };
        let before = s.waiting.fetch_add(1, Ordering::Relaxed);
        // `maxqueue=0` is no limit, as in HAProxy.
        if s.maxqueue != 0 && before >= s.maxqueue {
            s.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(QueueError::Full);
        }
        s.peak_waiting.fetch_max(before + 1, Ordering::Relaxed);
        let pool = &self.pool;
        let queued = pool.queued.fetch_add(1, Ordering::SeqCst) + 1;
        raise_peak(&pool.peak_queued, queued);
        raise_peak(&pool.peak, pool.in_flight.load(Ordering::Relaxed) + queued);
        let waiting = Waiting { server: &s.waiting, pool: &pool.queued };
        let got = tokio::time::timeout(limit, s.free.clone().acquire_owned()).await;
        // Out of the queue before it counts in flight: the backend's peak would count it twice.
        drop(waiting);
        match got {
            Ok(Ok(permit)) => Ok(self.clone().counted(Some(permit))),
            _ => Err(QueueError::Timeout),
        }
    }

    /// Resolves when some server of the pool frees a slot while requests wait (maybe taken already).
    pub fn slot_freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.pool.freed.notified()
    }

    /// `maxqueue`, if the server has a queue with a limit (HAProxy's `qlimit`).
    pub fn maxqueue(&self) -> Option<u32> {
        self.slots.as_ref().map(|s| s.maxqueue).filter(|&q| q != 0)
    }

    /// `maxconn`, if the server has one (HAProxy's `slim`).
    pub fn maxconn(&self) -> Option<u32> {
        self.slots.as_ref().map(|s| s.maxconn)
    }

    /// Requests waiting for a slot (HAProxy's `qcur`).
    pub fn queued(&self) -> u32 {
        self.slots.as_ref().map_or(0, |s| s.waiting.load(Ordering::Relaxed))
    }

    /// The most requests that waited for a slot at once (HAProxy's `qmax`).
    pub fn peak_queued(&self) -> u32 {
        self.slots.as_ref().map_or(0, |s| s.peak_waiting.load(Ordering::Relaxed))
    }

    pub fn name(&self) -> Arc<String> {
        self.name.load_full()
    }

    /// Gives the server another name, and the cookie id that goes with it; returns the old name if it changed.
    pub fn rename(&self, name: String) -> Option<Arc<String>> {
        if **self.name.load() == name {
            return None;
        }
        self.cookie_id.store(cookie_id(&name), Ordering::Relaxed);
        Some(self.name.swap(Arc::new(name)))
    }

    /// Whether this is the server `name` at `host:port` (a reload keeps such a server).
    pub fn is_at(&self, name: &str, host: &str, port: u16) -> bool {
        **self.name.load() == name && self.host == host && self.port == port
    }

    /// See the field: the sticky cookie's value and the hash ring's seed.
    pub fn cookie_id(&self) -> u64 {
        self.cookie_id.load(Ordering::Relaxed)
    }

    /// Takes this server out of every thread's choice until it is readmitted, so requests stop paying for a
    /// failed attempt while gossip or a health check has not noticed yet. Returns how long it stays out before
    /// its first probe (see [`Ejection`]), or `None` if it was out already.
    pub fn eject(&self, now: Instant) -> Option<Duration> {
        let mut ejection = self.ejection.lock();
        (!self.ejected.swap(true, Ordering::Relaxed)).then(|| ejection.eject(now))
    }

    /// Whether the server is out and its time out is over: a probe may readmit it.
    pub fn probe_due(&self, now: Instant) -> bool {
        self.is_ejected() && self.ejection.lock().probe_due(now)
    }

    /// Puts an ejected server back after a probe connected; returns whether it was out.
    pub fn readmit(&self, now: Instant) -> bool {
        let mut ejection = self.ejection.lock();
        let was_out = self.ejected.swap(false, Ordering::Relaxed);
        if was_out {
            ejection.readmitted(now);
        }
        was_out
    }

    /// Membership or a health check brought the server back UP: back in rotation, its failures forgotten.
    /// Returns whether it was out.
    pub fn recovered(&self) -> bool {
        let mut ejection = self.ejection.lock();
        ejection.forgive();
        self.ejected.swap(false, Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Records that a gossip probe of this server's node failed (it may be cut off, or merely unlucky).
    pub fn suspect(&self) {
        self.suspicions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn suspicions(&self) -> u64 {
        self.suspicions.load(Ordering::Relaxed)
    }

    /// Counts a request against this server until the guard drops, ignoring `maxconn` (tests, and requests
    /// already admitted).
    pub fn enter(self: Arc<Self>) -> InFlight {
        self.counted(None)
    }

    fn counted(self: Arc<Self>, permit: Option<OwnedSemaphorePermit>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        raise_peak(&self.peak_in_flight, now);
        let pool_now = self.pool.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        raise_peak(&self.pool.peak, pool_now + self.pool.queued.load(Ordering::Relaxed));
        InFlight { backend: self, slot: permit }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The most requests it has had in flight at once (HAProxy's `smax`).
    pub fn peak_in_flight(&self) -> usize {
        self.peak_in_flight.load(Ordering::Relaxed)
    }

    /// Folds one response time into the average: a slower sample counts at once, a faster one by 1/8, so a
    /// server that turns slow is shunned at once and trusted again gradually (linkerd's peak EWMA).
    pub fn record_latency(&self, us: u64) {
        let old = self.latency_us.load(Ordering::Relaxed);
        // Loaded first: the swap (a write to a line every thread reads) happens once per server.
        let first = !self.sampled.load(Ordering::Relaxed) && !self.sampled.swap(true, Ordering::Relaxed);
        let new = if first || old == 0 || us >= old { us } else { old - (old - us) / 8 };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }

    /// The recent response time in microseconds, at least 1.
    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed).max(1)
    }

    /// Takes `us` as the response time of a server not sampled yet.
    pub fn seed_latency(&self, us: u64) {
        let _ = self.latency_us.compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The recent response time in microseconds, 0 before any sample.
    pub fn sampled_latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }

    /// Lets an average above `mean` (the set's) fade a quarter of the way to it: a server shunned for being
    /// slow gets no new samples, so without this it would stay shunned after it recovers. Busy servers'
    /// fresh samples outweigh the fading. One with no sample yet is taken to be as fast as the mean: taken
    /// as the fastest of all, it would draw every new request until its first response.
    pub fn fade_latency(&self, mean: u64) {
        let old = self.latency_us.load(Ordering::Relaxed);
        let faded = match old {
            0 => mean,
            old if old > mean => old - (old - mean) / 4,
            old => old,
        };
        if faded != old {
            self.latency_us.store(faded, Ordering::Relaxed);
        }
    }

    /// Requests in flight on every server of this one's pool.
    pub fn pool_in_flight(&self) -> usize {
        self.pool.in_flight()
    }
}

/// A request in flight to a server (see [`Backend::try_enter`]), holding its `maxconn` slot if any.
pub struct InFlight {
    backend: Arc<Backend>,
    /// Released when the request ends, for the next one waiting.
    slot: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        let pool = &self.backend.pool;
        pool.in_flight.fetch_sub(1, Ordering::Relaxed);
        // The slot goes first to this server's own queue (the semaphore hands it on); if nobody there took it,
        // a request queued for another server may. Only a server with `maxconn` has slots: the fence stays off
        // the path of every other request.
        let released = self.slot.take().is_some();
        if released {
            // Paired with the fence of a waiter's look (after its count in `enter_queued`): either this sees
            // the waiter counted, or the waiter's look sees the slot free.
            std::sync::atomic::fence(Ordering::SeqCst);
            let stayed_free = self.backend.slots.as_ref().is_some_and(|s| s.free.available_permits() > 0);
            if stayed_free && pool.queued.load(Ordering::SeqCst) > 0 {
                pool.freed.notify_waiters();
            }
        }
    }
}

/// The cookie id of a server named `name`.
fn cookie_id(name: &str) -> u64 {
    key_hash(format!("shoal server {name}").as_bytes())
}

/// A request's place in a server's queue and in the backend's, given back however its wait ends.
struct Waiting<'a> {
    server: &'a AtomicU32,
    pool: &'a AtomicUsize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pool.fetch_sub(1, Ordering::Relaxed);
        self.server.fetch_sub(1, Ordering::Relaxed);
    }
}
