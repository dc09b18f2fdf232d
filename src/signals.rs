//! SIGTERM/SIGINT handling that is installed before a command starts its work and awaited later: a signal that
//! arrives in between must start a graceful stop, not take the default action and kill the process.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Until a command installs its handlers, the signals it will act on are ignored rather than fatal: a reload or
/// an upgrade sent while the configuration loads (`systemctl start` then `reload` at once) must not kill it.
/// The handlers installed later replace this, so the children started after them get the default again at
/// `execve` (an ignored signal would stay ignored in them).
pub fn ignore_until_handled(signals: &[libc::c_int]) {
    for &sig in signals {
        // SAFETY: SIG_IGN for a catchable signal changes only this process's disposition.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Installs the handlers. Needs a tokio runtime context (any runtime may await them later).
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Resolves on the first SIGTERM or SIGINT since `install`.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Installs the handlers on a small runtime of its own and returns a blocking waiter, for commands whose
/// main thread has no runtime.
pub struct BlockingStop {
    runtime: tokio::runtime::Runtime,
    signals: StopSignals,
}

impl BlockingStop {
    pub fn install() -> std::io::Result<BlockingStop> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let signals = runtime.block_on(async { StopSignals::install() })?;
        Ok(BlockingStop { runtime, signals })
    }

    /// Blocks until SIGTERM or SIGINT.
    pub fn wait(mut self) {
        let BlockingStop { runtime, signals } = &mut self;
        runtime.block_on(signals.recv());
    }
}

/// What the proxy's main thread is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM or SIGINT: stop gracefully.
    Stop,
    /// SIGHUP: reload the configuration.
    Reload,
    /// SIGUSR2: hand over to a new binary.
    Upgrade,
}

impl Control {
    /// The signal that asks another proxy process for the same, and what it is called in the log.
    pub fn signal(self) -> (libc::c_int, &'static str) {
        match self {
            Control::Stop => (libc::SIGTERM, "stop"),
            Control::Reload => (libc::SIGHUP, "reload"),
            Control::Upgrade => (libc::SIGUSR2, "upgrade"),
        }
    }
}

/// SIGTERM, SIGINT, SIGHUP and SIGUSR2, installed at start and awaited by the proxy's main thread.
pub struct ControlSignals {
    runtime: tokio::runtime::Runtime,
    stop: StopSignals,
    hup: Signal,
    usr2: Signal,
}

impl ControlSignals {
    pub fn install() -> std::io::Result<ControlSignals> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, hup, usr2) = runtime.block_on(async {
            Ok::<_, std::io::Error>((
                StopSignals::install()?,
                signal(SignalKind::hangup())?,
                signal(SignalKind::user_defined2())?,
            ))
        })?;
        Ok(ControlSignals { runtime, stop, hup, usr2 })
    }

    /// Blocks until the next of those signals.
    pub fn wait(&mut self) -> Control {
        let ControlSignals { runtime, stop, hup, usr2 } = self;
        runtime.block_on(async {
            tokio::select! {
                _ = stop.recv() => Control::Stop,
                _ = hup.recv() => Control::Reload,
                _ = usr2.recv() => Control::Upgrade,
            }
        })
    }

    /// The next of those signals if one comes within `limit`.
    pub fn next_within(&mut self, limit: std::time::Duration) -> Option<Control> {
        let ControlSignals { runtime, stop, hup, usr2 } = self;
        runtime.block_on(async {
            tokio::time::timeout(limit, async {
                tokio::select! {
                    _ = stop.recv() => Control::Stop,
                    _ = hup.recv() => Control::Reload,
                    _ = usr2.recv() => Control::Upgrade,
                }
            })
            .await
            .ok()
        })
    }

    /// The signals that came while nobody waited (each kind once), without blocking: the signal driver gets
    /// a few milliseconds to read what the handlers noted.
    pub fn pending(&mut self) -> Vec<Control> {
        let mut pending = Vec::new();
        while let Ok(next) = self.runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(20), async {
                tokio::select! {
                    _ = self.stop.recv() => Control::Stop,
                    _ = self.hup.recv() => Control::Reload,
                    _ = self.usr2.recv() => Control::Upgrade,
                }
            })
            .await
        }) {
            if !pending.contains(&next) {
                pending.push(next);
            }
        }
        pending
    }
}

/// Sends `signal` to the process group `leader` leads (a child spawned with `process_group(0)`), what it
/// started included. Call it only while the leader is unreaped, so that its id names no other group.
pub fn kill_group(leader: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid only sends a signal; the caller vouches the group is its child's.
    unsafe { libc::kill(-(leader as i32), signal) };
}

/// Sends `signal` to what is left of the process group a reaped leader led: what it started and did not take
/// with it. The id is the group's while any member lives, so it can name another group only once every member
/// is gone and a new process took the number and leads a group of its own; then a process with that id
/// exists, and nothing is sent.
pub fn kill_remnants(leader: u32, signal: i32) {
    if !pid_taken(leader) {
        kill_group(leader, signal);
    }
}

/// Whether anything is left of the process group a reaped leader led.
pub fn remnants_alive(leader: u32) -> bool {
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks that the group has a member.
    !pid_taken(leader) && unsafe { libc::kill(-(leader as i32), 0) } == 0
}

/// Whether a process holds `pid` (EPERM: one does, and is another user's).
fn pid_taken(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that a process with this id exists.
    let found = unsafe { libc::kill(pid as i32, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
