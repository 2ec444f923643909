//! The I/O shell for one share: it runs the engine's decisions against the bucket, the queue
//! and the cache disk, and feeds the results back. Decisions live in [`crate::engine`]; the
//! rooms here only do I/O and bookkeeping.
//!
//! Threads: the share's own thread lists, plans, polls and owns the state store (single
//! writer); a fixed pool of `download_concurrency` workers streams objects into staged files and
//! publishes them. Jobs and results travel over bounded channels, so memory depends on the
//! concurrency, never on the bucket size.
//!
//! # Layout
//!
//! - [`driver`]: [`Share`] itself: opening, the run loop (full sync, then the queue), state
//!   and status durability.
//! - [`full_sync`]: one full sync: the spooled listing merged with the state store.
//! - [`events`]: one received batch of queue messages.
//! - [`local`]: the effects on the cache disk: fetch (or adopt, or set aside), record, delete.
//! - [`pool`] and [`download`]: the worker pool and the one-object download it runs.
//! - [`deletes`]: the full sync's deletes, held back for the mass-delete guard.
//! - [`recovery`]: publish intents left by a crash; files nobody knows.
//! - [`listing`]: the full sync's one pass over the bucket, spooled to disk.
//! - two-way shares: [`two_way`]: each key reconciled by the engine (remote deletes, records,
//!   conflict copies); [`upload`]: one verified upload; [`multipart`]: big files in parts with
//!   a FULL_OBJECT CRC-64, resumed after a restart; [`watch`]: local changes from inotify, the
//!   settle window, renames, the scan for new files.

mod deletes;
mod download;
pub mod driver;
pub mod dry_run;
mod events;
mod full_sync;
pub mod listing;
mod local;
mod multipart;
mod pool;
mod recovery;
mod two_way;
mod upload;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::state::StateError;
use crate::cloud::{CloudError, EventQueue, ObjectStore};
use crate::config::ShareConfig;
use crate::daemon::Shutdown;
use crate::engine::progress::Progress;

pub use driver::Share;

const LONG_POLL_SECS: u32 = 20;
/// Extend a batch's visibility when its work runs longer than this.
const VISIBILITY_EXTEND_AFTER: Duration = Duration::from_secs(20);
const VISIBILITY_EXTENSION_SECS: u32 = 120;
/// Journal fsync cadence during a full sync: records are durable at least this often.
const SYNC_EVERY_RECORDS: usize = 256;
/// Downloads whose intents share one journal sync before they go to the pool.
const JOB_BATCH: usize = 32;
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// A full share disk is logged again after this long if it is still full.
const DISK_FULL_REPEAT: Duration = Duration::from_secs(600);
/// The full sync's held-back deletes, in the share's state directory (unlinked while in use).
const DELETE_SPOOL: &str = "deletes.spool";
/// The full sync's listing spool, in the share's state directory (unlinked while in use).
const LISTING_SPOOL: &str = "listing.spool";

/// Why a share stopped working.
#[derive(Debug)]
pub enum ShareError {
    Cloud(CloudError),
    State(StateError),
    Io(std::io::Error),
    /// The listing or the engine found something that must stop the sync (e.g. keys out of
    /// order): deleting on a wrong plan could destroy data.
    Plan(String),
    Stopped,
}

impl std::fmt::Display for ShareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShareError::Cloud(e) => write!(f, "{e}"),
            ShareError::State(e) => write!(f, "state store: {e}"),
            ShareError::Io(e) => write!(f, "local disk: {e}"),
            ShareError::Plan(m) => write!(f, "{m}"),
            ShareError::Stopped => write!(f, "stopped"),
        }
    }
}

impl From<CloudError> for ShareError {
    fn from(e: CloudError) -> Self {
        ShareError::Cloud(e)
    }
}

impl From<StateError> for ShareError {
    fn from(e: StateError) -> Self {
        ShareError::State(e)
    }
}

impl From<std::io::Error> for ShareError {
    fn from(e: std::io::Error) -> Self {
        ShareError::Io(e)
    }
}

/// The outcome of one full sync.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub listed: u64,
    pub downloaded: u64,
    pub bytes_downloaded: u64,
    pub deleted: u64,
    pub kept: u64,
    pub adopted: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Deletes the mass-delete guard refused (none were done).
    pub refused_deletes: u64,
}

impl SyncReport {
    pub fn converged(&self) -> bool {
        self.failed == 0 && self.refused_deletes == 0
    }
}

/// How progress is shown while a full sync runs (rustic style: a trait with a silent impl).
pub trait ProgressSink: Send + Sync {
    fn update(&self, share: &str, percent: i32, progress: &Progress);
}

/// Shows nothing (the daemon: progress goes to the status file).
pub struct Silent;

impl ProgressSink for Silent {
    fn update(&self, _: &str, _: i32, _: &Progress) {}
}

/// Everything a share needs from outside.
pub struct ShareContext {
    pub cfg: ShareConfig,
    pub state_dir: PathBuf,
    pub store: Arc<dyn ObjectStore>,
    pub queue: Option<Arc<dyn EventQueue>>,
    pub shutdown: Shutdown,
    pub progress: Arc<dyn ProgressSink>,
}
