//! The gossip node: one task owns the Foca instance, the UDP socket and the timer heap, and turns foca's
//! notifications and custom broadcasts into the set of live members that the rest of the program is told about.
//!
//! Identity renewal is handled end to end: when the cluster declares this node down (a partition, a paused
//! process, lost packets) foca rejoins under a newer generation, and the node re-announces its state under it,
//! so peers route it again as soon as its health is known. How this node's own identity changes is in
//! `rejoin.rs`; the acknowledgements of drains in `drain.rs`.

mod drain;
mod rejoin;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Codec, Foca, OwnedNotification, PostcardCodec};
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

use super::events::{EventHook, EventKind};
use super::identity::NodeId;
use super::keys::Watch;
use super::seal::{self, Refused, Sealer};
use super::seeds::{Resolved, Seeds};
use super::state::{self, Broadcast, Handler, Member, NodeState, Table};
use super::timers::TimerHeap;
use super::{unix_ms, ClusterConfig, GossipStats, Membership};

type Swim = Foca<NodeId, PostcardCodec, StdRng, Handler>;

/// Key-file polling and table pruning.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// What foca may put in one packet, leaving room for the seal within the largest sealed datagram.
const MAX_PAYLOAD: usize = seal::MAX_SEALED - seal::OVERHEAD;
/// This node says again what it last said of itself (its state, its drain acknowledgements) this often.
/// foca spends a broadcast in a few transmissions within a second or so: a member that missed them all (a
/// blip shorter than the suspicion timeout) would not learn a health or drain change until the next one.
/// Serf resyncs by push-pull every 30 s; a repeat costs a few hundred bytes riding on gossip, and members
/// that have it already do not pass it on.
const REPEAT_EVERY: Duration = Duration::from_secs(5);
/// A member declared down is announced to this often, so both sides of a healed partition find each other
/// even when neither has the other as a `--join` seed.
const ANNOUNCE_TO_DOWN_EVERY: Duration = Duration::from_secs(1);
/// How long foca remembers a down identity; generations only grow, so a restarted node is never refused.
const FORGET_DOWN_AFTER: Duration = Duration::from_secs(600);
const FAR: Duration = Duration::from_secs(3600);
/// Every packet is sent again this much later (see `seal`): a lossy link must lose both to lose a message,
/// and a short burst of loss does not take both.
const COPY_AFTER: Duration = Duration::from_millis(10);

pub enum Command {
    SetState(NodeState),
    /// Announce draining, and answer once every live proxy has acknowledged it (true) or at the deadline (false).
    Drain(Duration, oneshot::Sender<bool>),
    Leave(oneshot::Sender<()>),
    /// Stop reading and sending (a successor takes the socket over); answered once nothing more goes out.
    Pause(std::sync::mpsc::Sender<()>),
    /// Gossip again after a pause, under a new identity (the successor may have announced a later one).
    Resume,
}

struct PendingDrain {
    version: u64,
    deadline: Instant,
    done: oneshot::Sender<bool>,
}

pub struct Node {
    foca: Swim,
    /// foca's configuration, to start it afresh (see `start_afresh`).
    swim: foca::Config,
    runtime: AccumulatingRuntime<NodeId>,
    timers: TimerHeap<foca::Timer<NodeId>>,
    socket: UdpSocket,
    /// `None`: gossip in the clear.
    sealer: Option<Sealer>,
    key_watch: Option<Watch>,
    me: NodeId,
    advertise: Advertise,
    state: NodeState,
    version: u64,
    members: HashMap<SocketAddr, NodeId>,
    max_members: usize,
    /// Members were refused for the cap: look again in foca's list when one leaves.
    over_cap: bool,
    table: Rc<RefCell<Table>>,
    seeds: Seeds,
    resolutions: mpsc::UnboundedReceiver<Resolved>,
    membership: Box<dyn Membership>,
    hook: Option<EventHook>,
    /// What each member looked like when the hook last heard of it, to spot updates.
    reported: HashMap<SocketAddr, Member>,
    drain: Option<PendingDrain>,
    /// When pending drain acknowledgements are next re-evaluated.
    recheck: Option<Instant>,
    /// Drains must be re-evaluated at the next flush even if membership did not change.
    reevaluate: bool,
    /// Leaving on purpose: foca's "defunct" that follows is expected.
    leaving: bool,
    /// Rejoined under a new generation and not spoken to since: see `announce_rejoin`.
    rejoining: bool,
    /// Neither reading nor sending: a successor has the socket (see `Command::Pause`).
    paused: bool,
    /// A member has spoken to this process, under any of its identities (for the log).
    joined: bool,
    /// When this node next repeats what it said (see [`REPEAT_EVERY`]).
    next_repeat: Instant,
    /// Members held down that said this node is down, since when (see `doubted_turn_undead`).
    doubts: HashMap<SocketAddr, Instant>,
    /// Addresses whose stale sender was last shown the identity held there, when (see
    /// `show_the_later_identity`).
    shown: HashMap<SocketAddr, Instant>,
    stats: Arc<GossipStats>,
    wire: Vec<u8>,
    /// Packets to send again, with when.
    copies: VecDeque<(Instant, SocketAddr, Vec<u8>)>,
}

/// How this node's advertised address was chosen.
#[derive(Debug, Clone, Copy)]
pub struct Advertise {
    /// Picked from the interfaces (bound to 0.0.0.0, no --advertise): replaced by the address this host
    /// reaches its first seed from, before anyone is told.
    pub guessed: bool,
    /// The service was given as 0.0.0.0:PORT: it is advertised at the same IP.
    pub service_follows: bool,
}

/// What `Node::new` needs beyond the configuration.
pub struct Parts {
    pub me: NodeId,
    pub advertise: Advertise,
    pub state: NodeState,
    pub socket: UdpSocket,
    pub sealer: Option<Sealer>,
    pub membership: Box<dyn Membership>,
    pub hook: Option<EventHook>,
    pub stats: Arc<GossipStats>,
    /// Members to announce to at once (a predecessor's, after a binary upgrade).
    pub peers: Vec<SocketAddr>,
}

impl Node {
    pub fn new(config: &ClusterConfig, parts: Parts) -> Node {
        let mut swim = foca::Config::new_lan(std::num::NonZeroU32::new(32).expect("non-zero"));
        swim.probe_period = config.probe_period;
        swim.probe_rtt = config.probe_rtt;
        swim.suspect_to_down_after = config.suspect_timeout;
        swim.max_packet_size = std::num::NonZeroUsize::new(MAX_PAYLOAD).expect("non-zero");
        swim.remove_down_after = Some(FORGET_DOWN_AFTER);
        if let Some(p) = swim.periodic_announce_to_down_members.as_mut() {
            p.frequency = ANNOUNCE_TO_DOWN_EVERY;
        }
        let rng: StdRng = rand::make_rng();
        let table = Rc::new(RefCell::new(Table::default()));
        let Parts { me, advertise, state, socket, sealer, membership, hook, stats, peers } = parts;
        let (seeds, resolutions) = Seeds::new(&config.join, me.gossip);
        let mut node = Node {
            foca: Foca::with_custom_broadcast(me.clone(), swim.clone(), rng, PostcardCodec, Handler(table.clone())),
            swim,
            runtime: AccumulatingRuntime::new(),
            timers: TimerHeap::new(),
            socket,
            sealer,
            key_watch: Watch::new(&config.keys),
            me,
            advertise,
            state,
            version: 0,
            members: HashMap::new(),
            max_members: config.max_members,
            over_cap: false,
            table,
            seeds,
            resolutions,
            membership,
            hook,
            reported: HashMap::new(),
            drain: None,
            recheck: None,
            reevaluate: false,
            leaving: false,
            rejoining: false,
            joined: false,
            paused: false,
            next_repeat: Instant::now() + REPEAT_EVERY,
            doubts: HashMap::new(),
            shown: HashMap::new(),
            stats,
            wire: Vec::with_capacity(1500),
            copies: VecDeque::new(),
        };
        node.membership.identity(&node.me);
        node.broadcast_state();
        for peer in peers {
            if let Err(e) = node.foca.announce(NodeId::seed(peer), &mut node.runtime) {
                tracing::debug!("announce to {peer}: {e}");
            }
        }
        node
    }

    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut packet = vec![0u8; 65_536];
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        loop {
            if !self.paused {
                self.flush().await;
            }
            let far = Instant::now() + FAR;
            let live = !self.paused;
            let next_timer = self.timers.next_deadline().unwrap_or(far);
            let next_seed = self.seeds.next_deadline().unwrap_or(far);
            let next_check = self.recheck.unwrap_or(far);
            let next_copy = self.copies.front().map_or(far, |(at, _, _)| *at);
            tokio::select! {
                received = self.socket.recv_from(&mut packet), if live => match received {
                    Ok((n, from)) => self.receive(&mut packet[..n], from),
                    Err(e) => tracing::debug!("gossip recv: {e}"),
                },
                _ = sleep_until(next_timer), if live => {
                    let now = Instant::now();
                    while let Some(timer) = self.timers.pop_due(now) {
                        if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
                            tracing::debug!("gossip timer: {e}");
                        }
                    }
                }
                _ = sleep_until(next_seed), if live => {
                    let members = &self.members;
                    let now_due = self.seeds.tick(|a| members.contains_key(a));
                    self.announce_to(now_due);
                }
                _ = sleep_until(next_copy), if live => self.send_copies().await,
                Some(resolved) = self.resolutions.recv(), if live => {
                    let members = &self.members;
                    let missing = self.seeds.resolved(resolved, |a| members.contains_key(a));
                    self.announce_to(missing);
                }
                _ = sleep_until(next_check), if live => {
                    self.recheck = None;
                    self.reevaluate = true;
                }
                _ = housekeeping.tick(), if live => self.housekeeping(),
                command = commands.recv() => match command {
                    Some(Command::SetState(state)) => {
                        // A drain for leaving stays, whatever else the agent reports (its agent check may drain too).
                        let leaving = self.drain.is_some() || self.leaving;
                        self.state = NodeState { draining: state.draining || leaving, ..state };
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
                    Some(Command::Pause(done)) => {
                        self.paused = true;
                        // Copies of what went out under this identity: stale by the time the pause ends.
                        self.copies.clear();
                        tracing::info!("gossip paused: a successor takes the socket over");
                        let _ = done.send(());
                    }
                    Some(Command::Resume) if self.paused => {
                        self.resume();
                        // Not the ticks missed while paused, in a burst.
                        housekeeping.reset();
                    }
                    Some(Command::Resume) => {}
                    None => return self.leave(None).await,
                },
            }
        }
    }

    async fn leave(mut self, done: Option<oneshot::Sender<()>>) {
        if self.paused {
            // The successor speaks for this address now: anything said here would be stale, or taken for it.
            tracing::info!("left the cluster to the successor");
            if let Some(done) = done {
                let _ = done.send(());
            }
            return;
        }
        self.leaving = true;
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
        // The copies too, without waiting: there is no later.
        for (_, to, copy) in std::mem::take(&mut self.copies) {
            self.send_wire(&copy, to).await;
        }
        tracing::info!("left the cluster");
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Announces this node to seed addresses that are not live members, the first one also telling it which
    /// of its own addresses to advertise (see `adopt_route`).
    fn announce_to(&mut self, addrs: Vec<SocketAddr>) {
        if let Some(first) = addrs.first() {
            self.adopt_route(*first);
        }
        for addr in addrs {
            if let Err(e) = self.foca.announce(NodeId::seed(addr), &mut self.runtime) {
                tracing::debug!("announce to {addr}: {e}");
            }
        }
    }

    /// Publishes this node's state under a new version of its current generation.
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

    fn receive(&mut self, packet: &mut [u8], from: SocketAddr) {
        let payload = match &mut self.sealer {
            None => &packet[..],
            Some(sealer) => match sealer.open(packet, unix_ms()) {
                Ok(payload) => {
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    payload
                }
                Err(why) => return self.refused(why, from),
            },
        };
        // Read once here for these checks; foca reads it again, as it must.
        let header: Option<foca::Header<NodeId>> = PostcardCodec.decode_header(payload).ok();
        if let Some(h) = &header {
            if self.outranked(h) || self.doubted_turn_undead(h) {
                return;
            }
            self.show_the_later_identity(h);
        }
        if let Err(e) = self.foca.handle_data(payload, &mut self.runtime) {
            tracing::debug!("gossip from {from}: {e}");
            return;
        }
        // Joined once a member speaks to this identity: foca's `Active` also comes when the one member that
        // answered refused it (a `TurnUndead`), and does not come after a rejoin that kept live members.
        let spoken_to = header.is_some_and(|h| {
            h.dst == self.me && h.message != foca::Message::TurnUndead && h.message != foca::Message::Announce
        });
        if spoken_to && (self.rejoining || !self.joined) {
            self.rejoining = false;
            self.joined = true;
            tracing::info!(
                "joined the cluster as {} ({}), generation {}",
                self.me.name,
                self.me.gossip,
                self.me.generation
            );
        }
    }

    /// Counts a refused packet; logs the first of each kind and then at powers of two, so a flood of junk
    /// cannot flood the log too.
    fn refused(&mut self, why: Refused, from: SocketAddr) {
        let count = self.stats.refused[why.index()].fetch_add(1, Ordering::Relaxed) + 1;
        if count.is_power_of_two() && why != Refused::Duplicate {
            let hint = match why {
                Refused::UnknownKey | Refused::Forged | Refused::Malformed => " (check the cluster key)",
                Refused::Stale => " (check that the hosts' clocks agree)",
                Refused::Replayed | Refused::Duplicate => "",
            };
            tracing::warn!("dropped {count} gossip packets that {why}, the last from {from}{hint}");
        }
    }

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
            self.stats.members.store(members.len() as u64, Ordering::Relaxed);
            self.seeds.set_alone(members.is_empty());
            self.report_events(&members);
            self.membership.changed(&members);
        }
        if changed || std::mem::take(&mut self.reevaluate) {
            self.acknowledge_drains();
            self.finish_drain();
        }
        let now = Instant::now();
        while let Some((to, data)) = self.runtime.to_send() {
            if self.spurious_turn_undead(&data) {
                tracing::debug!("not telling {} it is down: it refuted the suspicion", to.gossip);
                continue;
            }
            let copy = self.send_with_copy(&data, to.gossip).await;
            self.copies.push_back((now + COPY_AFTER, to.gossip, copy));
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timers.push(now + after, timer);
        }
    }

    /// Sends `data` to `to` and returns its copy, to be sent a little later. The copy is sealed now, right
    /// after the original, because a receiver tells a copy whose original it already has by the counter just
    /// before the copy's: sealed later, that counter would belong to some other packet, often to another
    /// node, and copies would pass as new messages while a lost original's copy could be refused.
    async fn send_with_copy(&mut self, data: &[u8], to: SocketAddr) -> Vec<u8> {
        let copy = match &mut self.sealer {
            Some(sealer) => {
                let now_ms = unix_ms();
                sealer.seal(data, now_ms, false, &mut self.wire);
                let mut copy = Vec::with_capacity(self.wire.len());
                sealer.seal(data, now_ms, true, &mut copy);
                copy
            }
            None => {
                self.wire.clear();
                self.wire.extend_from_slice(data);
                data.to_vec()
            }
        };
        self.send_wire(&self.wire, to).await;
        copy
    }

    /// Sends bytes as they go on the wire: sealed already, or gossip in the clear.
    async fn send_wire(&self, wire: &[u8], to: SocketAddr) {
        if let Err(e) = self.socket.send_to(wire, to).await {
            tracing::debug!("gossip send to {to}: {e}");
        }
    }

    async fn send_copies(&mut self) {
        let now = Instant::now();
        while self.copies.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((_, to, copy)) = self.copies.pop_front() {
                self.send_wire(&copy, to).await;
            }
        }
    }

    fn housekeeping(&mut self) {
        if let (Some(watch), Some(sealer)) = (&mut self.key_watch, &mut self.sealer) {
            if let Some(keyring) = watch.changed() {
                tracing::info!(
                    "cluster keys reloaded: sealing with {}, opening with {:?}",
                    keyring.ids()[0],
                    keyring.ids()
                );
                sealer.set_keyring(keyring);
            }
        }
        let (members, me) = (&self.members, self.me.gossip);
        self.table.borrow_mut().prune(|addr| *addr == me || members.contains_key(addr), self.max_members);
        if self.rejoining {
            self.announce_rejoin();
        }
        if Instant::now() >= self.next_repeat {
            self.next_repeat = Instant::now() + REPEAT_EVERY;
            self.repeat();
        }
    }

    /// See [`REPEAT_EVERY`]: this node's state under the version it has, and its acknowledgements of drains
    /// still under way.
    fn repeat(&mut self) {
        let mut said = Vec::new();
        if self.version > 0 {
            said.push(Broadcast::State {
                node: self.me.gossip,
                generation: self.me.generation,
                version: self.version,
                state: self.state.clone(),
            });
        }
        {
            let table = self.table.borrow();
            for id in self.members.values() {
                let Some(entry) = table.current(id) else { continue };
                if entry.state.draining && table.acked(self.me.gossip, id, entry.version) {
                    said.push(self.drain_ack(id, entry.version));
                }
            }
        }
        self.table.borrow_mut().repeating = true;
        for b in said {
            if let Err(e) = self.foca.add_broadcast(&state::encode(&b)) {
                tracing::debug!("repeating a broadcast: {e}");
            }
        }
        self.table.borrow_mut().repeating = false;
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

    /// Returns (membership changed, a new member appeared).
    fn apply(&mut self, notification: OwnedNotification<NodeId>) -> (bool, bool) {
        match notification {
            OwnedNotification::MemberUp(id) => self.upsert(id),
            OwnedNotification::MemberDown(id) => {
                if self.members.get(&id.gossip) != Some(&id) {
                    return (false, false);
                }
                tracing::info!("member down: {} {} ({:?})", id.name, id.gossip, id.role);
                self.members.remove(&id.gossip);
                let found = self.over_cap && self.admit_waiting();
                (true, found)
            }
            OwnedNotification::Rename(old, new) => self.renamed(old, new),
            OwnedNotification::Rejoin(new) => {
                self.stats.rejoins.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "the cluster declared this node down (a partition, a paused process or lost packets): \
                     rejoined as generation {}",
                    new.generation
                );
                self.start_afresh(new)
            }
            OwnedNotification::ProbeFailed(_, id) => {
                if self.members.get(&id.gossip) == Some(&id) {
                    tracing::debug!("probe of {} {} failed", id.name, id.gossip);
                    self.membership.suspected(&id);
                }
                (false, false)
            }
            // Logged once a member speaks to this identity (see `receive`).
            OwnedNotification::Active => (false, false),
            OwnedNotification::Idle if !self.leaving => {
                tracing::info!("no other live members");
                (false, false)
            }
            OwnedNotification::Defunct if !self.leaving => {
                tracing::error!("the cluster declared this node down and it cannot rejoin");
                (false, false)
            }
            _ => (false, false),
        }
    }

    /// foca replaced `old` with `new` at one address. It says no more when both are active (a rejoin seen
    /// by a member that held the old identity alive) or both are down (a node that rejoined and died while
    /// this one did not hear of it): only an active `new` is a member.
    fn renamed(&mut self, old: NodeId, new: NodeId) -> (bool, bool) {
        let active = self.foca.iter_members().any(|m| *m.id() == new);
        if active {
            // A rejoin of a member held alive here: it is the same process, whose state goes on until it
            // says it again under the new identity (a new process must say it first).
            if super::identity::renews(&old, &new) && self.members.get(&old.gossip) == Some(&old) {
                self.table.borrow_mut().inherit(&old, &new);
            }
            return self.upsert(new);
        }
        if self.members.get(&old.gossip) == Some(&old) {
            tracing::info!("member down: {} {} ({:?}), replaced by a later identity", old.name, old.gossip, old.role);
            self.members.remove(&old.gossip);
            return (true, self.over_cap && self.admit_waiting());
        }
        tracing::info!("member {} {} stays down: its later identity is down too", new.name, new.gossip);
        (false, false)
    }

    /// Records a member unless a newer generation on the same address is already known, or the table is full.
    fn upsert(&mut self, id: NodeId) -> (bool, bool) {
        match self.members.get(&id.gossip) {
            Some(known) if known.generation > id.generation => (false, false),
            Some(known) if *known == id => (false, false),
            None if self.members.len() >= self.max_members => {
                self.over_cap = true;
                let count = self.stats.members_refused.fetch_add(1, Ordering::Relaxed) + 1;
                if count.is_power_of_two() {
                    tracing::warn!(
                        "member limit of {} reached: ignoring {} {} ({count} refused so far); raise --max-members",
                        self.max_members,
                        id.name,
                        id.gossip
                    );
                }
                (false, false)
            }
            _ => {
                tracing::info!("member up: {} {} ({:?}) service {:?}", id.name, id.gossip, id.role, id.service);
                self.members.insert(id.gossip, id);
                (true, true)
            }
        }
    }

    /// After a member left, admits live members that were refused while the table was full.
    fn admit_waiting(&mut self) -> bool {
        let waiting: Vec<NodeId> = self
            .foca
            .iter_members()
            .map(|m| m.id().clone())
            .filter(|id| !self.members.contains_key(&id.gossip))
            .collect();
        let mut admitted = false;
        for id in waiting {
            if self.members.len() >= self.max_members {
                return admitted;
            }
            admitted |= self.upsert(id).0;
        }
        self.over_cap = false;
        admitted
    }
}
