//! Exponential backoff with full jitter for cloud calls.
//!
//! Attempt `n` (0-based) that failed with a retryable error waits a uniformly random time in
//! `[0, min(cap, base * 2^n)]` ("full jitter", as in the AWS architecture blog and rustic):
//! many agents that lost the same endpoint do not come back in lock-step. Permanent errors
//! (most 4xx) return at once. Sleeps are cut into short slices so a shutdown request is
//! noticed within ~100 ms.

use std::time::Duration;

use log::{info, warn};
use ring::rand::{SecureRandom, SystemRandom};

use super::CloudError;

/// Longest single sleep between two checks of the stop flag.
const SLEEP_SLICE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries including the first (at least 1).
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    pub fn with_max_attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..RetryPolicy::default()
        }
    }

    /// Upper bound of the wait after failed attempt `attempt` (0-based): `min(cap, base·2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The wait after failed attempt `attempt`, given a uniformly random `random` word.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling(attempt).as_millis()).unwrap_or(u64::MAX);
        // Inclusive range [0, ceiling]; the modulo bias over 2^64 is negligible here.
        Duration::from_millis(random % ceiling_ms.saturating_add(1))
    }
}

fn random_u64(rng: &SystemRandom) -> u64 {
    let mut bytes = [0u8; 8];
    // If the OS RNG fails, waiting the full ceiling is a safe fallback.
    match rng.fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => u64::MAX,
    }
}

/// Sleep `total`, waking every ≤ 100 ms to check `stop`. Returns `false` if stopped early.
pub fn sleep_unless_stopped(total: Duration, stop: &dyn Fn() -> bool) -> bool {
    let mut left = total;
    while !left.is_zero() {
        if stop() {
            return false;
        }
        let slice = left.min(SLEEP_SLICE);
        std::thread::sleep(slice);
        left -= slice;
    }
    !stop()
}

/// Run `op` until it succeeds, fails permanently, runs out of attempts, or `stop` says so.
/// `what` names the call in log lines ("GET bucket/key").
pub fn retry<T>(
    policy: &RetryPolicy,
    what: &str,
    stop: &dyn Fn() -> bool,
    mut op: impl FnMut() -> Result<T, CloudError>,
) -> Result<T, CloudError> {
    let rng = SystemRandom::new();
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt: u32 = 0;
    loop {
        match op() {
            Ok(value) => {
                if attempt > 0 {
                    info!("{what}: recovered after {} attempts", attempt + 1);
                }
                return Ok(value);
            }
            Err(e) => {
                let last = attempt + 1 >= max_attempts;
                if !e.is_retryable() || last || stop() {
                    return Err(e);
                }
                if attempt == 0 {
                    warn!("{what}: {e}; retrying (up to {max_attempts} attempts)");
                }
                if !sleep_unless_stopped(policy.delay(attempt, random_u64(&rng)), stop) {
                    return Err(e);
                }
                attempt += 1;
            }
        }
    }
}

/// The waits of a loop that keeps failing as a whole (a share's full sync, its queue poll):
/// the same full-jitter growth as [`retry`], up to `cap`, back to the start after a success.
/// One policy for every retry in the agent.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
    rng: SystemRandom,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            policy: RetryPolicy {
                max_attempts: u32::MAX,
                base,
                cap,
            },
            attempt: 0,
            rng: SystemRandom::new(),
        }
    }

    /// The wait before the next try; each call lets the following one grow.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.attempt, random_u64(&self.rng));
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The loop succeeded: the next failure starts small again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The wait before retry number `attempt` (0-based) of the default policy, jittered.
pub fn default_delay(attempt: u32) -> Duration {
    RetryPolicy::default().delay(attempt, random_u64(&SystemRandom::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_its_cap_and_starts_over_after_success() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (i, w) in waits.iter().enumerate() {
            let ceiling = Duration::from_secs(1 << i.min(3));
            assert!(*w <= ceiling, "wait {i}: {w:?} > {ceiling:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
    use std::cell::Cell;
    use std::time::Instant;

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
        }
    }

    fn transient() -> CloudError {
        CloudError::Transport("connection reset".into())
    }

    #[test]
    fn ceiling_doubles_from_base_and_stops_at_cap() {
        let p = RetryPolicy::default();
        let ms: Vec<u128> = (0..10).map(|n| p.ceiling(n).as_millis()).collect();
        assert_eq!(
            ms,
            [
                200, 400, 800, 1600, 3200, 6400, 12_800, 20_000, 20_000, 20_000
            ]
        );
        // Huge attempt numbers neither overflow nor exceed the cap.
        assert_eq!(p.ceiling(63), Duration::from_secs(20));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(20));
    }

    #[test]
    fn delay_is_full_jitter_within_ceiling() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0, 0), Duration::ZERO);
        assert_eq!(p.delay(0, 200), Duration::from_millis(200));
        assert_eq!(p.delay(0, 201), Duration::ZERO);
        assert_eq!(p.delay(3, u64::MAX), Duration::from_millis(u64::MAX % 1601));
        for r in [1u64, 7, 12_345, u64::MAX / 3, u64::MAX] {
            for n in 0..12 {
                assert!(p.delay(n, r) <= p.ceiling(n));
            }
        }
        // The real RNG spreads waits across the range rather than pinning one value.
        let rng = SystemRandom::new();
        let samples: Vec<Duration> = (0..64).map(|_| p.delay(4, random_u64(&rng))).collect();
        assert!(samples.iter().any(|d| *d < Duration::from_millis(1600)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(1600)));
    }

    #[test]
    fn retries_transient_errors_until_success() {
        let calls = Cell::new(0);
        let result = retry(&fast(6), "op", &|| false, || {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(transient())
            } else {
                Ok(calls.get())
            }
        });
        assert_eq!(result, Ok(3));
    }

    #[test]
    fn permanent_errors_return_at_once() {
        let calls = Cell::new(0);
        let denied = CloudError::Service {
            status: 403,
            code: "AccessDenied".into(),
            message: String::new(),
        };
        let result: Result<(), _> = retry(&fast(6), "op", &|| false, || {
            calls.set(calls.get() + 1);
            Err(denied.clone())
        });
        assert_eq!(result, Err(denied));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn gives_up_after_max_attempts_with_last_error() {
        let calls = Cell::new(0);
        let result: Result<(), _> = retry(&fast(4), "op", &|| false, || {
            calls.set(calls.get() + 1);
            Err(CloudError::Service {
                status: 503,
                code: "SlowDown".into(),
                message: format!("try {}", calls.get()),
            })
        });
        assert_eq!(calls.get(), 4);
        assert!(matches!(result, Err(CloudError::Service { message, .. }) if message == "try 4"));
        // Zero attempts still means one try.
        let calls = Cell::new(0);
        let _ = retry(&fast(0), "op", &|| false, || -> Result<(), _> {
            calls.set(calls.get() + 1);
            Err(transient())
        });
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn stop_request_cuts_a_long_backoff_short() {
        let policy = RetryPolicy {
            max_attempts: 6,
            base: Duration::from_secs(20),
            cap: Duration::from_secs(20),
        };
        let started = Instant::now();
        let calls = Cell::new(0);
        let stop = || started.elapsed() > Duration::from_millis(150);
        // Without the stop check, five waits of up to 20 s each would take ~50 s on average.
        let result: Result<(), _> = retry(&policy, "op", &stop, || {
            calls.set(calls.get() + 1);
            Err(transient())
        });
        assert!(result.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn sleep_reports_stop() {
        assert!(sleep_unless_stopped(Duration::from_millis(5), &|| false));
        let started = Instant::now();
        assert!(!sleep_unless_stopped(Duration::from_secs(30), &|| true));
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
