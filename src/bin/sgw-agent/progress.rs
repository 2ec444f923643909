//! Terminal progress for `sgw-agent sync`: one line per update on stderr.

use sgw_agent::engine::progress::Progress;
use sgw_agent::format::human_bytes;
use sgw_agent::shell::ProgressSink;

/// One line per update on stderr, for `sgw-agent sync` on a terminal or in a script.
pub struct StderrProgress;
impl ProgressSink for StderrProgress {
    fn update(&self, share: &str, percent: i32, p: &Progress) {
        eprintln!(
            "{share}: {percent:>3}%  {}/{} objects  {}/{}",
            p.done_objects,
            p.total_objects,
            human_bytes(p.done_bytes),
            human_bytes(p.total_bytes)
        );
    }
}
