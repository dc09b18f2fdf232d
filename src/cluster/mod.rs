//! Gossip membership: foca (SWIM) driven over one UDP socket by one task on its own thread.
//!
//! Every node, proxy or backend agent, runs a [`node::Node`]. Membership changes are handed to a listener
//! as the full list of live members; the proxy turns that into a new backend-set snapshot.

mod events;
mod identity;
mod keys;
mod node;
pub mod roster;
pub mod seal;
mod seeds;
mod state;
mod timers;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

pub use identity::{renews, NodeId, Role, MAX_NAME};
pub use keys::{KeySource, Secret};
pub use roster::Roster;
pub use seal::Refused;
pub use state::{Member, NodeState};

/// What the rest of the program learns from gossip, called on the gossip thread.
pub trait Membership: Send + 'static {
    /// Every live member (this node excluded), after each change of membership or state.
    fn changed(&mut self, members: &[Member]);

    /// A probe of `node` by this node failed: it may be gone (SWIM will say), so work waiting on it that can be
    /// redone elsewhere may as well be.
    fn suspected(&mut self, _node: &NodeId) {}

    /// This node's identity, at the start and whenever it changes (an address corrected, a rejoin).
    fn identity(&mut self, _me: &NodeId) {}

    /// Whether requests to `node` are still in flight here (a proxy acknowledges a drain only once none are).
    fn busy_with(&self, _node: &NodeId) -> bool {
        false
    }
}

/// How a node joins and probes the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub bind: SocketAddr,
    pub advertise: Option<IpAddr>,
    /// `HOST:PORT` of any members, re-resolved on every attempt.
    pub join: Vec<String>,
    /// The cluster keys, or none for gossip in the clear.
    pub keys: KeySource,
    /// Gossip in the clear on a non-loopback address was asked for explicitly.
    pub insecure: bool,
    /// Most members this node tracks; more are ignored (and logged).
    pub max_members: usize,
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub suspect_timeout: Duration,
    /// Shell command run on membership events, as Serf's event handlers.
    pub on_event: Option<String>,
    /// Longest a handler may run before it is killed.
    pub on_event_timeout: Duration,
}

/// What the gossip layer counts, for the admin endpoints.
#[derive(Debug, Default)]
pub struct GossipStats {
    /// Packets that opened and went on to SWIM (sealed gossip only).
    pub accepted: AtomicU64,
    /// Packets refused, by [`Refused::index`].
    pub refused: [AtomicU64; 6],
    /// Live members (this node excluded).
    pub members: AtomicU64,
    /// Members ignored because the member limit was reached.
    pub members_refused: AtomicU64,
    /// Times this node was declared down and rejoined under a new generation.
    pub rejoins: AtomicU64,
}

/// A running gossip node.
pub struct Cluster {
    /// The address other members know this node by.
    pub advertised: SocketAddr,
    pub stats: Arc<GossipStats>,
    /// A copy of the gossip socket, to hand to a new process on a binary upgrade.
    pub socket: std::net::UdpSocket,
    commands: mpsc::UnboundedSender<node::Command>,
    thread: Option<JoinHandle<()>>,
}

/// What this node says about itself.
pub struct Announce {
    pub role: Role,
    pub service: Option<SocketAddr>,
    pub weight: u16,
    /// The service is health-checked: no traffic before the first passing check.
    pub checked: bool,
    pub name: String,
    pub tags: Vec<(String, String)>,
}

/// What a proxy started by a binary upgrade takes over from its predecessor: the gossip socket, and the
/// members it knew, announced to at once so the new process routes to them without waiting to be found.
#[derive(Default)]
pub struct Takeover {
    pub socket: Option<std::net::UdpSocket>,
    pub peers: Vec<SocketAddr>,
}

/// Binds the gossip socket (so a bad address fails the start), or takes the one handed over, and runs the
/// node on its own thread.
pub fn start(
    config: &ClusterConfig,
    me: Announce,
    membership: Box<dyn Membership>,
    takeover: Takeover,
) -> io::Result<Cluster> {
    let Takeover { socket, peers } = takeover;
    let socket = match socket {
        Some(s) => s,
        None => std::net::UdpSocket::bind(config.bind)
            .map_err(|e| io::Error::new(e.kind(), format!("gossip bind {}: {e}", config.bind)))?,
    };
    let handle = socket.try_clone()?;
    socket.set_nonblocking(true)?;
    let bound = socket.local_addr()?;
    let ip = match (config.advertise, bound.ip()) {
        (Some(ip), _) => ip,
        (None, ip) if ip.is_unspecified() => crate::host::first_ipv4().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        (None, ip) => ip,
    };
    let advertised = SocketAddr::new(ip, bound.port());
    let service = me.service.map(|s| if s.ip().is_unspecified() { SocketAddr::new(ip, s.port()) } else { s });
    let name = if me.name.is_empty() { advertised.to_string() } else { me.name };
    let id = NodeId::new(advertised, me.role, service, me.weight, me.checked, &name);
    // Guessed from the interfaces: the first route to a seed will tell better (see `Node::adopt_route`).
    let guessed = config.advertise.is_none() && bound.ip().is_unspecified() && !config.join.is_empty();
    let service_follows = me.service.is_some_and(|s| s.ip().is_unspecified());
    let state = NodeState { healthy: !me.checked, weight: me.weight, tags: me.tags, ..NodeState::default() };
    let keyring = config.keys.load().map_err(io::Error::other)?;
    tracing::info!("gossip on {bound}, advertised as {advertised}");
    let sealer = match keyring {
        Some(keyring) => {
            tracing::info!("gossip sealed: sealing with key {}, opening with {:?}", keyring.ids()[0], keyring.ids());
            Some(seal::Sealer::new(keyring)?)
        }
        None if bound.ip().is_loopback() => None,
        None => {
            tracing::warn!(
                "gossip in the clear on {bound} (--gossip-insecure): any host that reaches it can add itself as a \
                 backend"
            );
            None
        }
    };
    let stats = Arc::new(GossipStats::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let hook = config.on_event.clone().map(|cmd| events::EventHook::start(cmd, config.on_event_timeout)).transpose()?;
    let config = config.clone();
    let node_stats = stats.clone();
    let thread = std::thread::Builder::new().name("shoal-gossip".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tracing::error!("gossip runtime: {e}"),
        };
        runtime.block_on(async move {
            match tokio::net::UdpSocket::from_std(socket) {
                Ok(socket) => {
                    let advertise = node::Advertise { guessed, service_follows };
                    let parts = node::Parts {
                        me: id,
                        advertise,
                        state,
                        socket,
                        sealer,
                        membership,
                        hook,
                        stats: node_stats,
                        peers,
                    };
                    node::Node::new(&config, parts).run(rx).await
                }
                Err(e) => tracing::error!("gossip socket: {e}"),
            }
        });
        // A seed's lookup may still hang in the blocking pool (a silent DNS server): leaving must not wait for it.
        runtime.shutdown_background();
    })?;
    Ok(Cluster { advertised, stats, socket: handle, commands: tx, thread: Some(thread) })
}

impl Cluster {
    /// Publishes a new state (health, weight, tags) for this node.
    pub fn set_state(&self, state: NodeState) {
        let _ = self.commands.send(node::Command::SetState(state));
    }

    /// Announces draining; the answer comes once every live proxy has acknowledged (true) or after `within`.
    pub fn drain(&self, within: Duration) -> oneshot::Receiver<bool> {
        let (done, answer) = oneshot::channel();
        let _ = self.commands.send(node::Command::Drain(within, done));
        answer
    }

    /// A handle that pauses and resumes this node's gossip, for a binary upgrade.
    pub fn pauser(&self) -> Pauser {
        Pauser(self.commands.clone())
    }

    /// Tells the cluster this node leaves, and waits (bounded) until the message is sent.
    pub fn leave(mut self, within: Duration) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(node::Command::Leave(done)).is_ok() {
            let deadline = std::time::Instant::now() + within;
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build();
            if let Ok(rt) = rt {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let _ = rt.block_on(async { tokio::time::timeout(left, wait).await });
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pauses a node's gossip while a successor, started with its socket, takes over: two processes reading one
/// socket would each take datagrams meant for the other.
#[derive(Clone)]
pub struct Pauser(mpsc::UnboundedSender<node::Command>);

impl Pauser {
    /// Stops reading and sending; true once the node has (within `within`).
    pub fn pause(&self, within: Duration) -> bool {
        let (done, paused) = std::sync::mpsc::channel();
        self.0.send(node::Command::Pause(done)).is_ok() && paused.recv_timeout(within).is_ok()
    }

    /// Gossips again, under a new identity (the successor failed).
    pub fn resume(&self) {
        let _ = self.0.send(node::Command::Resume);
    }
}

/// Wall-clock milliseconds, as sealed packets carry them.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
