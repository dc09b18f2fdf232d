//! Waiting for a client's next request. An idle keep-alive connection is the proxy's most numerous state, so
//! its wait holds no timer and no shutdown listener of its own: it takes a slot in this thread's table (a
//! deadline and the task's waker), and one sweeper task per thread ends the waits that ran out. The slot
//! costs 40 bytes in the table instead of about 400 in every idle connection's future (tokio's `Sleep` and
//! `Notified` nodes and the `select!` around them).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// Once the proxy is stopping, how long an idle connection must stay quiet before it is closed.
pub const QUIET_BEFORE_CLOSE: Duration = Duration::from_secs(1);
/// The sweeper looks this often at most (it then wakes expired waits up to a tick late, 5 % of the shortest
/// wait), and at least this often.
const FINEST_TICK: Duration = Duration::from_millis(5);
const COARSEST_TICK: Duration = Duration::from_millis(250);

/// This thread's idle waits. Cheap to clone: the sweeper holds a clone while it runs.
#[derive(Clone, Default)]
pub struct IdleWaits(Rc<Table>);

#[derive(Default)]
struct Table {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    tick: Cell<Option<Duration>>,
    sweeping: Cell<bool>,
    /// Set once the proxy is stopping: new waits last at most [`QUIET_BEFORE_CLOSE`].
    stopping: Cell<bool>,
}

#[derive(Default)]
struct Slot {
    deadline: Option<Instant>,
    expired: bool,
    waker: Option<Waker>,
}

impl IdleWaits {
    /// Waits until `poll_ready` is ready (true) or the wait that began at `started` has lasted `wait`, or,
    /// once the proxy is stopping, the connection stays quiet for [`QUIET_BEFORE_CLOSE`] (false).
    /// `poll_ready` polls the transport's readiness: an error (a broken connection) ends the wait too (false).
    pub fn wait<F>(&self, started: Instant, wait: Duration, poll_ready: F) -> IdleWait<'_, F>
    where
        F: FnMut(&mut Context) -> Poll<io::Result<()>> + Unpin,
    {
        IdleWait { ticket: self.enter(started, wait), poll_ready }
    }

    /// From now on every wait lasts at most [`QUIET_BEFORE_CLOSE`] more: a request may still be on its way.
    pub fn stop(&self) {
        let table = &self.0;
        table.stopping.set(true);
        let cap = Instant::now() + QUIET_BEFORE_CLOSE;
        for slot in table.slots.borrow_mut().iter_mut() {
            if let Some(d) = &mut slot.deadline {
                *d = (*d).min(cap);
            }
        }
        self.note_tick(QUIET_BEFORE_CLOSE);
    }

    fn enter(&self, started: Instant, wait: Duration) -> Ticket<'_> {
        let table = &self.0;
        let mut deadline = started + wait;
        if table.stopping.get() {
            deadline = deadline.min(Instant::now() + QUIET_BEFORE_CLOSE);
        }
        let slot = Slot { deadline: Some(deadline), expired: false, waker: None };
        let index = match table.free.borrow_mut().pop() {
            Some(i) => {
                table.slots.borrow_mut()[i as usize] = slot;
                i
            }
            None => {
                let mut slots = table.slots.borrow_mut();
                slots.push(slot);
                (slots.len() - 1) as u32
            }
        };
        self.note_tick(wait);
        if !table.sweeping.replace(true) {
            tokio::task::spawn_local(self.clone().sweep());
        }
        Ticket(index, self)
    }

    fn note_tick(&self, wait: Duration) {
        let tick = (wait / 20).clamp(FINEST_TICK, COARSEST_TICK);
        let table = &self.0;
        table.tick.set(Some(table.tick.get().map_or(tick, |t| t.min(tick))));
    }

    /// Runs while any wait is registered: ends those past their deadline.
    async fn sweep(self) {
        let table = &self.0;
        while table.slots.borrow().len() > table.free.borrow().len() {
            tokio::time::sleep(table.tick.get().unwrap_or(COARSEST_TICK)).await;
            let now = Instant::now();
            for slot in table.slots.borrow_mut().iter_mut() {
                if slot.deadline.is_some_and(|d| d <= now) && !slot.expired {
                    slot.expired = true;
                    if let Some(w) = slot.waker.take() {
                        w.wake();
                    }
                }
            }
        }
        // Every wait has ended: the table's memory goes back (a burst of idle connections leaves it large), and
        // the tick is chosen again by the next waits.
        *table.slots.borrow_mut() = Vec::new();
        *table.free.borrow_mut() = Vec::new();
        table.tick.set(None);
        table.sweeping.set(false);
    }
}

/// One connection's wait for its next request (see [`IdleWaits::wait`]).
pub struct IdleWait<'a, F> {
    ticket: Ticket<'a>,
    poll_ready: F,
}

impl<F> Future for IdleWait<'_, F>
where
    F: FnMut(&mut Context) -> Poll<io::Result<()>> + Unpin,
{
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        if let Poll::Ready(r) = (self.poll_ready)(cx) {
            return Poll::Ready(r.is_ok());
        }
        let Ticket(index, waits) = &self.ticket;
        let mut slots = waits.0.slots.borrow_mut();
        let slot = &mut slots[*index as usize];
        if slot.expired {
            return Poll::Ready(false);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// A registered wait; its slot is freed when the wait ends, however it ends.
struct Ticket<'a>(u32, &'a IdleWaits);

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let table = &(self.1).0;
        table.slots.borrow_mut()[self.0 as usize] = Slot::default();
        table.free.borrow_mut().push(self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::IdleWaits;

    #[test]
    fn waits_run_out_and_the_table_gives_its_memory_back_once_empty() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let local = tokio::task::LocalSet::new();
        // Leaked: each spawned wait borrows the table for as long as the test runs.
        let waits: &'static IdleWaits = Box::leak(Box::default());
        local.block_on(&rt, async {
            let started = Instant::now();
            let never_ready = |_: &mut std::task::Context<'_>| Poll::Pending;
            let burst: Vec<_> = (0..1000)
                .map(|_| tokio::task::spawn_local(waits.wait(started, Duration::from_millis(20), never_ready)))
                .collect();
            assert!(waits.0.slots.borrow().capacity() >= 1000);
            for wait in burst {
                assert!(!wait.await.unwrap(), "a wait with nothing to read runs out");
            }
            while waits.0.sweeping.get() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert_eq!((waits.0.slots.borrow().capacity(), waits.0.free.borrow().capacity()), (0, 0));
    }
}
