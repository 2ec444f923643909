//! Two-way shares: local changes as they happen, from inotify (the `notify` crate).
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

use log::warn;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::cache::paths::RESERVED_TOP_LEVEL;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

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
