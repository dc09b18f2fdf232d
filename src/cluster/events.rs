//! `--on-event CMD`: runs a handler on membership events the way Serf does, with `SHOAL_EVENT` set to
//! member-join, member-leave, member-failed or member-update and one line per member on stdin:
//! `name<TAB>address<TAB>role<TAB>tags`. Handlers run one at a time on their own thread; events that arrive
//! while one runs are coalesced by kind into the next run, so a burst of joins costs one run and the gossip
//! thread never waits.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use super::state::Member;

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
    tx: Sender<(EventKind, Member)>,
}

impl EventHook {
    /// Starts the handler thread for shell command `command`.
    pub fn start(command: String) -> std::io::Result<EventHook> {
        let (tx, rx) = channel();
        std::thread::Builder::new().name("shoal-events".into()).spawn(move || run(&command, rx))?;
        Ok(EventHook { tx })
    }

    pub fn emit(&self, kind: EventKind, member: Member) {
        let _ = self.tx.send((kind, member));
    }
}

/// The stdin line for one member, as Serf writes it.
pub fn line(member: &Member) -> String {
    let tags = member
        .state
        .as_ref()
        .map(|s| s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    format!("{}\t{}\t{}\t{}\n", member.id.name, member.id.gossip.ip(), member.id.role.as_str(), tags)
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
                Err(e) => tracing::warn!("event handler for {}: {e}", kind.as_str()),
                Ok(_) => {}
            }
        }
        Err(e) => tracing::warn!("cannot run event handler: {e}"),
    }
}
