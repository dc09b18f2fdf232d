//! `--on-event CMD`: runs a handler on membership events the way Serf does, with `SHOAL_EVENT` set to
//! member-join, member-leave, member-failed or member-update and one line per member on stdin:
//! `name<TAB>address<TAB>role<TAB>tags`. Handlers run one at a time on their own thread; events that arrive
//! while one runs are coalesced by kind into the next run (a member's latest event only, as Serf keeps it),
//! so a burst of joins costs one run and the gossip thread never waits; a run waits a second at most for a
//! quiet moment. The queue is bounded: when a handler is so slow that it fills, further events are
//! dropped and counted rather than held. A handler has `--on-event-timeout` to finish (as Serf does, it is
//! said to be slow after a second); then it and its process group are killed, so a hung handler costs the
//! events of its own run, not every later one. Its stdin is written from a thread of its own: a handler that
//! never reads cannot block the run either. Names and tags arrive by gossip, so their tabs, newlines and
//! other control characters are replaced before they reach a handler's stdin: one member is always one line.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use super::state::Member;

/// Events waiting for a handler run, at most.
const QUEUE: usize = 4096;
/// Events closer together than this are handed to one handler run.
const COALESCE: Duration = Duration::from_millis(50);
/// A run starts at most this long after the first event it carries, however closely others follow.
const COALESCE_AT_MOST: Duration = Duration::from_secs(1);
/// A handler running longer than this is said to be slow (Serf's figure).
const SLOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Join,
    Leave,
    Failed,
    Update,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Join => "member-join",
            EventKind::Leave => "member-leave",
            EventKind::Failed => "member-failed",
            EventKind::Update => "member-update",
        }
    }
}

#[derive(Clone)]
pub struct EventHook {
    tx: SyncSender<(EventKind, Member)>,
    dropped: Arc<AtomicU64>,
}

impl EventHook {
    /// Starts the handler thread for shell command `command`, each run killed after `timeout`.
    pub fn start(command: String, timeout: Duration) -> std::io::Result<EventHook> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new().name("shoal-events".into()).spawn(move || run(&command, timeout, rx))?;
        Ok(EventHook { tx, dropped: Arc::default() })
    }

    pub fn emit(&self, kind: EventKind, member: Member) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send((kind, member)) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!("event handler too slow: {dropped} events dropped so far");
            }
        }
    }
}

/// The stdin line for one member, as Serf writes it.
pub fn line(member: &Member) -> String {
    let tags = member
        .state
        .as_ref()
        .map(|s| s.tags.iter().map(|(k, v)| format!("{}={}", one_field(k), one_field(v))).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    format!("{}\t{}\t{}\t{}\n", one_field(&member.id.name), member.id.gossip.ip(), member.id.role.as_str(), tags)
}

/// Text from gossip made safe for one tab-separated field: control characters become spaces.
fn one_field(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn run(command: &str, timeout: Duration, rx: Receiver<(EventKind, Member)>) {
    while let Some(batch) = next_batch(&rx, COALESCE, COALESCE_AT_MOST) {
        for (kind, members) in by_kind(batch) {
            let input: String = members.iter().map(line).collect();
            invoke(command, kind, input, timeout);
        }
    }
}

/// The events of the next handler runs: the first to come, and those that follow it within `quiet` of each
/// other, for `at_most` from the first at the longest (a steady trickle would otherwise never let a run
/// start, and grow the batch without end). `None` once the hook is gone.
fn next_batch(
    rx: &Receiver<(EventKind, Member)>,
    quiet: Duration,
    at_most: Duration,
) -> Option<Vec<(EventKind, Member)>> {
    let first = rx.recv().ok()?;
    let until = std::time::Instant::now() + at_most;
    let mut batch = vec![first];
    while batch.len() < QUEUE {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(quiet.min(left)) {
            Ok(more) if !left.is_zero() => batch.push(more),
            Ok(more) => {
                batch.push(more);
                break;
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

/// One run per kind of event, each member in the one its latest event names (as Serf's coalescer keeps a
/// member's last event): a member that failed and rejoined within a batch is a join, not a join followed by
/// a failure that would leave a handler believing it gone.
fn by_kind(batch: Vec<(EventKind, Member)>) -> Vec<(EventKind, Vec<Member>)> {
    let mut latest: Vec<(EventKind, Member)> = Vec::with_capacity(batch.len());
    for (kind, member) in batch {
        let same = |m: &Member| m.id.gossip == member.id.gossip && m.id.name == member.id.name;
        match latest.iter_mut().find(|(_, m)| same(m)) {
            Some(slot) => *slot = (kind, member),
            None => latest.push((kind, member)),
        }
    }
    let mut kinds: Vec<EventKind> = latest.iter().map(|(k, _)| *k).collect();
    kinds.sort();
    kinds.dedup();
    kinds
        .into_iter()
        .map(|kind| (kind, latest.iter().filter(|(k, _)| *k == kind).map(|(_, m)| m.clone()).collect()))
        .collect()
}

fn invoke(command: &str, kind: EventKind, input: String, timeout: Duration) {
    let event = kind.as_str();
    // A process group of its own, so that a timeout kills what the handler started too.
    let mut shell = Command::new("/bin/sh");
    for secret in crate::config::SECRET_VARS {
        shell.env_remove(secret);
    }
    let spawned = shell.arg("-c").arg(command).env("SHOAL_EVENT", event).stdin(Stdio::piped()).process_group(0).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return tracing::warn!("cannot run event handler: {e}"),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // Ends when the handler has read it all, or exits (a broken pipe).
        let writer = std::thread::Builder::new()
            .name("shoal-event-input".into())
            .spawn(move || drop(stdin.write_all(input.as_bytes())));
        if let Err(e) = writer {
            tracing::warn!("event handler for {event}: no thread for its input: {e}");
        }
    }
    match wait_within(&mut child, event, timeout) {
        Ok(Some(status)) if !status.success() => tracing::warn!("event handler for {event} exited {status}"),
        Ok(Some(_)) => {}
        Ok(None) => {
            // The handler leads its group and is ours until reaped below.
            crate::signals::kill_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            tracing::warn!(
                "event handler for {event} still running after {}s (--on-event-timeout): killed with its process \
                 group",
                timeout.as_secs_f64()
            );
        }
        // An agent that is PID 1 reaps orphans; a handler left a zombie for long may have been taken for one.
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {}
        Err(e) => tracing::warn!("event handler for {event}: {e}"),
    }
}

/// The handler's exit status, or `None` if it is still running after `timeout`; says so once it is slow.
fn wait_within(child: &mut Child, event: &str, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut said_slow = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let ran = started.elapsed();
        if ran >= timeout {
            return Ok(None);
        }
        if ran >= SLOW && !said_slow {
            said_slow = true;
            tracing::warn!("event handler for {event} is slow: running for over {}s", SLOW.as_secs());
        }
        std::thread::sleep(pause.min(timeout - ran));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{NodeId, NodeState, Role};

    #[test]
    fn a_member_is_always_one_line_of_four_fields() {
        let addr = "10.0.0.9:7946".parse().unwrap();
        let id = NodeId::new(addr, Role::Backend, None, 100, false, "evil\tname\nmember-join\tx");
        let state = NodeState { tags: vec![("k\n".into(), "v\tw\r".into())], ..NodeState::default() };
        let text = line(&Member { id, state: Some(state) });
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.ends_with('\n'));
        assert_eq!(text.trim_end_matches('\n').split('\t').count(), 4, "{text:?}");
        assert_eq!(text, "evil name member-join x\t10.0.0.9\tbackend\tk =v w \n");
    }

    fn member(name: &str, addr: &str, generation: u64) -> Member {
        let id = NodeId::new(addr.parse().unwrap(), Role::Backend, None, 100, false, name);
        Member { id: NodeId { generation, ..id }, state: None }
    }

    #[test]
    fn a_member_s_latest_event_in_a_batch_is_the_one_handled() {
        let (a, a_again, b) =
            (member("a", "10.0.0.1:7946", 1), member("a", "10.0.0.1:7946", 2), member("b", "10.0.0.2:7946", 1));
        let runs = by_kind(vec![
            (EventKind::Failed, a),
            (EventKind::Join, b.clone()),
            (EventKind::Join, a_again.clone()),
            (EventKind::Update, b.clone()),
        ]);
        assert_eq!(runs, vec![(EventKind::Join, vec![a_again]), (EventKind::Update, vec![b])]);
    }

    #[test]
    fn a_steady_trickle_of_events_still_lets_a_run_start() {
        let (tx, rx) = sync_channel(QUEUE);
        let trickle = std::thread::spawn(move || {
            // Closer together than the quiet period, for as long as the receiver is there.
            while tx.send((EventKind::Update, member("a", "10.0.0.1:7946", 1))).is_ok() {
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let batch = next_batch(&rx, Duration::from_millis(50), Duration::from_millis(100)).unwrap();
        assert!(!batch.is_empty() && batch.len() < QUEUE);
        drop(rx);
        trickle.join().unwrap();
    }
}
