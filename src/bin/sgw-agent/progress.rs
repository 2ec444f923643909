//! Terminal progress for `sgw-agent sync`: one line per update on stderr, with the rate and
//! the time left once the listing has given the totals.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use sgw_agent::engine::progress::Progress;
use sgw_agent::format::{duration_words, human_bytes, thousands};
use sgw_agent::shell::ProgressSink;

/// One line per update on stderr, for `sgw-agent sync` on a terminal or in a script.
#[derive(Default)]
pub struct StderrProgress {
    /// When each share's sync showed its first progress (rates count from there).
    started: Mutex<HashMap<String, Instant>>,
}

impl StderrProgress {
    pub fn new() -> StderrProgress {
        StderrProgress::default()
    }
}

impl ProgressSink for StderrProgress {
    fn update(&self, share: &str, percent: i32, p: &Progress) {
        let elapsed = {
            let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
            let at = *started.entry(share.to_owned()).or_insert_with(Instant::now);
            at.elapsed().as_secs_f64()
        };
        eprintln!("{}", progress_line(share, percent, p, elapsed));
    }
}

/// `photos:  42%  1,234/2,900 objects  1.2 GiB/2.8 GiB  35.2 MiB/s  ETA 48s`; before the
/// listing has counted the bucket, `photos: listing the bucket…  1,234 objects checked`.
pub fn progress_line(share: &str, percent: i32, p: &Progress, elapsed: f64) -> String {
    let rate = p
        .byte_rate(elapsed)
        .map(|r| format!("  {}/s", human_bytes(r as u64)))
        .unwrap_or_default();
    if percent >= 100 {
        return format!(
            "{share}: 100%  {} objects  {}  done in {}{rate}",
            thousands(p.total_objects.max(p.done_objects)),
            human_bytes(p.total_bytes.max(p.done_bytes)),
            duration_words(elapsed.round() as i64)
        );
    }
    if p.total_objects == 0 {
        // The totals come when the listing is through: no "0/0 objects" meanwhile.
        return format!(
            "{share}: listing the bucket…  {} objects checked so far{rate}",
            thousands(p.done_objects)
        );
    }
    let eta = p
        .eta_secs(elapsed)
        .map(|s| format!("  ETA {}", duration_words(s.ceil() as i64)))
        .unwrap_or_default();
    format!(
        "{share}: {percent:>3}%  {}/{} objects  {}/{}{rate}{eta}",
        thousands(p.done_objects),
        thousands(p.total_objects),
        human_bytes(p.done_bytes),
        human_bytes(p.total_bytes)
    )
}
