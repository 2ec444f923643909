//! Two-way shares, the shell side: each key's three states gathered (bucket, local file, base),
//! the engine's [`reconcile`] asked, its action carried out. Downloads go through the same
//! `fetch` as a mirror's; uploads, remote deletes and conflict copies are here.
//!
//! An upload sends the bytes it verified and nothing else: the file's CRC-64 is computed first
//! (it travels in `x-amz-checksum-crc64nvme`), then the file is streamed, and the last byte is
//! held back until the stream's CRC and the file's stat prove it is still that one version.
//! If not, the body fails before it is complete, the server never stores it, and the key is
//! tried again once the file has settled. Conditions on the base's ETag (`If-Match`,
//! `If-None-Match: *`) make an upload fail rather than overwrite a change the agent has not
//! seen. After an upload the base and the seen file are the upload's, so its echo from the
//! queue is a no-op.
//!
//! Pending work is bounded: a queue of at most [`PENDING_CAP`] keys; beyond that, and after a
//! watcher overflow, a full sync (which scans the share) finds every change instead. What is
//! pending is never only in memory: a local change is a file that differs from its base, so
//! the start-up scan finds it again after a crash.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{info, warn};

use super::deletes::DeleteSpool;
use super::multipart::{self, MULTIPART_THRESHOLD, upload_multipart};
use super::watch::{Change, Watcher};
use super::{Share, ShareError, SyncReport};
use crate::cache::crc64::Crc64Nvme;
use crate::cache::paths::{KeyPath, key_to_relpath};
use crate::cache::publish::ShareDir;
use crate::cache::seen::SeenStore;
use crate::cloud::{CloudError, PutCondition};
use crate::engine::progress::Progress;
use crate::engine::reconcile::{Action, KeyState, Rules, reconcile};
use crate::model::{LocalRecord, LocalStat, ObjectMeta, SeenFile};
use crate::time::{unix_now, utc_timestamp};

/// Keys waiting for their settle window at most; more, and a full sync finds them instead.
pub const PENDING_CAP: usize = 4096;
/// S3's limit on key length.
const MAX_KEY_BYTES: usize = 1024;
/// Largest object (S3's limit).
const MAX_OBJECT: u64 = 5 * 1024 * 1024 * 1024 * 1024;
const READ_BUF: usize = 256 * 1024;

/// A two-way share's extra state.
pub struct TwoWay {
    pub(super) seen: SeenStore,
    pub(super) pending: Pending,
    pub(super) watcher: Option<Watcher>,
    /// A full sync must scan the share (the watcher overflowed, or the queue was full).
    pub(super) rescan: bool,
}

impl TwoWay {
    pub fn open(state_dir: &Path) -> Result<TwoWay, ShareError> {
        Ok(TwoWay {
            seen: SeenStore::open(&state_dir.join("local"))?,
            pending: Pending::default(),
            watcher: None,
            rescan: false,
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

/// How one upload ended.
pub(super) enum Uploaded {
    Done {
        rec: LocalRecord,
        seen: SeenFile,
    },
    /// The file changed while it was read: nothing was stored; try again once it settles.
    Changed,
    /// The object changed under the agent (412): look at the key again.
    Precondition,
    Failed(String),
}

impl Share {
    pub(super) fn two_way(&self) -> bool {
        self.two_way.is_some()
    }

    fn settle(&self) -> Duration {
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

    fn ignored(&self, rel: &Path) -> bool {
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
            Action::DeleteRemote { .. } => {
                self.ctx.store.delete_object(key)?;
                self.status.uploads.remote_deletes += 1;
                info!("share {name}: {key:?} deleted locally; deleted in the bucket");
                self.forget(key)?;
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
    fn unsettled(&self, l: LocalStat) -> Option<Duration> {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let settle = self.settle();
        let age = Duration::from_nanos(now_ns.saturating_sub(l.mtime_ns).max(0) as u64);
        (age < settle).then(|| settle - age + Duration::from_millis(50))
    }

    fn forget(&mut self, key: &str) -> Result<(), ShareError> {
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
    fn record(&mut self, rec: LocalRecord, stat: LocalStat, crc: u64) -> Result<(), ShareError> {
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
    fn conflict(
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

    fn upload(
        &mut self,
        key: &str,
        rel: &Path,
        stat: LocalStat,
        condition: &PutCondition,
    ) -> Result<(), ShareError> {
        let name = self.ctx.cfg.name.clone();
        if stat.size > MAX_OBJECT {
            let why = format!(
                "{key:?} is {} bytes, more than the 5 TiB an object may have",
                stat.size
            );
            warn!("share {name}: {why}");
            self.status.uploads.last_error = Some(why);
            return Ok(());
        }
        self.status.uploads.in_flight = 1;
        self.write_status(false);
        let started = Instant::now();
        let outcome = if stat.size >= MULTIPART_THRESHOLD {
            upload_multipart(&multipart::Job {
                store: &*self.ctx.store,
                dir: &self.dir,
                state_dir: &self.ctx.state_dir,
                key,
                rel,
                stat,
                condition,
                heartbeat: &self.heartbeat,
                shutdown: &self.ctx.shutdown,
            })
        } else {
            upload_file(&*self.ctx.store, &self.dir, key, rel, stat, condition)
        };
        self.status.uploads.in_flight = 0;
        self.heartbeat.beat();
        match outcome {
            Uploaded::Done { rec, seen } => {
                info!(
                    "share {name}: uploaded {key:?} ({} bytes, {:.2}s)",
                    rec.size,
                    started.elapsed().as_secs_f64()
                );
                self.status.uploads.done += 1;
                self.status.uploads.bytes += rec.size;
                self.state.put(rec)?;
                if let Some(tw) = self.two_way.as_mut() {
                    tw.seen.put(&seen)?;
                }
                self.unsynced_records += 1;
            }
            Uploaded::Changed => {
                info!(
                    "share {name}: {key:?} changed while it was read; uploading it once it settles"
                );
                self.defer(key, self.settle());
            }
            Uploaded::Precondition => {
                info!(
                    "share {name}: {key:?} changed in the bucket during the upload; looking again"
                );
                self.defer(key, Duration::ZERO);
            }
            Uploaded::Failed(why) => {
                warn!("share {name}: upload of {key:?} failed: {why}; retrying later");
                self.status.uploads.last_error = Some(why);
                self.defer(key, self.settle().max(Duration::from_secs(5)));
            }
        }
        self.write_status(false);
        Ok(())
    }

    /// Every file in the share that has no base yet (new since the last sync): reconciled
    /// (uploaded once settled). Files with a base were seen by the full sync's merge.
    pub(super) fn scan_new_local_files(
        &mut self,
        report: &mut SyncReport,
        progress: &mut Progress,
    ) -> Result<(), ShareError> {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel_dir) = stack.pop() {
            self.heartbeat.beat();
            if self.ctx.shutdown.is_triggered() {
                return Err(ShareError::Stopped);
            }
            let Ok(entries) = self.dir.read_dir(&rel_dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let rel = rel_dir.join(entry.file_name());
                if rel_dir.as_os_str().is_empty() && entry.file_name() == ".sgw" {
                    continue;
                }
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(rel);
                } else if ft.is_file() && !self.ignored(&rel) {
                    let Some(key) = self.key_of(&rel) else {
                        continue;
                    };
                    if self.state.get(&key)?.is_none() {
                        // The listing did not have it: a new file (the PUT is conditional on
                        // the key being absent, so an object created since is not lost).
                        self.reconcile_key(&key, Some(None), None, report, progress)?;
                        self.sync_state(false)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Work the two-way share does between queue polls: local changes from the watcher, keys
    /// whose settle window has passed. Returns true when a full sync (with its scan) is due.
    pub(super) fn two_way_tick(&mut self) -> Result<bool, ShareError> {
        let Some(tw) = self.two_way.as_mut() else {
            return Ok(false);
        };
        let mut changed = Vec::new();
        if let Some(w) = tw.watcher.as_ref()
            && w.drain(&mut changed)
        {
            tw.rescan = true;
        }
        let settle = self.settle();
        let mut report = SyncReport::default();
        let mut progress = Progress::default();
        for change in changed {
            let paths = match change {
                Change::Path(p) => vec![p],
                Change::Renamed(from, to) => {
                    match self.server_side_rename(&from, &to, &mut report, &mut progress) {
                        Ok(_) => {}
                        Err(ShareError::Cloud(e)) => warn!(
                            "share {}: rename of {} in the bucket: {e}; uploading instead",
                            self.ctx.cfg.name,
                            from.display()
                        ),
                        Err(e) => return Err(e),
                    }
                    vec![from, to]
                }
            };
            for rel in paths {
                if self.ignored(&rel) {
                    continue;
                }
                if self.dir.read_dir(&rel).is_ok() {
                    // A directory appeared or moved: its files are found by a rescan.
                    if let Some(tw) = self.two_way.as_mut() {
                        tw.rescan = true;
                    }
                    continue;
                }
                if let Some(key) = self.key_of(&rel) {
                    self.defer(&key, settle);
                }
            }
        }
        let now = Instant::now();
        loop {
            if self.ctx.shutdown.is_triggered() {
                break;
            }
            let Some(key) = self.two_way.as_mut().and_then(|tw| tw.pending.pop_due(now)) else {
                break;
            };
            if let Err(e) = self.reconcile_key(&key, None, None, &mut report, &mut progress) {
                match e {
                    ShareError::Cloud(ref c) => {
                        warn!("share {}: {key:?}: {c}; retrying later", self.ctx.cfg.name);
                        self.status.uploads.last_error = Some(c.to_string());
                        self.defer(&key, settle.max(Duration::from_secs(5)));
                    }
                    other => return Err(other),
                }
            }
            // Downloads decided here (the bucket's side won) finish before the next key.
            self.finish_downloads(&mut report, &mut progress, Duration::from_millis(200))?;
            while self.work_outstanding() {
                self.finish_downloads(&mut report, &mut progress, Duration::from_millis(200))?;
            }
            self.sync_state(false)?;
        }
        self.sync_state(true)?;
        let Some(tw) = self.two_way.as_mut() else {
            return Ok(false);
        };
        self.status.uploads.pending = tw.pending.len() as u64;
        let rescan = std::mem::take(&mut tw.rescan);
        if rescan {
            info!(
                "share {}: too many local changes at once (or the watcher lost events); a full sync will scan the share",
                self.ctx.cfg.name
            );
        }
        self.write_status(false);
        Ok(rescan)
    }

    /// A file renamed inside the share that is still its base's bytes (same inode, size and
    /// mtime): copy the object server-side to the new key instead of sending it again, then
    /// delete the old key (through the engine). Returns whether the copy was done; if not,
    /// the two paths are simply looked at (upload + delete).
    fn server_side_rename(
        &mut self,
        from: &Path,
        to: &Path,
        report: &mut SyncReport,
        progress: &mut Progress,
    ) -> Result<bool, ShareError> {
        if self.ignored(to) {
            return Ok(false);
        }
        let (Some(from_key), Some(to_key)) = (self.key_of(from), self.key_of(to)) else {
            return Ok(false);
        };
        let Some(tw) = self.two_way.as_ref() else {
            return Ok(false);
        };
        let (Some(base), None) = (self.state.get(&from_key)?, self.state.get(&to_key)?) else {
            return Ok(false);
        };
        let seen = tw.seen.get(&from_key)?.filter(|s| s.base_etag == base.etag);
        let (Some(stat), None, Some(etag)) = (
            self.dir.local_stat(to)?,
            self.dir.local_stat(from)?,
            base.etag.clone(),
        ) else {
            return Ok(false);
        };
        let is_base = match &seen {
            Some(s) => s.stat == stat,
            None => stat.size == base.size && stat.mtime_secs() == base.last_modified,
        };
        // Never over an object someone else created at the new name meanwhile.
        if !is_base || self.ctx.store.head(&to_key)?.is_some() {
            return Ok(false);
        }
        let put = self.ctx.store.copy_object(&from_key, &to_key, &etag)?;
        info!(
            "share {}: {from_key:?} renamed to {to_key:?}; copied in the bucket (server-side, {} bytes not sent)",
            self.ctx.cfg.name, stat.size
        );
        let rec = LocalRecord {
            key: to_key,
            size: stat.size,
            etag: put.etag,
            last_modified: unix_now(),
            crc64nvme: base.crc64nvme,
            sequencer: None,
        };
        self.record(rec, stat, base.crc64nvme)?;
        self.status.uploads.done += 1;
        // The old name: gone locally, the base in the bucket: the engine deletes it.
        self.reconcile_key(&from_key, None, None, report, progress)?;
        Ok(true)
    }

    /// How long the run loop may block (a queue poll, a sleep) before two-way work is due.
    pub(super) fn two_way_wait(&self) -> Option<Duration> {
        let tw = self.two_way.as_ref()?;
        let settle = self.settle().max(Duration::from_secs(1));
        let until_due = tw
            .pending
            .next_due()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(settle);
        Some(until_due.min(settle))
    }
}

/// CRC-64/NVME of a local file.
fn crc_of(dir: &ShareDir, rel: &Path) -> io::Result<u64> {
    let mut f = dir.open_file_read(rel)?;
    let mut crc = Crc64Nvme::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(crc.finish());
        }
        crc.update(&buf[..n]);
    }
}

pub(super) fn stat_of(f: &std::fs::File) -> io::Result<LocalStat> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok(LocalStat {
        size: m.size(),
        mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        ino: m.ino(),
    })
}

/// Upload the file at `rel` if it is still `stat`: CRC first, then the streamed body with
/// its last byte held back until the bytes sent are proven to be that one version.
fn upload_file(
    store: &dyn crate::cloud::ObjectStore,
    dir: &ShareDir,
    key: &str,
    rel: &Path,
    stat: LocalStat,
    condition: &PutCondition,
) -> Uploaded {
    let mut f = match dir.open_file_read(rel) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Uploaded::Changed,
        Err(e) => return Uploaded::Failed(format!("cannot open {}: {e}", rel.display())),
    };
    let before = match stat_of(&f) {
        Ok(s) => s,
        Err(e) => return Uploaded::Failed(format!("cannot stat {}: {e}", rel.display())),
    };
    if before != stat {
        return Uploaded::Changed;
    }
    let mut crc = Crc64Nvme::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                crc.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) => return Uploaded::Failed(format!("cannot read {}: {e}", rel.display())),
        }
    }
    let crc = crc.finish();
    if total != stat.size || stat_of(&f).ok() != Some(stat) {
        return Uploaded::Changed;
    }
    if let Err(e) = f.seek(SeekFrom::Start(0)) {
        return Uploaded::Failed(format!("cannot rewind {}: {e}", rel.display()));
    }
    let mut body = Verified::new(f, stat.size, crc, stat);
    let result = store.put_object(key, &mut body, stat.size, crc, condition);
    if body.changed {
        return Uploaded::Changed;
    }
    match result {
        Ok(put) => Uploaded::Done {
            rec: LocalRecord {
                key: key.to_owned(),
                size: stat.size,
                etag: put.etag.clone(),
                last_modified: unix_now(),
                crc64nvme: crc,
                sequencer: None,
            },
            seen: SeenFile {
                key: key.to_owned(),
                stat,
                crc64nvme: crc,
                base_etag: put.etag,
            },
        },
        Err(CloudError::Service { status: 412, .. }) => Uploaded::Precondition,
        // If-Match on a key that is gone.
        Err(e) if e.is_not_found() => Uploaded::Precondition,
        Err(e) => Uploaded::Failed(e.to_string()),
    }
}

/// The upload body: the file's bytes, with the last read held until they check out.
pub(super) struct Verified {
    file: std::fs::File,
    remaining: u64,
    crc: Crc64Nvme,
    expected: u64,
    stat: LocalStat,
    /// Set when the body failed because the file is no longer the version being sent.
    pub changed: bool,
}

impl Verified {
    /// `len` bytes from the file's current offset, which must have CRC `expected`, and the
    /// file must still be `stat` once they are read.
    pub fn new(file: std::fs::File, len: u64, expected: u64, stat: LocalStat) -> Verified {
        Verified {
            file,
            remaining: len,
            crc: Crc64Nvme::new(),
            expected,
            stat,
            changed: false,
        }
    }
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let last = want as u64 == self.remaining;
        // The final piece is read whole, so it can be checked before any of it is sent.
        let mut got = 0;
        while got < want {
            let n = self.file.read(&mut buf[got..want])?;
            if n == 0 {
                break;
            }
            got += n;
            if !last {
                break;
            }
        }
        if got == 0 {
            self.changed = true;
            return Err(io::Error::other("file shrank during the upload"));
        }
        self.crc.update(&buf[..got]);
        self.remaining -= got as u64;
        if self.remaining == 0 {
            let ok =
                self.crc.finish() == self.expected && stat_of(&self.file).ok() == Some(self.stat);
            if !ok {
                self.changed = true;
                return Err(io::Error::other(
                    "file changed during the upload; request cut off before its last byte",
                ));
            }
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{ListPage, ObjectBody, ObjectStore, PutResult};
    use std::sync::Mutex;

    /// A store whose PUT edits the file (same size, other bytes) halfway through the body.
    struct EditsMidUpload {
        path: PathBuf,
        received: Mutex<Option<Result<usize, String>>>,
    }

    impl ObjectStore for EditsMidUpload {
        fn list_page(&self, _: &str, _: Option<&str>) -> Result<ListPage, CloudError> {
            Ok(ListPage::default())
        }
        fn head(&self, _: &str) -> Result<Option<ObjectMeta>, CloudError> {
            Ok(None)
        }
        fn get(&self, _: &str, _: u64, _: Option<&str>) -> Result<ObjectBody, CloudError> {
            Err(CloudError::Transport("no".into()))
        }
        fn put_object(
            &self,
            _: &str,
            body: &mut dyn Read,
            size: u64,
            _: u64,
            _: &PutCondition,
        ) -> Result<PutResult, CloudError> {
            let mut got = vec![0u8; size as usize / 2];
            body.read_exact(&mut got).expect("first half");
            let mut edited = vec![b'x'; size as usize];
            edited[0] = b'!';
            std::fs::write(&self.path, &edited).expect("edit");
            let mut rest = Vec::new();
            let r = body
                .read_to_end(&mut rest)
                .map(|_| got.len() + rest.len())
                .map_err(|e| e.to_string());
            *self.received.lock().expect("lock") = Some(r);
            Err(CloudError::Transport("body failed".into()))
        }
    }

    #[test]
    fn a_file_edited_during_its_upload_is_never_sent_whole() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = ShareDir::open(tmp.path()).expect("share");
        let path = tmp.path().join("f");
        std::fs::write(&path, vec![b'a'; 3 * READ_BUF + 17]).expect("write");
        let stat = dir.local_stat(Path::new("f")).expect("stat").expect("file");
        let store = EditsMidUpload {
            path,
            received: Mutex::new(None),
        };
        let out = upload_file(
            &store,
            &dir,
            "f",
            Path::new("f"),
            stat,
            &PutCondition::IfAbsent,
        );
        assert!(matches!(out, Uploaded::Changed));
        let received = store
            .received
            .lock()
            .expect("lock")
            .clone()
            .expect("put ran");
        assert!(
            received.is_err(),
            "the body must fail before its end: {received:?}"
        );
    }

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
