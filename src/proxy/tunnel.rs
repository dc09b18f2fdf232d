//! Byte tunnel after a 101 Switching Protocols: both directions copied, each half-closed on its own EOF, the
//! whole tunnel ended after `idle` without traffic either way. Returns the bytes sent to the client.

use std::cell::Cell;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

pub async fn run(
    client: &mut TcpStream,
    client_buf: &mut BytesMut,
    server: &mut TcpStream,
    server_buf: &mut BytesMut,
    idle: Duration,
) -> u64 {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let last = Cell::new(Instant::now());
    let to_server = Cell::new(0u64);
    let to_client = Cell::new(0u64);
    let pumps = async {
        tokio::join!(
            pump(&mut cr, client_buf, &mut sw, &last, &to_server),
            pump(&mut sr, server_buf, &mut cw, &last, &to_client)
        )
    };
    let watchdog = async {
        loop {
            let deadline = last.get() + idle;
            sleep_until(deadline).await;
            if last.get() + idle <= Instant::now() {
                return;
            }
        }
    };
    tokio::select! {
        _ = pumps => {}
        _ = watchdog => {}
    }
    to_client.get()
}

/// Copies until EOF or error, then half-closes the destination so the peer sees the EOF too.
async fn pump<R, W>(src: &mut R, buf: &mut BytesMut, dst: &mut W, last: &Cell<Instant>, moved: &Cell<u64>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if !buf.is_empty() {
            if dst.write_all(buf).await.is_err() {
                return;
            }
            moved.set(moved.get() + buf.len() as u64);
            buf.clear();
            last.set(Instant::now());
        }
        buf.reserve(16 * 1024);
        match src.read_buf(buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = dst.shutdown().await;
}
