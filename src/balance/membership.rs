//! Turns gossip membership into backend-set snapshots: the static backends, then every live backend member
//! that is routable (healthy, not draining), each with its announced weight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Backend, BackendSet, SharedBackends};
use crate::cluster::{Member, Membership, NodeId, Role};
use crate::config::BackendSpec;

/// Static `--backend` servers weigh as much as an agent with the default `--weight`.
const STATIC_WEIGHT: u16 = 100;

pub struct ClusterBackends {
    statics: Vec<Arc<Backend>>,
    shared: SharedBackends,
    /// One `Backend` per member generation, kept while the member lives so its in-flight count survives
    /// the set being rebuilt (a draining member is out of the set but still counted here).
    known: HashMap<(SocketAddr, u64), Arc<Backend>>,
    /// Data-plane threads, each with its own counter slot in every backend.
    threads: usize,
}

impl ClusterBackends {
    pub fn new(statics: Vec<Arc<Backend>>, shared: SharedBackends, threads: usize) -> ClusterBackends {
        ClusterBackends { statics, shared, known: HashMap::new(), threads }
    }
}

impl Membership for ClusterBackends {
    fn changed(&mut self, members: &[Member]) {
        let backends: Vec<&Member> =
            members.iter().filter(|m| m.id.role == Role::Backend && m.id.service.is_some()).collect();
        self.known.retain(|key, _| backends.iter().any(|m| (m.id.gossip, m.id.generation) == *key));
        let threads = self.threads;
        let mut servers: Vec<(Arc<Backend>, u16)> = self.statics.iter().map(|b| (b.clone(), STATIC_WEIGHT)).collect();
        for m in backends {
            let Some(service) = m.id.service else { continue };
            let backend = self.known.entry((m.id.gossip, m.id.generation)).or_insert_with(|| {
                let spec =
                    BackendSpec { name: m.id.name.clone(), host: service.ip().to_string(), port: service.port() };
                Arc::new(Backend::new(&spec, threads))
            });
            if m.is_routable() {
                servers.push((backend.clone(), m.weight()));
            }
        }
        let set = BackendSet::weighted(servers);
        let count = set.servers.len();
        self.shared.store(Arc::new(set));
        tracing::info!("backend set now has {count} servers");
    }

    fn busy_with(&self, node: &NodeId) -> bool {
        self.known.get(&(node.gossip, node.generation)).is_some_and(|b| b.in_flight() > 0)
    }
}
