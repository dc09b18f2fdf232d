//! A drain: the acknowledgements a proxy gives for members that drain, and the answer a draining node waits
//! for.

use std::time::Duration;

use tokio::time::Instant;

use super::Node;
use crate::cluster::identity::{NodeId, Role};
use crate::cluster::state::{self, Broadcast};

/// How often pending drain acknowledgements are re-evaluated.
const DRAIN_RECHECK: Duration = Duration::from_millis(20);

impl Node {
    /// A proxy tells each draining member once it routes nothing new to it and has nothing in flight to it.
    pub(super) fn acknowledge_drains(&mut self) {
        if self.me.role != Role::Proxy {
            return;
        }
        let mut pending = false;
        let mut acks = Vec::new();
        {
            let table = self.table.borrow();
            for id in self.members.values() {
                let Some(entry) = table.current(id) else { continue };
                if !entry.state.draining || table.acked(self.me.gossip, id, entry.version) {
                    continue;
                }
                if self.membership.busy_with(id) {
                    pending = true;
                } else {
                    acks.push(self.drain_ack(id, entry.version));
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

    /// This proxy's acknowledgement that it stopped routing to `id` as of its state `version`.
    pub(super) fn drain_ack(&self, id: &NodeId, version: u64) -> Broadcast {
        Broadcast::DrainAck { proxy: self.me.gossip, node: id.gossip, generation: id.generation, version }
    }

    /// A draining node is done once every live proxy has acknowledged, or at its deadline.
    pub(super) fn finish_drain(&mut self) {
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
}
