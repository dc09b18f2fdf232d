//! The data plane: listeners, client connections, the upstream pool and forwarding.
//!
//! `run` binds every listener up front (so a bad address fails the start), starts one [`worker`] thread per
//! core, and turns SIGTERM/SIGINT into a graceful stop: listeners close, in-flight requests finish within
//! the grace period, then the process exits 0.

mod access_log;
mod body;
mod buffers;
mod client;
mod exchange;
mod listener;
mod refusal;
mod relay;
mod splice;
pub mod tls;
mod transport;
mod tunnel;
mod upstream;
mod worker;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::watch;

use crate::balance::counters::PerThread;
use crate::balance::{self, Backend, BackendSet, ClusterBackends, Publisher, SharedBackends};
use crate::cluster::{self, Announce, Role};
use crate::config::ProxyConfig;
use crate::signals::BlockingStop;

/// The frontend's and the backend's names in the access log and the stats, as HAProxy's proxy names: tools
/// written for the lab's HAProxy (`nodes/s1`) find what they expect.
pub const FRONTEND_NAME: &str = "shoal";
pub const BACKEND_NAME: &str = "nodes";

/// State every data-plane thread reads. Only snapshots and relaxed counters live here.
pub struct Shared {
    pub config: ProxyConfig,
    pub backends: SharedBackends,
    pub shutdown: watch::Receiver<bool>,
    pub log: Option<access_log::Sink>,
    /// Client connections open across all threads (`%ac` in the log).
    pub connections: AtomicUsize,
    /// The plain frontend's counters, one slot per thread.
    pub frontend: PerThread,
    /// The TLS frontend's, counted apart (HAProxy users give HTTPS a frontend of its own).
    pub frontend_tls: PerThread,
    /// When the proxy started, for the stats page.
    pub started: std::time::SystemTime,
    /// Bumped whenever a new backend set is published.
    pub set_changes: watch::Receiver<u64>,
    /// The TLS server configuration (certificates by SNI), when there are TLS listeners.
    pub tls: Option<arc_swap::ArcSwap<rustls::ServerConfig>>,
    /// Where plain requests are redirected with --redirect-https: the first TLS listener's port.
    pub https_port: Option<u16>,
    /// What the gossip layer counts (refused packets, members).
    pub gossip: Arc<cluster::GossipStats>,
}

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
    #[error("cannot start: {0}")]
    Start(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Loads the certificates and logs what each serves.
fn start_tls(paths: &[std::path::PathBuf]) -> Result<Arc<rustls::ServerConfig>, ProxyError> {
    let certificates = tls::Certificates::load(paths)?;
    for (path, names) in &certificates.summary {
        tracing::info!("TLS certificate {} for {}", path.display(), names.join(", "));
    }
    Ok(tls::server_config(Arc::new(certificates))?)
}

pub fn run(config: ProxyConfig) -> Result<(), ProxyError> {
    let stop = BlockingStop::install().map_err(ProxyError::Start)?;
    listener::raise_fd_limit();
    let tls = match config.tls_listen.is_empty() {
        true => None,
        false => Some(start_tls(&config.tls_certs)?),
    };
    let listener::Bound { per_thread, addrs: bound } =
        listener::bind_all(&config.listen, &config.tls_listen, config.threads).map_err(ProxyError::Listen)?;
    for (addr, tls) in &bound {
        match tls {
            false => tracing::info!("listening on {addr}"),
            true => tracing::info!("accepting TLS on {addr}"),
        }
    }
    let https_port = bound.iter().find(|(_, tls)| *tls).map(|(a, _)| a.port());
    if config.backends.is_empty() {
        tracing::info!("no static backend: requests are answered 503 until an agent joins by gossip");
    }
    let admin = std::net::TcpListener::bind(config.admin).map_err(ProxyError::Listen)?;
    let runtime_api = std::net::TcpListener::bind(config.runtime_api).map_err(ProxyError::Listen)?;
    let threads = config.threads;
    let statics: Vec<Arc<Backend>> = config.backends.iter().map(|b| Arc::new(Backend::new(b, threads))).collect();
    let backends = balance::shared(BackendSet::default());
    let (set_changed, set_changes) = watch::channel(0);
    let publisher = Publisher::new(statics, backends.clone(), threads, set_changed);
    balance::recovery::start(backends.clone(), config.timeouts.connect).map_err(ProxyError::Start)?;
    let cluster = cluster::start(
        &config.cluster,
        Announce { role: Role::Proxy, service: None, weight: 0, checked: false, name: String::new(), tags: Vec::new() },
        Box::new(ClusterBackends(publisher.clone())),
    )
    .map_err(ProxyError::Listen)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (log, log_thread) = if config.access_log {
        let (sink, handle) = access_log::Sink::start().map_err(ProxyError::Start)?;
        (Some(sink), Some(handle))
    } else {
        (None, None)
    };
    let shared = Arc::new(Shared {
        config,
        backends,
        shutdown: stop_rx,
        log,
        connections: AtomicUsize::new(0),
        frontend: PerThread::new(threads),
        frontend_tls: PerThread::new(threads),
        started: std::time::SystemTime::now(),
        set_changes,
        tls: tls.map(arc_swap::ArcSwap::new),
        https_port,
        gossip: cluster.stats.clone(),
    });
    crate::admin::start(admin, shared.clone()).map_err(ProxyError::Start)?;
    crate::admin::runtime::start(runtime_api, shared.clone(), publisher).map_err(ProxyError::Start)?;
    let mut workers = Vec::with_capacity(threads);
    for (id, listeners) in per_thread.into_iter().enumerate() {
        let shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("shoal-w{id}"))
            .spawn(move || worker::run(id, shared, listeners))
            .map_err(ProxyError::Start)?;
        workers.push(handle);
    }
    drop(shared);

    stop.wait();
    tracing::info!("stopping: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    cluster.leave(std::time::Duration::from_secs(1));
    for w in workers {
        let _ = w.join();
    }
    if let Some(handle) = log_thread {
        let _ = handle.join();
    }
    tracing::info!("stopped");
    Ok(())
}
