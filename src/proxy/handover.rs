//! Handing the listening sockets to a new process (`kill -USR2`): the binary now at this one's path starts with
//! the same arguments and environment, plus the sockets as inherited descriptors, and reports when it serves.
//! Passing the very sockets (not binding new ones) keeps their accept queues: no connection is refused or
//! reset while one process gives way to the other.
//!
//! The new process finds the descriptors in `SHOAL_INHERIT` (`KEY=FD;...`, a key per configured address:
//! `l/ADDR` plain, `t/ADDR` TLS, `a/ADDR` admin, `r/ADDR` runtime API, `g/ADDR` gossip) and writes one byte to
//! `SHOAL_READY_FD` once it accepts.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::balance::{Override, ServerState};

const INHERIT: &str = "SHOAL_INHERIT";
const READY_FD: &str = "SHOAL_READY_FD";
/// The gossip members the predecessor knew, comma-separated.
const PEERS: &str = "SHOAL_PEERS";
/// The operator's overrides (runtime API `set server`), `NAME=STATE/WEIGHT` separated by commas, the name
/// percent-encoded, `-` for what is not set.
const OVERRIDES: &str = "SHOAL_OVERRIDES";
/// The static servers whose health check holds them DOWN, names percent-encoded, separated by commas.
const STATICS_DOWN: &str = "SHOAL_STATICS_DOWN";

/// What a process hands its successor besides sockets: where it routes, so that the successor routes the
/// same from its first request (HAProxy keeps the last two with a server-state file).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Carried {
    /// The gossip members the predecessor routed to: announced to at once, waited for before reporting ready.
    pub peers: Vec<std::net::SocketAddr>,
    /// What the predecessor's operator set on its servers.
    pub overrides: Vec<(String, Override)>,
    /// Static servers the predecessor's checks held DOWN: they start DOWN, `rise` passes from UP, instead of
    /// UP and `fall` failures from DOWN, taking requests meanwhile.
    pub statics_down: Vec<String>,
}

/// What kind of socket a handed-over descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Plain,
    Tls,
    Admin,
    RuntimeApi,
    Gossip,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Plain => "l",
            Kind::Tls => "t",
            Kind::Admin => "a",
            Kind::RuntimeApi => "r",
            Kind::Gossip => "g",
        }
    }

    fn from_tag(tag: &str) -> Option<Kind> {
        Some(match tag {
            "l" => Kind::Plain,
            "t" => Kind::Tls,
            "a" => Kind::Admin,
            "r" => Kind::RuntimeApi,
            "g" => Kind::Gossip,
            _ => return None,
        })
    }
}

/// The descriptors a previous process handed to this one, by kind and configured address.
#[derive(Default)]
pub struct Inherited {
    fds: HashMap<(Kind, String), Vec<OwnedFd>>,
    /// The write end of the predecessor's readiness pipe.
    ready: Option<OwnedFd>,
    /// What the predecessor routed by.
    pub carried: Carried,
}

impl Inherited {
    /// What the environment says was handed over (nothing, for a process not started by an upgrade). The
    /// variables are removed: an event hook this process runs, or a proxy that hook starts, must not take
    /// descriptors that were meant for this process alone.
    pub fn from_env() -> Inherited {
        let mut inherited = Inherited::default();
        let list = std::env::var(INHERIT).ok();
        let peers = std::env::var(PEERS).unwrap_or_default();
        let overrides = std::env::var(OVERRIDES).unwrap_or_default();
        let statics_down = std::env::var(STATICS_DOWN).unwrap_or_default();
        let ready = std::env::var(READY_FD).ok();
        for name in [INHERIT, PEERS, OVERRIDES, STATICS_DOWN, READY_FD] {
            std::env::remove_var(name);
        }
        let Some(list) = list else { return inherited };
        inherited.carried = Carried {
            peers: peers.split(',').filter_map(|p| p.parse().ok()).collect(),
            overrides: decode_overrides(&overrides),
            statics_down: statics_down.split(',').filter(|n| !n.is_empty()).filter_map(decode_name).collect(),
        };
        inherited.ready = ready.and_then(|fd| adopt(&fd, READY_FD));
        for entry in list.split(';').filter(|e| !e.is_empty()) {
            let parsed = entry.split_once('=').and_then(|(key, fd)| {
                let (tag, addr) = key.split_once('/')?;
                Some((Kind::from_tag(tag)?, addr.to_string(), adopt(fd, INHERIT)?))
            });
            let Some((kind, addr, owned)) = parsed else {
                tracing::warn!("ignoring {INHERIT} entry {entry:?}");
                continue;
            };
            inherited.fds.entry((kind, addr)).or_default().push(owned);
        }
        inherited
    }

    /// Closes what nothing took; keeps the readiness pipe.
    pub fn into_ready(self) -> Ready {
        Ready(self.ready)
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Whether a socket configured as `addr` was handed over, of any kind.
    pub fn holds(&self, addr: &str) -> bool {
        self.fds.keys().any(|(_, a)| a == addr)
    }

    /// The handed-over sockets of `kind` configured as `addr`.
    pub fn take(&mut self, kind: Kind, addr: &str) -> Vec<OwnedFd> {
        self.fds.remove(&(kind, addr.to_string())).unwrap_or_default()
    }

    /// What nothing in this configuration wanted (closed when dropped).
    pub fn leftovers(&self) -> Vec<String> {
        self.fds.keys().map(|(kind, addr)| format!("{}/{addr}", kind.tag())).collect()
    }
}

/// A server name in a list separated by commas: what is not a letter, a digit, `.`, `_` or `-` as `%XX`.
fn encode_name(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn decode_name(encoded: &str) -> Option<String> {
    let mut bytes = Vec::new();
    let mut rest = encoded.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

fn encode_overrides(overrides: &[(String, Override)]) -> String {
    let state = |o: &Override| match o.state {
        Some(ServerState::Maint) => "maint",
        Some(ServerState::Drain) => "drain",
        _ => "-",
    };
    let entries: Vec<String> = overrides
        .iter()
        .map(|(name, o)| {
            format!("{}={}/{}", encode_name(name), state(o), o.weight.map_or("-".to_string(), |w| w.to_string()))
        })
        .collect();
    entries.join(",")
}

/// The overrides in `SHOAL_OVERRIDES`; an entry that does not read is logged and left out.
fn decode_overrides(text: &str) -> Vec<(String, Override)> {
    let entry = |e: &str| -> Option<(String, Override)> {
        let (name, setting) = e.split_once('=')?;
        let (state, weight) = setting.split_once('/')?;
        let state = match state {
            "maint" => Some(ServerState::Maint),
            "drain" => Some(ServerState::Drain),
            "-" => None,
            _ => return None,
        };
        let weight = match weight {
            "-" => None,
            w => Some(w.parse().ok()?),
        };
        Some((decode_name(name)?, Override { state, weight }))
    };
    text.split(',')
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let parsed = entry(e);
            if parsed.is_none() {
                tracing::warn!("ignoring {OVERRIDES} entry {e:?}");
            }
            parsed
        })
        .collect()
}

/// The predecessor's readiness pipe, if this process was started by an upgrade.
pub struct Ready(Option<OwnedFd>);

impl Ready {
    /// Tells the previous process, if any, that this one now serves.
    pub fn report(self) {
        if let Some(fd) = self.0 {
            let _ = io::Write::write_all(&mut std::fs::File::from(fd), b"1");
        }
    }
}

/// Takes the descriptor `text` names, as a predecessor placed it (3 and above) and only if it is open, marked
/// close-on-exec so it goes no further than this process unless handed over again.
fn adopt(text: &str, variable: &str) -> Option<OwnedFd> {
    let fd = text.parse::<RawFd>().ok().filter(|&fd| fd >= 3);
    // SAFETY: F_SETFD on any number is harmless; it fails on a descriptor that is not open.
    let Some(fd) = fd.filter(|&fd| unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0) else {
        tracing::warn!("{variable}: {text:?} is not a descriptor handed over to this process");
        return None;
    };
    // SAFETY: the previous process placed this open descriptor here for us alone; we own it from now on.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A socket to hand over, with what it is.
pub struct Handed {
    pub kind: Kind,
    /// The address as configured (`0.0.0.0:0` stays that, whatever port it got), so the new process finds
    /// it under the same arguments.
    pub configured: String,
    pub fd: RawFd,
}

/// The path this process was started by, symlinks kept (`argv[0]`, looked up in `PATH` when it has no `/`,
/// as a shell found it): an upgrade runs what that path names now, a symlink repointed to a new release
/// included, as nginx re-executes `argv[0]`. `/proc/self/exe` (`current_exe`) names the file the symlink led
/// to at the start: the old release. A relative `argv[0]` is taken from the directory as the shell named it
/// (`$PWD`, when it is the working directory: `cd /opt/shoal/current` stays that, not the release it points
/// to). Only a path that leads to this very binary at the start is trusted (a launcher may set `argv[0]` to
/// anything); otherwise, or on any error, `current_exe`. Read at the start.
pub fn started_path() -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let running = std::env::current_exe()?;
    let Some(argv0) = std::env::args_os().next().map(std::path::PathBuf::from) else { return Ok(running) };
    // Through /proc: the running file even when its path has been deleted or replaced since.
    let Ok(exe) = std::fs::metadata("/proc/self/exe") else { return Ok(running) };
    let same_file = |p: &Path| is_file(p, &exe);
    let found = if argv0.is_absolute() {
        Some(argv0)
    } else if argv0.as_os_str().as_encoded_bytes().contains(&b'/') {
        working_directory().map(|here| here.join(&argv0))
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let here = working_directory();
        std::env::split_paths(&path)
            .filter_map(|dir| if dir.is_absolute() { Some(dir) } else { here.as_ref().map(|h| h.join(dir)) })
            .map(|dir| dir.join(&argv0))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
    };
    Ok(found.filter(|p| same_file(p)).unwrap_or(running))
}

/// The working directory as the shell named it (`$PWD`, if it is the working directory), else as the kernel
/// does (symlinks resolved).
fn working_directory() -> Option<std::path::PathBuf> {
    let here = std::fs::metadata(".").ok()?;
    let logical =
        std::env::var_os("PWD").map(std::path::PathBuf::from).filter(|p| p.is_absolute() && is_file(p, &here));
    logical.or_else(|| std::env::current_dir().ok())
}

/// Whether `path` leads to the very file `known` describes (same device and inode).
fn is_file(path: &Path, known: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == (known.dev(), known.ino()))
}

/// Starts `exe` with this process's arguments and environment, the `sockets` and what is `carried`; returns
/// once it reports ready, or why it did not within `limit` (then it is killed, if still running).
pub fn start_successor(exe: &Path, sockets: &[Handed], carried: &Carried, limit: Duration) -> Result<Child, String> {
    let mut ends = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two descriptors we pass.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: both ends are ours, just created.
    let (ready_read, ready_write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // The child finds the sockets at 3, 4, ... and the pipe after them.
    let mut sources: Vec<RawFd> = sockets.iter().map(|s| s.fd).collect();
    sources.push(ready_write.as_raw_fd());
    let list: Vec<String> =
        sockets.iter().enumerate().map(|(i, s)| format!("{}/{}={}", s.kind.tag(), s.configured, 3 + i)).collect();
    let mut scratch = vec![0 as RawFd; sources.len()];
    let mut command = Command::new(exe);
    // A process group of its own: a Ctrl-C at the terminal, or a signal to this process's group, reaches this
    // process alone, which passes it on once (the successor saw a stop twice, and took the second for a
    // hurry).
    command
        .process_group(0)
        .args(std::env::args_os().skip(1))
        .env(INHERIT, list.join(";"))
        .env(PEERS, carried.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","))
        .env(OVERRIDES, encode_overrides(&carried.overrides))
        .env(STATICS_DOWN, carried.statics_down.iter().map(|n| encode_name(n)).collect::<Vec<_>>().join(","))
        .env(READY_FD, (3 + sockets.len()).to_string());
    // SAFETY: only async-signal-safe calls (fcntl, dup2) on descriptors this process owns, and no allocation:
    // `scratch` is sized beforehand. Each source is first copied above every target, so placing one at its
    // target never overwrites another source.
    unsafe {
        command.pre_exec(move || {
            let above = (3 + sources.len() + 1) as i32;
            for (i, &fd) in sources.iter().enumerate() {
                scratch[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if scratch[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, &fd) in scratch.iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(ready_write);
    match wait_ready(&mut child, ready_read, limit) {
        Ok(()) => Ok(child),
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(why)
        }
    }
}

/// Waits for the byte on the pipe, or the child's exit, or the limit.
fn wait_ready(child: &mut Child, pipe: OwnedFd, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut pipe = std::fs::File::from(pipe);
    loop {
        let mut poll = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, valid for the call.
        let ready = unsafe { libc::poll(&mut poll, 1, 100) };
        if ready > 0 {
            let mut byte = [0u8; 1];
            if let Ok(1) = pipe.read(&mut byte) {
                return Ok(());
            }
            // Closed without the byte: it exited, or closed descriptors it did not know (a wrapper script).
            // Its exit is waited for within the limit, never for good.
            return match wait_exit(child, deadline) {
                Some(status) => Err(format!("the new process exited ({status}) before it was ready")),
                None => Err("the new process closed its readiness pipe without reporting ready".into()),
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the new process exited ({status}) before it was ready"));
        }
        if Instant::now() >= deadline {
            return Err(format!("the new process was not ready within {limit:?}"));
        }
    }
}

/// The child's exit status if it exits by `deadline`.
fn wait_exit(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A variable naming no descriptor handed over is refused, not taken: -1 panicked in `from_raw_fd`, and a
    /// standard stream or a closed number would have been closed or reused as a socket later.
    #[test]
    fn only_open_descriptors_above_the_standard_ones_are_adopted() {
        for text in ["-1", "0", "2", "x", "", "999999"] {
            assert!(adopt(text, "TEST").is_none(), "{text:?} adopted");
        }
        let mut ends = [0 as RawFd; 2];
        // SAFETY: pipe fills the two descriptors we pass.
        assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
        let read = adopt(&ends[0].to_string(), "TEST").expect("an open descriptor");
        // SAFETY: F_GETFD on the descriptor just adopted.
        assert_eq!(unsafe { libc::fcntl(read.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        drop(read);
        // SAFETY: the write end is ours.
        drop(unsafe { OwnedFd::from_raw_fd(ends[1]) });
    }

    #[test]
    fn overrides_cross_the_environment_unchanged() {
        let overrides = vec![
            ("web, 1=odd/名".to_string(), Override { state: Some(ServerState::Maint), weight: None }),
            ("s2".to_string(), Override { state: Some(ServerState::Drain), weight: Some(7) }),
            ("s3".to_string(), Override { state: None, weight: Some(0) }),
        ];
        let text = encode_overrides(&overrides);
        assert_eq!(text.matches(',').count(), 2, "one separator per entry: {text}");
        assert_eq!(decode_overrides(&text), overrides);
        let maint = Override { state: Some(ServerState::Maint), weight: None };
        let read = decode_overrides("s1=maint/-,bad,s2=up/3,s%ZZ=-/1,s3=-/x,s4=-/-");
        assert_eq!(read, [("s1".to_string(), maint), ("s4".to_string(), Override::default())]);
    }
}
