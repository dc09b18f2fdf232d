//! Changing member metadata (health, draining, weight, tags) and drain acknowledgements, carried as foca
//! custom broadcasts. Each update is versioned per node and generation, so a newer one replaces an older one
//! everywhere and a stale copy is never re-sent.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::identity::NodeId;

/// What a node says about itself beyond its identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The agent's health check passes (always true without one).
    pub healthy: bool,
    /// The node is leaving: send it no new requests.
    pub draining: bool,
    pub weight: u16,
    pub tags: Vec<(String, String)>,
    /// The node's own agent check said `maint`: out of rotation, shown as MAINT.
    pub maint: bool,
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState { healthy: true, draining: false, weight: 100, tags: Vec::new(), maint: false }
    }
}

/// A live member and its latest state, if it has announced one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub state: Option<NodeState>,
}

impl Member {
    /// A backend receives new requests only while healthy and not draining; a health-checked one only once a
    /// state broadcast has said it is healthy.
    pub fn is_routable(&self) -> bool {
        match &self.state {
            Some(s) => s.healthy && !s.draining && !s.maint,
            None => !self.id.checked,
        }
    }

    pub fn is_maint(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.maint)
    }

    pub fn is_draining(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.draining)
    }

    pub fn weight(&self) -> u16 {
        self.state.as_ref().map_or(self.id.weight, |s| s.weight)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Broadcast {
    State {
        node: SocketAddr,
        generation: u64,
        version: u64,
        state: NodeState,
    },
    /// `proxy` has stopped routing to `node` (as of `version`) and has nothing in flight to it.
    DrainAck {
        proxy: SocketAddr,
        node: SocketAddr,
        generation: u64,
        version: u64,
    },
}

/// Identifies a broadcast for foca's dissemination backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    kind: u8,
    from: SocketAddr,
    about: SocketAddr,
    order: (u64, u64),
}

impl foca::Invalidates for Key {
    fn invalidates(&self, other: &Self) -> bool {
        self.kind == other.kind && self.from == other.from && self.about == other.about && self.order >= other.order
    }
}

#[derive(Debug, Error)]
#[error("undecodable custom broadcast")]
pub struct BadBroadcast;

/// The latest state a node announced.
#[derive(Debug, Clone)]
pub struct Entry {
    pub generation: u64,
    pub version: u64,
    pub state: NodeState,
    touched: Instant,
}

/// Entries about nodes that are not members are kept this long (a state may arrive before its member-up),
/// then pruned.
const KEEP_STRANGERS: Duration = Duration::from_secs(60);

/// Everything learnt from broadcasts, shared between foca's handler and the node task (same thread).
#[derive(Default)]
pub struct Table {
    /// node -> its latest state
    states: HashMap<SocketAddr, Entry>,
    /// (proxy, node) -> (generation, version) acknowledged, and when
    acks: HashMap<(SocketAddr, SocketAddr), (u64, u64, Instant)>,
    /// Set when something new arrived; the node clears it after telling its listener.
    pub changed: bool,
    /// Set by the node while it hands foca a repeat of what it said before (foca passes its own broadcasts
    /// through this table too): one equal to what the table holds is let through instead of dropped.
    pub repeating: bool,
}

impl Table {
    /// The entry of `id`'s current generation.
    pub fn current(&self, id: &NodeId) -> Option<&Entry> {
        self.states.get(&id.gossip).filter(|e| e.generation == id.generation)
    }

    /// `new`, a rejoin of `old`'s process (see `identity::renews`), is taken to be in `old`'s state until it
    /// says otherwise: held as version 0 of its generation, below anything it broadcasts.
    pub fn inherit(&mut self, old: &NodeId, new: &NodeId) {
        let Some(entry) = self.states.get_mut(&old.gossip) else { return };
        if entry.generation == old.generation {
            entry.generation = new.generation;
            entry.version = 0;
            self.changed = true;
        }
    }

    /// The known state of `id`'s current generation.
    pub fn state_of(&self, id: &NodeId) -> Option<&NodeState> {
        self.current(id).map(|e| &e.state)
    }

    /// Whether `proxy` acknowledged draining `node` at `version` or later.
    pub fn acked(&self, proxy: SocketAddr, node: &NodeId, version: u64) -> bool {
        self.acks.get(&(proxy, node.gossip)).is_some_and(|&(g, v, _)| g == node.generation && v >= version)
    }

    /// Drops what is known about nodes that are not members (`known` says which are) once it is old, and
    /// keeps the table within a multiple of the member limit whatever the age.
    pub fn prune(&mut self, known: impl Fn(&SocketAddr) -> bool, max_members: usize) {
        let now = Instant::now();
        let fresh = |t: Instant| now.duration_since(t) < KEEP_STRANGERS;
        self.states.retain(|addr, e| known(addr) || fresh(e.touched));
        self.acks.retain(|(proxy, node), a| (known(proxy) && known(node)) || fresh(a.2));
        let cap = max_members.saturating_mul(2).max(16);
        if self.states.len() > cap {
            self.states.retain(|addr, _| known(addr));
        }
        if self.acks.len() > cap {
            self.acks.retain(|(proxy, node), _| known(proxy) && known(node));
        }
    }

    /// Whether an update of `order` over the `held` one is news (`Some(true)`: recorded and marked changed),
    /// this node's own repeat of what is held (`Some(false)`: passed on, nothing recorded) or stale (`None`).
    fn take(&mut self, held: Option<(u64, u64)>, order: (u64, u64)) -> Option<bool> {
        match held {
            Some(held) if self.repeating && held == order => Some(false),
            Some(held) if order <= held => None,
            _ => {
                self.changed = true;
                Some(true)
            }
        }
    }

    fn apply(&mut self, b: Broadcast) -> Option<Key> {
        let now = Instant::now();
        match b {
            Broadcast::State { node, generation, version, state } => {
                let order = (generation, version);
                let key = Key { kind: 0, from: node, about: node, order };
                if !self.take(self.states.get(&node).map(|e| (e.generation, e.version)), order)? {
                    return Some(key);
                }
                self.states.insert(node, Entry { generation, version, state, touched: now });
                Some(key)
            }
            Broadcast::DrainAck { proxy, node, generation, version } => {
                let order = (generation, version);
                let key = Key { kind: 1, from: proxy, about: node, order };
                if !self.take(self.acks.get(&(proxy, node)).map(|&(g, v, _)| (g, v)), order)? {
                    return Some(key);
                }
                self.acks.insert((proxy, node), (generation, version, now));
                Some(key)
            }
        }
    }
}

/// foca's side of the table.
pub struct Handler(pub Rc<RefCell<Table>>);

impl foca::BroadcastHandler<NodeId> for Handler {
    type Key = Key;
    type Error = BadBroadcast;

    fn receive_item(&mut self, data: &[u8], _sender: Option<&NodeId>) -> Result<Option<Key>, BadBroadcast> {
        let b: Broadcast = postcard::from_bytes(data).map_err(|_| BadBroadcast)?;
        Ok(self.0.borrow_mut().apply(b))
    }
}

pub fn encode(b: &Broadcast) -> Vec<u8> {
    postcard::to_allocvec(b).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::{BroadcastHandler, Invalidates};

    #[test]
    fn newer_versions_win_and_stale_ones_stop_spreading() {
        let table = Rc::new(RefCell::new(Table::default()));
        let mut h = Handler(table.clone());
        let node: SocketAddr = "10.0.0.2:7946".parse().unwrap();
        let v = |version, draining| {
            encode(&Broadcast::State {
                node,
                generation: 5,
                version,
                state: NodeState { draining, ..Default::default() },
            })
        };
        let k2 = h.receive_item(&v(2, true), None).unwrap().expect("new");
        assert!(h.receive_item(&v(1, false), None).unwrap().is_none(), "older is dropped");
        assert!(h.receive_item(&v(2, true), None).unwrap().is_none(), "a repeat is not re-spread");
        let k3 = h.receive_item(&v(3, false), None).unwrap().expect("newer");
        assert!(k3.invalidates(&k2) && !k2.invalidates(&k3));
        assert!(!table.borrow().states[&node].state.draining);
        assert!(h.receive_item(b"\xff\xff", None).is_err());
        // The node's own repeat of what the table holds goes out again; older ones still do not.
        table.borrow_mut().repeating = true;
        assert!(h.receive_item(&v(3, false), None).unwrap().is_some(), "a repeat let through");
        assert!(h.receive_item(&v(2, true), None).unwrap().is_none());
        assert!(!table.borrow().states[&node].state.draining);
    }
}
