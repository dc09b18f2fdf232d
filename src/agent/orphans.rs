//! Reaping orphans when the agent is a container's PID 1, as s6-svscan and tini do: processes the app leaves
//! behind (a daemon's double fork, a check command's children killed with it) are re-parented to PID 1, and
//! nothing else would ever wait for them, so each would stay a zombie holding its process-table slot.
//!
//! The agent's own children are waited for by their owners (tokio for the app and check commands, the event
//! thread for handlers) within moments of exiting; an orphan stays a zombie for good. So a zombie child is
//! reaped only once it has been one for a whole scan interval, and never the app, whose exit status the
//! supervisor reports.

use std::collections::HashSet;
use std::time::Duration;

/// How often children are scanned; a zombie is reaped at the second scan that finds it.
pub const SCAN_EVERY: Duration = Duration::from_secs(1);

/// Zombie children seen at the last scan.
#[derive(Debug, Default)]
pub struct Orphans {
    seen: HashSet<u32>,
    /// Said once if the kernel lists no children (built without CONFIG_PROC_CHILDREN).
    warned: bool,
}

impl Orphans {
    /// Whether this process is the init of its PID namespace, and so the reaper of its orphans.
    pub fn needed() -> bool {
        std::process::id() == 1
    }

    /// Reaps the zombie children found at the last scan too, except `app`; returns how many.
    pub fn reap(&mut self, app: Option<u32>) -> usize {
        if !self.warned && !std::path::Path::new("/proc/self/task/1/children").exists() {
            self.warned = true;
            tracing::warn!("cannot list this process's children (/proc/PID/task/TID/children): orphans are not reaped");
        }
        self.reap_among(children(), app)
    }

    fn reap_among(&mut self, children: Vec<u32>, app: Option<u32>) -> usize {
        let zombies: HashSet<u32> = children.into_iter().filter(|&pid| Some(pid) != app && is_zombie(pid)).collect();
        let mut reaped = 0;
        for &pid in zombies.intersection(&self.seen) {
            reaped += usize::from(reap(pid));
        }
        self.seen = zombies;
        reaped
    }
}

/// This process's children, from every thread's `children` list (an orphan is adopted by a thread of the
/// reaper, not necessarily the main one).
fn children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let mut pids = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    pids
}

/// Reaps this process's zombie children of process group `group`. As PID 1, what an app's
/// group leaves behind when it stops is re-parented here, and a zombie is still a member of its group: until
/// it is reaped, the group looks alive to `kill(-group, 0)` and the stop waited out its whole grace.
pub fn reap_group(group: u32) {
    for pid in children().into_iter().filter(|&pid| state_and_group(pid) == Some(('Z', group))) {
        reap(pid);
    }
}

/// Waits for child `pid`, a zombie, without blocking; whether it was reaped.
fn reap(pid: u32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid on one of our own children, without blocking.
    unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) == pid as i32 }
}

fn is_zombie(pid: u32) -> bool {
    state_and_group(pid).is_some_and(|(state, _)| state == 'Z')
}

/// The state letter and the process group of `/proc/PID/stat` (after the command name, which may hold spaces
/// and parentheses: `state ppid pgrp ...`).
fn state_and_group(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_child_is_reaped_at_the_second_scan_and_a_running_one_never() {
        let mut orphans = Orphans::default();
        let exited = std::process::Command::new("true").spawn().unwrap();
        let running = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let (exited_pid, running_pid) = (exited.id(), running.id());
        // Wait (bounded) until the exited child is a zombie.
        let start = std::time::Instant::now();
        while !is_zombie(exited_pid) {
            assert!(start.elapsed() < Duration::from_secs(10), "true never exited");
            std::thread::yield_now();
        }
        assert!(children().contains(&exited_pid) && children().contains(&running_pid));
        // Among this test's own children only: other tests' may be zombies for a moment too.
        let ours = || vec![exited_pid, running_pid];
        assert_eq!(orphans.reap_among(ours(), None), 0, "first seen: left for its owner");
        assert_eq!(orphans.reap_among(ours(), None), 1, "still a zombie at the next scan: reaped");
        assert!(!children().contains(&exited_pid));
        assert!(children().contains(&running_pid), "a running child is left alone");
        let mut running = running;
        running.kill().unwrap();
        running.wait().unwrap();
        drop(exited);
    }
}
