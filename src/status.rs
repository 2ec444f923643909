//! Per-share status, written by the agent as it works and read by `sgw-agent status`.
//!
//! Each share's status lives in `<state_dir>/shares/<name>/status.json`, replaced atomically
//! (write, fsync, rename), so a reader never sees half a file and `status` works whether or not
//! the daemon is running.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Maximum number of example keys kept for "skipped" and "unknown local file" reports.
pub const MAX_EXAMPLES: usize = 10;

/// The share's state, in words an operator can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShareState {
    /// No full sync has completed yet.
    #[default]
    NotSynced,
    /// A full sync (or reconcile) is running; see `sync_progress`.
    FullSyncing,
    /// Converged and following the queue (or idle when the share has no queue).
    Healthy,
    /// The queue cannot be read; a full reconcile runs when it is back.
    QueueFailure,
    /// The last full sync could not bring the share in line; see `last_error`.
    Error,
    /// The agent stopped (cleanly) while this share was in the state recorded before.
    Stopped,
}

impl ShareState {
    pub fn as_str(self) -> &'static str {
        match self {
            ShareState::NotSynced => "not_synced",
            ShareState::FullSyncing => "full_syncing",
            ShareState::Healthy => "healthy",
            ShareState::QueueFailure => "queue_failure",
            ShareState::Error => "error",
            ShareState::Stopped => "stopped",
        }
    }
}

/// Everything `status` shows for one share.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareStatus {
    pub share: String,
    pub state: ShareState,
    /// -1 before any full sync, 0..=99 during one, 100 once converged.
    pub sync_progress: i32,
    /// Objects in the bucket/prefix at the last count.
    pub objects_total: u64,
    pub bytes_total: u64,
    /// Objects the agent holds (records in its state store).
    pub objects_local: u64,
    /// Downloads published since the agent started (sync + events).
    pub objects_downloaded: u64,
    pub bytes_downloaded: u64,
    pub objects_deleted: u64,
    /// Downloads verified by size only because the server had no CRC-64 for the object.
    pub verified_without_crc: u64,
    /// Keys that cannot map to a safe local path; skipped, never fatal.
    pub skipped_keys: u64,
    pub skipped_examples: Vec<String>,
    /// Files in the share the agent did not write and the bucket does not have (left alone).
    pub unknown_local_files: u64,
    pub unknown_examples: Vec<String>,
    /// Objects that could not be brought in line during the last full sync.
    pub failed_objects: u64,
    pub events_applied: u64,
    pub messages_discarded: u64,
    pub last_error: Option<String>,
    /// Since when the share has been in `error` or `queue_failure` without getting healthy
    /// in between (retries pass through `full_syncing`; they do not reset it).
    #[serde(default, with = "crate::time::rfc3339::option")]
    pub error_since: Option<i64>,
    /// The last completed full sync (RFC 3339 in the file and in `status --json`).
    #[serde(with = "crate::time::rfc3339::option")]
    pub last_full_sync: Option<i64>,
    /// When this status was written.
    #[serde(with = "crate::time::rfc3339")]
    pub updated: i64,
    /// Two-way shares: the upload side (zero for a mirror).
    #[serde(default)]
    pub uploads: UploadStatus,
}

/// Two-way shares: local changes on their way to the bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadStatus {
    /// Local changes waiting for their settle window (or a retry).
    pub pending: u64,
    /// Uploads running now.
    pub in_flight: u64,
    /// Uploads completed since the agent started.
    pub done: u64,
    pub bytes: u64,
    /// Objects deleted because their files were deleted locally.
    pub remote_deletes: u64,
    /// Keys changed on both sides: both versions kept (since the agent started).
    pub conflicts: u64,
    pub last_error: Option<String>,
}

impl ShareStatus {
    /// In `error` or `queue_failure` now.
    pub fn in_trouble_now(&self) -> bool {
        matches!(self.state, ShareState::Error | ShareState::QueueFailure)
    }

    /// In `error` or `queue_failure`, or retrying after one without having been healthy
    /// since: what `status` exits non-zero for.
    pub fn in_trouble(&self) -> bool {
        self.in_trouble_now() || self.error_since.is_some()
    }

    /// Keep [`ShareStatus::error_since`] in step with the state at `now`.
    pub fn track_trouble(&mut self, now: i64) {
        match self.state {
            ShareState::Error | ShareState::QueueFailure => {
                self.error_since.get_or_insert(now);
            }
            ShareState::Healthy => self.error_since = None,
            _ => {}
        }
    }

    pub fn new(share: &str) -> ShareStatus {
        ShareStatus {
            share: share.to_owned(),
            sync_progress: -1,
            ..Default::default()
        }
    }

    /// Remember an example key (bounded), counting every occurrence.
    pub fn note_skipped(&mut self, key: &str) {
        self.skipped_keys += 1;
        push_example(&mut self.skipped_examples, key);
    }

    pub fn note_unknown(&mut self, path: &str) {
        self.unknown_local_files += 1;
        push_example(&mut self.unknown_examples, path);
    }
}

fn push_example(list: &mut Vec<String>, item: &str) {
    if list.len() < MAX_EXAMPLES && !list.iter().any(|k| k == item) {
        // Keys can be hostile: keep them short and printable in the report.
        let shown: String = item
            .chars()
            .take(200)
            .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
            .collect();
        list.push(shown);
    }
}

pub fn status_path(share_state_dir: &Path) -> PathBuf {
    share_state_dir.join("status.json")
}

/// Atomically replace the status file.
pub fn write_status(share_state_dir: &Path, status: &ShareStatus) -> std::io::Result<()> {
    std::fs::create_dir_all(share_state_dir)?;
    let path = status_path(share_state_dir);
    let tmp = share_state_dir.join("status.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    let body = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// Read a share's status; `Ok(None)` when the agent never wrote one.
pub fn read_status(share_state_dir: &Path) -> std::io::Result<Option<ShareStatus>> {
    match std::fs::read(status_path(share_state_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_files_of_older_versions_still_read() {
        let mut s = ShareStatus::new("photos");
        s.updated = 1_796_285_178;
        s.last_full_sync = Some(1_796_285_100);
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(json["updated"], "2026-12-03T08:06:18Z");
        assert_eq!(json["last_full_sync"], "2026-12-03T08:05:00Z");
        assert!(json["error_since"].is_null());
        let back: ShareStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        // Written before times were text, and before error_since existed.
        let old = r#"{"share":"photos","state":"healthy","sync_progress":100,"objects_total":1,
            "bytes_total":1,"objects_local":1,"objects_downloaded":0,"bytes_downloaded":0,
            "objects_deleted":0,"verified_without_crc":0,"skipped_keys":0,"skipped_examples":[],
            "unknown_local_files":0,"unknown_examples":[],"failed_objects":0,"events_applied":0,
            "messages_discarded":0,"last_error":null,"last_full_sync":1796285100,"updated":1796285178}"#;
        let read: ShareStatus = serde_json::from_str(old).unwrap();
        assert_eq!(read.updated, 1_796_285_178);
        assert_eq!(read.last_full_sync, Some(1_796_285_100));
        assert_eq!(read.error_since, None);
    }
}
