//! Listening sockets: one per address per thread, grouped with SO_REUSEPORT so the kernel spreads
//! connections across threads without a shared accept queue.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `threads` sockets on each address. A port of 0 is chosen once and shared by the whole group.
/// Returns, per thread, its listeners, plus the bound addresses.
pub fn bind_all(
    addrs: &[SocketAddr],
    threads: usize,
) -> io::Result<(Vec<Vec<std::net::TcpListener>>, Vec<SocketAddr>)> {
    let mut per_thread: Vec<Vec<std::net::TcpListener>> = (0..threads).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in addrs {
        let first = bind_one(addr)?;
        let actual = first.local_addr()?;
        bound.push(actual);
        per_thread[0].push(first);
        for listeners in per_thread.iter_mut().skip(1) {
            listeners.push(bind_one(actual)?);
        }
    }
    Ok((per_thread, bound))
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
