//! Turns gossip membership, plus an operator's overrides, into backend-set snapshots: the static backends,
//! then every live backend member, each with its weight and state (UP when healthy and not draining).
//!
//! The [`Publisher`] is shared by the cluster thread (membership changes) and the runtime API (overrides);
//! both republish through it. Neither is on the request path, which only loads the published snapshot.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::watch;

use super::{Backend, BackendSet, Pool, ServerState, SharedBackends};
use crate::cluster::{Member, Membership, NodeId, Role};
use crate::config::value::DEFAULT_MAXQUEUE;
use crate::config::BackendSpec;

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
    /// The `--backend` servers with their weights.
    statics: Vec<(Arc<Backend>, u16)>,
    shared: SharedBackends,
    /// One `Backend` per member generation, kept while the member lives so its counters and in-flight count
    /// survive the set being rebuilt.
    known: HashMap<(SocketAddr, u64), Arc<Backend>>,
    members: Vec<Member>,
    overrides: HashMap<String, Override>,
    /// What every server shares (data-plane threads, the total load).
    pool: Pool,
    /// Bumped after every publish: data-plane threads abandon connects to servers that left rotation.
    changes: watch::Sender<u64>,
    /// Static servers their health checks say are down, by name.
    statics_down: HashSet<String>,
    /// `--slowstart`: how long a server new to rotation takes to reach its full weight.
    slowstart: Duration,
    /// When each server (by the address of its `Backend`) came into rotation, while it is still ramping up.
    ramping: HashMap<RampKey, Instant>,
    /// Members' servers that went away, by name, with their last weight and when: listed DOWN with their
    /// counters for [`RETENTION`], and succeeded by a member that comes back under the same name.
    departed: HashMap<String, (Arc<Backend>, u16, Instant)>,
    /// What servers no longer listed counted, so the backend's totals do not drop.
    retired: super::counters::Totals,
    /// Each listed server's id, by name, and the next id to give (see `BackendSet::ids`).
    ids: HashMap<String, u64>,
    next_id: u64,
    /// [`RETENTION`]; a field so that a test can end it without a clock ten minutes past boot.
    retention: Duration,
}

/// How long a member's server that went away stays listed (DOWN, with its counters), as the roster keeps
/// the member itself.
pub const RETENTION: Duration = crate::cluster::roster::RETENTION;

impl Publisher {
    pub fn new(
        statics: Vec<(Arc<Backend>, u16)>,
        shared: SharedBackends,
        pool: Pool,
        changes: watch::Sender<u64>,
    ) -> Arc<Mutex<Publisher>> {
        let mut p = Publisher {
            statics,
            shared,
            known: HashMap::new(),
            members: Vec::new(),
            overrides: HashMap::new(),
            pool,
            changes,
            statics_down: HashSet::new(),
            slowstart: Duration::ZERO,
            ramping: HashMap::new(),
            departed: HashMap::new(),
            retired: super::counters::Totals::default(),
            ids: HashMap::new(),
            next_id: 1,
            retention: RETENTION,
        };
        p.publish();
        Arc::new(Mutex::new(p))
    }

    /// Records an operator's change to the server(s) named `name` and republishes.
    pub fn set(&mut self, name: &str, change: impl FnOnce(&mut Override)) -> Result<(), NoSuchServer> {
        if !self.knows(name) {
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

    /// Whether `set` finds `name`: any server listed, a member's that went away too (an operator may hold it
    /// out before it is back), and any name an override is kept for, listed or not, so that it can be set back.
    pub fn knows(&self, name: &str) -> bool {
        self.statics.iter().any(|(b, _)| *b.name() == name)
            || self.known.values().any(|b| *b.name() == name)
            || self.departed.contains_key(name)
            || self.overrides.contains_key(name)
    }

    /// Every operator's change in force, by server name (handed to the successor of a binary upgrade).
    pub fn overrides(&self) -> Vec<(String, Override)> {
        let mut all: Vec<(String, Override)> = self.overrides.iter().map(|(n, o)| (n.clone(), *o)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Takes over a predecessor's overrides, before its members are known: each applies once a server of
    /// its name is in the set, as any override does.
    pub fn adopt_overrides(&mut self, overrides: Vec<(String, Override)>) {
        if overrides.is_empty() {
            return;
        }
        self.overrides.extend(overrides.into_iter().filter(|(_, o)| *o != Override::default()));
        self.publish();
    }

    /// `--slowstart` (a reload may change it).
    pub fn set_slowstart(&mut self, window: Duration) {
        self.slowstart = window;
    }

    /// A static server's health check changed its verdict.
    pub fn set_static_health(&mut self, name: &str, healthy: bool) {
        let changed = if healthy { self.statics_down.remove(name) } else { self.statics_down.insert(name.to_string()) };
        if changed {
            self.publish();
        }
    }

    /// The static servers held DOWN by their health checks, by name.
    pub fn statics_down(&self) -> Vec<String> {
        let mut names: Vec<String> = self.statics_down.iter().cloned().collect();
        names.sort();
        names
    }

    /// Whether the static server `name` is held DOWN by its health check.
    pub fn static_is_down(&self, name: &str) -> bool {
        self.statics_down.contains(name)
    }

    /// The static servers, for their health checks.
    pub fn statics(&self) -> Vec<Arc<Backend>> {
        self.statics.iter().map(|(b, _)| b.clone()).collect()
    }

    /// Republishes while a server ramps up, so its weight follows the clock, and once a server that went away
    /// has been listed for [`RETENTION`], so it goes even if nothing else changes.
    pub fn tick(&mut self) {
        let expired = self.departed.values().any(|(_, _, since)| since.elapsed() >= self.retention);
        if !self.ramping.is_empty() || expired {
            self.publish();
        }
    }

    /// The gossip addresses of the members in rotation now.
    pub fn routable_members(&self) -> Vec<SocketAddr> {
        self.members.iter().filter(|m| m.is_routable()).map(|m| m.id.gossip).collect()
    }

    /// Replaces the static servers (a reload): one whose name, host and port are unchanged keeps its counters
    /// and its connections; its weight follows the new configuration, and so do its `maxconn` and `maxqueue`
    /// (a server with new limits succeeds the old one, its counts carried over).
    pub fn set_statics(&mut self, specs: &[BackendSpec]) {
        let old = std::mem::take(&mut self.statics);
        self.statics = specs
            .iter()
            .map(|spec| {
                let backend = match old.iter().find(|(b, _)| b.is_at(&spec.name, &spec.host, spec.port)) {
                    Some((b, _)) if b.limits_are(spec) => b.clone(),
                    Some((b, _)) => Arc::new(Backend::succeeding(spec, &self.pool, b)),
                    None => Arc::new(Backend::new(spec, &self.pool)),
                };
                (backend, spec.weight)
            })
            .collect();
        // A server the reload removed (or renamed or moved) leaves its counts to the backend's totals, which
        // must not go back.
        for (gone, _) in &old {
            let kept = self.statics.iter().any(|(b, _)| b.is_at(&gone.name(), &gone.host, gone.port));
            if !kept {
                self.retired += gone.totals();
            }
        }
        self.publish();
    }

    fn update(&mut self, members: &[Member]) {
        let members: Vec<Member> =
            members.iter().filter(|m| m.id.role == Role::Backend && m.id.service.is_some()).cloned().collect();
        self.follow_announced_weights(&members);
        self.carry_over_rejoins(&members);
        self.members = members;
        let live = &self.members;
        let now = Instant::now();
        let mut gone = Vec::new();
        self.known.retain(|key, backend| {
            let alive = live.iter().any(|m| (m.id.gossip, m.id.generation) == *key);
            if !alive {
                gone.push(backend.clone());
            }
            alive
        });
        let set = self.shared.load();
        let last_weight = |backend: &Arc<Backend>| {
            set.servers.iter().position(|b| Arc::ptr_eq(b, backend)).map_or(0, |i| set.weights[i])
        };
        for backend in gone {
            // One that had lost its name to a newer member of the same name (`name@address`) is that
            // member's past: its counts go to the backend's totals, not to a row of its own.
            if backend.name().contains('@') {
                self.retired += backend.totals();
                continue;
            }
            let weight = last_weight(&backend);
            if let Some((older, _, _)) = self.departed.insert(backend.name().to_string(), (backend, weight, now)) {
                self.retired += older.totals();
            }
        }
        self.publish();
    }

    /// A member that rejoined under a later generation (the same process: see `identity::renews`) keeps its
    /// server: requests in flight, counters, a ramp under way, an ejection. A new server would have counted
    /// nothing in flight to it, so a drain would have been acknowledged at once.
    fn carry_over_rejoins(&mut self, members: &[Member]) {
        for m in members {
            let key = (m.id.gossip, m.id.generation);
            if self.known.contains_key(&key) {
                continue;
            }
            let before = self.members.iter().find(|old| crate::cluster::renews(&old.id, &m.id));
            if let Some(backend) = before.and_then(|old| self.known.remove(&(old.id.gossip, old.id.generation))) {
                self.known.insert(key, backend);
            }
        }
    }

    /// A weight a member announces that differs from the one it announced before (its agent check's report
    /// changed, or the check failed and fell back to the configured weight) replaces the one an operator set,
    /// as an agent-check report replaces HAProxy's `set weight`: the override was kept for ever, and the
    /// node's own view of its capacity was ignored from then on.
    fn follow_announced_weights(&mut self, members: &[Member]) {
        for m in members {
            let key = (m.id.gossip, m.id.generation);
            let Some(before) = self.members.iter().find(|old| (old.id.gossip, old.id.generation) == key) else {
                continue;
            };
            // Announced twice, by state broadcasts: a member first heard of without one (a successor after an
            // upgrade learns states anew) changes nothing the operator set.
            let (Some(was), Some(now)) = (&before.state, &m.state) else { continue };
            let Some(backend) = self.known.get(&key).filter(|_| was.weight != now.weight) else { continue };
            let name = backend.name().to_string();
            let Some(o) = self.overrides.get_mut(&name) else { continue };
            if o.weight.take().is_some() {
                tracing::info!("server {name}: weight {} announced, replacing the operator's", m.weight());
            }
            if *o == Override::default() {
                self.overrides.remove(&name);
            }
        }
    }

    /// The id of each of `servers`: the one its name has, or the next one; names no longer listed give theirs
    /// up.
    fn ids_of(&mut self, servers: &[(Arc<Backend>, u16, ServerState)]) -> Vec<u64> {
        let names: Vec<String> = servers.iter().map(|(b, _, _)| b.name().to_string()).collect();
        let listed: HashSet<&String> = names.iter().collect();
        self.ids.retain(|name, _| listed.contains(name));
        names
            .into_iter()
            .map(|name| {
                *self.ids.entry(name).or_insert_with(|| {
                    self.next_id += 1;
                    self.next_id - 1
                })
            })
            .collect()
    }

    /// Names every member's server after the name it announces (the host name by default). Names must be
    /// unique, and two live members can announce the same one: two nodes on one host, or a restarted task
    /// (swarm's `web-{{.Task.Slot}}`) while its killed predecessor is not declared down yet. The newest
    /// generation takes the name, the others are told apart by their address; a static server's name is
    /// never taken.
    fn name_members(&self) {
        let mut by_name: HashMap<String, Vec<&Member>> = HashMap::new();
        for m in &self.members {
            by_name.entry(server_name(&m.id.name)).or_default().push(m);
        }
        for (name, mut group) in by_name {
            group.sort_by_key(|m| std::cmp::Reverse(m.id.generation));
            let static_holds = self.statics.iter().any(|(b, _)| *b.name() == name);
            for (i, m) in group.iter().enumerate() {
                let Some(backend) = self.known.get(&(m.id.gossip, m.id.generation)) else { continue };
                let wanted = if i == 0 && !static_holds {
                    name.clone()
                } else {
                    format!("{name}@{}", server_name(&m.id.gossip.to_string()))
                };
                if let Some(old) = backend.rename(wanted.clone()) {
                    if *old != wanted {
                        tracing::info!("server {old} is now called {wanted}");
                    }
                }
            }
        }
    }

    fn publish(&mut self) {
        let pool = self.pool.clone();
        let mut servers: Vec<(Arc<Backend>, u16, ServerState)> = self
            .statics
            .iter()
            .map(|(b, weight)| {
                let state =
                    if self.statics_down.contains(b.name().as_str()) { ServerState::Down } else { ServerState::Up };
                (b.clone(), *weight, state)
            })
            .collect();
        for m in &self.members {
            let Some(service) = m.id.service else { continue };
            let departed = &mut self.departed;
            let backend = self.known.entry((m.id.gossip, m.id.generation)).or_insert_with(|| {
                let spec = BackendSpec {
                    name: server_name(&m.id.name),
                    host: service.ip().to_string(),
                    port: service.port(),
                    weight: m.weight(),
                    maxconn: 0,
                    maxqueue: DEFAULT_MAXQUEUE,
                };
                // Back under its name (a restart, a rescheduled task): its counts go on.
                match departed.remove(&spec.name) {
                    Some((old, _, _)) => Arc::new(Backend::succeeding(&spec, &pool, &old)),
                    None => Arc::new(Backend::new(&spec, &pool)),
                }
            });
            let state = if m.is_routable() {
                ServerState::Up
            } else if m.is_maint() {
                ServerState::Maint
            } else if m.is_draining() {
                ServerState::Drain
            } else {
                ServerState::Down
            };
            servers.push((backend.clone(), m.weight(), state));
        }
        self.name_members();
        // Members' servers that went away, DOWN, for the retention window; not when a live server has the
        // name (their counts then go to the backend's retired totals).
        let now = Instant::now();
        let listed: HashSet<String> = servers.iter().map(|(b, _, _)| b.name().to_string()).collect();
        let mut retired = super::counters::Totals::default();
        let retention = self.retention;
        self.departed.retain(|name, (backend, _, since)| {
            let keep = now.duration_since(*since) < retention && !listed.contains(name);
            if !keep {
                retired += backend.totals();
            }
            keep
        });
        self.retired += retired;
        let mut gone: Vec<_> = self.departed.values().map(|(b, w, _)| (b.clone(), *w, ServerState::Down)).collect();
        gone.sort_by_key(|(b, _, _)| b.name().to_string());
        servers.extend(gone);
        let initial_weights = servers.iter().map(|(_, weight, _)| *weight).collect();
        for (backend, weight, state) in &mut servers {
            let Some(o) = self.overrides.get(backend.name().as_str()) else { continue };
            *weight = o.weight.unwrap_or(*weight);
            *state = match (o.state, *state) {
                (Some(ServerState::Maint), _) => ServerState::Maint,
                (Some(ServerState::Drain), ServerState::Up) => ServerState::Drain,
                (_, current) => current,
            };
        }
        readmit_recovered(&self.shared.load(), &servers);
        let all: Vec<Arc<Backend>> = servers.iter().map(|(b, _, _)| b.clone()).collect();
        super::seed_latencies(&all);
        let user_weights = servers.iter().map(|(_, weight, _)| *weight).collect();
        self.ramp(&mut servers);
        let ids = self.ids_of(&servers);
        let mut set = BackendSet::new(servers);
        set.ids = ids;
        set.user_weights = user_weights;
        set.initial_weights = initial_weights;
        set.retired = self.retired;
        set.pool = Some(self.pool.clone());
        let up = set.rotation().len();
        let known = set.servers.len();
        self.shared.store(Arc::new(set));
        self.changes.send_modify(|n| *n += 1);
        // Logged once published: tests (and operators) take this line to mean the set is in effect.
        tracing::info!("backend set now has {up} servers in rotation, {known} known");
    }
}

impl Publisher {
    /// Scales the weight of servers that came into rotation less than `--slowstart` ago, and keeps track of
    /// which do. A server already UP when slow start is first seen (or at the proxy's start) is not ramped.
    fn ramp(&mut self, servers: &mut [(Arc<Backend>, u16, ServerState)]) {
        if self.slowstart.is_zero() {
            self.ramping.clear();
            return;
        }
        let old = self.shared.load();
        // A member is one generation (a restarted node ramps again); a static server is its name, whichever
        // `Backend` a reload gave it.
        let statics: HashSet<Arc<String>> = self.statics.iter().map(|(b, _)| b.name()).collect();
        let key = |b: &Arc<Backend>| match statics.get(&b.name()) {
            Some(name) => RampKey::Static(name.clone()),
            None => RampKey::Member(Arc::as_ptr(b) as usize),
        };
        let was_up: HashSet<RampKey> =
            old.servers.iter().zip(&old.states).filter(|(_, s)| **s == ServerState::Up).map(|(b, _)| key(b)).collect();
        let now = Instant::now();
        let first = old.servers.is_empty();
        let mut ramping = HashMap::new();
        for (backend, weight, state) in servers.iter_mut() {
            let key = key(backend);
            if *state != ServerState::Up {
                continue;
            }
            let since = match (self.ramping.get(&key), was_up.contains(&key) || first) {
                (Some(since), _) => *since,
                (None, true) => continue,
                (None, false) => now,
            };
            let elapsed = now.duration_since(since);
            if elapsed >= self.slowstart {
                continue;
            }
            let share = elapsed.as_millis() as u64 * 1000 / self.slowstart.as_millis().max(1) as u64;
            // At least 1, so a ramping server is in rotation from the start; but a weight of 0 stays out.
            *weight = ((u64::from(*weight) * share / 1000) as u16).max(u16::from(*weight > 0));
            ramping.insert(key, since);
        }
        self.ramping = ramping;
    }
}

/// Who is ramping up under `--slowstart`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RampKey {
    Static(Arc<String>),
    Member(usize),
}

/// A server that membership or its health check brings back UP is no longer skipped for an earlier failed
/// connect: that is the news ejection waits for.
fn readmit_recovered(old: &BackendSet, new: &[(Arc<Backend>, u16, ServerState)]) {
    let before: HashMap<*const Backend, ServerState> =
        old.servers.iter().zip(&old.states).map(|(b, s)| (Arc::as_ptr(b), *s)).collect();
    for (backend, _, state) in new {
        let was = before.get(&Arc::as_ptr(backend));
        if *state == ServerState::Up && was.is_some_and(|s| *s != ServerState::Up) && backend.recovered() {
            tracing::info!("server {} is back UP: no longer skipped for its earlier failure", backend.name());
        }
    }
}

/// A member's name as the stats, the runtime API and the log show it. Names arrive by gossip, so they are
/// not trusted to keep out of the characters that separate CSV fields, `show servers state` columns or lines.
fn server_name(announced: &str) -> String {
    // No `@` either: `NAME@ADDRESS` is the name of a member whose name another one holds, and a member
    // announcing one must not share it (two rows, two series, one `set server` for both).
    announced.chars().map(|c| if c.is_alphanumeric() || "-_.:[]".contains(c) { c } else { '_' }).collect()
}

/// The cluster thread's handle on the publisher, and on the roster the admin side shows.
pub struct ClusterBackends(pub Arc<Mutex<Publisher>>, pub Arc<crate::cluster::Roster>);

impl Membership for ClusterBackends {
    fn changed(&mut self, members: &[Member]) {
        self.1.observe(members);
        self.0.lock().update(members);
    }

    fn identity(&mut self, me: &NodeId) {
        self.1.identity(me.gossip, me.generation);
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
    use super::*;
    use crate::cluster::NodeState;

    fn member(name: &str, gossip: &str, generation: u64) -> Member {
        let gossip: SocketAddr = gossip.parse().unwrap();
        let service = Some(SocketAddr::new(gossip.ip(), 3000));
        let mut id = NodeId::new(gossip, Role::Backend, service, 100, false, name);
        id.generation = generation;
        Member { id, state: Some(NodeState::default()) }
    }

    fn names(p: &Publisher) -> Vec<String> {
        let mut n: Vec<String> = p.shared.load().servers.iter().map(|b| b.name().to_string()).collect();
        n.sort();
        n
    }

    #[test]
    fn the_newest_of_two_members_of_one_name_takes_it() {
        let statics = vec![(
            Arc::new(Backend::new(&crate::config::value::backend("s0=10.0.0.9:80").unwrap(), &Pool::new(1))),
            100,
        )];
        let shared = crate::balance::shared(BackendSet::default());
        let publisher = Publisher::new(statics, shared, Pool::new(1), watch::channel(0).0);
        let mut p = publisher.lock();
        let (old, new) = (member("web-1", "10.0.0.1:7946", 5), member("web-1", "10.0.0.2:7946", 9));
        p.update(std::slice::from_ref(&old));
        assert_eq!(names(&p), ["s0", "web-1"]);
        // The slot's new task arrives while the killed one is still a member: the new one is web-1 now.
        p.update(&[old.clone(), new.clone()]);
        assert_eq!(names(&p), ["s0", "web-1", "web-1@10.0.0.1:7946"]);
        p.update(std::slice::from_ref(&new));
        assert_eq!(names(&p), ["s0", "web-1"], "the predecessor's counts went to the backend's, not a row");
        // A static server keeps its name whatever a member announces; web-1, gone, stays listed (DOWN).
        p.update(&[member("s0", "10.0.0.3:7946", 1)]);
        assert_eq!(names(&p), ["s0", "s0@10.0.0.3:7946", "web-1"]);
        let set = p.shared.load();
        let web1 = set.servers.iter().position(|b| *b.name() == "web-1").unwrap();
        assert_eq!(set.states[web1], ServerState::Down);
    }

    /// An operator's weight yields to a weight the node announces anew, and to nothing else: not a state
    /// heard for the first time (a successor after an upgrade, a member whose first broadcast comes late), not
    /// a state repeated unchanged.
    #[test]
    fn an_operators_weight_yields_only_to_a_changed_announcement() {
        let shared = crate::balance::shared(BackendSet::default());
        let publisher = Publisher::new(Vec::new(), shared, Pool::new(1), watch::channel(0).0);
        let mut p = publisher.lock();
        let with = |state: Option<u16>| {
            let mut m = member("web-1", "10.0.0.1:7946", 5);
            m.state = state.map(|weight| NodeState { weight, ..NodeState::default() });
            m
        };
        p.update(&[with(None)]);
        p.set("web-1", |o| o.weight = Some(10)).unwrap();
        p.update(&[with(Some(50))]);
        assert_eq!(p.overrides().len(), 1, "the first state heard is no new announcement");
        p.update(&[with(Some(50))]);
        assert_eq!(p.overrides().len(), 1, "nor is a repeat");
        p.update(&[with(Some(75))]);
        assert!(p.overrides().is_empty(), "a changed weight replaces the operator's");
    }

    /// A server that went away leaves the list after RETENTION on the housekeeping tick alone: it stayed as
    /// long as no membership change came to prune it.
    #[test]
    fn a_departed_server_leaves_after_retention_without_another_change() {
        let shared = crate::balance::shared(BackendSet::default());
        let publisher = Publisher::new(Vec::new(), shared, Pool::new(1), watch::channel(0).0);
        let mut p = publisher.lock();
        p.update(&[member("web-1", "10.0.0.1:7946", 5), member("web-2", "10.0.0.2:7946", 5)]);
        p.update(&[member("web-2", "10.0.0.2:7946", 5)]);
        assert_eq!(names(&p), ["web-1", "web-2"], "listed DOWN once gone");
        p.tick();
        assert_eq!(names(&p), ["web-1", "web-2"], "within its retention");
        p.set("web-1", |o| o.state = Some(ServerState::Maint)).expect("a listed server");
        p.retention = Duration::ZERO;
        p.tick();
        assert_eq!(names(&p), ["web-2"]);
        assert_eq!(p.overrides().len(), 1, "kept until set back, as README says, for the next web-1");
        p.set("web-1", |o| o.state = None).expect("an override can be set back once its row is gone");
        assert!(p.overrides().is_empty());
    }

    /// HAProxy's server ids are fixed; by position, a member sorted before the others, or one moved to the
    /// end when it went away, changed theirs (`show stat 2 4 2` then named another server).
    #[test]
    fn server_ids_stay_with_their_names_while_others_come_and_go() {
        let shared = crate::balance::shared(BackendSet::default());
        let publisher = Publisher::new(Vec::new(), shared, Pool::new(1), watch::channel(0).0);
        let mut p = publisher.lock();
        let ids = |p: &Publisher| -> Vec<(String, u64)> {
            let set = p.shared.load();
            let mut all: Vec<(String, u64)> =
                set.servers.iter().map(|b| b.name().to_string()).zip(set.ids.clone()).collect();
            all.sort();
            all
        };
        let (w1, w2, w3) = (
            member("web-1", "10.0.0.1:7946", 5),
            member("web-2", "10.0.0.2:7946", 5),
            member("web-3", "10.0.0.3:7946", 5),
        );
        p.update(&[w1.clone(), w2.clone(), w3.clone()]);
        let first = ids(&p);
        assert_eq!(first.iter().map(|(_, id)| *id).collect::<Vec<_>>(), [1, 2, 3]);
        p.update(&[w2.clone(), w3.clone()]);
        assert_eq!(ids(&p), first, "web-1 gone (listed DOWN at the end): nobody's id moves");
        p.update(&[member("web-0", "10.0.0.4:7946", 5), w2, w3]);
        let now = ids(&p);
        assert_eq!(now[0], ("web-0".to_string(), 4), "a newcomer sorted first gets a new id");
        assert_eq!(now[1..], first[..], "the others keep theirs");
    }

    #[test]
    fn announced_names_cannot_break_the_stats_formats() {
        assert_eq!(super::server_name("web-1.local:7946"), "web-1.local:7946");
        assert_eq!(super::server_name("a,b c\nd\"e"), "a_b_c_d_e");
        assert_eq!(super::server_name("web-1@10.0.0.1:7946"), "web-1_10.0.0.1:7946");
    }
}
