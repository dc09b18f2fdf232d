//! The gossip node: one task owns the Foca instance, the UDP socket and the timer heap, and turns foca's
//! notifications into the set of live members that the rest of the program is told about.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

use super::auth::PacketAuth;
use super::identity::NodeId;
use super::timers::TimerHeap;
use super::{ClusterConfig, MembershipListener};

type Swim = Foca<NodeId, PostcardCodec, StdRng, NoCustomBroadcast>;

/// Retry a seed that is not a member at most this often once backoff has grown.
const MAX_JOIN_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_JOIN_BACKOFF: Duration = Duration::from_millis(200);
/// How often a seed that is already a member is checked again (it may restart under a new identity).
const SEED_RECHECK: Duration = Duration::from_secs(1);
const FAR: Duration = Duration::from_secs(3600);

pub enum Command {
    Leave(oneshot::Sender<()>),
}

struct Seed {
    spec: String,
    next_try: Instant,
    backoff: Duration,
}

pub struct Node {
    foca: Swim,
    runtime: AccumulatingRuntime<NodeId>,
    timers: TimerHeap<foca::Timer<NodeId>>,
    socket: UdpSocket,
    auth: PacketAuth,
    me: NodeId,
    members: HashMap<SocketAddr, NodeId>,
    seeds: Vec<Seed>,
    listener: MembershipListener,
    rejected: u64,
    wire: Vec<u8>,
}

impl Node {
    pub fn new(config: &ClusterConfig, me: NodeId, socket: UdpSocket, listener: MembershipListener) -> Node {
        let mut swim = foca::Config::new_lan(std::num::NonZeroU32::new(32).expect("non-zero"));
        swim.probe_period = config.probe_period;
        swim.probe_rtt = config.probe_rtt;
        swim.suspect_to_down_after = config.suspect_timeout;
        let rng: StdRng = rand::make_rng();
        let now = Instant::now();
        Node {
            foca: Foca::new(me.clone(), swim, rng, PostcardCodec),
            runtime: AccumulatingRuntime::new(),
            timers: TimerHeap::new(),
            socket,
            auth: PacketAuth::new(config.key.as_deref()),
            me,
            members: HashMap::new(),
            seeds: config
                .join
                .iter()
                .map(|spec| Seed { spec: spec.clone(), next_try: now, backoff: FIRST_JOIN_BACKOFF })
                .collect(),
            listener,
            rejected: 0,
            wire: Vec::with_capacity(1500),
        }
    }

    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut packet = vec![0u8; 65_536];
        loop {
            self.flush().await;
            let far = Instant::now() + FAR;
            let next_timer = self.timers.next_deadline().unwrap_or(far);
            let next_seed = self.seeds.iter().map(|s| s.next_try).min().unwrap_or(far);
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
                command = commands.recv() => {
                    let done = command.map(|Command::Leave(done)| done);
                    if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
                        tracing::debug!("leave: {e}");
                    }
                    self.flush().await;
                    tracing::info!("left the cluster");
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
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
        self.flush().await;
    }

    /// Sends what foca queued, schedules its timers and applies its notifications.
    async fn flush(&mut self) {
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
        let mut changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            changed |= self.apply(notification);
        }
        if changed {
            let mut live: Vec<NodeId> = self.members.values().cloned().collect();
            live.sort_by(|a, b| (&a.name, a.gossip).cmp(&(&b.name, b.gossip)));
            (self.listener)(&live);
        }
    }

    fn apply(&mut self, notification: OwnedNotification<NodeId>) -> bool {
        match notification {
            OwnedNotification::MemberUp(id) => self.upsert(id),
            OwnedNotification::MemberDown(id) => {
                if self.members.get(&id.gossip) == Some(&id) {
                    tracing::info!("member down: {} {} ({:?})", id.name, id.gossip, id.role);
                    self.members.remove(&id.gossip);
                    return true;
                }
                false
            }
            OwnedNotification::Rename(_, new) => self.upsert(new),
            OwnedNotification::Active => {
                tracing::info!("joined the cluster as {} ({})", self.me.name, self.me.gossip);
                false
            }
            OwnedNotification::Idle => {
                tracing::info!("no other live members");
                false
            }
            OwnedNotification::Defunct => {
                tracing::warn!("declared down by the cluster; rejoining");
                false
            }
            _ => false,
        }
    }

    /// Records a member unless a newer generation on the same address is already known.
    fn upsert(&mut self, id: NodeId) -> bool {
        match self.members.get(&id.gossip) {
            Some(known) if known.generation > id.generation => false,
            Some(known) if *known == id => false,
            _ => {
                tracing::info!("member up: {} {} ({:?}) service {:?}", id.name, id.gossip, id.role, id.service);
                self.members.insert(id.gossip, id);
                true
            }
        }
    }
}
