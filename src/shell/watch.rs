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
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::cache::paths::RESERVED_TOP_LEVEL;

/// Paths waiting for the share thread at most; beyond that the share is rescanned.
pub const WATCH_QUEUE: usize = 4096;

/// A recursive watch on one share directory.
pub struct Watcher {
    _inner: RecommendedWatcher,
    rx: Receiver<PathBuf>,
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

    /// Move the share-relative paths reported so far into `out`. True if events were lost
    /// (the share must be rescanned).
    pub fn drain(&self, out: &mut Vec<PathBuf>) -> bool {
        while let Ok(p) = self.rx.try_recv() {
            out.push(p);
        }
        self.overflow.swap(false, Ordering::SeqCst)
    }
}

fn on_event(
    root: &Path,
    tx: &SyncSender<PathBuf>,
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
    for path in event.paths {
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if rel.as_os_str().is_empty()
            || rel
                .components()
                .next()
                .is_some_and(|c| c.as_os_str() == RESERVED_TOP_LEVEL)
        {
            continue;
        }
        match tx.try_send(rel.to_path_buf()) {
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
        while Instant::now() < until && !seen.contains(&PathBuf::from("d/f")) {
            std::thread::sleep(Duration::from_millis(20));
            assert!(!w.drain(&mut seen), "no overflow");
        }
        assert!(seen.contains(&PathBuf::from("d/f")), "{seen:?}");
        assert!(!seen.iter().any(|p| p.starts_with(".sgw")), "{seen:?}");
    }
}
