//! The data plane: listeners, client connections, the upstream pool and forwarding.
//!
//! `run` binds every listener up front (so a bad address fails the start), starts one [`worker`] thread per
//! core, and leaves the main thread to [`control`]: SIGHUP reloads the configuration in place, SIGUSR2 hands
//! the listening sockets to a new binary, SIGTERM/SIGINT stop gracefully (listeners close, in-flight requests
//! finish within the grace period, then the process exits 0).

mod accept;
mod access_log;
mod body;
mod buffers;
mod client;
mod clock;
mod control;
mod exchange;
mod frames;
mod free_list;
mod handover;
#[doc(hidden)]
pub mod harness;
mod idle;
mod listener;
mod refusal;
mod relay;
mod splice;
pub mod tls;
mod transport;
mod tunnel;
mod upstream;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::balance::counters::PerThread;
use crate::balance::timings::Timings;
use crate::balance::{self, Backend, BackendSet, ClusterBackends, Pool, Publisher, SharedBackends};
use crate::cluster::{self, Announce, Role};
use crate::config::ProxyConfig;
use crate::signals::ControlSignals;
pub use client::close_gracefully;
use handover::{Inherited, Kind};

/// A second handle on a control listener, kept for a binary upgrade's handover.
fn try_clone(
    bound: &Option<(SocketAddr, std::net::TcpListener)>,
) -> std::io::Result<Option<(SocketAddr, std::net::TcpListener)>> {
    bound.as_ref().map(|(a, l)| l.try_clone().map(|l| (*a, l))).transpose()
}

/// The frontend's and the backend's names in the access log and the stats, as HAProxy's proxy names: tools
/// written for the lab's HAProxy (`nodes/s1`) find what they expect.
pub const FRONTEND_NAME: &str = "shoal";
pub const BACKEND_NAME: &str = "nodes";

/// State every data-plane thread reads. Only snapshots and relaxed counters live here.
pub struct Shared {
    /// The configuration in effect; each thread keeps a copy of its own, refreshed on `config_changes`.
    pub config: ArcSwap<ProxyConfig>,
    /// Bumped whenever a reloaded configuration is stored.
    pub config_changes: watch::Receiver<u64>,
    pub backends: SharedBackends,
    pub shutdown: watch::Receiver<bool>,
    /// Set by a second stop during the drain: connections still open are closed now, not at `--grace`.
    pub hurry: watch::Receiver<bool>,
    pub log: Option<crate::logging::Sink>,
    /// Diagnostics' sink, for its loss counters.
    pub diagnostics: Option<crate::logging::Sink>,
    /// Client connections open across all threads (`%ac` in the log), and by frontend.
    pub open: accept::OpenConnections,
    /// The plain frontend's counters, one slot per thread.
    pub frontend: PerThread,
    /// The TLS frontend's, counted apart (HAProxy users give HTTPS a frontend of its own).
    pub frontend_tls: PerThread,
    /// What the backend counts of its own: connection errors tied to no server (none left to pick), which
    /// HAProxy adds to the backend's `econ` on top of its servers'.
    pub backend: PerThread,
    /// Latencies of the plain and TLS frontends and of the backend; servers keep their own.
    pub timings: ProxyTimings,
    /// Rates and state changes, sampled once a second for the stats.
    pub history: Arc<crate::admin::history::History>,
    /// When the proxy started, for the stats page.
    pub started: std::time::SystemTime,
    /// Bumped whenever a new backend set is published.
    pub set_changes: watch::Receiver<u64>,
    /// The TLS server configuration (certificates by SNI), when there are TLS listeners.
    pub tls: ArcSwapOption<rustls::ServerConfig>,
    /// Where plain requests are redirected with --redirect-https: the first TLS listener's port (0: none).
    pub https_port: AtomicU16,
    /// What the gossip layer counts (refused packets, members).
    pub gossip: Arc<cluster::GossipStats>,
    /// The cluster as this proxy sees it, for `/members`.
    pub roster: Arc<cluster::Roster>,
    /// Set once a successor process (a binary upgrade) holds the listening sockets: this one then stops
    /// without touching them, since a filter it put on a socket would drop the successor's SYNs as well.
    pub handed_over: AtomicBool,
}

/// Where the frontends' and the backend's latencies are published.
#[derive(Default)]
pub struct ProxyTimings {
    /// The plain frontend's, then the TLS frontend's.
    pub frontends: [Arc<Timings>; 2],
    pub backend: Arc<Timings>,
}

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
    #[error("cannot start: {0}")]
    Start(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("`pid-file`: {0}")]
    PidFile(std::io::Error),
    #[error("the new process (pid {pid}) of the upgrade exited ({status}) while this one finished its requests")]
    SuccessorDied { pid: u32, status: std::process::ExitStatus },
}

/// Loads the certificates and logs what each serves.
fn start_tls(paths: &[PathBuf]) -> Result<Arc<rustls::ServerConfig>, tls::TlsError> {
    let certificates = tls::Certificates::load(paths)?;
    for (path, names) in &certificates.summary {
        tracing::info!("TLS certificate {} for {}", path.display(), names.join(", "));
    }
    tls::server_config(Arc::new(certificates))
}

/// Waits (at most a few seconds) until `n` members are routable: a successor must route to its predecessor's
/// members, health known, before it takes the clients. Static servers do not count: they start as the
/// predecessor's checks left them.
fn wait_for_members(publisher: &parking_lot::Mutex<Publisher>, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while publisher.lock().routable_members().len() < n {
        if std::time::Instant::now() >= deadline {
            tracing::warn!("upgrade: serving before every member of the predecessor was found");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Re-reads the configuration (the file; flags and environment as at start) for a SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<ProxyConfig, String>>;

/// Runs the proxy until SIGTERM/SIGINT, or until a new binary took over after SIGUSR2.
pub fn run(
    config: ProxyConfig,
    reload: Reload,
    pid_file: Option<PathBuf>,
    diagnostics: Option<crate::logging::Sink>,
) -> Result<(), ProxyError> {
    // Read before anything else: a binary upgrade hands the sockets over in the environment.
    let mut inherited = Inherited::from_env();
    let signals = ControlSignals::install().map_err(ProxyError::Start)?;
    // A first start refuses a pid file it cannot write, as HAProxy does. Checked, not written: the file is
    // written once this process serves (a second instance started by mistake, failing to bind, must not
    // take the running one's file, nor remove it as its own).
    if let (Some(path), true) = (&pid_file, inherited.is_empty()) {
        control::PidFile::check(path).map_err(ProxyError::PidFile)?;
    }
    let exe = handover::started_path().map_err(ProxyError::Start)?;
    let tls = match config.tls_listen.is_empty() {
        true => None,
        false => Some(start_tls(&config.tls_certs)?),
    };
    let threads = config.threads;
    let mut groups = Vec::new();
    let mut per_thread: Vec<Vec<listener::Listening>> = (0..threads).map(|_| Vec::new()).collect();
    let wanted = config.listen.iter().map(|a| (*a, false)).chain(config.tls_listen.iter().map(|a| (*a, true)));
    for (addr, tls) in wanted {
        // Shared with a group bound here already, or handed over as the other kind (the file moved it between
        // plain and TLS before the upgrade): this process's own.
        let own = listener::overlaps(&groups, addr) || inherited.holds(&addr.to_string());
        let (group, sockets) =
            listener::bind_group(addr, tls, threads, &mut inherited, own).map_err(ProxyError::Listen)?;
        match tls {
            false => tracing::info!("listening on {}", group.bound),
            true => tracing::info!("accepting TLS on {}", group.bound),
        }
        for (mine, more) in per_thread.iter_mut().zip(sockets) {
            mine.extend(more);
        }
        groups.push(group);
    }
    let https_port = groups.iter().find(|g| g.tls).map_or(0, |g| g.bound.port());
    if config.backends.is_empty() {
        tracing::info!("no static backend: requests are answered 503 until an agent joins by gossip");
    }
    let mut bind_control = |kind, addr: Option<SocketAddr>| -> Result<_, ProxyError> {
        addr.map(|a| listener::bind_single(kind, a, &mut inherited).map(|l| (a, l)))
            .transpose()
            .map_err(ProxyError::Listen)
    };
    let admin = bind_control(Kind::Admin, config.admin)?;
    let runtime_api = bind_control(Kind::RuntimeApi, config.runtime_api)?;
    if let Some(addr) = config.runtime_api.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            "the runtime API on {addr} asks no password and changes routing (set server ... state maint): \
             whoever reaches this address can take servers out; keep it on loopback or a network only operators reach"
        );
    }
    let gossip = inherited.take(Kind::Gossip, &config.cluster.bind.to_string()).pop().map(std::net::UdpSocket::from);
    let handover::Carried { peers, overrides, statics_down } = std::mem::take(&mut inherited.carried);
    if !inherited.is_empty() {
        tracing::warn!("closing handed-over sockets this configuration no longer uses: {:?}", inherited.leftovers());
    }
    let ready = inherited.into_ready();
    let pool = Pool::new(threads);
    let statics: Vec<(Arc<Backend>, u16)> =
        config.backends.iter().map(|b| (Arc::new(Backend::new(b, &pool)), b.weight)).collect();
    let backends = balance::shared(BackendSet::default());
    let (set_changed, set_changes) = watch::channel(0);
    let publisher = Publisher::new(statics, backends.clone(), pool, set_changed);
    publisher.lock().set_slowstart(config.slowstart);
    publisher.lock().adopt_overrides(overrides);
    // Still checked here, they start DOWN as the predecessor's checks left them (unchecked, they would stay).
    if config.backend_check.is_some() {
        let mut publisher = publisher.lock();
        for name in statics_down.iter().filter(|n| config.backends.iter().any(|b| &b.name == *n)) {
            publisher.set_static_health(name, false);
        }
    }
    let checks = config.backend_check.clone();
    balance::health::start(backends.clone(), publisher.clone(), checks, config.timeouts.connect)
        .map_err(ProxyError::Start)?;
    let roster = Arc::new(cluster::Roster::default());
    let cluster = cluster::start(
        &config.cluster,
        Announce { role: Role::Proxy, service: None, weight: 0, checked: false, name: String::new(), tags: Vec::new() },
        Box::new(ClusterBackends(publisher.clone(), roster.clone())),
        cluster::Takeover { socket: gossip, peers: peers.clone() },
    )
    .map_err(ProxyError::Listen)?;
    roster.set_this(&crate::host::name().unwrap_or_else(|| "proxy".into()), cluster.advertised, Role::Proxy);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (hurry_tx, hurry_rx) = watch::channel(false);
    let (config_changed, config_changes) = watch::channel(0);
    let log = match config.access_log {
        true => Some(crate::logging::Sink::start("shoal-log", std::io::stdout()).map_err(ProxyError::Start)?.0),
        false => None,
    };
    let log_flush = log.clone();
    let handed = control::Handed {
        admin: try_clone(&admin).map_err(ProxyError::Start)?,
        runtime_api: try_clone(&runtime_api).map_err(ProxyError::Start)?,
        gossip: (config.cluster.bind, cluster.socket.try_clone().map_err(ProxyError::Start)?),
    };
    let shared = Arc::new(Shared {
        config: ArcSwap::from_pointee(config),
        config_changes,
        backends,
        shutdown: stop_rx,
        hurry: hurry_rx,
        log,
        diagnostics,
        open: Default::default(),
        frontend: PerThread::new(threads),
        frontend_tls: PerThread::new(threads),
        backend: PerThread::new(threads),
        timings: Default::default(),
        history: Default::default(),
        started: std::time::SystemTime::now(),
        set_changes,
        tls: ArcSwapOption::new(tls),
        https_port: AtomicU16::new(https_port),
        gossip: cluster.stats.clone(),
        roster,
        handed_over: AtomicBool::new(false),
    });
    crate::admin::history::start(shared.clone(), shared.history.clone()).map_err(ProxyError::Start)?;
    if let Some((_, admin)) = admin {
        crate::admin::start(admin, shared.clone()).map_err(ProxyError::Start)?;
    }
    if let Some((_, runtime_api)) = runtime_api {
        crate::admin::runtime::start(runtime_api, shared.clone(), publisher.clone()).map_err(ProxyError::Start)?;
    }
    // A successor accepts only once it routes like its predecessor: until then the predecessor keeps
    // accepting on the same sockets, and the clients stay with it.
    let successor = !peers.is_empty();
    let mut waiting = Vec::new();
    let mut workers = Vec::with_capacity(threads);
    let mut commands = Vec::with_capacity(threads);
    for (id, listeners) in per_thread.into_iter().enumerate() {
        let shared = shared.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let now = if successor {
            waiting.push(listeners);
            Vec::new()
        } else {
            listeners
        };
        let handle = std::thread::Builder::new()
            .name(format!("shoal-w{id}"))
            .spawn(move || worker::run(id, shared, now, rx))
            .map_err(ProxyError::Start)?;
        workers.push(handle);
        commands.push(tx);
    }
    if successor {
        wait_for_members(&publisher, peers.len());
        for (tx, listeners) in commands.iter().zip(waiting) {
            for l in listeners {
                let _ = tx.send(worker::Command::Listen(l));
            }
        }
    }
    // The pid file names this process before the predecessor hears it is ready: the predecessor, exiting
    // then, removes the file only while it still names the predecessor.
    let pid_file = control::PidFile::write(pid_file);
    ready.report();

    let gossip = cluster.pauser();
    let mut control = control::Control {
        shared,
        publisher,
        groups,
        commands,
        handed,
        exe,
        reload,
        config_changed,
        signals,
        gossip,
        successor: None,
        pid_file,
        stops: 0,
    };
    control.serve();
    let _ = stop_tx.send(true);
    cluster.leave(std::time::Duration::from_secs(1));
    let outcome = control.drain(workers, &hurry_tx);
    // Bounded: a stuck stdout must not hold the exit.
    if let Some(sink) = log_flush {
        sink.flush(std::time::Duration::from_secs(1));
    }
    outcome?;
    tracing::info!("stopped");
    Ok(())
}
