//! `--on-event CMD`: runs a handler on membership events the way Serf does, with `SHOAL_EVENT` set to
//! member-join, member-leave, member-failed or member-update and one line per member on stdin:
//! `name<TAB>address<TAB>role<TAB>tags`. Handlers run one at a time on their own thread; events that arrive
//! while one runs are coalesced by kind into the next run, so a burst of joins costs one run and the gossip
//! thread never waits. The queue is bounded: when a handler is so slow that it fills, further events are
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
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.recv_timeout(COALESCE) {
            batch.push(more);
        }
        let mut kinds: Vec<EventKind> = batch.iter().map(|(k, _)| *k).collect();
        kinds.sort();
        kinds.dedup();
        for kind in kinds {
            let input: String = batch.iter().filter(|(k, _)| *k == kind).map(|(_, m)| line(m)).collect();
            invoke(command, kind, input, timeout);
        }
    }
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
}
