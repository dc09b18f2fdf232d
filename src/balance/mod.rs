//! The backend set and the algorithms that pick from it.
//!
//! The set is published as an immutable snapshot ([`BackendSet`]) behind an `ArcSwap`: writers (static
//! configuration today, gossip membership later) swap in a new set; each data-plane thread loads it without a
//! lock. Picking state such as the round-robin cursor is per thread.

mod backend;
mod membership;
mod round_robin;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use backend::{Backend, InFlight};
pub use membership::ClusterBackends;
pub use round_robin::RoundRobin;

/// An immutable snapshot of the servers that may receive traffic.
#[derive(Debug, Default)]
pub struct BackendSet {
    pub servers: Vec<Arc<Backend>>,
}

/// The shared, swappable handle every thread reads snapshots from.
pub type SharedBackends = Arc<ArcSwap<BackendSet>>;

pub fn shared(set: BackendSet) -> SharedBackends {
    Arc::new(ArcSwap::from_pointee(set))
}
