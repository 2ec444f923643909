//! How many downloads run at once: a limit that follows the link (AIMD), not a fixed number.
//!
//! On loopback four workers saturate the disk; on a 30 ms link four workers do one object per
//! round trip each (~130 objects/s) and sixteen or more are needed. The controller grows the
//! limit while throughput grows and halves it when the server pushes back:
//!
//! - Throughput is measured over windows of at least [`MIN_WINDOW`] and at least one
//!   completion per allowed worker, counting an object as one unit plus one per MiB (small
//!   objects are bound by round trips, large ones by bandwidth). Only windows in which every
//!   allowed worker had work count: a sync running dry says nothing about the link.
//! - Slow start: the limit doubles while a window beats the best one by [`GROWTH`]; after the
//!   first window that does not, it grows by one per window that beats the best by
//!   [`PROBE_GAIN`] (a plateau stops the growth: more workers than the link needs only cost
//!   memory). An increase after which throughput *fell* below [`UNDO_BELOW`] of the best is
//!   undone: on a fast local link more workers only contend for the CPU and the disk (fsync),
//!   and measured 2× slower there than four.
//! - A retry that the server or the transport asked for (throttling, 5xx, a reset) halves the
//!   limit at once (at most once per window), never below one.
//!
//! The limit never exceeds the cap (`download_concurrency`), so an operator on a metered link
//! can still say 2. Time is an input: the machine is pure and property-tested.

use std::time::Duration;

/// The limit a share starts with (the old fixed default).
pub const START: usize = 4;
/// Shortest window a rate is measured over.
pub const MIN_WINDOW: Duration = Duration::from_millis(250);
/// Slow start continues while a window is this much better than the best.
pub const GROWTH: f64 = 1.15;
/// After slow start, one more worker per window this much better than the best.
pub const PROBE_GAIN: f64 = 1.05;
/// A window below this share of the best after an increase undoes the increase.
pub const UNDO_BELOW: f64 = 0.9;
/// Bytes that count as one unit of work beside the object itself.
const UNIT_BYTES: f64 = 1024.0 * 1024.0;

#[derive(Clone, Debug)]
pub struct Concurrency {
    limit: usize,
    /// The limit before the last increase (to undo it).
    previous: usize,
    cap: usize,
    slow_start: bool,
    best_rate: f64,
    window_start: Option<Duration>,
    window_units: f64,
    window_done: usize,
    /// Every completion of this window came while all allowed workers were busy.
    window_saturated: bool,
    /// A backoff already halved the limit in this window.
    window_backed_off: bool,
}

impl Concurrency {
    /// A controller capped at `cap` (at least 1).
    pub fn new(cap: usize) -> Concurrency {
        let cap = cap.max(1);
        Concurrency {
            limit: START.min(cap),
            previous: START.min(cap),
            cap,
            slow_start: true,
            best_rate: 0.0,
            window_start: None,
            window_units: 0.0,
            window_done: 0,
            window_saturated: true,
            window_backed_off: false,
        }
    }

    /// Workers allowed now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// A download finished at `now` (time since any fixed origin) after moving `bytes`;
    /// `saturated` says every allowed worker was busy (more work was waiting).
    pub fn on_done(&mut self, now: Duration, bytes: u64, saturated: bool) {
        let start = *self.window_start.get_or_insert(now);
        self.window_units += 1.0 + bytes as f64 / UNIT_BYTES;
        self.window_done += 1;
        self.window_saturated &= saturated;
        let elapsed = now.saturating_sub(start);
        if elapsed < MIN_WINDOW || self.window_done < self.limit {
            return;
        }
        let rate = self.window_units / elapsed.as_secs_f64();
        if self.window_saturated && !self.window_backed_off {
            self.judge(rate);
        }
        self.window_start = Some(now);
        self.window_units = 0.0;
        self.window_done = 0;
        self.window_saturated = true;
        self.window_backed_off = false;
    }

    fn judge(&mut self, rate: f64) {
        let grow = if self.slow_start { GROWTH } else { PROBE_GAIN };
        if rate >= self.best_rate * grow {
            self.best_rate = rate;
            self.previous = self.limit;
            self.limit = if self.slow_start {
                self.limit * 2
            } else {
                self.limit + 1
            }
            .min(self.cap);
            return;
        }
        self.slow_start = false;
        if rate < self.best_rate * UNDO_BELOW && self.limit > self.previous {
            // The last increase made it worse: back to where it was, and stay there.
            self.limit = self.previous;
        }
        self.best_rate = self.best_rate.max(rate);
    }

    /// The server throttled or the transport failed and a request is being retried.
    pub fn on_backoff(&mut self) {
        if self.window_backed_off {
            return;
        }
        self.window_backed_off = true;
        self.slow_start = false;
        self.limit = (self.limit / 2).max(1);
        self.previous = self.limit;
        // The rate seen at the higher limit is not a target to beat at the lower one.
        self.best_rate = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A link where each worker finishes one object per `rtt`, up to `knee` workers; beyond
    /// the knee more workers add nothing. Returns the limits seen.
    fn run(cap: usize, knee: usize, rtt: Duration, seconds: u64) -> Vec<usize> {
        let mut c = Concurrency::new(cap);
        let mut now = Duration::ZERO;
        let mut seen = Vec::new();
        while now < Duration::from_secs(seconds) {
            let busy = c.limit().min(knee);
            // `busy` completions per rtt, spread evenly.
            let step = rtt / u32::try_from(busy).unwrap();
            for _ in 0..busy {
                now += step;
                c.on_done(now, 4096, true);
            }
            seen.push(c.limit());
        }
        seen
    }

    #[test]
    fn grows_to_the_knee_on_a_long_link() {
        let limits = run(64, 40, Duration::from_millis(30), 20);
        let last = *limits.last().unwrap();
        assert!(last >= 32, "limit {last} after 20 s: {limits:?}");
    }

    #[test]
    fn more_workers_than_a_contended_box_can_use_are_given_back() {
        // Four workers saturate it; each one more costs 5 % (CPU and fsync contention).
        let mut c = Concurrency::new(32);
        let mut now = Duration::ZERO;
        for _ in 0..4000 {
            let l = c.limit() as f64;
            let rate = 4.0_f64.min(l) / (1.0 + 0.05 * (l - 4.0).max(0.0)) * 1000.0;
            now += Duration::from_secs_f64(1.0 / rate);
            c.on_done(now, 4096, true);
        }
        assert!(
            c.limit() <= 5,
            "limit {} on a box where 4 is best",
            c.limit()
        );
    }

    #[test]
    fn respects_the_cap() {
        let limits = run(2, 40, Duration::from_millis(30), 10);
        assert!(limits.iter().all(|l| *l <= 2));
        assert_eq!(Concurrency::new(0).limit(), 1);
    }

    #[test]
    fn a_flat_link_stops_slow_start() {
        // Four workers already saturate it: the limit stops doubling soon.
        let limits = run(64, 4, Duration::from_millis(2), 10);
        assert!(*limits.last().unwrap() <= 16, "{limits:?}");
    }

    #[test]
    fn a_backoff_halves_once_per_window() {
        let mut c = Concurrency::new(64);
        let mut now = Duration::ZERO;
        for _ in 0..200 {
            now += Duration::from_millis(5);
            c.on_done(now, 0, true);
        }
        let before = c.limit();
        assert!(before > START, "{before}");
        c.on_backoff();
        c.on_backoff();
        assert_eq!(c.limit(), (before / 2).max(1));
    }

    #[test]
    fn unsaturated_windows_do_not_grow_it() {
        let mut c = Concurrency::new(64);
        let mut now = Duration::ZERO;
        for _ in 0..1000 {
            now += Duration::from_millis(1);
            c.on_done(now, 0, false);
        }
        assert_eq!(c.limit(), START);
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_one_and_the_cap(
            cap in 0usize..80,
            events in proptest::collection::vec((0u64..400, 0u64..10_000_000, any::<bool>(), any::<bool>()), 0..400),
        ) {
            let mut c = Concurrency::new(cap);
            let mut now = Duration::ZERO;
            for (gap_ms, bytes, saturated, backoff) in events {
                now += Duration::from_millis(gap_ms);
                if backoff { c.on_backoff() } else { c.on_done(now, bytes, saturated) }
                prop_assert!(c.limit() >= 1 && c.limit() <= cap.max(1));
            }
        }
    }
}
