//! Listening sockets: one per address per thread, grouped with SO_REUSEPORT so the kernel spreads
//! connections across threads without a shared accept queue.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::handover::{Inherited, Kind};

/// One thread's listening socket and what it accepts.
pub struct Listening {
    pub listener: std::net::TcpListener,
    /// Clients connect with TLS.
    pub tls: bool,
}

/// The sockets of one configured address, as the main thread keeps them: to stop a reload's removed
/// listener, or to hand them all to a new process.
pub struct Group {
    /// As configured (a port of 0 stays 0: a reload or an upgrade finds the group under the same text).
    pub configured: SocketAddr,
    pub tls: bool,
    /// Where the sockets are bound.
    pub bound: SocketAddr,
    /// The main thread's copies of the sockets the threads accept on.
    pub sockets: Vec<std::net::TcpListener>,
}

/// Binds the sockets of one address, one per thread (SO_REUSEPORT groups them, a port of 0 is chosen once), or
/// takes those a previous process handed over. Returns the group and what each thread accepts on. Unless
/// `own` (this process listens there already: a reload moving an address between plain and TLS), another
/// process's listener on the address is refused rather than joined.
pub fn bind_group(
    configured: SocketAddr,
    tls: bool,
    threads: usize,
    inherited: &mut Inherited,
    own: bool,
) -> io::Result<(Group, Vec<Vec<Listening>>)> {
    let kind = if tls { Kind::Tls } else { Kind::Plain };
    let mut sockets: Vec<std::net::TcpListener> =
        inherited.take(kind, &configured.to_string()).into_iter().map(std::net::TcpListener::from).collect();
    for s in &sockets {
        s.set_nonblocking(true)?;
    }
    if sockets.is_empty() {
        if !own && configured.port() != 0 {
            refuse_if_taken(configured)?;
        }
        sockets.push(bind_one(configured)?);
    }
    let bound = sockets[0].local_addr()?;
    while sockets.len() < threads {
        sockets.push(bind_one(bound)?);
    }
    let mut per_thread: Vec<Vec<Listening>> = (0..threads).map(|_| Vec::new()).collect();
    let mut copies = Vec::with_capacity(sockets.len());
    // Every socket is accepted on, even beyond one per thread: a handed-over socket may hold queued clients.
    for (i, listener) in sockets.into_iter().enumerate() {
        copies.push(listener.try_clone()?);
        per_thread[i % threads].push(Listening { listener, tls });
    }
    Ok((Group { configured, tls, bound, sockets: copies }, per_thread))
}

/// A plain listener (admin, runtime API), or the one a previous process handed over.
pub fn bind_single(kind: Kind, addr: SocketAddr, inherited: &mut Inherited) -> io::Result<std::net::TcpListener> {
    match inherited.take(kind, &addr.to_string()).pop() {
        Some(fd) => Ok(std::net::TcpListener::from(fd)),
        None => std::net::TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}"))),
    }
}

/// Whether one of `groups` listens where `addr` would: the same port, and the same address or a wildcard on
/// either side (`0.0.0.0:80` and `[::]:80` meet on a dual-stack host). Such an address is this process's
/// own to share, not another process's.
pub fn overlaps(groups: &[Group], addr: SocketAddr) -> bool {
    groups.iter().any(|g| {
        [g.configured, g.bound].iter().any(|at| {
            at.port() == addr.port() && (at.ip() == addr.ip() || at.ip().is_unspecified() || addr.ip().is_unspecified())
        })
    })
}

/// SO_REUSEPORT lets any process of the same user join a listening group and take its share of the
/// connections: a second proxy started by mistake would serve half the clients under its own configuration,
/// and reset those queued on its sockets when it stops. A socket without it cannot bind beside a listener
/// (SO_REUSEADDR lets it past connections in TIME_WAIT only), so it tells whether one is there.
fn refuse_if_taken(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            e.kind(),
            format!(
                "bind {addr}: {e}: another process listens there (a shoal already running? `kill -USR2` replaces \
                 one without refusing a connection)"
            ),
        )),
        _ => Ok(()),
    }
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    socket.listen(4096).map_err(|e| io::Error::new(e.kind(), format!("listen on {addr}: {e}")))?;
    Ok(socket.into())
}
