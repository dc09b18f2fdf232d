//! Bringing ejected servers back. A server is ejected when a connect to it fails or its host stops
//! acknowledging requests; it stays out, on every thread, until a probe connect succeeds here (HAProxy's
//! `check`, reduced to the TCP handshake) or membership says it is back (see `readmit_recovered`). Runs on a
//! thread of its own, away from the data plane and the gossip loop.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::{Backend, SharedBackends};

/// How often ejected servers are probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Starts probing the ejected servers of whatever set is current; each probe may take `limit`.
pub fn start(backends: SharedBackends, limit: Duration) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("shoal-recover".into()).spawn(move || {
        runtime.block_on(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let set = backends.load_full();
                let mut probes = JoinSet::new();
                for backend in set.servers.iter().filter(|b| b.is_ejected()) {
                    probes.spawn(probe(backend.clone(), limit));
                }
                while probes.join_next().await.is_some() {}
            }
        });
    })?;
    Ok(())
}

async fn probe(backend: Arc<Backend>, limit: Duration) {
    let Ok(addr) = backend.address(true).await else { return };
    if let Ok(Ok(_)) = tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        if backend.readmit() {
            tracing::info!("server {} ({addr}) accepts connections again: back in rotation", backend.name());
        }
    }
}
