//! The gossip node: one task owns the Foca instance, the UDP socket and the timer heap, and turns foca's
//! notifications and custom broadcasts into the set of live members that the rest of the program is told about.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec};
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

use super::auth::PacketAuth;
use super::events::{EventHook, EventKind};
use super::identity::{NodeId, Role};
use super::state::{self, Broadcast, Handler, Member, NodeState, Table};
use super::timers::TimerHeap;
use super::{ClusterConfig, Membership};

type Swim = Foca<NodeId, PostcardCodec, StdRng, Handler>;

const MAX_JOIN_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_JOIN_BACKOFF: Duration = Duration::from_millis(200);
/// How often a seed that is already a member is checked again (it may restart under a new identity).
const SEED_RECHECK: Duration = Duration::from_secs(1);
/// How often pending drain acknowledgements are re-evaluated.
const DRAIN_RECHECK: Duration = Duration::from_millis(20);
const FAR: Duration = Duration::from_secs(3600);

pub enum Command {
    SetState(NodeState),
    /// Announce draining, and answer once every live proxy has acknowledged it (true) or at the deadline (false).
    Drain(Duration, oneshot::Sender<bool>),
    Leave(oneshot::Sender<()>),
}

struct Seed {
    spec: String,
    next_try: Instant,
    backoff: Duration,
}

struct PendingDrain {
    version: u64,
    deadline: Instant,
    done: oneshot::Sender<bool>,
}

pub struct Node {
    foca: Swim,
    runtime: AccumulatingRuntime<NodeId>,
    timers: TimerHeap<foca::Timer<NodeId>>,
    socket: UdpSocket,
    auth: PacketAuth,
    me: NodeId,
    state: NodeState,
    version: u64,
    members: HashMap<SocketAddr, NodeId>,
    table: Rc<RefCell<Table>>,
    seeds: Vec<Seed>,
    membership: Box<dyn Membership>,
    hook: Option<EventHook>,
    /// What each member looked like when the hook last heard of it, to spot updates.
    reported: HashMap<SocketAddr, Member>,
    drain: Option<PendingDrain>,
    /// When pending drain acknowledgements are next re-evaluated.
    recheck: Option<Instant>,
    /// Drains must be re-evaluated at the next flush even if membership did not change.
    reevaluate: bool,
    rejected: u64,
    wire: Vec<u8>,
}

impl Node {
    pub fn new(
        config: &ClusterConfig,
        me: NodeId,
        state: NodeState,
        socket: UdpSocket,
        membership: Box<dyn Membership>,
        hook: Option<EventHook>,
    ) -> Node {
        let mut swim = foca::Config::new_lan(std::num::NonZeroU32::new(32).expect("non-zero"));
        swim.probe_period = config.probe_period;
        swim.probe_rtt = config.probe_rtt;
        swim.suspect_to_down_after = config.suspect_timeout;
        let rng: StdRng = rand::make_rng();
        let table = Rc::new(RefCell::new(Table::default()));
        let now = Instant::now();
        let mut node = Node {
            foca: Foca::with_custom_broadcast(me.clone(), swim, rng, PostcardCodec, Handler(table.clone())),
            runtime: AccumulatingRuntime::new(),
            timers: TimerHeap::new(),
            socket,
            auth: PacketAuth::new(config.key.as_deref()),
            me,
            state,
            version: 0,
            members: HashMap::new(),
            table,
            seeds: config
                .join
                .iter()
                .map(|spec| Seed { spec: spec.clone(), next_try: now, backoff: FIRST_JOIN_BACKOFF })
                .collect(),
            membership,
            hook,
            reported: HashMap::new(),
            drain: None,
            recheck: None,
            reevaluate: false,
            rejected: 0,
            wire: Vec::with_capacity(1500),
        };
        node.broadcast_state();
        node
    }

    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut packet = vec![0u8; 65_536];
        loop {
            self.flush().await;
            let far = Instant::now() + FAR;
            let next_timer = self.timers.next_deadline().unwrap_or(far);
            let next_seed = self.seeds.iter().map(|s| s.next_try).min().unwrap_or(far);
            let next_check = self.recheck.unwrap_or(far);
            tokio::select! {
                received = self.socket.recv_from(&mut packet) => match received {
                    Ok((n, from)) => self.receive(&packet[..n], from),
                    Err(e) => tracing::debug!("gossip recv: {e}"),
                },
                _ = sleep_until(next_timer) => {
                    let now = Instant::now();
                    while let Some(timer) = self.timers.pop_due(now) {
                        if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
                            tracing::debug!("gossip timer: {e}");
                        }
                    }
                }
                _ = sleep_until(next_seed) => self.join_seeds().await,
                _ = sleep_until(next_check) => {
                    self.recheck = None;
                    self.reevaluate = true;
                }
                command = commands.recv() => match command {
                    Some(Command::SetState(state)) => {
                        self.state = NodeState { draining: self.state.draining, ..state };
                        self.broadcast_state();
                    }
                    Some(Command::Drain(within, done)) => {
                        self.state.draining = true;
                        self.broadcast_state();
                        tracing::info!("draining: waiting for every proxy to stop sending requests");
                        self.drain = Some(PendingDrain { version: self.version, deadline: Instant::now() + within, done });
                        self.reevaluate = true;
                    }
                    Some(Command::Leave(done)) => return self.leave(Some(done)).await,
                    None => return self.leave(None).await,
                },
            }
        }
    }

    async fn leave(mut self, done: Option<oneshot::Sender<()>>) {
        // Say so first, so members report a leave rather than a failure.
        if !self.state.draining {
            self.state.draining = true;
            self.broadcast_state();
            let _ = self.foca.gossip(&mut self.runtime);
            self.flush().await;
        }
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!("leave: {e}");
        }
        self.flush().await;
        tracing::info!("left the cluster");
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Publishes this node's state under a new version.
    fn broadcast_state(&mut self) {
        self.version += 1;
        let b = Broadcast::State {
            node: self.me.gossip,
            generation: self.me.generation,
            version: self.version,
            state: self.state.clone(),
        };
        if let Err(e) = self.foca.add_broadcast(&state::encode(&b)) {
            tracing::warn!("state broadcast: {e}");
        }
    }

    fn receive(&mut self, packet: &[u8], from: SocketAddr) {
        match self.auth.open(packet) {
            Some(payload) => {
                if let Err(e) = self.foca.handle_data(payload, &mut self.runtime) {
                    tracing::debug!("gossip from {from}: {e}");
                }
            }
            None => {
                self.rejected += 1;
                // Powers of two keep a flood of junk from flooding the log too.
                if self.rejected.is_power_of_two() {
                    tracing::warn!(
                        "dropped {} gossip packets failing authentication (last from {from}): check the cluster key",
                        self.rejected
                    );
                }
            }
        }
    }

    /// Announces to every seed that is not a live member yet, with backoff, forever: start order never matters.
    async fn join_seeds(&mut self) {
        let now = Instant::now();
        for i in 0..self.seeds.len() {
            if self.seeds[i].next_try > now {
                continue;
            }
            let spec = self.seeds[i].spec.clone();
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(spec.as_str()).await {
                Ok(a) => a.filter(|a| *a != self.me.gossip).collect(),
                Err(e) => {
                    tracing::debug!("join {spec}: {e}");
                    Vec::new()
                }
            };
            let missing: Vec<SocketAddr> = addrs.into_iter().filter(|a| !self.members.contains_key(a)).collect();
            for addr in &missing {
                if let Err(e) = self.foca.announce(NodeId::seed(*addr), &mut self.runtime) {
                    tracing::debug!("announce to {addr}: {e}");
                }
            }
            let seed = &mut self.seeds[i];
            if missing.is_empty() {
                seed.backoff = FIRST_JOIN_BACKOFF;
                seed.next_try = now + SEED_RECHECK;
            } else {
                seed.next_try = now + seed.backoff;
                seed.backoff = (seed.backoff * 2).min(MAX_JOIN_BACKOFF);
            }
        }
    }

    /// Sends what foca queued, schedules its timers, applies notifications and broadcasts, and tells the
    /// listener when the live members or their states changed.
    async fn flush(&mut self) {
        let mut changed = false;
        let mut newcomer = false;
        while let Some(notification) = self.runtime.to_notify() {
            let (c, n) = self.apply(notification);
            changed |= c;
            newcomer |= n;
        }
        if newcomer {
            // A member that just arrived missed earlier state broadcasts: repeat ours under a new version.
            self.broadcast_state();
        }
        changed |= std::mem::take(&mut self.table.borrow_mut().changed);
        if changed {
            let members = self.live_members();
            self.report_events(&members);
            self.membership.changed(&members);
        }
        if changed || std::mem::take(&mut self.reevaluate) {
            self.acknowledge_drains();
            self.finish_drain();
        }
        while let Some((to, data)) = self.runtime.to_send() {
            self.auth.seal(&data, &mut self.wire);
            if let Err(e) = self.socket.send_to(&self.wire, to.gossip).await {
                tracing::debug!("gossip send to {}: {e}", to.gossip);
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timers.push(now + after, timer);
        }
    }

    /// Compares the live members with what the hook last heard, and emits join, leave, failed and update.
    fn report_events(&mut self, members: &[Member]) {
        let Some(hook) = &self.hook else { return };
        for m in members {
            match self.reported.get(&m.id.gossip) {
                None => hook.emit(EventKind::Join, m.clone()),
                Some(old) if old.id.generation != m.id.generation => {
                    hook.emit(EventKind::Failed, old.clone());
                    hook.emit(EventKind::Join, m.clone());
                }
                Some(old) if old.state != m.state => hook.emit(EventKind::Update, m.clone()),
                Some(_) => {}
            }
        }
        for (addr, old) in &self.reported {
            if !members.iter().any(|m| m.id.gossip == *addr) {
                let left = self.table.borrow().state_of(&old.id).is_some_and(|s| s.draining);
                hook.emit(if left { EventKind::Leave } else { EventKind::Failed }, old.clone());
            }
        }
        self.reported = members.iter().map(|m| (m.id.gossip, m.clone())).collect();
    }

    fn live_members(&self) -> Vec<Member> {
        let table = self.table.borrow();
        let mut live: Vec<Member> =
            self.members.values().map(|id| Member { id: id.clone(), state: table.state_of(id).cloned() }).collect();
        live.sort_by(|a, b| (&a.id.name, a.id.gossip).cmp(&(&b.id.name, b.id.gossip)));
        live
    }

    /// A proxy tells each draining member once it routes nothing new to it and has nothing in flight to it.
    fn acknowledge_drains(&mut self) {
        if self.me.role != Role::Proxy {
            return;
        }
        let mut pending = false;
        let mut acks = Vec::new();
        {
            let table = self.table.borrow();
            for id in self.members.values() {
                let Some((generation, version, state)) = table.states.get(&id.gossip) else { continue };
                if !state.draining || *generation != id.generation || table.acked(self.me.gossip, id, *version) {
                    continue;
                }
                if self.membership.busy_with(id) {
                    pending = true;
                } else {
                    acks.push(Broadcast::DrainAck {
                        proxy: self.me.gossip,
                        node: id.gossip,
                        generation: *generation,
                        version: *version,
                    });
                }
            }
        }
        for ack in acks {
            if let Err(e) = self.foca.add_broadcast(&state::encode(&ack)) {
                tracing::warn!("drain ack: {e}");
            }
        }
        if pending {
            self.recheck = Some(Instant::now() + DRAIN_RECHECK);
        }
    }

    /// A draining node is done once every live proxy has acknowledged, or at its deadline.
    fn finish_drain(&mut self) {
        let Some(pending) = &self.drain else { return };
        let table = self.table.borrow();
        let proxies: Vec<&NodeId> = self.members.values().filter(|m| m.role == Role::Proxy).collect();
        let all_acked = proxies.iter().all(|p| table.acked(p.gossip, &self.me, pending.version));
        let late = Instant::now() >= pending.deadline;
        drop(table);
        if all_acked || late {
            if late && !all_acked {
                tracing::warn!("drain timeout: leaving without every proxy's acknowledgement");
            } else {
                tracing::info!("drained: {} proxies acknowledged", proxies.len());
            }
            if let Some(p) = self.drain.take() {
                let _ = p.done.send(all_acked);
            }
        } else {
            self.recheck = Some((Instant::now() + DRAIN_RECHECK).min(pending.deadline));
        }
    }

    /// Returns (membership changed, a new member appeared).
    fn apply(&mut self, notification: OwnedNotification<NodeId>) -> (bool, bool) {
        match notification {
            OwnedNotification::MemberUp(id) => self.upsert(id),
            OwnedNotification::MemberDown(id) => {
                if self.members.get(&id.gossip) == Some(&id) {
                    tracing::info!("member down: {} {} ({:?})", id.name, id.gossip, id.role);
                    self.members.remove(&id.gossip);
                    return (true, false);
                }
                (false, false)
            }
            OwnedNotification::Rename(_, new) => self.upsert(new),
            OwnedNotification::Active => {
                tracing::info!("joined the cluster as {} ({})", self.me.name, self.me.gossip);
                (false, false)
            }
            OwnedNotification::Idle => {
                tracing::info!("no other live members");
                (false, false)
            }
            OwnedNotification::Defunct => {
                tracing::warn!("declared down by the cluster; rejoining");
                (false, false)
            }
            _ => (false, false),
        }
    }

    /// Records a member unless a newer generation on the same address is already known.
    fn upsert(&mut self, id: NodeId) -> (bool, bool) {
        match self.members.get(&id.gossip) {
            Some(known) if known.generation > id.generation => (false, false),
            Some(known) if *known == id => (false, false),
            _ => {
                tracing::info!("member up: {} {} ({:?}) service {:?}", id.name, id.gossip, id.role, id.service);
                self.members.insert(id.gossip, id);
                (true, true)
            }
        }
    }
}
