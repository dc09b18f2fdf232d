//! The cluster as this node sees it, as `serf members` shows it: every member with its role, addresses,
//! tags, status and generation, this node included, and members that went away for a while after (`left`
//! when they drained first, `failed` otherwise). Read by the admin side (`/members`) and printed by
//! `shoal members`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::identity::Role;
use super::state::Member;

/// How long a member that went away stays listed.
pub const RETENTION: Duration = Duration::from_secs(600);

/// One member, as `/members` serves it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    /// Where it gossips.
    pub address: String,
    pub role: String,
    /// Where a backend serves HTTP.
    pub service: Option<String>,
    /// `alive`, `joining` (health not known yet), `unhealthy`, `draining`, `maint`, `left` or `failed`.
    pub status: String,
    pub tags: Vec<(String, String)>,
    /// Milliseconds since the epoch when it started: a restart is a new generation (foca's identity renewal).
    pub generation: u64,
    /// Seconds since its status last changed.
    pub since_change_s: u64,
}

struct Tracked {
    row: Row,
    changed: Instant,
    /// When it went away, for retention.
    gone: Option<Instant>,
}

/// What the gossip thread updates and the admin thread reads (rarely: a lock is fine).
pub struct Roster {
    this: Mutex<Option<Row>>,
    tracked: Mutex<HashMap<(String, u64), Tracked>>,
    /// [`RETENTION`]; a field so that a test can end it without a clock ten minutes past boot.
    retention: Duration,
}

impl Default for Roster {
    fn default() -> Roster {
        Roster { this: Mutex::default(), tracked: Mutex::default(), retention: RETENTION }
    }
}

/// This node's row, blank until `set_this` and `identity` fill it, in either order.
fn own_row(this: &mut Option<Row>) -> &mut Row {
    this.get_or_insert_with(|| Row { status: "alive".into(), ..Row::default() })
}

impl Roster {
    /// This node's own row: its name and role. Its address and generation come from the gossip thread (see
    /// [`Roster::identity`]), which may have told them first.
    pub fn set_this(&self, name: &str, address: std::net::SocketAddr, role: Role) {
        let mut this = self.this.lock();
        let row = own_row(&mut this);
        row.name = name.to_string();
        row.role = role.as_str().to_string();
        if row.address.is_empty() {
            row.address = address.to_string();
        }
    }

    /// This node's identity as it gossips now: the address it advertises (corrected from a guess once it
    /// reaches a seed) and its generation (a new one at each rejoin).
    pub fn identity(&self, address: std::net::SocketAddr, generation: u64) {
        let mut this = self.this.lock();
        let row = own_row(&mut this);
        row.address = address.to_string();
        row.generation = generation;
    }

    /// Takes the live members (this node excluded) after a change.
    pub fn observe(&self, members: &[Member]) {
        let now = Instant::now();
        let mut tracked = self.tracked.lock();
        let mut live = std::collections::HashSet::new();
        for m in members {
            let key = (m.id.gossip.to_string(), m.id.generation);
            live.insert(key.clone());
            let status = match &m.state {
                None if m.id.checked => "joining",
                None => "alive",
                Some(s) if s.maint => "maint",
                Some(s) if s.draining => "draining",
                Some(s) if !s.healthy => "unhealthy",
                Some(_) => "alive",
            };
            let row = Row {
                name: m.id.name.clone(),
                address: key.0.clone(),
                role: m.id.role.as_str().to_string(),
                service: m.id.service.map(|s| s.to_string()),
                status: status.into(),
                tags: m.state.as_ref().map(|s| s.tags.clone()).unwrap_or_default(),
                generation: m.id.generation,
                since_change_s: 0,
            };
            let entry = tracked.entry(key).or_insert_with(|| Tracked { row: row.clone(), changed: now, gone: None });
            if entry.row.status != row.status || entry.gone.is_some() {
                entry.changed = now;
            }
            entry.row = row;
            entry.gone = None;
        }
        for (key, t) in tracked.iter_mut() {
            if !live.contains(key) && t.gone.is_none() {
                t.row.status = if t.row.status == "draining" { "left" } else { "failed" }.into();
                t.changed = now;
                t.gone = Some(now);
            }
        }
        let retention = self.retention;
        tracked.retain(|_, t| t.gone.is_none_or(|g| now.duration_since(g) < retention));
    }

    /// This node first, then every member by name, with their ages brought up to date.
    pub fn rows(&self) -> Vec<Row> {
        let mut tracked = self.tracked.lock();
        // Members that went away leave after RETENTION even when no membership change comes to prune them.
        tracked.retain(|_, t| t.gone.is_none_or(|g| g.elapsed() < self.retention));
        // Not before `set_this` named it.
        let mut rows: Vec<Row> = self.this.lock().iter().filter(|r| !r.name.is_empty()).cloned().collect();
        let mut others: Vec<Row> =
            tracked.values().map(|t| Row { since_change_s: t.changed.elapsed().as_secs(), ..t.row.clone() }).collect();
        others.sort_by(|a, b| (&a.name, &a.address, a.generation).cmp(&(&b.name, &b.address, b.generation)));
        rows.extend(others);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeId;

    /// A member that went away leaves `/members` after RETENTION when read, though no membership change
    /// came to prune it (a quiet cluster kept it for good).
    #[test]
    fn a_member_that_went_away_leaves_after_retention_without_another_change() {
        let mut roster = Roster::default();
        let id = NodeId::new("10.0.0.1:7946".parse().unwrap(), Role::Backend, None, 100, false, "web-1");
        roster.observe(&[Member { id, state: None }]);
        roster.observe(&[]);
        let statuses = |roster: &Roster| roster.rows().into_iter().map(|r| r.status).collect::<Vec<_>>();
        assert_eq!(statuses(&roster), ["failed"]);
        roster.retention = Duration::ZERO;
        assert!(statuses(&roster).is_empty());
    }
}
