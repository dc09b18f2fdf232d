//! Backend connections: connecting with a timeout, and a per-thread pool of idle keep-alive connections.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::balance::{Backend, ResolveError};

/// A connection to one backend.
pub struct Upstream {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Taken from the pool rather than freshly connected: the backend may have closed it meanwhile.
    pub reused: bool,
    idle_since: Instant,
}

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("{0}")]
    Resolve(ResolveError),
    #[error("connect: {0}")]
    Refused(io::Error),
    #[error("connect timed out")]
    Timeout,
    /// Not connected within the attempt's share of the connect timeout: another server is tried.
    #[error("no answer to connect within {0:?}: abandoned")]
    Abandoned(Duration),
    /// Membership, a health check or an operator took the server out while connecting.
    #[error("server taken out (DOWN, MAINT or gone) while connecting: abandoned")]
    TakenOut,
}

impl ConnectError {
    /// `%tsc`'s first letter: `s` for a server that timed out, `S` for one that refused or failed.
    pub fn timed_out(&self) -> bool {
        matches!(
            self,
            ConnectError::Timeout | ConnectError::Abandoned(_) | ConnectError::Resolve(ResolveError::TimedOut(_))
        )
    }
}

/// Connects to `backend` within `limit`, looking its name up included (when it has no address yet);
/// `abandon` says the limit is the attempt's share rather than the whole connect timeout. After a failure the
/// name is looked up again in the background, for the attempts that come after.
pub async fn connect(backend: &Backend, limit: Duration, abandon: bool) -> Result<Upstream, ConnectError> {
    let deadline = Instant::now() + limit;
    let addr = backend.address.resolve(deadline).await.map_err(ConnectError::Resolve)?;
    let result = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            return Ok(Upstream { stream, addr, reused: false, idle_since: Instant::now() });
        }
        Ok(Err(e)) => ConnectError::Refused(e),
        Err(_) if abandon => ConnectError::Abandoned(limit),
        Err(_) => ConnectError::Timeout,
    };
    backend.address.refresh();
    Err(result)
}

/// Hashes backend addresses for the pool's map. The keys are a handful of addresses that configuration and
/// authenticated gossip chose, never a client: SipHash's resistance to chosen keys bought nothing and cost
/// about 200 instructions a request.
#[derive(Default, Clone, Copy)]
struct AddrHasher(u64);

impl AddrHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.add(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Idle connections of one thread, by backend address, most recently used first out.
pub struct Pool {
    idle: HashMap<SocketAddr, Vec<Upstream>, BuildHasherDefault<AddrHasher>>,
    max_idle: usize,
    ttl: Duration,
}

impl Pool {
    pub fn new(max_idle: usize, ttl: Duration) -> Pool {
        Pool { idle: HashMap::default(), max_idle, ttl }
    }

    /// A live idle connection to `addr`, dropping dead or expired ones on the way; `verify` adds a system call
    /// to each liveness check (see [`still_idle`]).
    pub fn checkout(&mut self, addr: SocketAddr, verify: bool, now: Instant) -> Option<Upstream> {
        let list = self.idle.get_mut(&addr)?;
        while let Some(mut up) = list.pop() {
            if now.duration_since(up.idle_since) < self.ttl && still_idle(&up.stream, verify) {
                up.reused = true;
                return Some(up);
            }
        }
        None
    }

    /// Keeps a connection after a fully framed exchange, idle since `now`.
    pub fn checkin(&mut self, mut up: Upstream, now: Instant) {
        let list = self.idle.entry(up.addr).or_default();
        if list.len() < self.max_idle {
            up.idle_since = now;
            list.push(up);
        }
    }

    /// New limits from a reloaded configuration; connections beyond them go at the next sweep or checkout.
    pub fn set_limits(&mut self, max_idle: usize, ttl: Duration) {
        (self.max_idle, self.ttl) = (max_idle, ttl);
    }

    /// Drops every idle connection to an address `keep` refuses.
    pub fn retain(&mut self, keep: impl Fn(&SocketAddr) -> bool) {
        self.idle.retain(|addr, _| keep(addr));
    }

    /// Drops connections the backend closed or that outlived the pool timeout.
    pub fn sweep(&mut self) {
        let now = Instant::now();
        let ttl = self.ttl;
        for list in self.idle.values_mut() {
            list.retain(|up| now.duration_since(up.idle_since) < ttl && still_idle(&up.stream, false));
        }
        self.idle.retain(|_, list| !list.is_empty());
    }
}

/// Whether bytes written on `stream` are still waiting for the peer's TCP acknowledgement. A live host
/// acknowledges within a round trip (plus at most a delayed-ACK interval) whatever its application does, so
/// a request left unacknowledged for longer went to a host that is gone or cut off, and no process there can
/// have read it.
pub fn unacknowledged(stream: std::os::fd::RawFd) -> bool {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it and sets `len`.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        rc == 0 && info.tcpi_unacked > 0
    }
}

/// An idle keep-alive connection must have nothing to read: a FIN, a reset or stray bytes all disqualify it.
///
/// Readiness comes from the reactor, so the common case costs no system call; only a connection the reactor
/// has marked readable is probed with a read. The reactor learns of a FIN only on its next turn, though, so a
/// backend's close can still be unseen: with `verify`, a connection the reactor thinks quiet is asked too
/// (a non-blocking peek). That is for requests that cannot be retried; the others are retried on a fresh
/// connection if the reused one turns out closed.
fn still_idle(stream: &TcpStream, verify: bool) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending if verify => {
            let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            matches!(socket2::SockRef::from(stream).peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
