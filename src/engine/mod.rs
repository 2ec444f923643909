//! The sans-IO sync core: `(state, input) -> decision`. No sockets, no files, no clocks.
//!
//! - [`plan`]: a full sync as a streaming merge of the sorted remote listing with the sorted
//!   local state, one [`SyncAction`] per key. Memory does not depend on the object count.
//! - [`events`]: what to do with one bucket event, and what to do once the key's current state
//!   is known (HEAD). Events are hints: duplicates, late and reordered events converge because
//!   every action is decided against the key's current state.
//! - [`batch`]: one received batch of queue messages: events grouped by key, the newest
//!   sequencer, which messages may be deleted once the effects are durable.
//! - [`download`]: one object's download as a state machine: which request next, every retry
//!   and its limit (resume with HEAD + If-Match, range ignored, MD5-ETag rule, disk full).
//! - [`concurrency`]: how many downloads run at once (AIMD: grows while throughput grows,
//!   halves on throttling), capped by `download_concurrency`.
//! - [`guard`]: the mass-delete guard: how many deletes a sync may do before it refuses.
//! - [`local`]: the sink side of a key: is the file at its path the agent's own (equal to its
//!   base), and what may happen to it before a new version is published there.
//! - [`progress`]: SyncProgress 0..100.
//! - [`reconcile`]: two-way shares: bucket, local file and base of one key -> one action
//!   (download, upload, delete either side, keep both). Property-tested.
//!
//! The I/O shell (`crate::shell`) executes the decisions and feeds results back.

pub mod batch;
pub mod concurrency;
pub mod download;
pub mod events;
pub mod guard;
pub mod local;
pub mod plan;
pub mod progress;
pub mod reconcile;

pub use crate::model::FileFacts;
use crate::model::{LocalRecord, ObjectMeta};

/// What the full sync does about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncAction {
    /// The local copy matches the object: nothing to do. The record is trusted, not the disk:
    /// the shell should check that the file is still there with the record's size (a crash
    /// between removing a file and removing its record leaves a record without a file) and
    /// HEAD + download if not.
    Keep(LocalRecord),
    /// Fetch (or fetch again) this object. The record, when there is one, is the base: what
    /// the agent last published at the key, which tells its own file from a local change.
    Download(ObjectMeta, Option<LocalRecord>),
    /// The listing cannot settle it (crc64 mode): HEAD the key, then use
    /// [`events::after_head`] with the result.
    Verify(ObjectMeta, LocalRecord),
    /// The agent published this file and the object is gone from the bucket: remove it.
    Delete(LocalRecord),
}

/// Result of comparing an object with the local record of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    Same,
    Different,
    /// Only a checksum can tell (crc64 mode with no CRC in hand yet).
    NeedChecksum,
}
