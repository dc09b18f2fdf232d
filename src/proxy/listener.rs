//! Listening sockets: one per address per thread, grouped with SO_REUSEPORT so the kernel spreads
//! connections across threads without a shared accept queue.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// One thread's listening socket and what it accepts.
pub struct Listening {
    pub listener: std::net::TcpListener,
    /// Clients connect with TLS.
    pub tls: bool,
}

/// Every listening socket, by thread, and the addresses they were bound to.
pub struct Bound {
    pub per_thread: Vec<Vec<Listening>>,
    /// Each bound address (the port chosen for a 0) and whether it is TLS, in configuration order.
    pub addrs: Vec<(SocketAddr, bool)>,
}

/// Binds `threads` sockets on each plain and each TLS address. A port of 0 is chosen once and shared by the
/// whole group.
pub fn bind_all(plain: &[SocketAddr], tls: &[SocketAddr], threads: usize) -> io::Result<Bound> {
    let mut per_thread: Vec<Vec<Listening>> = (0..threads).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    let all = plain.iter().map(|a| (*a, false)).chain(tls.iter().map(|a| (*a, true)));
    for (addr, tls) in all {
        let first = bind_one(addr)?;
        let actual = first.local_addr()?;
        addrs.push((actual, tls));
        per_thread[0].push(Listening { listener: first, tls });
        for listeners in per_thread.iter_mut().skip(1) {
            listeners.push(Listening { listener: bind_one(actual)?, tls });
        }
    }
    Ok(Bound { per_thread, addrs })
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Raises the open-file limit to its hard maximum: every proxied connection needs two descriptors.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass, which lives on this stack frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
