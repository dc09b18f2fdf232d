//! Where a request's time goes, as HAProxy splits it: waiting in a server's queue (`Tw`), connecting (`Tc`),
//! waiting for the response head (`Tr`), and the whole exchange (`Tt`), per server, per backend and per
//! frontend.
//!
//! A data-plane thread records into histograms of its own (a [`Recorder`], never shared), and every second
//! adds what it recorded into the shared [`Timings`] of each place it served, under a lock the request path
//! never takes. Readers (the CSV, the page, the metrics) lock the shared side, so they see figures at most
//! one publication (a second) old.

use std::sync::Arc;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// The phases of an exchange, in HAProxy's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `Tw`: waiting for a slot on a full server.
    Queue = 0,
    /// `Tc`: connecting to the server (0 on a pooled connection).
    Connect = 1,
    /// `Tr`: from connected to the response head.
    Response = 2,
    /// `Tt`: from the request's first byte to the end of the exchange.
    Total = 3,
}

pub const PHASES: [Phase; 4] = [Phase::Queue, Phase::Connect, Phase::Response, Phase::Total];

impl Phase {
    /// HAProxy's CSV name for its average; `{name}_max` is its maximum.
    pub fn csv_name(self) -> &'static str {
        ["qtime", "ctime", "rtime", "ttime"][self as usize]
    }

    /// The word in metric names and on the page.
    pub fn word(self) -> &'static str {
        ["queue", "connect", "response", "total"][self as usize]
    }
}

/// Samples over HAProxy's `TIME_STATS_SAMPLES`: the CSV's averages describe about this many recent requests.
const RECENT_SAMPLES: f64 = 1024.0;
/// Longest time a histogram tells apart; longer ones count as this. One hour, in microseconds.
const LONGEST_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    // Two significant digits: percentiles within 1%, about 20 KiB per histogram.
    Histogram::new_with_bounds(1, LONGEST_US, 2).expect("static histogram bounds are valid")
}

/// One phase's samples, in microseconds.
#[derive(Clone)]
pub struct Series {
    histogram: Histogram<u64>,
    sum_us: u64,
    /// HAProxy's sliding average over the last `RECENT_SAMPLES` samples (the true average before that many).
    recent_us: f64,
}

impl Series {
    fn new() -> Series {
        Series { histogram: histogram(), sum_us: 0, recent_us: 0.0 }
    }

    fn record(&mut self, us: u64) {
        self.histogram.saturating_record(us.max(1));
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Records `n` samples of 0 (kept as 1 us, the histogram's floor) at once.
    fn record_zeros(&mut self, n: u64) {
        if n > 0 {
            let _ = self.histogram.record_n(1, n);
        }
    }

    fn clear(&mut self) {
        self.histogram.reset();
        self.sum_us = 0;
    }

    /// Adds a batch recorded elsewhere, moving the recent average as that many samples of the batch's mean
    /// would have moved it one by one.
    /// Adds `other`'s samples, leaving the recent average alone.
    fn add(&mut self, other: &Series) {
        // Bounds are equal on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    fn absorb(&mut self, batch: &Series) {
        let n = batch.histogram.len();
        if n == 0 {
            return;
        }
        let before = self.histogram.len();
        self.add(batch);
        let mean = batch.sum_us as f64 / n as f64;
        if (before + n) as f64 <= RECENT_SAMPLES {
            self.recent_us = self.sum_us as f64 / self.histogram.len() as f64;
        } else {
            let keep = (1.0 - 1.0 / RECENT_SAMPLES).powf(n as f64);
            self.recent_us = self.recent_us * keep + mean * (1.0 - keep);
        }
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// The average over recent samples, in microseconds.
    pub fn recent_us(&self) -> u64 {
        self.recent_us.round() as u64
    }

    pub fn max_us(&self) -> u64 {
        if self.histogram.is_empty() {
            0
        } else {
            self.histogram.max()
        }
    }

    /// The value below which `q` (0..1) of the samples fall, in microseconds; 0 without samples.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.histogram.is_empty() {
            0
        } else {
            self.histogram.value_at_quantile(q)
        }
    }

    /// Samples at or below `us` microseconds (a Prometheus bucket). The histogram keeps 2 significant digits:
    /// the slot holding `us` holds values above it too (5.005 s beside 5 s), so unless it ends at `us` it is
    /// left to the next bucket up. A bucket may miss a sample at its bound, by under 1 %, but never holds one
    /// above it, as Prometheus requires.
    #[cfg(test)]
    pub fn count_at_most(&self, us: u64) -> u64 {
        let us = us.min(LONGEST_US);
        let top = match self.histogram.highest_equivalent(us) <= us {
            true => us,
            false => self.histogram.lowest_equivalent(us).saturating_sub(1),
        };
        if top == 0 {
            return 0;
        }
        self.histogram.count_between(0, top)
    }

    /// `count_at_most` of each of `bounds` (ascending), in one pass over the recorded slots rather than one
    /// per bound: a slot counts toward every bound it ends at or below.
    pub fn counts_at_most(&self, bounds: &[u64]) -> Vec<u64> {
        let mut counts = vec![0; bounds.len()];
        for slot in self.histogram.iter_recorded() {
            let end = self.histogram.highest_equivalent(slot.value_iterated_to());
            let first = bounds.partition_point(|&b| b.min(LONGEST_US) < end);
            if let Some(c) = counts.get_mut(first) {
                *c += slot.count_at_value();
            }
        }
        for i in 1..counts.len() {
            counts[i] += counts[i - 1];
        }
        counts
    }
}

/// The four phases' samples of one server, backend or frontend.
#[derive(Clone)]
pub struct Phases {
    series: [Series; 4],
    /// Requests that did not queue, not yet in the queue histogram: most requests, so they are counted here
    /// and recorded in one step when published.
    unqueued: u64,
}

impl Phases {
    pub fn new() -> Phases {
        Phases { series: std::array::from_fn(|_| Series::new()), unqueued: 0 }
    }

    pub fn get(&self, phase: Phase) -> &Series {
        &self.series[phase as usize]
    }

    fn record(&mut self, sample: &Sample) {
        for (phase, (series, us)) in self.series.iter_mut().zip(sample.0).enumerate() {
            match us {
                Some(0) if phase == Phase::Queue as usize => self.unqueued += 1,
                Some(us) => series.record(us),
                None => {}
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.unqueued == 0 && self.series.iter().all(|s| s.count() == 0)
    }

    fn clear(&mut self) {
        self.series.iter_mut().for_each(Series::clear);
        self.unqueued = 0;
    }

    /// Puts the requests that did not queue into the queue histogram.
    fn settle(&mut self) {
        self.series[Phase::Queue as usize].record_zeros(std::mem::take(&mut self.unqueued));
    }

    fn absorb(&mut self, batch: &Phases) {
        for (mine, theirs) in self.series.iter_mut().zip(&batch.series) {
            mine.absorb(theirs);
        }
    }
}

impl Default for Phases {
    fn default() -> Phases {
        Phases::new()
    }
}

/// One exchange's times in microseconds, by [`Phase`]; `None` for a phase it did not reach.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample(pub [Option<u64>; 4]);

/// What every thread has published for one server, backend or frontend.
#[derive(Default)]
pub struct Timings {
    /// Copied on write: a reader takes the current view without copying its histograms (about 100 KiB a
    /// server, so a stats request over a thousand members copied 100 MB under the locks the data-plane
    /// threads publish through); a publication copies only while a reader still holds the view it replaces.
    published: Mutex<Arc<Phases>>,
}

impl Timings {
    /// Everything published so far, as it stands now.
    pub fn read(&self) -> Arc<Phases> {
        self.published.lock().clone()
    }

    fn absorb(&self, batch: &Phases) {
        Arc::make_mut(&mut self.published.lock()).absorb(batch);
    }
}

impl std::fmt::Debug for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Timings")
    }
}

/// Publications a server's batch may stay empty before the recorder lets go of it (a server that left).
const IDLE_PUBLICATIONS: u32 = 50;

struct Batch {
    to: Arc<Timings>,
    phases: Phases,
    idle: u32,
}

/// One data-plane thread's unpublished samples: touched only by that thread.
pub struct Recorder {
    frontends: Vec<Batch>,
    backend: Batch,
    servers: Vec<Batch>,
}

impl Recorder {
    /// A recorder for `frontends` (by index) and the backend.
    pub fn new(frontends: &[Arc<Timings>], backend: &Arc<Timings>) -> Recorder {
        let batch = |to: &Arc<Timings>| Batch { to: to.clone(), phases: Phases::new(), idle: 0 };
        Recorder { frontends: frontends.iter().map(batch).collect(), backend: batch(backend), servers: Vec::new() }
    }

    /// Records an exchange of frontend `frontend` (its total time only: the other phases are the servers');
    /// `server`: the server it reached, if any.
    pub fn record(&mut self, frontend: usize, server: Option<&Arc<Timings>>, sample: &Sample) {
        if let (Some(batch), Some(total)) = (self.frontends.get_mut(frontend), sample.0[Phase::Total as usize]) {
            batch.phases.series[Phase::Total as usize].record(total);
        }
        let Some(server) = server else { return };
        match self.servers.iter_mut().find(|b| Arc::ptr_eq(&b.to, server)) {
            Some(batch) => batch.phases.record(sample),
            None => {
                let mut phases = Phases::new();
                phases.record(sample);
                self.servers.push(Batch { to: server.clone(), phases, idle: 0 });
            }
        }
    }

    /// Adds what was recorded since the last call to the shared side. The backend's samples are its servers'
    /// together, added here rather than recorded twice per request.
    pub fn publish(&mut self) {
        for batch in self.servers.iter_mut() {
            batch.phases.settle();
            for (mine, theirs) in self.backend.phases.series.iter_mut().zip(&batch.phases.series) {
                mine.add(theirs);
            }
        }
        // Servers first, then the backend, then the frontends: a reader that sees a total (the backend's, a
        // frontend's) covering a request also sees that request in its server's figures.
        let all = self.servers.iter_mut().chain(std::iter::once(&mut self.backend)).chain(self.frontends.iter_mut());
        for batch in all {
            if batch.phases.is_empty() {
                batch.idle += 1;
                continue;
            }
            batch.to.absorb(&batch.phases);
            batch.phases.clear();
            batch.idle = 0;
        }
        self.servers.retain(|b| b.idle < IDLE_PUBLICATIONS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(total_us: u64) -> Sample {
        Sample([Some(0), Some(10), Some(total_us / 2), Some(total_us)])
    }

    /// A response of 5.005 s counted in the `le="5"` bucket: it shares a histogram slot with 5 s.
    #[test]
    fn a_bucket_holds_no_sample_above_its_bound() {
        let mut s = Series::new();
        for us in [5_005_000, 4_900_000, 250_500, 1] {
            s.record(us);
        }
        assert_eq!(s.count_at_most(5_000_000), 3, "5.005 s is above 5 s");
        assert_eq!(s.count_at_most(250_000), 1, "250.5 ms is above 250 ms");
        assert_eq!(s.count_at_most(6_000_000), 4);
        assert_eq!(s.count_at_most(0), 0);
    }

    #[test]
    fn buckets_in_one_pass_match_each_bucket_counted_alone() {
        let mut s = Series::new();
        for us in (1..400u64).map(|i| i * i * 37 % 20_000_000 + 1).chain([5_005_000, 5_000_000, LONGEST_US + 9]) {
            s.record(us);
        }
        let bounds = [0, 1, 100, 250, 1_000, 99_999, 250_000, 5_000_000, 10_000_000, LONGEST_US, u64::MAX];
        let each: Vec<u64> = bounds.iter().map(|&b| s.count_at_most(b)).collect();
        assert_eq!(s.counts_at_most(&bounds), each);
        assert!(each[7] > 0 && each[7] < each[8], "the bounds split the samples: {each:?}");
    }

    #[test]
    fn a_view_read_is_shared_and_kept_apart_from_later_publications() {
        let (front, back, server) = (Arc::new(Timings::default()), Arc::new(Timings::default()), Arc::default());
        let mut r = Recorder::new(&[front], &back);
        r.record(0, Some(&server), &sample(100));
        r.publish();
        let (first, again) = (server.read(), server.read());
        assert!(Arc::ptr_eq(&first, &again), "reading copied the histograms");
        r.record(0, Some(&server), &sample(100));
        r.publish();
        assert_eq!(first.get(Phase::Total).count(), 1, "a view read stays as it was");
        assert_eq!(server.read().get(Phase::Total).count(), 2);
    }

    #[test]
    fn threads_publish_into_one_view() {
        let (front, back, server) = (Arc::new(Timings::default()), Arc::new(Timings::default()), Arc::default());
        let mut a = Recorder::new(std::slice::from_ref(&front), &back);
        let mut b = Recorder::new(std::slice::from_ref(&front), &back);
        for us in [100, 200, 300] {
            a.record(0, Some(&server), &sample(us));
        }
        b.record(0, Some(&server), &sample(1000));
        b.record(0, None, &Sample([None, None, None, Some(50)]));
        assert_eq!(server.read().get(Phase::Total).count(), 0, "nothing is visible before publication");
        a.publish();
        b.publish();
        let s = server.read();
        let total = s.get(Phase::Total);
        assert_eq!((total.count(), total.sum_us(), total.max_us() / 10), (4, 1600, 100));
        assert_eq!(total.recent_us(), 400);
        assert_eq!(front.read().get(Phase::Total).count(), 5);
        assert_eq!(back.read().get(Phase::Total).count(), 4);
        assert_eq!(back.read().get(Phase::Connect).sum_us(), 40);
        assert_eq!(front.read().get(Phase::Connect).count(), 0, "frontends keep their total time only");
    }

    #[test]
    fn the_recent_average_follows_the_last_thousand_samples() {
        let (front, back, server) = (Arc::new(Timings::default()), Arc::new(Timings::default()), Arc::default());
        let mut r = Recorder::new(&[front], &back);
        for _ in 0..5000 {
            r.record(0, Some(&server), &sample(100));
        }
        r.publish();
        for _ in 0..5000 {
            r.record(0, Some(&server), &sample(10_000));
        }
        r.publish();
        let total = server.read().get(Phase::Total).clone();
        // After 5 windows of slow samples the average is theirs within 1%; the all-time mean is half-way.
        assert!((9_900..=10_000).contains(&total.recent_us()), "{}", total.recent_us());
        assert_eq!(total.sum_us() / total.count(), 5050);
        assert!(total.quantile_us(0.25) <= 101 && total.quantile_us(0.75) >= 9_900);
        assert_eq!(total.count_at_most(1_000), 5000);
    }

    #[test]
    fn a_server_no_longer_used_is_let_go() {
        let (front, back, server) = (Arc::new(Timings::default()), Arc::new(Timings::default()), Arc::default());
        let mut r = Recorder::new(&[front], &back);
        r.record(0, Some(&server), &sample(10));
        for _ in 0..=IDLE_PUBLICATIONS {
            r.publish();
        }
        assert!(r.servers.is_empty());
        assert_eq!(Arc::strong_count(&server), 1);
    }
}
