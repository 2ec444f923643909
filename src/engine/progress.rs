//! SyncProgress: 0..=99 while a full sync runs, 100 once it has finished, and
//! [`NOT_STARTED`] before the first one.

/// The value reported for a share that has never been synced.
pub const NOT_STARTED: i32 = -1;

/// Counts of a full sync: totals are what the listing found, `done` what has been settled
/// (kept, downloaded or deleted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub total_objects: u64,
    pub total_bytes: u64,
    pub done_objects: u64,
    pub done_bytes: u64,
}

impl Progress {
    /// Percentage done. Averages the object fraction and the byte fraction, so both many small
    /// files and a few big ones move the number. Never 100 before `finished`, so "100" always
    /// means "the full sync completed".
    pub fn percent(&self, finished: bool) -> i32 {
        if finished {
            return 100;
        }
        let (sum, count) = [
            (self.done_objects, self.total_objects),
            (self.done_bytes, self.total_bytes),
        ]
        .into_iter()
        // An empty dimension (no bytes: all files empty) says nothing; leave it out.
        .filter(|&(_, total)| total > 0)
        .map(|(done, total)| (done.min(total) as f64) / (total as f64))
        .fold((0.0, 0u32), |(sum, count), fraction| {
            (sum + fraction, count + 1)
        });
        if count == 0 {
            return 0;
        }
        let mean = sum / f64::from(count);
        // Truncate: 99.9% is still 99 and only `finished` says 100.
        ((mean * 100.0) as i32).clamp(0, 99)
    }
}

impl Progress {
    /// Settled bytes per second after `elapsed_secs` (`None` before anything is settled).
    pub fn byte_rate(&self, elapsed_secs: f64) -> Option<f64> {
        (elapsed_secs > 0.0 && self.done_bytes > 0).then(|| self.done_bytes as f64 / elapsed_secs)
    }

    /// Seconds left at the rate so far: by bytes when the share has any, else by objects.
    /// `None` until the totals are known and something is settled.
    pub fn eta_secs(&self, elapsed_secs: f64) -> Option<f64> {
        let (done, total) = if self.total_bytes > 0 {
            (self.done_bytes, self.total_bytes)
        } else {
            (self.done_objects, self.total_objects)
        };
        if total == 0 || done == 0 || elapsed_secs <= 0.0 {
            return None;
        }
        let rate = done as f64 / elapsed_secs;
        Some(total.saturating_sub(done) as f64 / rate)
    }
}

/// Reports progress that never goes backwards within one full sync (totals can grow while the
/// listing streams, which would otherwise make the percentage drop). Use a new meter for each
/// full sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressMeter {
    reported: i32,
}

impl Default for ProgressMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressMeter {
    /// A meter that has reported nothing yet ([`NOT_STARTED`]).
    pub fn new() -> Self {
        ProgressMeter {
            reported: NOT_STARTED,
        }
    }

    /// The value to report now: the greater of `progress.percent(finished)` and everything
    /// reported before.
    pub fn report(&mut self, progress: &Progress, finished: bool) -> i32 {
        self.reported = self.reported.max(progress.percent(finished));
        self.reported
    }

    /// The last value reported ([`NOT_STARTED`] if none).
    pub fn last(&self) -> i32 {
        self.reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(
        total_objects: u64,
        total_bytes: u64,
        done_objects: u64,
        done_bytes: u64,
    ) -> Progress {
        Progress {
            total_objects,
            total_bytes,
            done_objects,
            done_bytes,
        }
    }

    #[test]
    fn finished_is_100_and_unfinished_never_is() {
        assert_eq!(progress(10, 100, 10, 100).percent(true), 100);
        assert_eq!(progress(0, 0, 0, 0).percent(true), 100);
        assert_eq!(progress(10, 100, 10, 100).percent(false), 99);
        assert_eq!(progress(0, 0, 0, 0).percent(false), 0);
    }

    #[test]
    fn objects_and_bytes_both_count() {
        // Half the objects (the small ones) and 1% of the bytes: the number moves.
        assert_eq!(progress(100, 10_000, 50, 100).percent(false), 25);
        // One huge file of two done: bytes carry it.
        assert_eq!(progress(2, 1_000_000, 1, 990_000).percent(false), 74);
        // All files empty: objects alone.
        assert_eq!(progress(4, 0, 1, 0).percent(false), 25);
    }

    #[test]
    fn done_beyond_total_is_clamped() {
        assert_eq!(progress(1, 1, 5, 5).percent(false), 99);
        assert_eq!(progress(u64::MAX, u64::MAX, u64::MAX, 0).percent(false), 50);
    }

    #[test]
    fn meter_starts_not_started_and_never_goes_back() {
        let mut meter = ProgressMeter::new();
        assert_eq!(meter.last(), NOT_STARTED);
        assert_eq!(meter.report(&progress(10, 10, 0, 0), false), 0);
        assert_eq!(meter.report(&progress(10, 10, 6, 6), false), 60);
        // The listing found more objects: the raw figure drops, the report does not.
        let grown = progress(100, 100, 6, 6);
        assert_eq!(grown.percent(false), 6);
        assert_eq!(meter.report(&grown, false), 60);
        assert_eq!(meter.report(&progress(100, 100, 80, 80), false), 80);
        assert_eq!(meter.report(&progress(100, 100, 100, 100), true), 100);
        assert_eq!(meter.report(&progress(0, 0, 0, 0), false), 100);
        assert_eq!(meter.last(), 100);
    }

    #[test]
    fn eta_follows_the_rate_so_far_and_waits_for_totals() {
        let mut p = Progress::default();
        assert_eq!(p.eta_secs(5.0), None, "nothing known yet");
        p.done_objects = 10;
        assert_eq!(p.eta_secs(5.0), None, "totals not known yet");
        p.total_objects = 40;
        assert_eq!(
            p.eta_secs(5.0),
            Some(15.0),
            "by objects when there are no bytes"
        );
        p.total_bytes = 1000;
        p.done_bytes = 250;
        assert_eq!(p.eta_secs(10.0), Some(30.0), "by bytes when there are");
        assert_eq!(p.byte_rate(10.0), Some(25.0));
        assert_eq!(p.byte_rate(0.0), None);
    }
}
