//! One clock read per poll of a request: every [`Clock::now`] inside one poll of a request's future returns
//! the instant first read in that poll.
//!
//! A proxied request used to read the clock about 16 times (deadlines, log timestamps, progress marks, the
//! upstream pool's idle ages), each a vDSO call of 30-50 ns on this machine. The reads within one poll are
//! microseconds apart, so one serves them all, as HAProxy updates its `now` once per turn of its event loop.
//! Outside such a poll (idle waits, housekeeping), `now` reads the real clock.
//!
//! A loop that waits for a deadline to pass reads `Instant::now` itself: a cached instant does not move
//! while the loop runs, so a deadline it has not yet reached would never look passed.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

/// A thread's clock; see the module documentation.
#[derive(Default)]
pub struct Clock {
    /// Whether a poll wrapped by [`Clock::per_poll`] is running.
    polling: Cell<bool>,
    /// The instant read in that poll, once something asked.
    read: Cell<Option<Instant>>,
}

impl Clock {
    /// Now: the instant read first in the current request poll, or the real clock outside one.
    pub fn now(&self) -> Instant {
        if let Some(at) = self.read.get() {
            return at;
        }
        let at = Instant::now();
        if self.polling.get() {
            self.read.set(Some(at));
        }
        at
    }

    /// `future`, with one clock read shared by everything that asks within each of its polls.
    pub fn per_poll<F: Future + Unpin>(&self, future: F) -> PerPoll<'_, F> {
        PerPoll { clock: self, future }
    }
}

/// See [`Clock::per_poll`].
pub struct PerPoll<'c, F> {
    clock: &'c Clock,
    future: F,
}

impl<F: Future + Unpin> Future for PerPoll<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _poll = Polling::start(this.clock);
        Pin::new(&mut this.future).poll(cx)
    }
}

/// Marks a poll as running; dropped at its end, even by a panic (tokio keeps the thread alive after a task
/// panics, and a clock left frozen would stop every deadline on it).
struct Polling<'c>(&'c Clock, bool);

impl<'c> Polling<'c> {
    fn start(clock: &'c Clock) -> Polling<'c> {
        let outer = clock.polling.replace(true);
        Polling(clock, outer)
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.polling.set(self.1);
        if !self.1 {
            self.0.read.set(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::{poll_fn, Future};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::Clock;

    /// Waits for the real clock to pass `after`, so two reads that should differ do.
    fn pass(after: Instant) {
        while Instant::now() <= after {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn one_read_per_poll_and_a_fresh_one_in_the_next() {
        let clock = Clock::default();
        let seen = std::cell::RefCell::new(Vec::new());
        let future = clock.per_poll(Box::pin(poll_fn(|_| {
            let first = clock.now();
            pass(first);
            assert_eq!(clock.now(), first, "the same instant within one poll");
            seen.borrow_mut().push(first);
            if seen.borrow().len() == 2 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })));
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(future.as_mut().poll(&mut cx).is_pending());
        pass(seen.borrow()[0]);
        assert!(future.as_mut().poll(&mut cx).is_ready());
        let seen = seen.borrow();
        assert!(seen[1] > seen[0], "the second poll read the clock again: {seen:?}");
    }

    #[test]
    fn outside_a_poll_the_clock_moves() {
        let clock = Clock::default();
        let mut future = pin!(clock.per_poll(Box::pin(poll_fn(|_| Poll::Ready(clock.now())))));
        let inside = match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(at) => at,
            Poll::Pending => unreachable!("ready at once"),
        };
        pass(inside);
        let first = clock.now();
        pass(first);
        assert!(clock.now() > first && first > inside);
    }

    #[test]
    fn a_panicking_poll_does_not_freeze_the_clock() {
        let clock = Clock::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut future = pin!(clock.per_poll(Box::pin(poll_fn(|_| -> Poll<()> {
                clock.now();
                panic!("a bug in a request")
            }))));
            let _ = future.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        }));
        assert!(panicked.is_err());
        let first = clock.now();
        pass(first + Duration::from_nanos(1));
        assert!(clock.now() > first, "the clock moves again after the panic");
    }
}
