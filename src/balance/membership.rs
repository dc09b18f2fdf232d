//! Turns gossip membership, plus an operator's overrides, into backend-set snapshots: the static backends,
//! then every live backend member, each with its weight and state (UP when healthy and not draining).
//!
//! The [`Publisher`] is shared by the cluster thread (membership changes) and the runtime API (overrides);
//! both republish through it. Neither is on the request path, which only loads the published snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::watch;

use super::{Backend, BackendSet, ServerState, SharedBackends};
use crate::cluster::{Member, Membership, NodeId, Role};
use crate::config::BackendSpec;

/// Static `--backend` servers weigh as much as an agent with the default `--weight`.
const STATIC_WEIGHT: u16 = 100;

/// What an operator set on a server (HAProxy's `set server ... state|weight`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Override {
    /// `Drain` or `Maint`; `None` is HAProxy's `ready`.
    pub state: Option<ServerState>,
    pub weight: Option<u16>,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("no such server: {0}")]
pub struct NoSuchServer(pub String);

pub struct Publisher {
    statics: Vec<Arc<Backend>>,
    shared: SharedBackends,
    /// One `Backend` per member generation, kept while the member lives so its counters and in-flight count
    /// survive the set being rebuilt.
    known: HashMap<(SocketAddr, u64), Arc<Backend>>,
    members: Vec<Member>,
    overrides: HashMap<String, Override>,
    /// Data-plane threads, each with its own counter slot in every backend.
    threads: usize,
    /// Bumped after every publish: data-plane threads abandon connects to servers that left rotation.
    changes: watch::Sender<u64>,
}

impl Publisher {
    pub fn new(
        statics: Vec<Arc<Backend>>,
        shared: SharedBackends,
        threads: usize,
        changes: watch::Sender<u64>,
    ) -> Arc<Mutex<Publisher>> {
        let mut p = Publisher {
            statics,
            shared,
            known: HashMap::new(),
            members: Vec::new(),
            overrides: HashMap::new(),
            threads,
            changes,
        };
        p.publish();
        Arc::new(Mutex::new(p))
    }

    /// Records an operator's change to the server(s) named `name` and republishes.
    pub fn set(&mut self, name: &str, change: impl FnOnce(&mut Override)) -> Result<(), NoSuchServer> {
        let exists = self.statics.iter().any(|b| b.name == name) || self.known.values().any(|b| b.name == name);
        if !exists {
            return Err(NoSuchServer(name.to_string()));
        }
        let entry = self.overrides.entry(name.to_string()).or_default();
        change(entry);
        if *entry == Override::default() {
            self.overrides.remove(name);
        }
        self.publish();
        Ok(())
    }

    fn update(&mut self, members: &[Member]) {
        self.members =
            members.iter().filter(|m| m.id.role == Role::Backend && m.id.service.is_some()).cloned().collect();
        let live = &self.members;
        self.known.retain(|key, _| live.iter().any(|m| (m.id.gossip, m.id.generation) == *key));
        self.publish();
    }

    fn publish(&mut self) {
        let threads = self.threads;
        let mut servers: Vec<(Arc<Backend>, u16, ServerState)> =
            self.statics.iter().map(|b| (b.clone(), STATIC_WEIGHT, ServerState::Up)).collect();
        for m in &self.members {
            let Some(service) = m.id.service else { continue };
            let key = (m.id.gossip, m.id.generation);
            if !self.known.contains_key(&key) {
                let mut name = server_name(&m.id.name);
                let taken =
                    |n: &str| servers.iter().any(|(b, _, _)| b.name == n) || self.known.values().any(|b| b.name == n);
                if taken(&name) {
                    // Names come from host names by default: two nodes on one host must still be told apart.
                    name = server_name(&format!("{name}@{}", m.id.gossip));
                }
                let spec = BackendSpec { name, host: service.ip().to_string(), port: service.port() };
                self.known.insert(key, Arc::new(Backend::new(&spec, threads)));
            }
            let backend = &self.known[&key];
            let state = if m.is_routable() {
                ServerState::Up
            } else if m.is_draining() {
                ServerState::Drain
            } else {
                ServerState::Down
            };
            servers.push((backend.clone(), m.weight(), state));
        }
        for (backend, weight, state) in &mut servers {
            let Some(o) = self.overrides.get(&backend.name) else { continue };
            *weight = o.weight.unwrap_or(*weight);
            *state = match (o.state, *state) {
                (Some(ServerState::Maint), _) => ServerState::Maint,
                (Some(ServerState::Drain), ServerState::Up) => ServerState::Drain,
                (_, current) => current,
            };
        }
        readmit_recovered(&self.shared.load(), &servers);
        let set = BackendSet::new(servers);
        let up = set.rotation().len();
        let known = set.servers.len();
        self.shared.store(Arc::new(set));
        self.changes.send_modify(|n| *n += 1);
        // Logged once published: tests (and operators) take this line to mean the set is in effect.
        tracing::info!("backend set now has {up} servers in rotation, {known} known");
    }
}

/// A server that membership or its health check brings back UP is no longer skipped for an earlier failed
/// connect: that is the news ejection waits for.
fn readmit_recovered(old: &BackendSet, new: &[(Arc<Backend>, u16, ServerState)]) {
    let before: HashMap<*const Backend, ServerState> =
        old.servers.iter().zip(&old.states).map(|(b, s)| (Arc::as_ptr(b), *s)).collect();
    for (backend, _, state) in new {
        let was = before.get(&Arc::as_ptr(backend));
        if *state == ServerState::Up && was.is_some_and(|s| *s != ServerState::Up) && backend.readmit() {
            tracing::info!("server {} is back UP: no longer skipped for its earlier failure", backend.name);
        }
    }
}

/// A member's name as the stats, the runtime API and the log show it. Names arrive by gossip, so they are
/// not trusted to keep out of the characters that separate CSV fields, `show servers state` columns or lines.
fn server_name(announced: &str) -> String {
    announced.chars().map(|c| if c.is_alphanumeric() || "-_.:@[]".contains(c) { c } else { '_' }).collect()
}

/// The cluster thread's handle on the publisher.
pub struct ClusterBackends(pub Arc<Mutex<Publisher>>);

impl Membership for ClusterBackends {
    fn changed(&mut self, members: &[Member]) {
        self.0.lock().update(members);
    }

    fn suspected(&mut self, node: &NodeId) {
        if let Some(b) = self.0.lock().known.get(&(node.gossip, node.generation)) {
            b.suspect();
        }
    }

    fn busy_with(&self, node: &NodeId) -> bool {
        self.0.lock().known.get(&(node.gossip, node.generation)).is_some_and(|b| b.in_flight() > 0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn announced_names_cannot_break_the_stats_formats() {
        assert_eq!(super::server_name("web-1.local:7946"), "web-1.local:7946");
        assert_eq!(super::server_name("a,b c\nd\"e"), "a_b_c_d_e");
    }
}
