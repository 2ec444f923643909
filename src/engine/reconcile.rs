//! Two-way shares: one key's three states — the bucket's object (source), the local file
//! (sink) and the base (the last version both sides agreed on, the journal's record) — and the
//! one action that brings them together. "Whose change is it" is decided here and nowhere else:
//! the full sync, the queue's events and the local watcher all ask [`reconcile`].
//!
//! The rules (`../shared/DESIGN.md`, promises):
//!
//! - A side that still equals the base did not change; the other side's change wins.
//! - A local file is replaced or deleted only if it equals the base; a bucket object is
//!   overwritten or deleted only under a condition on the base's ETag (`If-Match`), or created
//!   only if absent (`If-None-Match: *`), so a change the agent has not seen makes the request
//!   fail instead of destroying it.
//! - Both sides changed (to different bytes): nothing is lost — the bucket's version takes the
//!   name, the local version is kept under a conflict name and uploaded as a new key.
//! - A change wins over a delete on the other side.
//! - After the agent's own upload the base is what it uploaded, so the upload's echo (the
//!   bucket event) finds bucket == base == local: nothing to do.

use crate::model::{LocalRecord, LocalStat, ObjectMeta, SeenFile};

/// What the shell knows about one key when it asks.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyState<'a> {
    /// The object now (HEAD or listing); `None` when the bucket does not have the key.
    pub bucket: Option<&'a ObjectMeta>,
    /// The last version the agent agreed on with the bucket (the state store's record).
    pub base: Option<&'a LocalRecord>,
    /// The local file as it was seen at that agreement (two-way record), if any.
    pub seen: Option<&'a SeenFile>,
    /// The regular file at the key's path now; `None` when there is none.
    pub local: Option<LocalStat>,
    /// CRC-64/NVME of the local file's bytes, once the shell has read them (asked for with
    /// [`Action::NeedCrc`]).
    pub local_crc: Option<u64>,
}

/// Per-share settings that change a decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// A local delete is not propagated: the bucket's copy is fetched again instead.
    pub ignore_delete: bool,
}

/// What to do about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Everything agrees (this is what an echo of the agent's own upload gets).
    Nothing,
    /// Fetch the bucket's version to the path: the local file is the base, or absent.
    Download,
    /// Upload the local file. `if_match`: the ETag the object must still have; `None`: the
    /// key must not exist (`If-None-Match: *`).
    Upload { if_match: Option<String> },
    /// The bucket deleted the key and the local file is the base: remove it.
    DeleteLocal,
    /// The local file was deleted and the object is the base: delete it (if it still has
    /// `if_match` as its ETag).
    DeleteRemote { if_match: Option<String> },
    /// Both sides are gone: drop the base record.
    Forget,
    /// Both sides hold the same bytes (proven by CRC): record them as the new base.
    RecordBase,
    /// The local file is the base's bytes under a new stat (touched, or a crash before its
    /// two-way record was written): refresh the record of the local file only.
    RecordLocal,
    /// Both changed to different bytes: move the local file to a conflict name (it is then
    /// uploaded as a new key), then download the bucket's version to the name.
    Conflict,
    /// Read the local file's CRC-64 (and HEAD the object for its CRC when the bucket state
    /// came from a listing), then ask again.
    NeedCrc,
}

/// Does the object still equal the base? The ETag decides when both have one; otherwise size,
/// a CRC when the object carries one, and Last-Modified not newer than the base's.
pub fn bucket_at_base(bucket: &ObjectMeta, base: &LocalRecord) -> bool {
    if bucket.size != base.size {
        return false;
    }
    if let (Some(b), Some(r)) = (&bucket.etag, &base.etag) {
        return b == r;
    }
    if let Some(crc) = bucket.crc64nvme {
        return crc == base.crc64nvme;
    }
    bucket.last_modified <= base.last_modified
}

/// Is the local file the base? `Some(true)`: by its stat (no read needed) or by its CRC;
/// `Some(false)`: changed; `None`: only its CRC can tell (same size as the base).
fn local_at_base(
    base: &LocalRecord,
    seen: Option<&SeenFile>,
    local: LocalStat,
    crc: Option<u64>,
) -> (Option<bool>, bool) {
    let seen = seen.filter(|s| s.base_etag == base.etag);
    let by_stat = match seen {
        Some(s) => s.stat == local,
        // A downloaded file: the agent set its mtime to the object's Last-Modified.
        None => local.size == base.size && local.mtime_secs() == base.last_modified,
    };
    if by_stat {
        return (Some(true), false);
    }
    if local.size != base.size {
        return (Some(false), false);
    }
    match crc {
        Some(c) => (Some(c == base.crc64nvme), true),
        None => (None, false),
    }
}

/// Do the local bytes equal the object's? `None`: a CRC is missing on one side.
fn same_bytes(bucket: &ObjectMeta, local: LocalStat, crc: Option<u64>) -> Option<bool> {
    if bucket.size != local.size {
        return Some(false);
    }
    Some(crc? == bucket.crc64nvme?)
}

/// The one decision for a key of a two-way share.
pub fn reconcile(s: &KeyState<'_>, rules: Rules) -> Action {
    let both_new =
        |bucket: &ObjectMeta, local: LocalStat| match same_bytes(bucket, local, s.local_crc) {
            Some(true) => Action::RecordBase,
            Some(false) => Action::Conflict,
            // Without a CRC on both sides the bytes cannot be compared: ask once, and if the
            // server has no CRC at all, keep both (nothing is lost).
            None if s.local_crc.is_none() => Action::NeedCrc,
            None => Action::Conflict,
        };
    let Some(base) = s.base else {
        return match (s.bucket, s.local) {
            (None, None) => Action::Nothing,
            (Some(_), None) => Action::Download,
            (None, Some(_)) => Action::Upload { if_match: None },
            (Some(b), Some(l)) => both_new(b, l),
        };
    };
    let bucket_same = s.bucket.map(|b| bucket_at_base(b, base));
    let (local_same, by_crc) = match s.local {
        None => (None, false),
        Some(l) => match local_at_base(base, s.seen, l, s.local_crc) {
            (None, _) => return Action::NeedCrc,
            (Some(same), by_crc) => (Some(same), by_crc),
        },
    };
    match (s.bucket, bucket_same, s.local, local_same) {
        // Unchanged on both sides.
        (Some(_), Some(true), Some(_), Some(true)) if by_crc => Action::RecordLocal,
        (Some(_), Some(true), Some(_), Some(true)) => Action::Nothing,
        // Only the local side changed.
        (Some(_), Some(true), None, _) if rules.ignore_delete => Action::Download,
        (Some(_), Some(true), None, _) => Action::DeleteRemote {
            if_match: base.etag.clone(),
        },
        (Some(b), Some(true), Some(_), Some(false)) => Action::Upload {
            if_match: b.etag.clone().or_else(|| base.etag.clone()),
        },
        // Only the bucket changed (a change also wins over a local delete).
        (Some(_), Some(false), None, _) => Action::Download,
        (Some(_), Some(false), Some(_), Some(true)) => Action::Download,
        (None, _, Some(_), Some(true)) => Action::DeleteLocal,
        // Both sides.
        (None, _, None, _) => Action::Forget,
        // Deleted in the bucket, changed here: the change wins, as a new object.
        (None, _, Some(_), Some(false)) => Action::Upload { if_match: None },
        (Some(b), Some(false), Some(l), Some(false)) => both_new(b, l),
        // Unreachable combinations (a present side always has a verdict).
        _ => Action::Nothing,
    }
}

#[cfg(test)]
mod tests;
