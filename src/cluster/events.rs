//! `--on-event CMD`: runs a handler on membership events the way Serf does, with `SHOAL_EVENT` set to
//! member-join, member-leave, member-failed or member-update and one line per member on stdin:
//! `name<TAB>address<TAB>role<TAB>tags`. Handlers run one at a time on their own thread; events that arrive
//! while one runs are coalesced by kind into the next run, so a burst of joins costs one run and the gossip
//! thread never waits. The queue is bounded: when a handler is so slow that it fills, further events are
//! dropped and counted rather than held. Names and tags arrive by gossip, so their tabs, newlines and other
//! control characters are replaced before they reach a handler's stdin: one member is always one line.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use super::state::Member;

/// Events waiting for a handler run, at most.
const QUEUE: usize = 4096;
/// Events closer together than this are handed to one handler run.
const COALESCE: Duration = Duration::from_millis(50);

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
    /// Starts the handler thread for shell command `command`.
    pub fn start(command: String) -> std::io::Result<EventHook> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new().name("shoal-events".into()).spawn(move || run(&command, rx))?;
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

fn run(command: &str, rx: Receiver<(EventKind, Member)>) {
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
            invoke(command, kind, &input);
        }
    }
}

fn invoke(command: &str, kind: EventKind, input: &str) {
    let child =
        Command::new("/bin/sh").arg("-c").arg(command).env("SHOAL_EVENT", kind.as_str()).stdin(Stdio::piped()).spawn();
    match child {
        Ok(mut child) => {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(input.as_bytes());
            }
            match child.wait() {
                Ok(status) if !status.success() => {
                    tracing::warn!("event handler for {} exited {status}", kind.as_str())
                }
                // An agent that is PID 1 reaps orphans; a handler left a zombie for long (its input blocked
                // by a grandchild holding the pipe) may have been taken for one.
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {}
                Err(e) => tracing::warn!("event handler for {}: {e}", kind.as_str()),
                Ok(_) => {}
            }
        }
        Err(e) => tracing::warn!("cannot run event handler: {e}"),
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
