//! Gossip membership: foca (SWIM) driven over one UDP socket by one task on its own thread.
//!
//! Every node, proxy or backend agent, runs a [`node::Node`]. Membership changes are handed to a listener
//! as the full list of live members; the proxy turns that into a new backend-set snapshot.

mod auth;
mod events;
mod identity;
mod node;
mod state;
mod timers;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use identity::{NodeId, Role};
pub use state::{Member, NodeState};

/// What the rest of the program learns from gossip, called on the gossip thread.
pub trait Membership: Send + 'static {
    /// Every live member (this node excluded), after each change of membership or state.
    fn changed(&mut self, members: &[Member]);

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
    pub key: Option<String>,
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub suspect_timeout: Duration,
    /// Shell command run on membership events, as Serf's event handlers.
    pub on_event: Option<String>,
}

/// A running gossip node.
pub struct Cluster {
    /// The address other members know this node by.
    pub advertised: SocketAddr,
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

/// Binds the gossip socket (so a bad address fails the start) and runs the node on its own thread.
pub fn start(config: &ClusterConfig, me: Announce, membership: Box<dyn Membership>) -> io::Result<Cluster> {
    let socket = std::net::UdpSocket::bind(config.bind)
        .map_err(|e| io::Error::new(e.kind(), format!("gossip bind {}: {e}", config.bind)))?;
    socket.set_nonblocking(true)?;
    let bound = socket.local_addr()?;
    let ip = match (config.advertise, bound.ip()) {
        (Some(ip), _) => ip,
        (None, ip) if ip.is_unspecified() => first_non_loopback().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        (None, ip) => ip,
    };
    let advertised = SocketAddr::new(ip, bound.port());
    let service = me.service.map(|s| if s.ip().is_unspecified() { SocketAddr::new(ip, s.port()) } else { s });
    let name = if me.name.is_empty() { advertised.to_string() } else { me.name };
    let id = NodeId::new(advertised, me.role, service, me.weight, me.checked, &name);
    let state = NodeState { healthy: !me.checked, draining: false, weight: me.weight, tags: me.tags };
    let auth_open = config.key.is_none();
    tracing::info!("gossip on {bound}, advertised as {advertised}");
    if auth_open {
        tracing::warn!("no cluster key: gossip is unauthenticated (set --cluster-key or SHOAL_CLUSTER_KEY)");
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let hook = config.on_event.clone().map(events::EventHook::start).transpose()?;
    let config = config.clone();
    let thread = std::thread::Builder::new().name("shoal-gossip".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tracing::error!("gossip runtime: {e}"),
        };
        runtime.block_on(async move {
            match tokio::net::UdpSocket::from_std(socket) {
                Ok(socket) => node::Node::new(&config, id, state, socket, membership, hook).run(rx).await,
                Err(e) => tracing::error!("gossip socket: {e}"),
            }
        });
    })?;
    Ok(Cluster { advertised, commands: tx, thread: Some(thread) })
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

/// The first IPv4 address of an interface that is up and not loopback, as Serf advertises by default.
fn first_non_loopback() -> Option<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we only read, then free with freeifaddrs exactly once.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return None;
        }
        let mut found = None;
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            let up = ifa.ifa_flags & (libc::IFF_UP as u32) != 0;
            let loopback = ifa.ifa_flags & (libc::IFF_LOOPBACK as u32) != 0;
            if up && !loopback && !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                found = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                break;
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
        found
    }
}
