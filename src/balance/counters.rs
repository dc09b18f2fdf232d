//! Request counters kept per thread and summed when read: each data-plane thread writes only its own slot,
//! on its own cache line, so counting adds no contention to the request path; the admin endpoints add the
//! slots up. One writer per slot means a relaxed load and store suffice (no locked read-modify-write).

use std::sync::atomic::{AtomicU64, Ordering};

/// Status classes, as HAProxy's `hrsp_1xx` .. `hrsp_5xx` and `hrsp_other`.
pub const CLASSES: usize = 6;

/// One thread's counters.
/// What every request writes comes first, so that it stays on one cache line (`repr(C)` keeps the order).
#[derive(Debug, Default)]
#[repr(C, align(128))]
pub struct Slot {
    /// Connections accepted (frontend) or requests sent (server).
    sessions: AtomicU64,
    requests: AtomicU64,
    responses: [AtomicU64; CLASSES],
    bytes_out: AtomicU64,
    /// Connections to the server attempted (`connect`) and pooled ones used again (`reuse`).
    connects: AtomicU64,
    reuses: AtomicU64,
    /// Request bytes received from clients (frontend) or sent on to the server (`bin`).
    bytes_in: AtomicU64,
    /// Requests refused before reaching a server (frontend `ereq`).
    refused: AtomicU64,
    connect_errors: AtomicU64,
    response_errors: AtomicU64,
    retries: AtomicU64,
    /// TLS handshakes that failed or timed out (the TLS frontend).
    handshake_errors: AtomicU64,
    /// TLS sessions resumed rather than negotiated in full (the TLS frontend's `ssl_reused_sess`).
    resumed: AtomicU64,
    /// Responses cut because the client went away (`cli_abrt`) or the server did (`srv_abrt`).
    client_aborts: AtomicU64,
    server_aborts: AtomicU64,
    /// Requests the proxy answered itself by rule (`--redirect-https`): HAProxy's `intercepted`.
    intercepted: AtomicU64,
    /// Retries that went to another server, counted on the one left (HAProxy's `wredis`).
    redispatches: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
}

impl Slot {
    pub fn session(&self) {
        bump(&self.sessions, 1);
    }

    /// A request answered with `status` (0: no response was sent, HAProxy's -1, counted as `hrsp_other`) and
    /// `bytes` sent to the client.
    pub fn response(&self, status: u16, bytes: u64) {
        bump(&self.requests, 1);
        bump(&self.responses[class(status)], 1);
        bump(&self.bytes_out, bytes);
    }

    pub fn received(&self, bytes: u64) {
        bump(&self.bytes_in, bytes);
    }

    pub fn connect(&self) {
        bump(&self.connects, 1);
    }

    pub fn reuse(&self) {
        bump(&self.reuses, 1);
    }

    pub fn refused(&self) {
        bump(&self.refused, 1);
    }

    pub fn connect_error(&self) {
        bump(&self.connect_errors, 1);
    }

    pub fn response_error(&self) {
        bump(&self.response_errors, 1);
    }

    pub fn retry(&self) {
        bump(&self.retries, 1);
    }

    pub fn resumed(&self) {
        bump(&self.resumed, 1);
    }

    pub fn handshake_error(&self) {
        bump(&self.handshake_errors, 1);
    }

    pub fn client_abort(&self) {
        bump(&self.client_aborts, 1);
    }

    pub fn server_abort(&self) {
        bump(&self.server_aborts, 1);
    }

    pub fn intercepted(&self) {
        bump(&self.intercepted, 1);
    }

    pub fn redispatch(&self) {
        bump(&self.redispatches, 1);
    }
}

fn class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => CLASSES - 1,
    }
}

/// One slot per data-plane thread.
#[derive(Debug)]
pub struct PerThread {
    slots: Box<[Slot]>,
}

impl PerThread {
    pub fn new(threads: usize) -> PerThread {
        PerThread { slots: (0..threads.max(1)).map(|_| Slot::default()).collect() }
    }

    /// The slot of data-plane thread `thread`.
    pub fn slot(&self, thread: usize) -> &Slot {
        match self.slots.get(thread) {
            Some(slot) => slot,
            None => &self.slots[thread % self.slots.len()],
        }
    }

    /// All threads' counts added up.
    pub fn sum(&self) -> Totals {
        let mut t = Totals::default();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for s in self.slots.iter() {
            t.sessions += get(&s.sessions);
            t.requests += get(&s.requests);
            for (total, c) in t.responses.iter_mut().zip(&s.responses) {
                *total += get(c);
            }
            t.bytes_out += get(&s.bytes_out);
            t.connects += get(&s.connects);
            t.reuses += get(&s.reuses);
            t.bytes_in += get(&s.bytes_in);
            t.refused += get(&s.refused);
            t.connect_errors += get(&s.connect_errors);
            t.response_errors += get(&s.response_errors);
            t.retries += get(&s.retries);
            t.handshake_errors += get(&s.handshake_errors);
            t.resumed += get(&s.resumed);
            t.client_aborts += get(&s.client_aborts);
            t.server_aborts += get(&s.server_aborts);
            t.intercepted += get(&s.intercepted);
            t.redispatches += get(&s.redispatches);
        }
        t
    }
}

/// Summed counts, as read by the admin endpoints.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub sessions: u64,
    pub requests: u64,
    pub responses: [u64; CLASSES],
    pub bytes_out: u64,
    pub connects: u64,
    pub reuses: u64,
    pub bytes_in: u64,
    pub refused: u64,
    pub connect_errors: u64,
    pub response_errors: u64,
    pub retries: u64,
    pub handshake_errors: u64,
    pub resumed: u64,
    pub client_aborts: u64,
    pub server_aborts: u64,
    pub intercepted: u64,
    pub redispatches: u64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.sessions += o.sessions;
        self.requests += o.requests;
        for (a, b) in self.responses.iter_mut().zip(o.responses) {
            *a += b;
        }
        self.bytes_out += o.bytes_out;
        self.connects += o.connects;
        self.reuses += o.reuses;
        self.bytes_in += o.bytes_in;
        self.refused += o.refused;
        self.connect_errors += o.connect_errors;
        self.response_errors += o.response_errors;
        self.retries += o.retries;
        self.handshake_errors += o.handshake_errors;
        self.resumed += o.resumed;
        self.client_aborts += o.client_aborts;
        self.server_aborts += o.server_aborts;
        self.intercepted += o.intercepted;
        self.redispatches += o.redispatches;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_add_up_across_threads() {
        let c = PerThread::new(2);
        c.slot(0).response(200, 10);
        c.slot(1).response(204, 5);
        c.slot(1).response(503, 7);
        c.slot(0).response(0, 0);
        c.slot(3).retry();
        let t = c.sum();
        assert_eq!((t.requests, t.responses, t.bytes_out, t.retries), (4, [0, 2, 0, 0, 1, 1], 22, 1));
    }
}
