//! Byte tunnel after a 101 Switching Protocols: both directions copied, each half-closed on its own EOF, the
//! whole tunnel ended after `idle` without traffic either way. Returns the bytes sent each way and whether
//! the idle timeout ended it.
//!
//! A direction that has carried `splice_min` bytes (when that is not 0) switches from copying through its
//! buffer to splice(2): a tunnel that turns out to be bulk traffic stops paying for two copies per byte.

use std::cell::Cell;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use super::splice::{self, Pipes};
use super::transport::{RawTcp, Transport};

/// How the tunnel moves bytes: the per-thread pipes, and after how many bytes a direction starts splicing.
pub struct Splicing<'a> {
    pub pipes: &'a Pipes,
    pub min: u64,
}

/// What a tunnel moved, and how it ended.
pub struct Tunneled {
    pub to_client: u64,
    pub to_server: u64,
    /// Ended by `--timeout-tunnel`, not by the peers: HAProxy's `cD` (a client timeout in the data phase).
    pub idled_out: bool,
}

pub async fn run<T: Transport>(
    client: &mut T,
    client_buf: &mut BytesMut,
    server: &mut TcpStream,
    server_buf: &mut BytesMut,
    idle: Duration,
    splicing: Splicing<'_>,
) -> Tunneled {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let activity = Activity { last: Cell::new(Instant::now()) };
    let to_server = Cell::new(0u64);
    let to_client = Cell::new(0u64);
    let pumps = async {
        tokio::join!(
            pump(&mut cr, client_buf, &mut sw, &activity, &to_server, &splicing),
            pump(&mut sr, server_buf, &mut cw, &activity, &to_client, &splicing)
        )
    };
    let watchdog = async {
        loop {
            let deadline = activity.last.get() + idle;
            sleep_until(deadline).await;
            if activity.last.get() + idle <= Instant::now() {
                return;
            }
        }
    };
    let idled_out = tokio::select! {
        _ = pumps => false,
        _ = watchdog => true,
    };
    Tunneled { to_client: to_client.get(), to_server: to_server.get(), idled_out }
}

/// When either direction last moved bytes.
struct Activity {
    last: Cell<Instant>,
}

impl Activity {
    fn moved(&self, moved: &Cell<u64>, n: usize) {
        moved.set(moved.get() + n as u64);
        self.last.set(Instant::now());
    }
}

/// Copies until EOF or error, then half-closes the destination so the peer sees the EOF too. Splices only
/// between raw TCP sockets (not through TLS).
async fn pump<R: AsyncRead + Unpin + RawTcp, W: AsyncWrite + Unpin + RawTcp>(
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    activity: &Activity,
    moved: &Cell<u64>,
    splicing: &Splicing<'_>,
) {
    loop {
        if !buf.is_empty() {
            if dst.write_all(buf).await.is_err() {
                return;
            }
            // Through TLS, what the layer still holds goes out now, not with the next message the other way.
            if dst.raw_tcp().is_none() && dst.flush().await.is_err() {
                return;
            }
            activity.moved(moved, buf.len());
            buf.clear();
        }
        if let (true, Some(from), Some(to)) =
            (splicing.min > 0 && moved.get() >= splicing.min, src.raw_tcp(), dst.raw_tcp())
        {
            // Without a pipe (no descriptor left for one, say) this direction goes on copying.
            if let Ok(pipe) = splicing.pipes.get() {
                let spliced = splice::tunnel(splicing.pipes, pipe, from, to, |n| activity.moved(moved, n));
                // Either way the destination learns that nothing more comes this way.
                let _ = spliced.await;
                break;
            }
        }
        buf.reserve(16 * 1024);
        match src.read_buf(buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = dst.shutdown().await;
}
