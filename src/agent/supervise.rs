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

pub struct Supervisor {
    argv: Vec<String>,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
}

impl Supervisor {
    pub fn start(argv: Vec<String>) -> Supervisor {
        let mut s = Supervisor { argv, child: None, started: Instant::now(), backoff: FIRST_BACKOFF };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let Some((program, args)) = self.argv.split_first() else { return };
        let mut command = Command::new(program);
        // The cluster key is the agent's secret, not the app's.
        command.args(args).env_remove("SHOAL_CLUSTER_KEY").kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches only the child's own attributes, as pre_exec requires.
        // A SIGKILLed agent cannot stop its app, so the kernel does: the app gets SIGTERM when the agent dies.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        match command.spawn() {
            Ok(child) => {
                tracing::info!("child started: {} (pid {})", self.argv.join(" "), child.id().unwrap_or(0));
                self.child = Some(child);
            }
            Err(e) => tracing::error!("cannot start {program}: {e}"),
        }
        self.started = Instant::now();
    }

    /// Resolves when the child exits (never, while there is none).
    pub async fn exited(&mut self) -> ExitStatus {
        match self.child.as_mut() {
            Some(child) => {
                let status = child.wait().await.unwrap_or_else(|_| ExitStatus::from_raw(1 << 8));
                self.child = None;
                status
            }
            None => std::future::pending().await,
        }
    }

    /// Waits out the backoff, then starts the child again.
    pub async fn restart(&mut self, status: ExitStatus) {
        if self.started.elapsed() >= STABLE_AFTER {
            self.backoff = FIRST_BACKOFF;
        }
        tracing::warn!("child exited ({status}); restarting in {:?}", self.backoff);
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.spawn();
    }

    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then kills; returns how the child ended.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let child = self.child.as_mut()?;
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                tracing::warn!("child did not stop within {grace:?}: killing it");
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
