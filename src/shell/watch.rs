//! Two-way shares: local changes as they happen, from inotify (the `notify` crate), and the
//! share thread's side of them: the settle window, renames as server-side copies, the scan for
//! new files in a full sync, the mass-delete guard over one round of local deletes.
//!
//! The watcher only says *where* something changed: the share thread looks at each path
//! after its settle window and asks the engine what to do, so a missed, doubled or reordered
//! event is harmless as long as the path is looked at again. Memory is bounded: paths travel
//! over a bounded channel; when it is full, or inotify's own queue overflowed
//! (`IN_Q_OVERFLOW`), or the watcher fails, the share is told to rescan (a full sync), which
//! finds every change by comparing each file with its base. `.sgw/` (the agent's staging) is
//! never reported.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use super::deletes::DeleteSpool;
use super::{Share, ShareError, SyncReport};
use crate::cache::paths::RESERVED_TOP_LEVEL;
use crate::engine::guard::is_mass_delete;
use crate::engine::progress::Progress;
use crate::model::LocalRecord;
use crate::time::unix_now;

/// Paths waiting for the share thread at most; beyond that the share is rescanned.
pub const WATCH_QUEUE: usize = 4096;

/// What the watcher reports, as share-relative paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Something happened at this path (created, written, removed, moved in or out).
    Path(PathBuf),
    /// A rename inside the share, old path first (a chance for a server-side copy).
    Renamed(PathBuf, PathBuf),
}

/// A recursive watch on one share directory.
pub struct Watcher {
    _inner: RecommendedWatcher,
    rx: Receiver<Change>,
    overflow: Arc<AtomicBool>,
}

impl Watcher {
    /// Watch `root` and everything below it (new directories are added as they appear).
    pub fn start(root: &Path) -> io::Result<Watcher> {
        let (tx, rx) = sync_channel(WATCH_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&overflow);
        let base = root.to_path_buf();
        let mut inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            on_event(&base, &tx, &flag, res)
        })
        .map_err(io::Error::other)?;
        inner
            .watch(root, RecursiveMode::Recursive)
            .map_err(|e| io::Error::other(format!("cannot watch {}: {e}", root.display())))?;
        Ok(Watcher {
            _inner: inner,
            rx,
            overflow,
        })
    }

    /// Move the changes reported so far into `out`. True if events were lost (the share must
    /// be rescanned).
    pub fn drain(&self, out: &mut Vec<Change>) -> bool {
        while let Ok(p) = self.rx.try_recv() {
            out.push(p);
        }
        self.overflow.swap(false, Ordering::SeqCst)
    }
}

fn on_event(
    root: &Path,
    tx: &SyncSender<Change>,
    overflow: &AtomicBool,
    res: notify::Result<notify::Event>,
) {
    let event = match res {
        Ok(e) => e,
        Err(e) => {
            warn!("share watcher on {}: {e}; rescanning", root.display());
            overflow.store(true, Ordering::SeqCst);
            return;
        }
    };
    if event.need_rescan() {
        overflow.store(true, Ordering::SeqCst);
        return;
    }
    match event.kind {
        // Reads and opens change nothing.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return,
        _ => {}
    }
    let rel = |path: &Path| -> Option<PathBuf> {
        let rel = path.strip_prefix(root).ok()?;
        let ours = rel
            .components()
            .next()
            .is_some_and(|c| c.as_os_str() == RESERVED_TOP_LEVEL);
        (!rel.as_os_str().is_empty() && !ours).then(|| rel.to_path_buf())
    };
    let mut changes = Vec::new();
    if event.kind == EventKind::Modify(ModifyKind::Name(RenameMode::Both))
        && let [from, to] = event.paths.as_slice()
    {
        match (rel(from), rel(to)) {
            (Some(f), Some(t)) => changes.push(Change::Renamed(f, t)),
            // A publish from the agent's staging, or a move out of the share's view.
            (None, Some(t)) => changes.push(Change::Path(t)),
            (Some(f), None) => changes.push(Change::Path(f)),
            (None, None) => {}
        }
    } else {
        changes.extend(event.paths.iter().filter_map(|p| rel(p)).map(Change::Path));
    }
    for change in changes {
        match tx.try_send(change) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                overflow.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// The deletes decided from local changes, held for the guard (unlinked while in use).
const TICK_DELETE_SPOOL: &str = "local-deletes.spool";
/// Held deletes are carried out once none has been added for this long.
pub const DELETE_HOLD: Duration = Duration::from_secs(2);

impl Share {
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

    /// Every file under the share directory `top`, queued for its settle window (a full queue
    /// asks for a rescan instead).
    fn queue_subtree(&mut self, top: &Path) {
        let mut stack = vec![top.to_path_buf()];
        while let Some(rel_dir) = stack.pop() {
            let Ok(entries) = self.dir.read_dir(&rel_dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let rel = rel_dir.join(entry.file_name());
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(rel);
                } else if ft.is_file()
                    && !self.ignored(&rel)
                    && let Some(key) = self.key_of(&rel)
                {
                    let wait = match self.dir.local_stat(&rel) {
                        Ok(Some(l)) => self.unsettled(l).unwrap_or(Duration::ZERO),
                        _ => self.settle(),
                    };
                    self.defer(&key, wait);
                }
            }
        }
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
                Change::Renamed(_, to) if self.dir.read_dir(&to).is_ok() => {
                    // A directory renamed: the old keys under it are found by a full sync.
                    if let Some(tw) = self.two_way.as_mut() {
                        tw.rescan = true;
                    }
                    continue;
                }
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
                    // A directory appeared (or moved in): its files may predate its watch.
                    self.queue_subtree(&rel);
                    continue;
                }
                if let Some(key) = self.key_of(&rel) {
                    // Due once the file has been still for the settle window (counted from
                    // its mtime, not from when this loop got to the event); a vanished file
                    // waits a full window (a save-by-rename puts it back meanwhile).
                    let wait = match self.dir.local_stat(&rel) {
                        Ok(Some(l)) => self.unsettled(l).unwrap_or(Duration::ZERO),
                        _ => settle,
                    };
                    self.defer(&key, wait);
                }
            }
        }
        let now = Instant::now();
        let due = self
            .two_way
            .as_ref()
            .and_then(|tw| tw.pending.next_due())
            .is_some_and(|d| d <= now);
        // Deletes decided here are held (across rounds) for the mass-delete guard.
        let mut held = self.two_way.as_mut().and_then(|tw| tw.held_deletes.take());
        if due && held.is_none() {
            held = Some((
                DeleteSpool::create(&self.ctx.state_dir.join(TICK_DELETE_SPOOL))?,
                now,
                self.state.len(),
            ));
        }
        let held_before = held.as_ref().map_or(0, |(spool, _, _)| spool.len());
        if due {
            loop {
                if self.ctx.shutdown.is_triggered() {
                    break;
                }
                let Some(key) = self.two_way.as_mut().and_then(|tw| tw.pending.pop_due(now)) else {
                    break;
                };
                let spool = held.as_mut().map(|(spool, _, _)| spool);
                let decided = self.reconcile_key(&key, None, spool, &mut report, &mut progress);
                if let Err(e) = decided {
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
        }
        let deletes = match held {
            Some((spool, _, files)) if spool.len() > held_before => {
                // More were added: hold on until the burst is over.
                if let Some(tw) = self.two_way.as_mut() {
                    tw.held_deletes = Some((spool, now, files));
                }
                None
            }
            Some((spool, last, files)) if spool.len() > 0 && last.elapsed() < DELETE_HOLD => {
                if let Some(tw) = self.two_way.as_mut() {
                    tw.held_deletes = Some((spool, last, files));
                }
                None
            }
            Some((spool, _, files)) if spool.len() > 0 => Some((spool, files)),
            _ => None,
        };
        if let Some((deletes, files_before)) = deletes {
            self.apply_tick_deletes(deletes, files_before, &mut report, &mut progress)?;
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

    /// Carry out the deletes (either side) one round of local changes decided, unless they
    /// are a mass delete: then none is done, the share reports why, and the next full sync
    /// (whose guard says the same) needs `sync --allow-mass-delete`.
    fn apply_tick_deletes(
        &mut self,
        deletes: DeleteSpool,
        files_before: u64,
        report: &mut SyncReport,
        progress: &mut Progress,
    ) -> Result<(), ShareError> {
        let n = deletes.len();
        if n == 0 {
            return Ok(());
        }
        let name = self.ctx.cfg.name.clone();
        if !self.ctx.cfg.allow_mass_delete
            && is_mass_delete(n, files_before, self.ctx.cfg.delete_limits)
        {
            let why = format!(
                "{n} of {files_before} files were deleted locally (or in the bucket) at once; refusing to propagate — check the share, then run `sgw-agent sync --allow-mass-delete {name}`"
            );
            error!("share {name}: {why}");
            self.status.last_error = Some(why.clone());
            self.status.uploads.last_error = Some(why);
            return Ok(());
        }
        for key in deletes.into_keys()? {
            let key = key?;
            if let Err(e) = self.reconcile_key(&key, None, None, report, progress) {
                match e {
                    ShareError::Cloud(c) => {
                        warn!("share {name}: {key:?}: {c}; retrying later");
                        self.status.uploads.last_error = Some(c.to_string());
                        self.defer(&key, self.settle().max(Duration::from_secs(5)));
                    }
                    other => return Err(other),
                }
            }
            self.heartbeat.beat();
        }
        Ok(())
    }

    /// How long the run loop may block (a queue poll, a sleep) before two-way work is due.
    pub(super) fn two_way_wait(&self) -> Option<Duration> {
        let tw = self.two_way.as_ref()?;
        let settle = self.settle().max(Duration::from_secs(1));
        let held = tw
            .held_deletes
            .as_ref()
            .map(|(_, last, _)| (*last + DELETE_HOLD).saturating_duration_since(Instant::now()));
        let until_due = tw
            .pending
            .next_due()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(settle);
        Some(held.map_or(until_due, |h| h.min(until_due)).min(settle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_reported_relative_and_sgw_is_not() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join(".sgw")).expect("mkdir");
        let w = Watcher::start(dir.path()).expect("watch");
        std::fs::write(dir.path().join(".sgw/x"), b"1").expect("write");
        std::fs::create_dir(dir.path().join("d")).expect("mkdir");
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(dir.path().join("d/f"), b"1").expect("write");
        let until = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        let df = Change::Path(PathBuf::from("d/f"));
        while Instant::now() < until && !seen.contains(&df) {
            std::thread::sleep(Duration::from_millis(20));
            assert!(!w.drain(&mut seen), "no overflow");
        }
        assert!(seen.contains(&df), "{seen:?}");
        assert!(
            !seen
                .iter()
                .any(|c| matches!(c, Change::Path(p) if p.starts_with(".sgw"))),
            "{seen:?}"
        );
        std::fs::rename(dir.path().join("d/f"), dir.path().join("g")).expect("mv");
        let moved = Change::Renamed(PathBuf::from("d/f"), PathBuf::from("g"));
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && !seen.contains(&moved) {
            std::thread::sleep(Duration::from_millis(20));
            assert!(!w.drain(&mut seen), "no overflow");
        }
        assert!(seen.contains(&moved), "{seen:?}");
    }
}
