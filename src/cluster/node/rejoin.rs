//! How this node's own identity changes: a rejoin started afresh, an address corrected to the route to a
//! seed, a leap past a later identity the cluster holds at this address, and the resumption after an
//! upgrade's pause; and the `TurnUndead`s that are not believed.

use std::net::SocketAddr;
use std::time::Duration;

use foca::{AccumulatingRuntime, Codec, Foca, PostcardCodec};
use tokio::time::Instant;

use super::Node;
use crate::cluster::identity::{NodeId, MAX_NAME, RESTART_LEAP};
use crate::cluster::state::Handler;
use crate::cluster::timers::TimerHeap;
use crate::cluster::unix_ms;

/// How long a member held down may say this node is down before it is believed (see `doubted_turn_undead`).
const DOUBT_FOR: Duration = Duration::from_secs(3);
/// How often the sender of stale packets at one address is shown the identity held there.
const SHOW_EVERY: Duration = Duration::from_secs(1);

impl Node {
    /// Gossips again after a pause whose successor did not take over (it may have announced itself, under a
    /// later identity at this address, before it failed): as a new identity, past any it can have had.
    pub(super) fn resume(&mut self) {
        self.paused = false;
        // Past the successor too if it leaped past this process (see `outranked`).
        let generation = unix_ms().max(self.me.generation.saturating_add(2 * RESTART_LEAP));
        let next = NodeId { generation, ..self.me.clone() };
        tracing::info!("gossip resumed as generation {generation}: the successor did not take over");
        let (changed, _) = self.start_afresh(next);
        self.table.borrow_mut().changed |= changed;
        // What arrived while paused was meant for the successor or is stale.
        let mut drained = [0u8; 1];
        while self.socket.try_recv_from(&mut drained).is_ok() {}
    }

    /// A container on several networks (swarm's overlay and its gateway bridge, say) may have guessed the
    /// wrong interface to advertise: before announcing itself for the first time, the node takes the address
    /// the kernel would send from to reach `seed` instead, the one peers on that network can answer.
    pub(super) fn adopt_route(&mut self, seed: SocketAddr) {
        if !std::mem::take(&mut self.advertise.guessed) || !self.members.is_empty() {
            return;
        }
        let Some(ip) = route_source(seed) else { return };
        if ip == self.me.gossip.ip() || ip.is_unspecified() {
            return;
        }
        let mut id = self.me.clone();
        id.gossip.set_ip(ip);
        // A name that was the guessed address (no --name) follows it.
        if id.name == self.me.gossip.to_string() {
            id.name = id.gossip.to_string();
            id.name.truncate(MAX_NAME);
        }
        if let (true, Some(service)) = (self.advertise.service_follows, id.service.as_mut()) {
            service.set_ip(ip);
        }
        id.generation += 1;
        match self.foca.change_identity(id.clone(), &mut self.runtime) {
            Ok(()) => {
                tracing::info!("advertised as {} now: the address this host reaches seed {seed} from", id.gossip);
                self.seeds.set_me(id.gossip);
                self.me = id;
                self.membership.identity(&self.me);
                self.broadcast_state();
            }
            Err(e) => tracing::warn!("cannot advertise {ip}: {e}"),
        }
    }

    /// The cluster holds a later identity at this node's gossip address than this process's: a restart after
    /// the wall clock stepped back (NTP, a restored snapshot), so that its generation, from the clock, is
    /// older than its predecessor's, which every member that holds it prefers (and answers with `TurnUndead`,
    /// one generation at a time). Told so by a packet addressed to that identity, the node starts afresh past
    /// it, by more than a rejoin's step: no member takes it for its predecessor rejoining (see
    /// `identity::renews`). Whether it has joined does not matter: a member that never held the predecessor
    /// (a proxy started since) accepts it, the others refuse it. No other live process has this address: a
    /// binary upgrade's predecessor pauses its gossip while its successor starts, and resumes past it.
    pub(super) fn outranked(&mut self, header: &foca::Header<NodeId>) -> bool {
        let held = &header.dst;
        if held.gossip != self.me.gossip || held.generation <= self.me.generation {
            return false;
        }
        let leap = held.generation.saturating_add(RESTART_LEAP);
        let next = NodeId { generation: leap, ..self.me.clone() };
        tracing::warn!(
            "the cluster holds generation {} at {}, later than this process's {} (did the clock step back?): \
             joining as generation {}",
            held.generation,
            held.gossip,
            self.me.generation,
            next.generation
        );
        let (changed, _) = self.start_afresh(next);
        self.table.borrow_mut().changed |= changed;
        true
    }

    /// A packet from an identity older than the one held at its address (see `outranked`): foca drops it
    /// and answers `TurnUndead`, which takes its sender one generation further; an announce addressed to the
    /// held identity shows the sender how far it must go. At most once a second per address.
    pub(super) fn show_the_later_identity(&mut self, header: &foca::Header<NodeId>) {
        let src = &header.src;
        // The common case, without a scan of foca's members: the sender is a member as this node knows it.
        if self.members.get(&src.gossip) == Some(src) {
            return;
        }
        let held = self
            .foca
            .iter_membership_state()
            .map(|m| m.id())
            .find(|id| id.gossip == src.gossip && id.generation > src.generation);
        let Some(held) = held.cloned() else { return };
        let now = Instant::now();
        if self.shown.get(&held.gossip).is_some_and(|at| now.saturating_duration_since(*at) < SHOW_EVERY) {
            return;
        }
        self.shown.retain(|_, at| now.saturating_duration_since(*at) < SHOW_EVERY);
        self.shown.insert(held.gossip, now);
        if let Err(e) = self.foca.announce(held, &mut self.runtime) {
            tracing::debug!("announce to a later identity: {e}");
        }
    }

    /// A member this node holds down says this node is down, while others still talk to it: after a
    /// partition heals, the side that was cut off holds the rest down and tells each so as they speak to it.
    /// Believed at once, a healthy member rejoined for nothing (a new identity, hook events, a ramp); the
    /// node cut off rejoins within a second or so, its announces then carry its new identity. Believed once
    /// the sender has said so for [`DOUBT_FOR`]: a node in the minority of a partial partition must rejoin.
    pub(super) fn doubted_turn_undead(&mut self, header: &foca::Header<NodeId>) -> bool {
        let to_me = header.dst == self.me;
        if header.message != foca::Message::TurnUndead || !to_me || self.foca.iter_members().next().is_none() {
            return false;
        }
        let sender_down =
            self.foca.iter_membership_state().any(|m| *m.id() == header.src && m.state() == foca::State::Down);
        if !sender_down {
            return false;
        }
        let now = Instant::now();
        self.doubts.retain(|_, since| now.saturating_duration_since(*since) < DOUBT_FOR * 4);
        let since = *self.doubts.entry(header.src.gossip).or_insert(now);
        now.saturating_duration_since(since) < DOUBT_FOR
    }

    /// foca 2.0 sends `TurnUndead` when a suspicion times out even if the member refuted it meanwhile
    /// (`apply_existing_if` answers `Some` for a failed condition, and the courtesy message goes out
    /// regardless): a live member told so rejoins under a new generation, so under packet loss healthy
    /// members flapped every few seconds. A `TurnUndead` to a member foca still holds active is that case.
    pub(super) fn spurious_turn_undead(&self, data: &[u8]) -> bool {
        let Ok(header) = PostcardCodec.decode_header(data) else { return false };
        header.message == foca::Message::TurnUndead && self.foca.iter_members().any(|m| *m.id() == header.dst)
    }

    /// Starts foca again as `identity` (a rejoin), keeping only the members it holds alive. The cluster had
    /// declared this node down, so the verdicts it reached meanwhile are suspect (most likely it was the one
    /// cut off), and foca would pass them on under the new identity: live members declared down, and healthy
    /// backends out of every proxy's rotation while they rejoined in turn. foca's own `change_identity` also
    /// declares the old identity down, which takes this node out of rotation when it need not be: a proxy
    /// hears the new identity replace the old one instead (see `renamed`). The members' states are kept; the
    /// cluster hears of the new identity by announces to the members and the seeds.
    pub(super) fn start_afresh(&mut self, identity: NodeId) -> (bool, bool) {
        // Alive at their incarnations: at incarnation 0 a member's later suspicion would be dropped by every
        // other member as older than what they hold, and it could not refute it; kept as suspects, with no
        // timer and the suspicion never spread, the next failed probe would declare them down unrefuted.
        let living: Vec<foca::Member<NodeId>> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() != foca::State::Down)
            .map(|m| foca::Member::new(m.id().clone(), m.incarnation(), foca::State::Alive))
            .collect();
        self.foca = Foca::with_custom_broadcast(
            identity.clone(),
            self.swim.clone(),
            rand::make_rng(),
            PostcardCodec,
            Handler(self.table.clone()),
        );
        // What the old instance had scheduled or meant to send or say is about the members it forgot.
        self.timers = TimerHeap::new();
        self.runtime = AccumulatingRuntime::new();
        // Known already: not passed on, and the members they name stay as they are here.
        let kept: Vec<NodeId> = living.iter().map(|m| m.id().clone()).collect();
        if let Err(e) = self.foca.apply_many(living.into_iter(), false, &mut self.runtime) {
            tracing::debug!("members kept over the rejoin: {e}");
        }
        // What that said (members up that are known, this node active) is not news; the rejoin is over once a
        // member speaks to the new identity.
        while self.runtime.to_notify().is_some() {}
        // What the old instance said in the packet that brought the rejoin, after it, went with its runtime:
        // this node's list is made to match what foca keeps, both ways (a member just declared down leaves, one
        // just come or renamed joins).
        let before = self.members.clone();
        self.members.retain(|_, id| kept.contains(id));
        let mut found = self.over_cap && self.members.len() < before.len() && self.admit_waiting();
        for id in kept {
            // Not one still waiting over --max-members: it was counted when refused.
            if self.members.contains_key(&id.gossip) || self.members.len() < self.max_members {
                found |= self.upsert(id).1;
            }
        }
        let changed = self.members != before;
        self.me = identity;
        self.membership.identity(&self.me);
        self.broadcast_state();
        if let Some(pending) = &mut self.drain {
            pending.version = self.version;
        }
        // Drain acknowledgements still to be sent went with the old instance: said again at the next
        // housekeeping, not in 5 s.
        self.next_repeat = Instant::now();
        self.rejoining = true;
        self.announce_rejoin();
        (changed, found)
    }

    /// After a rejoin foca gossips the new generation to a few members once and then waits to be spoken to
    /// (told it was down by a lone message, it does not even probe): if that gossip is lost, only the others'
    /// announcing to the identity they hold down brings it back, and they pick two of their down members at
    /// random each second. So until someone answers, the node announces itself each second to every member
    /// it knew and every seed.
    pub(super) fn announce_rejoin(&mut self) {
        let me = self.me.gossip;
        let mut to: Vec<SocketAddr> = self.members.keys().copied().chain(self.seeds.last_addresses()).collect();
        to.sort();
        to.dedup();
        for addr in to.into_iter().filter(|a| *a != me) {
            if let Err(e) = self.foca.announce(NodeId::seed(addr), &mut self.runtime) {
                tracing::debug!("announce to {addr}: {e}");
            }
        }
    }
}

/// The local address the kernel picks to send to `to` (a connected UDP socket sends nothing).
fn route_source(to: SocketAddr) -> Option<std::net::IpAddr> {
    let any: SocketAddr =
        if to.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(to).ok()?;
    Some(socket.local_addr().ok()?.ip())
}
