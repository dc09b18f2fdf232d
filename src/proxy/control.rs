//! The proxy's main thread once everything runs: it waits for signals and changes the running proxy in place.
//!
//! - SIGHUP reloads the configuration: static servers and weights, timeouts and limits, the balancing
//!   algorithm and TLS certificates change at once for new requests (requests in flight finish under the
//!   configuration they started with); listeners are added and removed. A file that does not load, a
//!   certificate that does not, or an address that cannot be bound, leaves everything as it was.
//! - SIGUSR2 hands the listening sockets to the binary now at this one's path (see [`super::handover`]),
//!   with the members to find and the operator's overrides; once it serves, this process stops accepting,
//!   finishes what it has and exits. A stop or reload asked for meanwhile goes on to the successor.
//! - SIGTERM or SIGINT stop gracefully.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::handover::{self, Inherited, Kind};
use super::listener::{self, Group};
use super::worker::Command;
use super::{start_tls, Reload, Shared};
use crate::balance::Publisher;
use crate::config::ProxyConfig;
use crate::signals::{Control as Signal, ControlSignals};

/// How long a new binary may take to report that it serves.
const UPGRADE_WITHIN: Duration = Duration::from_secs(30);

/// The sockets besides the listeners that a new process takes over, with the address each was configured as.
pub struct Handed {
    pub admin: Option<(std::net::SocketAddr, std::net::TcpListener)>,
    pub runtime_api: Option<(std::net::SocketAddr, std::net::TcpListener)>,
    pub gossip: (std::net::SocketAddr, std::net::UdpSocket),
}

pub struct Control {
    pub shared: Arc<Shared>,
    pub publisher: Arc<Mutex<Publisher>>,
    pub groups: Vec<Group>,
    /// One channel per data-plane thread.
    pub commands: Vec<mpsc::UnboundedSender<Command>>,
    pub handed: Handed,
    pub exe: PathBuf,
    pub reload: Reload,
    pub config_changed: watch::Sender<u64>,
    pub signals: ControlSignals,
    /// This process's gossip, paused while a successor starts with its socket.
    pub gossip: crate::cluster::Pauser,
    /// The process an upgrade handed the sockets to, watched while this one drains.
    pub successor: Option<std::process::Child>,
    /// `--pid-file`, removed once this process is done (unless a successor's pid is in it).
    pub pid_file: PidFile,
    /// Stops asked of this process so far: the one that ended [`Control::serve`], or one that came during
    /// the upgrade and went on to the successor, counts.
    pub stops: u32,
}

impl Control {
    /// Serves signals until it is time to stop: SIGTERM/SIGINT, or a successful upgrade.
    pub fn serve(&mut self) {
        let mut next = Vec::new();
        loop {
            let signal = if next.is_empty() { self.signals.wait() } else { next.remove(0) };
            match signal {
                Signal::Stop => {
                    tracing::info!("stopping: no new connections, finishing requests in flight");
                    self.stops += 1;
                    return;
                }
                Signal::Reload => self.reload(),
                Signal::Upgrade => {
                    if self.upgrade() {
                        return;
                    }
                    // What came during the failed attempt is acted on, but for another upgrade: it would try
                    // the same binary again at once, pausing gossip for nothing.
                    next = self.signals.pending();
                    if next.contains(&Signal::Upgrade) {
                        tracing::warn!("upgrade: a SIGUSR2 that came during the failed upgrade is dropped");
                        next.retain(|s| *s != Signal::Upgrade);
                    }
                }
            }
        }
    }

    fn reload(&mut self) {
        let new = match (self.reload)() {
            Ok(config) => config,
            Err(e) => return tracing::error!("configuration not reloaded, the running one stays: {e}"),
        };
        let old = self.shared.config.load_full();
        let new = keep_what_needs_a_restart(&old, new);
        // Checked by the file's own `threads`, which the running count replaced.
        if new.limits.max_connections < new.threads {
            return tracing::error!(
                "configuration not reloaded, the running one stays: `max-connections`: {} is fewer than the {} \
                 threads running, which each need a connection of their own",
                new.limits.max_connections,
                new.threads
            );
        }
        // Everything that can fail comes first, so a failure changes nothing.
        let tls = match new.tls_listen.is_empty() {
            true => None,
            false => match start_tls(&new.tls_certs) {
                Ok(tls) => Some(tls),
                Err(e) => return tracing::error!("configuration not reloaded, the running one stays: TLS: {e}"),
            },
        };
        let wanted: Vec<(std::net::SocketAddr, bool)> =
            new.listen.iter().map(|a| (*a, false)).chain(new.tls_listen.iter().map(|a| (*a, true))).collect();
        let mut added = Vec::new();
        for &(addr, tls) in &wanted {
            if self.groups.iter().any(|g| (g.configured, g.tls) == (addr, tls)) {
                continue;
            }
            let own = listener::overlaps(&self.groups, addr)
                || added.iter().any(|(g, _)| listener::overlaps(std::slice::from_ref(g), addr));
            match listener::bind_group(addr, tls, new.threads, &mut Inherited::default(), own) {
                Ok(group) => added.push(group),
                Err(e) => return tracing::error!("configuration not reloaded, the running one stays: {e}"),
            }
        }
        self.shared.tls.store(tls);
        {
            let mut publisher = self.publisher.lock();
            publisher.set_slowstart(new.slowstart);
            publisher.set_statics(&new.backends);
        }
        for (group, per_thread) in added {
            tracing::info!("{} on {} (reload)", if group.tls { "accepting TLS" } else { "listening" }, group.bound);
            for (tx, sockets) in self.commands.iter().zip(per_thread) {
                for s in sockets {
                    let _ = tx.send(Command::Listen(s));
                }
            }
            self.groups.push(group);
        }
        let commands = &self.commands;
        self.groups.retain(|g| {
            let keep = wanted.contains(&(g.configured, g.tls));
            if !keep {
                tracing::info!("no longer listening on {} (reload)", g.bound);
                for tx in commands {
                    let _ = tx.send(Command::Unlisten(g.bound, g.tls));
                }
            }
            keep
        });
        let https = self.groups.iter().find(|g| g.tls).map_or(0, |g| g.bound.port());
        self.shared.https_port.store(https, Ordering::Relaxed);
        let summary = format!(
            "{} static servers, balance {:?}, {} listeners",
            new.backends.len(),
            new.balance,
            self.groups.len()
        );
        self.shared.config.store(Arc::new(new));
        self.config_changed.send_modify(|n| *n += 1);
        tracing::info!("configuration reloaded: {summary}");
    }

    /// Starts the new binary with every socket; true once it serves and this process stopped accepting.
    fn upgrade(&mut self) -> bool {
        let mut sockets = Vec::new();
        for g in &self.groups {
            let kind = if g.tls { Kind::Tls } else { Kind::Plain };
            for s in &g.sockets {
                sockets.push(handover::Handed { kind, configured: g.configured.to_string(), fd: s.as_raw_fd() });
            }
        }
        let h = &self.handed;
        for (kind, handed) in [(Kind::Admin, &h.admin), (Kind::RuntimeApi, &h.runtime_api)] {
            if let Some((addr, listener)) = handed {
                sockets.push(handover::Handed { kind, configured: addr.to_string(), fd: listener.as_raw_fd() });
            }
        }
        sockets.push(handover::Handed {
            kind: Kind::Gossip,
            configured: h.gossip.0.to_string(),
            fd: h.gossip.1.as_raw_fd(),
        });
        tracing::info!("upgrade: starting {} with {} sockets", self.exe.display(), sockets.len());
        let carried = {
            let publisher = self.publisher.lock();
            handover::Carried {
                peers: publisher.routable_members(),
                overrides: publisher.overrides(),
                statics_down: publisher.statics_down(),
            }
        };
        // One reader per socket: datagrams meant for the successor must not be taken here.
        if !self.gossip.pause(Duration::from_secs(1)) {
            tracing::error!("upgrade failed, this process keeps serving: its gossip did not pause");
            // Should the pause come later, it is undone right after.
            self.gossip.resume();
            return false;
        }
        match handover::start_successor(&self.exe, &sockets, &carried, UPGRADE_WITHIN) {
            Ok(child) => {
                tracing::info!(
                    "upgrade: pid {} serves now; this one stops accepting and finishes its requests",
                    child.id()
                );
                // Before the workers hear of it, by command or by the stop that follows: whichever comes first,
                // they must leave the sockets as the successor has them.
                self.shared.handed_over.store(true, Ordering::Release);
                for tx in &self.commands {
                    let _ = tx.send(Command::StopAccepting);
                }
                self.groups.clear();
                self.pass_on_signals(child.id());
                self.successor = Some(child);
                true
            }
            Err(why) => {
                tracing::error!("upgrade failed, this process keeps serving: {why}");
                // A successor writes its pid before it reports ready: one killed for being late left it there.
                self.pid_file.reclaim();
                self.gossip.resume();
                false
            }
        }
    }

    /// Waits for the data-plane threads to finish their connections (at most `--grace`), still acting on
    /// signals. What is not needed for that is closed first: the listening sockets' last copies, so that new
    /// clients are refused at once rather than left unanswered. A stop asked for twice (the one that began
    /// the drain counts) ends it at once (`hurry`). After an upgrade the signals are meant for the successor,
    /// which serves (`systemctl` signals this process, the unit's main one, until it exits): a stop, a reload
    /// and an upgrade go on to it, and this process exits only once a successor told to stop has (within
    /// `--grace` and 5 s more), so that systemd does not kill it mid-drain. A successor that fails meanwhile
    /// (killed, or exiting non-zero; not one stopped gracefully) leaves nothing accepting: said loudly, the pid
    /// file naming it removed, and this process exits with an error, so that a supervisor (systemd's
    /// `Restart=on-failure`) starts the proxy again.
    pub fn drain(
        self,
        workers: Vec<std::thread::JoinHandle<()>>,
        hurry: &watch::Sender<bool>,
    ) -> Result<(), super::ProxyError> {
        let Control { mut signals, mut successor, pid_file, groups, handed, mut stops, shared, .. } = self;
        drop((groups, handed));
        let patience = shared.config.load().timeouts.grace + Duration::from_secs(5);
        // When the successor was told to stop (before the drain, if a stop came during the upgrade).
        let mut told = (stops > 0 && successor.is_some()).then(std::time::Instant::now);
        let mut died = None;
        loop {
            let waiting_for_successor = successor.is_some() && told.is_some_and(|at| at.elapsed() < patience);
            if workers.iter().all(|w| w.is_finished()) && !waiting_for_successor {
                break;
            }
            match signals.next_within(Duration::from_millis(100)) {
                Some(Signal::Stop) => {
                    stops += 1;
                    if let Some(child) = &successor {
                        pass_on(child.id(), Signal::Stop, "sent to this process");
                        told.get_or_insert_with(std::time::Instant::now);
                    }
                    if stops >= 2 && !*hurry.borrow() {
                        tracing::warn!("stop asked for again: closing the connections still open now");
                        let _ = hurry.send(true);
                    }
                }
                Some(signal) => match &successor {
                    Some(child) => pass_on(child.id(), signal, "sent to this process"),
                    None => tracing::warn!(
                        "{} ignored: this process is finishing its requests and stopping",
                        signal.signal().1
                    ),
                },
                None => {}
            }
            if let Some(child) = successor.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    died = ended(child.id(), status, &pid_file);
                    successor = None;
                }
            }
        }
        for w in workers {
            let _ = w.join();
        }
        if let Some(mut child) = successor {
            match child.try_wait() {
                // One that ended in the last turn.
                Ok(Some(status)) => died = ended(child.id(), status, &pid_file).or(died),
                _ if told.is_some() => {
                    tracing::warn!(
                        "upgrade: the new process (pid {}) still runs {patience:?} after its stop",
                        child.id()
                    )
                }
                _ => {}
            }
        }
        match died {
            Some((pid, status)) => Err(super::ProxyError::SuccessorDied { pid, status }),
            None => Ok(()),
        }
    }

    /// Signals sent to this process while its successor started were meant for whichever serves: a stop or a
    /// reload goes on to the successor (the pid file named this process until it served); another upgrade
    /// is dropped, with a line saying so.
    fn pass_on_signals(&mut self, successor: u32) {
        for signal in self.signals.pending() {
            match signal {
                Signal::Upgrade => {
                    tracing::warn!("upgrade: a SIGUSR2 that came during this upgrade is dropped; send it again")
                }
                Signal::Stop | Signal::Reload => {
                    self.stops += u32::from(signal == Signal::Stop);
                    pass_on(successor, signal, "asked for during the upgrade");
                }
            }
        }
    }
}

/// Asks the successor, which serves, for what this process was asked (`when`: how it came here).
fn pass_on(successor: u32, asked: Signal, when: &str) {
    let (number, what) = asked.signal();
    tracing::info!("upgrade: a {what} {when} goes on to pid {successor}, which serves");
    // SAFETY: kill(2) on the child this process started and has not reaped.
    unsafe { libc::kill(successor as i32, number) };
}

/// The successor exited: a failure (killed, or non-zero) is returned, with the pid file that names it removed.
fn ended(pid: u32, status: std::process::ExitStatus, pid_file: &PidFile) -> Option<(u32, std::process::ExitStatus)> {
    // A stop someone asked of it ends it with 0: stopped, not lost.
    if status.success() {
        tracing::info!("upgrade: the new process (pid {pid}) stopped ({status})");
        return None;
    }
    tracing::error!("upgrade: the new process (pid {pid}) exited ({status}): nothing accepts connections now");
    pid_file.remove_if_naming(pid);
    Some((pid, status))
}

/// A reload changes what can change in place; the rest keeps its running value, with a warning.
fn keep_what_needs_a_restart(old: &ProxyConfig, mut new: ProxyConfig) -> ProxyConfig {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($field:ident as $name:literal),*) => {$(
            if new.$field != old.$field {
                kept.push($name);
                new.$field = old.$field.clone();
            }
        )*};
    }
    keep!(threads as "threads", pin_cpus as "pin-cpus", admin as "admin", runtime_api as "runtime-api",
        cluster as "gossip settings", access_log as "access-log", backend_check as "backend-check settings");
    if !kept.is_empty() {
        tracing::warn!("reload: {} changed, which takes a restart or an upgrade (kill -USR2)", kept.join(", "));
    }
    new
}

/// `--pid-file`: written by whichever process serves, removed by it when it stops (unless a successor wrote
/// its own pid meanwhile).
pub struct PidFile(Option<PathBuf>);

impl PidFile {
    /// Whether `path` can be written, without changing what it holds: an existing file opened for writing,
    /// or a new one made and removed.
    pub fn check(path: &std::path::Path) -> std::io::Result<()> {
        let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()));
        match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(named)?;
                std::fs::remove_file(path).map_err(named)
            }
            Err(e) => Err(named(e)),
        }
    }

    /// Writes this process's pid; a failure is logged (a process that serves goes on serving).
    pub fn write(path: Option<PathBuf>) -> PidFile {
        let file = PidFile(path);
        file.reclaim();
        file
    }

    /// Writes this process's pid (again, after a successor that failed had written its own).
    pub fn reclaim(&self) {
        if let Some(p) = &self.0 {
            if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
                tracing::error!("cannot write the pid file {}: {e}", p.display());
            }
        }
    }

    /// Removes the file if it names `pid` (a successor that died: a stale pid must not be taken for the
    /// proxy's).
    pub fn remove_if_naming(&self, pid: u32) {
        let Some(p) = &self.0 else { return };
        if std::fs::read_to_string(p).is_ok_and(|s| s.trim() == pid.to_string()) {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let Some(p) = &self.0 else { return };
        let mine = std::fs::read_to_string(p).is_ok_and(|s| s.trim() == std::process::id().to_string());
        if mine {
            let _ = std::fs::remove_file(p);
        }
    }
}
