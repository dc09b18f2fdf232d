//! Consistent hashing (HAProxy's `balance source|uri|hdr(NAME)` with `hash-type consistent`): each server in
//! rotation owns points on a ring in proportion to its weight, placed by its identity alone, so every proxy
//! builds the same ring and a server leaving moves only the keys it owned. With a balance factor (HAProxy's
//! `hash-balance-factor`), a key whose server already carries more than factor x the average load goes on
//! along the ring to the next one that does not: consistent hashing with bounded loads.

use std::sync::Arc;

use super::{rank, Backend, BackendSet};

/// Points per unit of weight, as HAProxy's ring has: servers all of weight 1 (a HAProxy habit) or an agent's
/// `5%` still own enough points to share the keys evenly, and a leaving server's keys spread over the others.
const POINTS_PER_WEIGHT: u64 = 16;
/// A server never owns more points than this: weights above 1024 own as many as 1024.
const MAX_POINTS: u64 = 16 * 1024;

/// A stable 64-bit hash (FNV-1a, then MurmurHash3's finalizer): the same on every proxy and every version,
/// unlike the standard library's hasher.
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Sorted points, each naming the server (an index into the set's `servers`) that owns it, with an index
/// from a hash's top bits to the first point at or after them, so a lookup reads one or two points rather than
/// searching the whole ring.
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
    /// `2^bits` entries; entry `b` is the position of the first point whose top `bits` bits are `b` or more.
    index: Vec<u32>,
    bits: u32,
}

impl Ring {
    /// A ring of `(index, identity, weight)` servers.
    pub fn new(servers: impl Iterator<Item = (usize, u64, u16)>) -> Ring {
        let mut points = Vec::new();
        for (index, identity, weight) in servers {
            let n = (u64::from(weight) * POINTS_PER_WEIGHT).clamp(1, MAX_POINTS);
            for k in 0..n {
                points.push((mix(identity ^ mix(k.wrapping_add(1))), index));
            }
        }
        points.sort_unstable();
        let bits = points.len().max(1).next_power_of_two().trailing_zeros().max(1);
        let mut index = Vec::with_capacity(1 << bits);
        let mut at = 0;
        for bucket in 0..1u64 << bits {
            while at < points.len() && points[at].0 >> (64 - bits) < bucket {
                at += 1;
            }
            index.push(at as u32);
        }
        Ring { points, index, bits }
    }

    /// The position of the first point at or after `hash`, wrapping around.
    fn start(&self, hash: u64) -> usize {
        let mut i = self.index[(hash >> (64 - self.bits)) as usize] as usize;
        while i < self.points.len() && self.points[i].0 < hash {
            i += 1;
        }
        if i == self.points.len() {
            0
        } else {
            i
        }
    }
}

/// The hashing algorithm: no per-thread state beyond the balance factor.
pub struct Hash {
    /// Percent of the average load a server may carry before keys spill past it; 0: unbounded.
    factor: u32,
}

impl Hash {
    pub fn new(factor: u32) -> Hash {
        Hash { factor }
    }

    /// The server owning `hash`, skipping `avoid`, ejected servers and (with a factor) overloaded ones.
    pub fn pick(&self, set: &BackendSet, hash: u64, avoid: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let ring = set.ring();
        let n = ring.points.len();
        if n == 0 {
            return None;
        }
        // The cap is worked out only for a server that already has a request: every server may carry one. Each
        // server's share of the slots follows its weight, as in HAProxy's `chash_server_is_eligible`.
        let total_weight = set.rotation_weight().max(1);
        let within_cap = |server: &Backend, weight: u16| {
            let load = server.in_flight() as u64;
            // The request about to be sent counts too.
            let slots = || (server.pool_in_flight() as u64 + 1) * u64::from(self.factor) * u64::from(weight);
            self.factor == 0 || load == 0 || load < slots().div_ceil(100 * total_weight)
        };
        let start = ring.start(hash);
        let mut fallback: Option<(u8, usize)> = None;
        // Every server judged once (the first 128 by index are told apart: the walk ends once each server in
        // rotation is judged, not after every one of its points when all are full or overloaded), every
        // point at most once: a key whose servers are all overloaded still gets one.
        let (mut judged, mut distinct, in_rotation) = (0u128, 0, set.rotation().len());
        for step in 0..n {
            let at = start + step;
            let index = ring.points[if at < n { at } else { at - n }].1;
            if index < 128 {
                if judged & 1 << index != 0 {
                    continue;
                }
                judged |= 1 << index;
                distinct += 1;
            }
            let server = &set.servers[index];
            match rank(server, avoid) {
                Some(0) if within_cap(server, set.weights[index]) => return Some(server.clone()),
                Some(r) if fallback.is_none_or(|(best, _)| r < best) => fallback = Some((r.max(1), index)),
                _ => {}
            }
            if distinct == in_rotation {
                break;
            }
        }
        fallback.map(|(_, i)| set.servers[i].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{Pool, ServerState};
    use crate::config::value::backend;

    fn servers(n: usize) -> Vec<Arc<Backend>> {
        let pool = Pool::new(1);
        (0..n).map(|i| Arc::new(Backend::new(&backend(&format!("s{i}=10.0.0.{i}:80")).unwrap(), &pool))).collect()
    }

    fn set(all: &[Arc<Backend>], up: &[bool]) -> BackendSet {
        let states = up.iter().map(|&u| if u { ServerState::Up } else { ServerState::Down });
        BackendSet::new(all.iter().cloned().zip(states).map(|(b, s)| (b, 100, s)).collect())
    }

    fn owner(h: &Hash, set: &BackendSet, key: u64) -> String {
        h.pick(set, key, &[]).unwrap().name().to_string()
    }

    #[test]
    fn a_server_leaving_moves_only_its_own_keys() {
        let all = servers(4);
        let (full, three) = (set(&all, &[true; 4]), set(&all, &[true, true, false, true]));
        let h = Hash::new(0);
        let keys: Vec<u64> = (0..4000u64).map(|k| key_hash(&k.to_be_bytes())).collect();
        let (mut moved, mut owned_by_gone) = (0, 0);
        for &k in &keys {
            let (before, after) = (owner(&h, &full, k), owner(&h, &three, k));
            assert_eq!(before, owner(&h, &full, k), "the same key, the same server");
            if before == "s2" {
                owned_by_gone += 1;
                assert_ne!(after, "s2");
            } else if before != after {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of the servers that stayed did not move");
        let share = owned_by_gone as f64 / keys.len() as f64;
        assert!((0.15..0.35).contains(&share), "each of 4 servers owns about a quarter: {share}");
    }

    #[test]
    fn weights_and_bounded_load_shape_the_shares() {
        let all = servers(2);
        let weighted =
            BackendSet::new(vec![(all[0].clone(), 300, ServerState::Up), (all[1].clone(), 100, ServerState::Up)]);
        let h = Hash::new(0);
        let heavy = (0..4000u64).filter(|k| owner(&h, &weighted, key_hash(&k.to_be_bytes())) == "s0").count();
        assert!((2600..3400).contains(&heavy), "weight 300:100 owns about 3/4 of the keys: {heavy}");

        // A hot key: its server already carries 10 requests, the other none; with factor 150 it spills.
        let even = set(&all, &[true, true]);
        let key = (0..100u64).map(|k| key_hash(&k.to_be_bytes())).find(|&k| owner(&h, &even, k) == "s0").unwrap();
        let busy: Vec<_> = (0..10).map(|_| all[0].clone().enter()).collect();
        assert_eq!(owner(&h, &even, key), "s0", "unbounded: the key stays");
        assert_eq!(owner(&Hash::new(150), &even, key), "s1", "bounded: the hot key spills to the next server");
        drop(busy);
        assert_eq!(owner(&Hash::new(150), &even, key), "s0", "back once the load is gone");

        // Weighted 3:1, the heavy server may carry 3/4 of 1.25 x the requests (the one to send included): its
        // keys stay on it with 6 held there (an even split capped it at 4), and spill at 15 (not under
        // ceil(0.9375 x 16)).
        let key = (0..100u64).map(|k| key_hash(&k.to_be_bytes())).find(|&k| owner(&h, &weighted, k) == "s0").unwrap();
        let mut held: Vec<_> = (0..6).map(|_| all[0].clone().enter()).collect();
        assert_eq!(owner(&Hash::new(125), &weighted, key), "s0", "within its weighted share");
        held.extend((6..15).map(|_| all[0].clone().enter()));
        assert_eq!(owner(&Hash::new(125), &weighted, key), "s1", "beyond it");
        drop(held);
    }

    #[test]
    fn small_weights_still_share_the_keys() {
        // Three servers of weight 1 owned one point each: shares like 55/30/15, and a leaving server's whole
        // arc went to one neighbour.
        let all = servers(3);
        let ones = |up: [bool; 3]| {
            let states = up.map(|u| if u { ServerState::Up } else { ServerState::Down });
            BackendSet::new(all.iter().cloned().zip(states).map(|(b, s)| (b, 1, s)).collect())
        };
        let (full, two) = (ones([true; 3]), ones([true, false, true]));
        let h = Hash::new(0);
        let keys: Vec<u64> = (0..3000u64).map(|k| key_hash(&k.to_be_bytes())).collect();
        for name in ["s0", "s1", "s2"] {
            let share = keys.iter().filter(|&&k| owner(&h, &full, k) == name).count() as f64 / 3000.0;
            assert!((0.2..0.47).contains(&share), "{name} owns {share} of the keys");
        }
        let moved: Vec<String> =
            keys.iter().filter(|&&k| owner(&h, &full, k) == "s1").map(|&k| owner(&h, &two, k)).collect();
        let to_s0 = moved.iter().filter(|o| *o == "s0").count() as f64 / moved.len() as f64;
        assert!((0.2..0.8).contains(&to_s0), "s1's keys spread over both others: {to_s0} to s0");
    }
}
