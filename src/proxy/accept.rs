//! Accepting clients: one loop per listening socket on each data-plane thread, plain or TLS, within the
//! thread's share of `--max-connections`. A TLS handshake runs in the new connection's task with its own timeout.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::client;
use super::worker::Worker;

/// Counts a client connection for as long as it lives, however its task ends.
pub struct ConnectionGuard(Rc<Worker>);

impl ConnectionGuard {
    pub fn new(worker: Rc<Worker>) -> ConnectionGuard {
        worker.connections.set(worker.connections.get() + 1);
        worker.shared.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(worker)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let w = &self.0;
        w.connections.set(w.connections.get() - 1);
        w.shared.connections.fetch_sub(1, Ordering::Relaxed);
        w.connection_closed.notify_waiters();
    }
}

pub async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, tls: bool) {
    loop {
        let stop = worker.shutdown_started();
        if worker.is_shutting_down() {
            return;
        }
        if worker.connections.get() >= worker.max_connections() {
            let closed = worker.connection_closed.notified();
            tokio::select! {
                _ = closed => continue,
                _ = stop => return,
            }
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let guard = ConnectionGuard::new(worker.clone());
                let local_port = stream.local_addr().map_or(0, |a| a.port());
                if tls {
                    tokio::task::spawn_local(async move {
                        serve_tls(&guard.0, stream, peer, local_port).await;
                        drop(guard);
                    });
                } else {
                    worker.frontend(false).session();
                    tokio::task::spawn_local(async move {
                        client::serve(&guard.0, stream, peer, local_port).await;
                        drop(guard);
                    });
                }
            }
            Err(e) => {
                // Out of descriptors or memory: back off rather than spin; the queue keeps the clients.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Completes the TLS handshake within its own timeout, then serves the connection. A failed handshake is
/// counted and logged at debug: scanners and broken clients must not fill the log or disturb anyone else.
async fn serve_tls(worker: &Rc<Worker>, stream: TcpStream, peer: SocketAddr, local_port: u16) {
    let Some(config) = worker.shared.tls.load_full() else { return };
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let stop = worker.shutdown_started();
    let outcome = tokio::select! {
        done = tokio::time::timeout(worker.config().timeouts.handshake, handshake) => done,
        _ = stop => return,
    };
    match outcome {
        Ok(Ok(tls)) => {
            worker.frontend(true).session();
            client::serve(worker, tls, peer, local_port).await;
        }
        Ok(Err(e)) => {
            worker.frontend(true).handshake_error();
            tracing::debug!("TLS handshake with {peer} failed: {e}");
        }
        Err(_) => {
            worker.frontend(true).handshake_error();
            tracing::debug!("TLS handshake with {peer} timed out");
        }
    }
}
