//! A member's identity as foca gossips it: small, fixed, and ordered by generation so a restart on the same
//! address replaces the old one.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest node name carried in the identity.
pub const MAX_NAME: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A load balancer: routes to backends, receives no traffic from the cluster.
    Proxy,
    /// A web node: its advertised service receives requests.
    Backend,
}

impl Role {
    /// The Serf tag value the lab's handlers expect.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Proxy => "balancer",
            Role::Backend => "backend",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Where the node gossips (its foca address).
    pub gossip: SocketAddr,
    pub role: Role,
    /// Where a backend serves HTTP; `None` for a proxy.
    pub service: Option<SocketAddr>,
    pub weight: u16,
    /// The node health-checks its service: route to it only once it has said it is healthy.
    pub checked: bool,
    /// Wall-clock milliseconds at start: strictly increasing across restarts on one address.
    pub generation: u64,
    pub name: String,
}

impl NodeId {
    pub fn new(
        gossip: SocketAddr,
        role: Role,
        service: Option<SocketAddr>,
        weight: u16,
        checked: bool,
        name: &str,
    ) -> NodeId {
        let generation = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
        let mut name = name.to_string();
        while name.len() > MAX_NAME {
            name.pop();
        }
        NodeId { gossip, role, service, weight, checked, generation, name }
    }

    /// A stand-in for a seed known only by its gossip address: foca accepts an announce when the address
    /// matches, whatever the rest says.
    pub fn seed(gossip: SocketAddr) -> NodeId {
        NodeId {
            gossip,
            role: Role::Proxy,
            service: None,
            weight: 0,
            checked: false,
            generation: 0,
            name: String::new(),
        }
    }
}

/// A rejoin (`renew`) adds one to the generation; a new process takes the clock's milliseconds at its start,
/// later than its predecessor's start by that process's whole life (13 ms at the least, seen in tests that
/// restart an agent at once).
const RENEWALS_APART: u64 = 2;

/// How far past an identity the cluster holds at its address a new process starts when its own generation
/// is not later (its clock stepped back): beyond a renewal's reach, so it is not taken for its predecessor.
pub const RESTART_LEAP: u64 = RENEWALS_APART + 1;

/// Whether `new` is `old`'s process under a later identity (a rejoin, seen whole or after one missed), rather
/// than a new process on the same address: everything but the generation is the same, and that is one or two
/// above.
pub fn renews(old: &NodeId, new: &NodeId) -> bool {
    let later = new.generation.checked_sub(old.generation).is_some_and(|d| (1..=RENEWALS_APART).contains(&d));
    later && NodeId { generation: old.generation, ..new.clone() } == *old
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    /// After being declared down, rejoin as a newer generation of the same node.
    fn renew(&self) -> Option<Self> {
        Some(NodeId { generation: self.generation.saturating_add(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, other: &Self) -> bool {
        self.generation > other.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn newer_generation_wins_and_names_are_bounded() {
        let addr: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let a = NodeId::new(addr, Role::Backend, None, 100, false, &"n".repeat(50));
        assert_eq!(a.name.len(), MAX_NAME);
        let b = a.renew().unwrap();
        assert!(b.win_addr_conflict(&a) && !a.win_addr_conflict(&b));
        assert_eq!(b.addr(), a.addr());
    }

    #[test]
    fn a_rejoin_renews_and_a_new_process_does_not() {
        let addr: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let a = NodeId::new(addr, Role::Backend, Some("10.0.0.1:80".parse().unwrap()), 100, true, "web-1");
        let b = a.renew().unwrap();
        assert!(renews(&a, &b) && renews(&a, &b.renew().unwrap()) && !renews(&b, &a));
        let restarted = NodeId { generation: a.generation + 13, ..a.clone() };
        assert!(!renews(&a, &restarted), "a new process, 13 ms later");
        let moved = NodeId { service: Some("10.0.0.1:81".parse().unwrap()), ..b.clone() };
        assert!(!renews(&a, &moved), "another service: another process");
    }
}
