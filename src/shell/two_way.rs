//! Two-way shares, one key at a time: the key's three states gathered (bucket, local file,
//! base), the engine's [`reconcile`] asked, its action carried out. Downloads go through the
//! same `fetch` as a mirror's; uploads are [`super::upload`]'s; remote deletes, the records
//! after an agreement and conflict copies are here. Local changes reach this through
//! [`super::watch`] (the watcher, the settle window, the scans).
//!
//! Pending work is bounded: a queue of at most [`PENDING_CAP`] keys; beyond that, and after a
//! watcher overflow, a full sync (which scans the share) finds every change instead. What is
//! pending is never only in memory: a local change is a file that differs from its base, so
//! the start-up scan finds it again after a crash.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::deletes::DeleteSpool;
use super::upload::crc_of;
use super::watch::Watcher;
use super::{Share, ShareError, SyncReport};
use crate::cache::paths::{KeyPath, key_to_relpath};
use crate::cache::seen::SeenStore;
use crate::cloud::{CloudError, PutCondition};
use crate::engine::progress::Progress;
use crate::engine::reconcile::{Action, KeyState, Rules, reconcile};
use crate::model::{LocalRecord, LocalStat, ObjectMeta, SeenFile};
use crate::time::utc_timestamp;

/// Keys waiting for their settle window at most; more, and a full sync finds them instead.
pub const PENDING_CAP: usize = 4096;
/// S3's limit on key length.
const MAX_KEY_BYTES: usize = 1024;

/// A two-way share's extra state.
pub struct TwoWay {
    pub(super) seen: SeenStore,
    pub(super) pending: Pending,
    pub(super) watcher: Option<Watcher>,
    /// A full sync must scan the share (the watcher overflowed, or the queue was full).
    pub(super) rescan: bool,
    /// Deletes decided from local changes, held until none has been added for
    /// [`super::watch::DELETE_HOLD`], so that a burst (`rm -r`) meets the mass-delete guard
    /// as a whole: the spool, when the last one was added, the file count before the first.
    pub(super) held_deletes: Option<(DeleteSpool, Instant, u64)>,
}

impl TwoWay {
    pub fn open(state_dir: &Path) -> Result<TwoWay, ShareError> {
        Ok(TwoWay {
            seen: SeenStore::open(&state_dir.join("local"))?,
            pending: Pending::default(),
            watcher: None,
            rescan: false,
            held_deletes: None,
        })
    }
}

/// Keys to look at again once due (bounded, deduplicated).
#[derive(Default)]
pub struct Pending {
    queue: VecDeque<(Instant, String)>,
    keys: HashSet<String>,
}

impl Pending {
    /// Queue `key` for `due`; false when the queue is full (the caller asks for a rescan).
    pub fn push(&mut self, key: &str, due: Instant) -> bool {
        if self.keys.contains(key) {
            return true;
        }
        if self.queue.len() >= PENDING_CAP {
            return false;
        }
        self.keys.insert(key.to_owned());
        self.queue.push_back((due, key.to_owned()));
        true
    }

    /// A key whose time has come, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<String> {
        let i = self.queue.iter().position(|(due, _)| *due <= now)?;
        let (_, key) = self.queue.remove(i)?;
        self.keys.remove(&key);
        Some(key)
    }

    /// When the earliest key is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.iter().map(|(d, _)| *d).min()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

impl Share {
    pub(super) fn two_way(&self) -> bool {
        self.two_way.is_some()
    }

    pub(super) fn settle(&self) -> Duration {
        Duration::from_millis(self.ctx.cfg.sync.settle_ms)
    }

    /// Look at `key` again after the settle window.
    pub(super) fn defer(&mut self, key: &str, after: Duration) {
        let due = Instant::now() + after;
        if let Some(tw) = self.two_way.as_mut()
            && !tw.pending.push(key, due)
        {
            tw.rescan = true;
        }
    }

    /// The key of a share-relative path, if it can be one: valid UTF-8, at most 1024 bytes,
    /// mapping back to the same path, outside `.sgw/`. Anything else is reported and skipped.
    pub(super) fn key_of(&mut self, rel: &Path) -> Option<String> {
        let name = &self.ctx.cfg.name;
        let Some(rel_str) = rel.to_str() else {
            warn!(
                "share {name}: {:?} is not valid UTF-8 and cannot be a key; not uploaded",
                rel.to_string_lossy()
            );
            self.status.note_skipped(&rel.to_string_lossy());
            return None;
        };
        let key = format!("{}{rel_str}", self.ctx.cfg.prefix);
        if key.len() > MAX_KEY_BYTES {
            warn!(
                "share {name}: {rel_str:?} makes a key of {} bytes (S3 allows {MAX_KEY_BYTES}); not uploaded",
                key.len()
            );
            self.status.note_skipped(rel_str);
            return None;
        }
        match key_to_relpath(&key, &self.ctx.cfg.prefix) {
            Ok(KeyPath::File(back)) if back == rel => Some(key),
            _ => {
                warn!("share {name}: {rel_str:?} cannot be a safe key; not uploaded");
                self.status.note_skipped(rel_str);
                None
            }
        }
    }

    pub(super) fn ignored(&self, rel: &Path) -> bool {
        rel.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| self.ctx.cfg.sync.ignored(n))
    }

    /// Bring one key of a two-way share in line. `bucket`: the object's current state when
    /// the caller has it (`Some(None)`: the bucket does not have it), else it is HEADed.
    /// `deletes`: during a full sync, deletes on either side are held back for the guard.
    pub(super) fn reconcile_key(
        &mut self,
        key: &str,
        bucket: Option<Option<ObjectMeta>>,
        deletes: Option<&mut DeleteSpool>,
        report: &mut SyncReport,
        progress: &mut Progress,
    ) -> Result<(), ShareError> {
        let name = self.ctx.cfg.name.clone();
        let rel = match key_to_relpath(key, &self.ctx.cfg.prefix) {
            Ok(KeyPath::File(rel)) => rel,
            // Folder markers and bad keys: the bucket's side only, as in a mirror.
            Ok(KeyPath::Dir(_)) | Err(_) => {
                let meta = match bucket {
                    Some(b) => b,
                    None => self.ctx.store.head(key)?,
                };
                if let Some(meta) = meta {
                    let base = self.state.get(key)?;
                    self.fetch(meta, None, base, 0, report, progress)?;
                }
                return Ok(());
            }
        };
        let Some(tw) = self.two_way.as_ref() else {
            return Err(ShareError::Plan("reconcile_key on a mirror share".into()));
        };
        let base = self.state.get(key)?;
        let seen = tw.seen.get(key)?;
        let local = self.dir.local_stat(&rel)?;
        if base.is_none() && local.is_some() && self.ignored(&rel) {
            return Ok(());
        }
        let mut bucket = match bucket {
            Some(b) => b,
            None => self.ctx.store.head(key)?,
        };
        let rules = Rules {
            ignore_delete: self.ctx.cfg.sync.ignore_delete,
        };
        let mut local_crc = None;
        let mut action = reconcile(
            &KeyState {
                bucket: bucket.as_ref(),
                base: base.as_ref(),
                seen: seen.as_ref(),
                local,
                local_crc,
            },
            rules,
        );
        // A local change is acted on only once it has settled.
        let touches_local = matches!(
            action,
            Action::Upload { .. } | Action::Conflict | Action::NeedCrc | Action::RecordBase
        );
        if touches_local
            && let Some(l) = local
            && let Some(wait) = self.unsettled(l)
        {
            self.defer(key, wait);
            return Ok(());
        }
        if action == Action::NeedCrc {
            local_crc = match crc_of(&self.dir, &rel) {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!("share {name}: cannot read {}: {e}", rel.display());
                    self.defer(key, self.settle());
                    return Ok(());
                }
            };
            if bucket.as_ref().is_some_and(|b| b.crc64nvme.is_none()) {
                bucket = self.ctx.store.head(key)?;
            }
            action = reconcile(
                &KeyState {
                    bucket: bucket.as_ref(),
                    base: base.as_ref(),
                    seen: seen.as_ref(),
                    local,
                    local_crc,
                },
                rules,
            );
        }
        // Names on the ignore list never reach the bucket, whatever happens to them here.
        if matches!(
            action,
            Action::Upload { .. } | Action::DeleteRemote { .. } | Action::Conflict
        ) && self.ignored(&rel)
        {
            return Ok(());
        }
        match action {
            Action::Nothing | Action::NeedCrc => {}
            Action::Download => {
                let Some(meta) = bucket else { return Ok(()) };
                // The engine said the file is the base (or absent): tell `fetch` so by its
                // own rule (size and whole-second mtime), whatever the base's timestamps.
                let old = base.map(|b| match local {
                    Some(l) => LocalRecord {
                        size: l.size,
                        last_modified: l.mtime_secs(),
                        ..b
                    },
                    None => b,
                });
                self.fetch(meta, None, old, 0, report, progress)?;
            }
            Action::DeleteLocal | Action::DeleteRemote { .. } if deletes.is_some() => {
                if let Some(spool) = deletes {
                    spool.push(key)?;
                }
            }
            Action::DeleteLocal => {
                if let Some(l) = local
                    && self.dir.local_stat(&rel)? == Some(l)
                {
                    self.dir.remove_file(&rel)?;
                    report.deleted += 1;
                    self.status.objects_deleted += 1;
                    info!("share {name}: {key:?} deleted in the bucket; removed locally");
                }
                self.forget(key)?;
            }
            Action::DeleteRemote { if_match } => {
                match self.ctx.store.delete_object(key, if_match.as_deref()) {
                    Ok(()) => {
                        self.status.uploads.remote_deletes += 1;
                        info!("share {name}: {key:?} deleted locally; deleted in the bucket");
                        self.forget(key)?;
                    }
                    // Gone already (or a retried DELETE that had worked): nothing to keep.
                    Err(e) if e.is_not_found() => self.forget(key)?,
                    // Changed in the bucket since the agent looked: decide again.
                    Err(CloudError::Service { status: 412, .. }) => {
                        info!("share {name}: {key:?} changed in the bucket; not deleting it");
                        self.defer(key, Duration::ZERO);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Action::Forget => self.forget(key)?,
            Action::RecordBase => {
                if let (Some(b), Some(l), Some(crc)) = (bucket, local, local_crc) {
                    let rec = LocalRecord {
                        key: key.to_owned(),
                        size: b.size,
                        etag: b.etag.clone(),
                        last_modified: b.last_modified,
                        crc64nvme: crc,
                        sequencer: base.and_then(|r| r.sequencer),
                    };
                    self.record(rec, l, crc)?;
                }
            }
            Action::RecordLocal => {
                if let (Some(b), Some(l), Some(crc)) = (base, local, local_crc) {
                    self.record(b, l, crc)?;
                }
            }
            Action::Conflict => {
                let Some(meta) = bucket else { return Ok(()) };
                self.conflict(key, &rel, meta, base, report, progress)?;
            }
            Action::Upload { if_match } => {
                let Some(l) = local else { return Ok(()) };
                let condition = match if_match {
                    Some(e) => PutCondition::IfMatch(e),
                    None => PutCondition::IfAbsent,
                };
                self.upload(key, &rel, l, &condition)?;
            }
        }
        Ok(())
    }

    /// How much longer a file must stay unchanged before it may be uploaded.
    pub(super) fn unsettled(&self, l: LocalStat) -> Option<Duration> {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let settle = self.settle();
        let age = Duration::from_nanos(now_ns.saturating_sub(l.mtime_ns).max(0) as u64);
        (age < settle).then(|| settle - age + Duration::from_millis(50))
    }

    pub(super) fn forget(&mut self, key: &str) -> Result<(), ShareError> {
        if self.state.get(key)?.is_some() {
            self.state.remove(key)?;
            self.unsynced_records += 1;
        }
        if let Some(tw) = self.two_way.as_mut() {
            tw.seen.remove(key)?;
        }
        Ok(())
    }

    /// The base is `rec`, and the local file `stat` (CRC `crc`) is that version.
    pub(super) fn record(
        &mut self,
        rec: LocalRecord,
        stat: LocalStat,
        crc: u64,
    ) -> Result<(), ShareError> {
        let seen = SeenFile {
            key: rec.key.clone(),
            stat,
            crc64nvme: crc,
            base_etag: rec.etag.clone(),
        };
        self.state.put(rec)?;
        if let Some(tw) = self.two_way.as_mut() {
            tw.seen.put(&seen)?;
        }
        self.unsynced_records += 1;
        Ok(())
    }

    /// `.sgw-conflict-<gateway>-<UTC time>`, appended to a conflict copy's name.
    pub(super) fn conflict_suffix(&self) -> String {
        let stamp: String = utc_timestamp()
            .chars()
            .filter(|c| *c != '-' && *c != ':')
            .collect();
        format!(".sgw-conflict-{}-{stamp}", self.ctx.cfg.sync.gateway)
    }

    /// Both sides changed: the local version goes to a conflict name (and is uploaded from
    /// there as a new key), the bucket's version takes the name.
    pub(super) fn conflict(
        &mut self,
        key: &str,
        rel: &Path,
        meta: ObjectMeta,
        base: Option<LocalRecord>,
        report: &mut SyncReport,
        progress: &mut Progress,
    ) -> Result<(), ShareError> {
        let name = self.ctx.cfg.name.clone();
        let suffix = self.conflict_suffix();
        let aside = match self.dir.conflict_aside_as(rel, &suffix) {
            Ok(a) => a,
            Err(e) => {
                warn!(
                    "share {name}: {key:?} changed on both sides, and the local version cannot be moved aside ({e}); retrying later"
                );
                self.status.uploads.last_error = Some(format!("conflict on {key:?}: {e}"));
                self.defer(key, self.settle());
                return Ok(());
            }
        };
        self.status.uploads.conflicts += 1;
        warn!(
            "share {name}: {key:?} changed here and in the bucket; the bucket's version keeps the name, the local one is kept and uploaded as {}",
            aside.display()
        );
        self.fetch(meta, None, base, 0, report, progress)?;
        if let Some(aside_key) = self.key_of(&aside) {
            self.defer(&aside_key, Duration::ZERO);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_bounded_and_deduplicated() {
        let mut p = Pending::default();
        let now = Instant::now();
        assert!(p.push("a", now));
        assert!(p.push("a", now));
        assert_eq!(p.len(), 1);
        for i in 1..PENDING_CAP {
            assert!(p.push(&i.to_string(), now + Duration::from_secs(5)));
        }
        assert!(!p.push("overflow", now), "full queue refuses");
        assert_eq!(p.pop_due(now).as_deref(), Some("a"));
        assert_eq!(p.pop_due(now), None, "the rest is not due yet");
    }
}
