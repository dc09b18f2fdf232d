//! Zero-copy forwarding of Content-Length bodies with splice(2): socket -> pipe -> socket, the bytes never
//! copied into user space. Used above a size threshold (`--splice-min`, off by default), where it saves CPU;
//! smaller bodies, chunked bodies and bytes already read into a buffer take the copy path.
//!
//! A pipe may hold data across an await (the destination was not writable), so each transfer borrows its own
//! pipe from a per-thread pool instead of sharing one.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::body::{BodyError, Progress};
use super::free_list::FreeList;

/// Pipe size asked for; the kernel may grant less (its limit is in /proc/sys/fs/pipe-max-size). 1 MiB pipes
/// measured no better for 1 MiB responses (bench/README.md).
const PIPE_SIZE: i32 = 256 << 10;

pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array we pass; on success we own both.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; failure leaves the default size, which we then read back.
        let capacity = unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        Ok(Pipe { read, write, capacity: usize::try_from(capacity).unwrap_or(65_536).max(4096) })
    }
}

/// Idle pipes of one thread.
pub struct Pipes {
    free: FreeList<Pipe>,
}

impl Pipes {
    pub fn new(keep: usize) -> Pipes {
        Pipes { free: FreeList::new(keep) }
    }

    /// A free pipe, or a new one; an error (out of descriptors, say) means the caller copies instead.
    pub fn get(&self) -> io::Result<Pipe> {
        self.free.take().map_or_else(Pipe::new, Ok)
    }

    /// Takes back an empty pipe; one that may still hold bytes is closed instead.
    fn put(&self, pipe: Pipe) {
        self.free.put(pipe);
    }

    /// Closes the pipes unused since the last call (see [`FreeList::trim`]).
    pub fn trim(&self) {
        self.free.trim();
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both are open descriptors owned by live objects for the duration of the call; null offsets
    // mean "current position", which is what sockets and pipes require.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves exactly `len` body bytes from `src` to `dst` through `pipe` (from `pipes`, which takes it back).
///
/// Reading and writing overlap: while `dst` cannot take more, bytes keep coming from `src` into the pipe's
/// free space, and what the pipe holds goes out as soon as `dst` is writable. Only an empty pipe waits for
/// `src` (`src_idle` without a byte is a timeout); a pipe holding bytes waits for `dst` (`dst_idle`).
pub async fn forward_length(
    pipes: &Pipes,
    pipe: Pipe,
    src: &TcpStream,
    dst: &TcpStream,
    len: u64,
    (src_idle, dst_idle): (Duration, Duration),
    progress: Option<&Progress<'_>>,
) -> Result<u64, BodyError> {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    let (pipe_in, pipe_out) = (pipe.write.as_raw_fd(), pipe.read.as_raw_fd());
    let mut unread = len;
    let mut held = 0usize;
    while unread > 0 || held > 0 {
        let mut moved = false;
        if unread > 0 && held < pipe.capacity {
            let want = unread.min((pipe.capacity - held) as u64) as usize;
            // Into an empty pipe, "would block" can only mean `src` has nothing: through tokio, which then
            // waits for its next readiness. Into a pipe holding bytes it may mean the pipe has no free slot
            // (a slot holds one fragment, maybe less than a page), so tokio's readiness is left alone.
            let filled = match held {
                0 => src.try_io(Interest::READABLE, || splice(src_fd, pipe_in, want)),
                _ => splice(src_fd, pipe_in, want),
            };
            match filled {
                Ok(0) => return Err(BodyError::SrcClosed),
                Ok(n) => (unread, held, moved) = (unread - n as u64, held + n, true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(BodyError::SrcRead(e)),
            }
        }
        if held > 0 {
            match dst.try_io(Interest::WRITABLE, || splice(pipe_out, dst_fd, held)) {
                Ok(0) => return Err(BodyError::DstWrite(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    (held, moved) = (held - n, true);
                    if let Some(p) = progress {
                        p.add(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(BodyError::DstWrite(e)),
            }
        }
        if moved {
            // Counted against the task's budget as tokio's own reads and writes are: a fast pair of sockets
            // would otherwise keep this loop going without ever letting the thread's other connections run.
            tokio::task::coop::consume_budget().await;
            continue;
        }
        if held > 0 {
            match timeout(dst_idle, dst.writable()).await {
                Err(_) => return Err(BodyError::DstTimeout),
                Ok(r) => r.map_err(BodyError::DstWrite)?,
            }
        } else {
            match timeout(src_idle, src.readable()).await {
                Err(_) => return Err(BodyError::SrcTimeout),
                Ok(r) => r.map_err(BodyError::SrcRead)?,
            }
        }
    }
    // Only an emptied pipe is reused (an early return above drops one that may still hold bytes).
    pipes.put(pipe);
    Ok(len)
}

/// Copies `src` to `dst` through `pipe` (from `pipes`, which takes it back) until `src` ends (returns `Ok`)
/// or either side fails. No timeout of its own: a tunnel's idle limit covers both directions at once. `moved`
/// is called after every delivery, so the caller can count bytes and note activity.
pub async fn tunnel(
    pipes: &Pipes,
    pipe: Pipe,
    src: &TcpStream,
    dst: &TcpStream,
    mut moved: impl FnMut(usize),
) -> io::Result<()> {
    loop {
        let filled = fill(&pipe, src, pipe.capacity).await?;
        if filled == 0 {
            break;
        }
        drain(&pipe, dst, filled).await?;
        moved(filled);
        tokio::task::coop::consume_budget().await;
    }
    // Only an empty pipe is reused: an error above may have left bytes in it.
    pipes.put(pipe);
    Ok(())
}

/// Splices up to `want` bytes from `src` into the empty `pipe` once `src` is readable; 0 means end of stream.
async fn fill(pipe: &Pipe, src: &TcpStream, want: usize) -> io::Result<usize> {
    let (src_fd, pipe_fd) = (src.as_raw_fd(), pipe.write.as_raw_fd());
    loop {
        match src.try_io(Interest::READABLE, || splice(src_fd, pipe_fd, want)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => src.readable().await?,
            other => return other,
        }
    }
}

/// Splices the `n` bytes in `pipe` to `dst`, waiting for `dst` to be writable as often as needed.
async fn drain(pipe: &Pipe, dst: &TcpStream, mut n: usize) -> io::Result<()> {
    let (pipe_fd, dst_fd) = (pipe.read.as_raw_fd(), dst.as_raw_fd());
    while n > 0 {
        match dst.try_io(Interest::WRITABLE, || splice(pipe_fd, dst_fd, n)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(sent) => n -= sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
