//! Passive ejection with a backoff, as Envoy's outlier detection has it.
//!
//! A server that fails a connect, or leaves a request unacknowledged, is skipped by every thread and probed
//! with a TCP connect until one succeeds. A host that accepts connects but loses requests (a flaky link, a
//! kernel under memory pressure) passes that probe at once and fails the next request again: with a fixed
//! probe interval it cost one request a `--timeout-attempt` every cycle, about once a second under load.
//! So a server that fails again soon after being readmitted stays out twice as long as the last time, up
//! to [`LONGEST`]; one that serves for [`FORGIVEN_AFTER`] starts again from [`SHORTEST`], and one that
//! membership or its health check brings back UP is forgiven at once.

use std::time::{Duration, Instant};

/// How long a first ejection keeps a server out before its first probe.
pub const SHORTEST: Duration = Duration::from_millis(500);
/// The longest a server stays out before it is probed again.
pub const LONGEST: Duration = Duration::from_secs(16);
/// In rotation this long since its last readmission, a server's next ejection counts as a first.
pub const FORGIVEN_AFTER: Duration = Duration::from_secs(30);

/// One server's ejection history.
#[derive(Debug, Default)]
pub struct Ejection {
    /// Ejections in a row, each within [`FORGIVEN_AFTER`] of the readmission before it.
    streak: u32,
    /// No probe before then.
    probe_after: Option<Instant>,
    readmitted: Option<Instant>,
}

impl Ejection {
    /// Records an ejection at `now`; returns how long the server stays out before its first probe.
    pub fn eject(&mut self, now: Instant) -> Duration {
        let soon_again = self.readmitted.is_some_and(|at| now.saturating_duration_since(at) < FORGIVEN_AFTER);
        self.streak = if soon_again { self.streak.saturating_add(1) } else { 1 };
        let out = SHORTEST.saturating_mul(1 << (self.streak - 1).min(16)).min(LONGEST);
        self.probe_after = Some(now + out);
        out
    }

    /// Whether an ejected server may be probed at `now`.
    pub fn probe_due(&self, now: Instant) -> bool {
        self.probe_after.is_none_or(|at| now >= at)
    }

    /// A probe succeeded: back in rotation, its streak kept in case it fails again soon.
    pub fn readmitted(&mut self, now: Instant) {
        self.readmitted = Some(now);
    }

    /// Membership or a health check says the server is back: its past failures are forgotten.
    pub fn forgive(&mut self) {
        *self = Ejection::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_failing_soon_after_each_readmission_stays_out_longer_each_time() {
        let mut e = Ejection::default();
        let mut now = Instant::now();
        let mut outs = Vec::new();
        for _ in 0..8 {
            let out = e.eject(now);
            assert!(!e.probe_due(now + out - Duration::from_millis(1)));
            assert!(e.probe_due(now + out));
            outs.push(out.as_millis());
            now += out;
            e.readmitted(now);
            now += Duration::from_millis(100);
        }
        assert_eq!(outs, [500, 1000, 2000, 4000, 8000, 16000, 16000, 16000]);
    }

    #[test]
    fn a_server_that_served_long_enough_or_came_back_up_starts_afresh() {
        let mut e = Ejection::default();
        let now = Instant::now();
        e.eject(now);
        e.readmitted(now);
        assert_eq!(e.eject(now).as_millis(), 1000);
        e.readmitted(now);
        assert_eq!(e.eject(now + FORGIVEN_AFTER).as_millis(), 500, "served 30 s since its readmission");
        e.readmitted(now + FORGIVEN_AFTER);
        assert_eq!(e.eject(now + FORGIVEN_AFTER).as_millis(), 1000);
        e.forgive();
        assert!(e.probe_due(now));
        assert_eq!(e.eject(now).as_millis(), 500, "forgiven by membership");
    }
}
