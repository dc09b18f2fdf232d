//! Supervises the app as s6 did: starts it, restarts it with backoff when it exits, forwards signals, and
//! stops it last when the agent is told to stop.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A child that ran this long is considered healthy again: its next crash restarts it promptly.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What [`Supervisor::next`] saw.
pub enum Event {
    Exited(ExitStatus),
    /// The next start is due: call [`Supervisor::restart`].
    Due,
}

pub struct Supervisor {
    argv: Vec<String>,
    /// `--app-user`: who the app runs as (the agent's own user if none).
    user: Option<super::user::AppUser>,
    child: Option<Child>,
    /// The last run's process group, once its leader is reaped: what it left behind (a wrapper's child, the
    /// server npm started) is stopped, so that it cannot hold the port the next run needs.
    remnants: Option<u32>,
    started: Instant,
    backoff: Duration,
    /// When the next start is due, while there is no child: after an exit, or a start that failed.
    restart_at: Option<Instant>,
    /// How the last run ended: the agent's own exit status if it is stopped before the next start.
    last_status: Option<ExitStatus>,
}

impl Supervisor {
    pub fn start(argv: Vec<String>, user: Option<super::user::AppUser>) -> Supervisor {
        let mut s = Supervisor {
            argv,
            user,
            child: None,
            remnants: None,
            started: Instant::now(),
            backoff: FIRST_BACKOFF,
            restart_at: None,
            last_status: None,
        };
        s.spawn();
        s
    }

    /// The child's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Starts the child; a start that fails is tried again after the backoff, as an exit is.
    fn spawn(&mut self) {
        self.kill_remnants(libc::SIGKILL);
        let Some((program, args)) = self.argv.split_first() else { return };
        let mut command = Command::new(program);
        // The cluster key is the agent's secret, not the app's. A process group of its own: a Ctrl-C at the
        // terminal reaches the agent alone, which drains the node before it stops the app, and the stop
        // reaches what the app started too (`sh -c 'node app.js'` without `exec`). The app does not own the
        // terminal: one that reads it is stopped (SIGTTIN), as a background job is.
        for secret in crate::config::SECRET_VARS {
            command.env_remove(secret);
        }
        command.args(args).process_group(0).kill_on_drop(true);
        // A SIGKILLed agent cannot stop its app, so the kernel does: the app gets SIGTERM when the agent dies.
        // An agent that died before the prctl took effect sends nothing: the child then has another parent
        // already, and does not start.
        let agent = std::process::id();
        let user = self.user;
        // SAFETY: setgroups, setgid, setuid, prctl and getppid are async-signal-safe and touch only the child's
        // own attributes, and the error is built without allocating, as pre_exec requires. The user first: a
        // change of credentials clears the parent-death signal.
        unsafe {
            command.pre_exec(move || {
                if let Some(user) = user {
                    user.assume()?;
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != agent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        self.started = Instant::now();
        match command.spawn() {
            Ok(child) => {
                tracing::info!("child started: {} (pid {})", self.argv.join(" "), child.id().unwrap_or(0));
                self.child = Some(child);
            }
            Err(e) => {
                tracing::error!("cannot start {program}: {e}; trying again in {:?}", self.backoff);
                // What a shell reports for a command it cannot run: stopped now, the agent must not exit 0.
                let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
                self.last_status = Some(ExitStatus::from_raw(code << 8));
                self.schedule();
            }
        }
    }

    fn schedule(&mut self) {
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Resolves when the child exits, or when its next start is due (never, while neither can happen).
    /// A deadline rather than a sleep, so the agent goes on answering signals and running checks meanwhile.
    pub async fn next(&mut self) -> Event {
        if let Some(child) = self.child.as_mut() {
            let leader = child.id();
            let status = child.wait().await.unwrap_or_else(|_| ExitStatus::from_raw(1 << 8));
            self.child = None;
            self.last_status = Some(status);
            self.remnants = leader;
            self.kill_remnants(libc::SIGTERM);
            return Event::Exited(status);
        }
        match self.restart_at {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                Event::Due
            }
            None => std::future::pending().await,
        }
    }

    /// Schedules the next start after the child exited with `status`.
    pub fn exited_with(&mut self, status: ExitStatus) {
        if self.started.elapsed() >= STABLE_AFTER {
            self.backoff = FIRST_BACKOFF;
        }
        tracing::warn!("child exited ({status}); restarting in {:?}", self.backoff);
        self.schedule();
    }

    pub fn restart(&mut self) {
        self.restart_at = None;
        self.spawn();
    }

    /// Forwards `signal` (HUP, USR1, USR2) to the app alone: a reload signal is the app's to hand on, and its
    /// workers may die of one meant for their master (gunicorn's reset HUP to the default).
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            // SAFETY: kill(2) on the pid of our unreaped child.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// Sends `signal` to the app's whole process group, what a wrapper script started included: the stop.
    fn signal_group(&self, signal: i32) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            crate::signals::kill_group(pid, signal);
        }
    }

    /// Signals what the last run left behind; SIGKILL forgets it (sent before the next start, or at the stop:
    /// it had the backoff to end on SIGTERM).
    fn kill_remnants(&mut self, signal: i32) {
        if let Some(leader) = self.remnants {
            crate::signals::kill_remnants(leader, signal);
        }
        if signal == libc::SIGKILL {
            self.remnants = None;
        }
    }

    /// Sends `signal` (SIGTERM, or the SIGQUIT that stopped the agent), waits up to `grace`, then kills;
    /// returns how the child ended (between runs, how the last one did: a crash-looping app stopped during its
    /// backoff must not look like a clean exit).
    pub async fn stop(&mut self, grace: Duration, signal: i32) -> Option<ExitStatus> {
        self.kill_remnants(libc::SIGKILL);
        self.signal_group(signal);
        let Some(child) = self.child.as_mut() else { return self.last_status };
        let (leader, asked) = (child.id(), Instant::now());
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => {
                // The rest of the group got the SIGTERM too: what outlives the leader has what is left of the
                // grace, then SIGKILL (a background child ignoring SIGTERM outlived the agent).
                self.remnants = leader;
                let alive = |leader: u32| {
                    super::orphans::reap_group(leader);
                    crate::signals::remnants_alive(leader)
                };
                while self.remnants.is_some_and(alive) && Instant::now() < asked + grace {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if self.remnants.is_some_and(alive) {
                    tracing::warn!("what the app started did not stop within {grace:?}: killing it");
                }
                self.kill_remnants(libc::SIGKILL);
                Some(status)
            }
            _ => {
                tracing::warn!("child did not stop within {grace:?}: killing it");
                self.signal_group(libc::SIGKILL);
                let child = self.child.as_mut()?;
                let _ = child.kill().await;
                child.wait().await.ok()
            }
        }
    }
}

/// The exit code a shell would report for `status`.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        _ => 1,
    }
}
