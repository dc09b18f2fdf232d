//! The control listeners' accept loop: a few sessions at a time on a thread of their own, and when every
//! slot is taken, the session whose client has been quiet longest gives its slot to the newcomer.
//!
//! Waiting for a free slot instead (the connection left in the kernel's queue) let clients that were gone hold
//! the slots: after a crowd, a connection whose handshake completed late is accepted with its data and FIN still
//! in the client's retransmission back-off, and sat in a slot, silent, for up to the session's idle limit while
//! the operator queued behind it.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::proxy::Shared;

/// When a session last heard from its client; the handler marks each command it reads.
#[derive(Clone)]
pub struct Heard(Rc<Cell<Instant>>);

impl Heard {
    fn new() -> Self {
        Heard(Rc::new(Cell::new(Instant::now())))
    }

    pub fn now(&self) {
        self.0.set(Instant::now());
    }

    /// The session has answered everything and only lingers to close cleanly: the first to give up its slot.
    pub fn closing(&self) {
        self.0.set(Instant::now().checked_sub(Duration::from_secs(86_400)).unwrap_or(self.0.get()));
    }
}

struct Session {
    id: u64,
    heard: Heard,
    task: AbortHandle,
}

/// How many evicted sessions may still hold their connection at once. An aborted task lets go of its socket
/// only when the scheduler next runs it, and the accept loop, always ready under a crowd, ran up to a hundred
/// accepts before that: a descriptor per eviction in between. Waiting for each one instead put every accept
/// behind whatever the other sessions had to compute.
const CLOSING_MAX: usize = 4;

/// The sessions being served, at most `max`, and those evicted but not yet gone.
struct Slots {
    max: usize,
    next_id: Cell<u64>,
    live: RefCell<Vec<Session>>,
    closing: RefCell<Vec<AbortHandle>>,
}

impl Slots {
    /// Makes room for one more session: closes the quietest one if every slot is taken, and returns once no
    /// more than `CLOSING_MAX` evicted ones still hold their connection.
    async fn make_room(&self) {
        let evicted = {
            let mut live = self.live.borrow_mut();
            if live.len() < self.max {
                return;
            }
            let Some(quietest) = (0..live.len()).min_by_key(|&i| live[i].heard.0.get()) else { return };
            live.swap_remove(quietest)
        };
        evicted.task.abort();
        tracing::debug!("control listener full: closed the session quiet for {:?}", evicted.heard.0.get().elapsed());
        self.closing.borrow_mut().push(evicted.task);
        loop {
            self.closing.borrow_mut().retain(|task| !task.is_finished());
            if self.closing.borrow().len() <= CLOSING_MAX {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    fn ended(&self, id: u64) {
        self.live.borrow_mut().retain(|s| s.id != id);
    }
}

/// Accepts on `listener` on a thread of its own, running `handle` for each connection, at most `max` at once,
/// until shutdown.
pub fn serve_listener<F, Fut>(
    name: &str,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    max: usize,
    handle: F,
) -> io::Result<()>
where
    F: Fn(TcpStream, Heard) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name(name.into()).spawn(move || {
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return tracing::error!("admin: {e}"),
            };
            let mut shutdown = shared.shutdown.clone();
            // Shared also holds the access log's sender: this thread lets go of it at shutdown (by returning,
            // which drops the handler and every connection still served), so the log thread can end.
            drop(shared);
            let slots = Rc::new(Slots {
                max: max.max(1),
                next_id: Cell::new(0),
                live: RefCell::new(Vec::new()),
                closing: RefCell::new(Vec::new()),
            });
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = shutdown.wait_for(|stopping| *stopping) => return,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("admin accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                slots.make_room().await;
                let id = slots.next_id.get();
                slots.next_id.set(id + 1);
                let heard = Heard::new();
                let served = handle(stream, heard.clone());
                let ending = slots.clone();
                let task = tokio::task::spawn_local(async move {
                    served.await;
                    ending.ended(id);
                });
                slots.live.borrow_mut().push(Session { id, heard, task: task.abort_handle() });
            }
        });
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the sessions whose state is still held: made with a session, let go when its task is dropped.
    struct Held(Rc<Cell<usize>>);

    impl Drop for Held {
        fn drop(&mut self) {
            self.0.set(self.0.get() - 1);
        }
    }

    /// A crowd accepted as fast as the listener allows: without the wait in `make_room`, the loop never
    /// yields, no aborted task is dropped, and every evicted session keeps what it holds.
    #[tokio::test]
    async fn evicted_sessions_are_let_go_of_before_many_more_are_accepted() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let held = Rc::new(Cell::new(0));
                let slots =
                    Slots { max: 2, next_id: Cell::new(0), live: RefCell::default(), closing: RefCell::default() };
                for id in 0..200 {
                    slots.make_room().await;
                    held.set(held.get() + 1);
                    let state = Held(held.clone());
                    let task = tokio::task::spawn_local(async move {
                        let _state = state;
                        std::future::pending::<()>().await
                    });
                    slots.live.borrow_mut().push(Session { id, heard: Heard::new(), task: task.abort_handle() });
                    assert!(held.get() <= 2 + CLOSING_MAX + 1, "{} sessions held after {id} accepted", held.get());
                }
            })
            .await;
    }
}
